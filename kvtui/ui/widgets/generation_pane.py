"""GenerationPane: one side of the comparison, its streaming text and its live figures."""

from __future__ import annotations

import re

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static, TextArea
from textual.widgets.text_area import Selection

from kvtui.core.view import SideState
from kvtui.core.vocab import FAILED, SideStatus, StopReason
from kvtui.ui.widgets.memory_meter import MemoryMeter
from kvtui.ui.widgets.rate_gauge import RateGauge

STATUS_STYLE: dict[str, str] = {
    SideStatus.WAITING: "dim", SideStatus.STARTING: "yellow", SideStatus.LOADING: "yellow",
    SideStatus.READY: "yellow", SideStatus.WARMED_UP: "yellow", SideStatus.WARMING: "yellow",
    SideStatus.GENERATING: "bold green", SideStatus.DONE: "bold cyan", SideStatus.ABORTED: "bold yellow",
    SideStatus.CRASHED: "bold red", SideStatus.ERROR: "bold red", SideStatus.LOOPING: "bold red",
}
_LOG_PREFIX = re.compile(r"^\d+\.\d+\.\d+\.\d+ [IWED] ")


def _log_message(line: str) -> str:
    """A llama-server log line without its timestamp and level."""
    return _LOG_PREFIX.sub("", line)


MAX_LINES = 400  # the pane keeps the tail of a long generation (the record keeps all of it): bounded redraw cost
STATE_CLASSES = ("-streaming", "-looping", "-crashed", "-done", "-waiting", "-aborted")


class GenerationPane(Vertical):
    """A side: title with KV types and status, rate gauge, figures, memory, and the text.

    Args:
        index: the side's position in the plan; its state is ``app.state.sides[index]``.
    """

    can_focus = True

    def __init__(self, index: int) -> None:
        super().__init__(id=f"pane-{index}", classes="pane")
        self.index = index
        self._loop_marked: tuple[int, int] | None = None
        self._trimmed = 0  # characters cut from the top of the pane
        self._shown: SideState | None = None
        self._last: dict[str, object] = {}  # what each part shows now: unchanged parts are not redrawn

    @property
    def state(self) -> SideState | None:
        """This side's state, or None before the session has started."""
        sides = self.app.state.sides
        return sides[self.index] if self.index < len(sides) else None

    def compose(self) -> ComposeResult:
        yield RateGauge()
        yield Static(classes="pane-figures")
        yield MemoryMeter()
        yield Static(classes="pane-alert")
        yield TextArea("", read_only=True, soft_wrap=True, show_cursor=False, classes="pane-text")

    def on_mount(self) -> None:
        self.refresh_view()

    def flush(self) -> None:
        """Write the text that arrived since the last flush (the app calls this on a timer)."""
        s = self.state
        if s is None:
            return
        area = self.query_one(TextArea)
        if s is not self._shown:  # a new session: start from an empty pane
            self._shown, s.reset_text, self._last = s, True, {}
        if s.reset_text:
            s.reset_text = False
            self._loop_marked = None
            self._trimmed = 0
            area.load_text("")
        if s.pending:
            chunk = "".join(s.pending)
            s.pending.clear()
            at_bottom = area.scroll_y >= area.max_scroll_y - 1
            area.insert(chunk, area.document.end, maintain_selection_offset=True)
            excess = area.document.line_count - MAX_LINES
            if excess > MAX_LINES // 4:  # trim in steps, not on every flush
                self._trimmed += len(area.get_text_range((0, 0), (excess, 0)))
                area.delete((0, 0), (excess, 0), maintain_selection_offset=False)
            if at_bottom:
                area.scroll_end(animate=False, immediate=False)
        self._mark_loop(area)

    def _mark_loop(self, area: TextArea) -> None:
        """Select the looping region so it stands out, once per loop found."""
        s = self.state
        assert s is not None
        offset = s.loop_char_offset()
        if offset is None or s.loop is None or self._loop_marked == (s.loop[0], s.loop[1]):
            return
        self._loop_marked = (s.loop[0], s.loop[1])
        doc = area.document
        start = doc.get_location_from_index(max(0, min(offset - self._trimmed, len(area.text))))
        area.selection = Selection(start, doc.end)

    def refresh_view(self, now: float | None = None) -> None:
        """Redraw title, status, gauges and figures from the state."""
        s = self.state
        if s is None:
            return
        title = f"[b]{s.name}[/b] · [$accent]{s.cache_label}[/]"
        if self._changed("title", title):
            self.border_title = title
        status = s.status
        if s.loop is not None:
            status = f"LOOP {s.loop[0]}-token cycle ×{s.loop[2]}"
        style = STATUS_STYLE.get(SideStatus.LOOPING if s.loop else s.status, "")
        subtitle = f"[{style}] {status} [/]" if style else f" {status} "
        if self._changed("subtitle", subtitle):
            self.border_subtitle = subtitle
        # once a run ends: the server's own rate, or kvtui's (marked) when the server sent none (aborted, loop)
        own = s.stop is not None and s.predicted_per_second is None
        final = None
        if s.stop is not None:
            final = s.predicted_per_second if not own else (s.client_tokens_per_second or s.meter.average)
        gauge = (s.meter.current(now), s.meter.average, tuple(s.rates), final, own)
        if self._changed("gauge", gauge):
            self.query_one(RateGauge).show(gauge[0], gauge[1], s.rates, final, own=own)
        figures = self._figures()
        if self._changed("figures", figures.plain):
            self.query_one(".pane-figures", Static).update(figures)
        memory = (s.mem_source, s.mem_mib, s.mem_peak_mib, s.device_total_mib, s.device_used_mib, s.kv_cache_mib,
                  s.kv_estimate_mib)
        if self._changed("memory", memory):
            self.query_one(MemoryMeter).show(*memory)
        alert = self._alert()
        if self._changed("alert", alert.plain):
            self.query_one(".pane-alert", Static).update(alert)
            self.set_class(bool(alert), "-alert")
        classes = {
            "-streaming": s.status == SideStatus.GENERATING, "-looping": s.loop is not None,
            "-crashed": s.status in FAILED, "-done": s.status == SideStatus.DONE,
            "-waiting": s.status == SideStatus.WAITING, "-aborted": s.status == SideStatus.ABORTED,
        }
        if self._changed("classes", tuple(classes.values())):
            self.update_classes(classes)

    def _changed(self, key: str, value: object) -> bool:
        if self._last.get(key, self) == value:
            return False
        self._last[key] = value
        return True

    def _figures(self) -> Text:
        s = self.state
        assert s is not None
        t = Text()
        t.append("TTFT ", style="dim")
        t.append(f"{s.ttft_ms:,.0f} ms" if s.ttft_ms is not None else "–")
        t.append("   pp ", style="dim")
        t.append(f"{s.prompt_per_second:,.1f} t/s" if s.prompt_per_second is not None else "–")
        t.append("   tokens ", style="dim")
        t.append(f"{s.tokens:,}")
        if s.stop:
            t.append("   stop ", style="dim")
            t.append(s.stop, style="bold red" if s.stop in (StopReason.LOOP, StopReason.ERROR) else "bold")
        if s.run:
            t.append(f"   run {s.run + 1}", style="dim")
        div = self.app.state.divergence(self.index)
        if div is not None:
            ref, first = div
            if first is None:
                t.append(f"\nsame tokens as {ref} so far", style="dim")
            else:
                t.append(f"\ndiffers from {ref} at token {first}", style="bold yellow")
        return t

    def _alert(self) -> Text:
        s = self.state
        assert s is not None
        t = Text()
        if s.status == SideStatus.WAITING and s.waiting_reason:
            t.append(f"waiting: {s.waiting_reason}", style="italic dim")
        if s.progress_line:
            t.append(s.progress_line, style="bold cyan")
        if s.loop is not None:
            t.append(f"repetition loop from token {s.loop[1]}: ", style="bold red")
            t.append(repr(s.loop_text[:60]) if s.loop_text else "", style="red")
        if s.error:
            t.append(s.error, style="bold red")
            if s.hint:
                t.append(f"\nfix: {s.hint}", style="red")
            for line in s.log_tail[-4:]:
                t.append("\n  " + _log_message(line)[:160], style="dim")
        for w in s.warnings:
            t.append(("\n" if t else "") + f"warning: {w}", style="yellow")
        if s.ran_with is not None:  # what the server ran with; the details are on the log screen (l)
            t.append(("\n" if t else "") + s.ran_with.badge(), style="yellow" if s.ran_with.cpu_lines else "dim")
        return t
