"""GenerationPane: one side of the comparison, its streaming text and its live figures."""

from __future__ import annotations

import re
from typing import Self

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.geometry import Region
from textual.widgets import Static

from kvtui.core.view import LOAD_PHASES, SideState
from kvtui.core.vocab import FAILED, SideStatus, StopReason
from kvtui.ui.widgets.memory_meter import memory_text
from kvtui.ui.widgets.rate_gauge import RateGauge
from kvtui.ui.widgets.stream_text import StreamText
from kvtui.ui.widgets.text_lines import TextLines

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
NARROW = 64  # below this many columns of content a pane uses its compact layout (80x24 with two sides)
STATE_CLASSES = ("-streaming", "-looping", "-crashed", "-done", "-waiting", "-aborted")
TIMED = ("generating", "looping")  # statuses whose figures change with time alone (the current rate decays)


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
        self._shown: SideState | None = None
        self._drawn: tuple[int, int, bool] | None = None  # (version, the reference side's version, narrow) drawn
        self._last: dict[str, object] = {}  # what each part shows now: unchanged parts are not redrawn
        self._bottom_row_only = False  # set while the status (in the bottom border) changes

    @property
    def state(self) -> SideState | None:
        """This side's state, or None before the session has started."""
        sides = self.app.state.sides
        return sides[self.index] if self.index < len(sides) else None

    @property
    def narrow(self) -> bool:
        return self.has_class("-narrow")

    @property
    def _trimmed(self) -> int:
        """Characters cut from the top of the shown text (it keeps a tail)."""
        return self.view.trimmed

    def compose(self) -> ComposeResult:
        # kept as attributes: looked up once, not on every frame
        self.gauge = RateGauge()
        self.figures = TextLines(classes="pane-figures")  # the figures and the memory lines, repainted line by line
        self.alert = Static(classes="pane-alert")
        self.view = StreamText(MAX_LINES, classes="pane-text")
        yield from (self.gauge, self.figures, self.alert, self.view)

    def on_mount(self) -> None:
        self.refresh_view()

    def on_resize(self) -> None:
        narrow = self.content_region.width < NARROW
        if narrow != self.narrow:
            self.set_class(narrow, "-narrow")
        self.refresh_view(force=True)  # the memory line fits itself to the width

    def flush(self) -> bool:
        """Write the text that arrived since the last flush (the app calls this on a timer).

        Returns:
            Whether anything was written.
        """
        s = self.state
        if s is None:
            return False
        if s is not self._shown:  # a new session: start from an empty pane
            self._shown, s.reset_text, self._last, self._drawn = s, True, {}, None
        unmark = s.loop is None and self._loop_marked is not None  # a conversation's next turn: no loop yet
        if not s.pending and not s.reset_text and not unmark and (s.loop is None or self._loop_marked == s.loop[:2]):
            return False
        view = self.view
        if s.reset_text:
            s.reset_text = False
            self._loop_marked = None
            view.clear()
        elif unmark:
            self._loop_marked = None
            view.highlight_from(None)
        if s.pending:
            chunk = "".join(s.pending)
            s.pending.clear()
            view.append(chunk)
        if s.loop is not None and self._loop_marked != s.loop[:2]:  # mark the looping region, once per loop
            self._loop_marked = s.loop[:2]
            view.highlight_from(s.loop_char_offset())
        return True

    def refresh_view(self, now: float | None = None, *, force: bool = False) -> None:
        """Redraw title, status, gauges and figures from the state, if anything they show can have changed."""
        s = self.state
        if s is None:
            return
        sides = self.app.state.sides
        ref = sides[1 if self.index == 0 else 0] if len(sides) > 1 else s  # divergence compares with it
        drawn = (s.version, ref.version, self.narrow)
        if drawn == self._drawn and s.status not in TIMED and s.status not in LOAD_PHASES and not force:
            return  # nothing new, and nothing that changes with time alone
        self._drawn = drawn
        if s.status not in TIMED and not s.pending:
            self.view.settle()  # the stream has ended: no room needed below its text
        cache = f"K/V {s.cache_type_k}" if self.narrow and s.cache_type_k == s.cache_type_v else s.cache_label
        title = f"[b]{s.name}[/b] · [$accent]{cache}[/]"
        if self._changed("title", title):
            self.border_title = title
        status = s.status
        looping = s.loop is not None or s.reply_loop is not None
        if s.reply_loop is not None:
            first, count = s.reply_loop
            status = f"REPLY LOOP turns {first}-{first + count - 1}"
        elif s.loop is not None:
            status = f"LOOP {s.loop[0]}-token cycle ×{s.loop[2]}"
        elif s.pattern is not None and s.status in (SideStatus.GENERATING, SideStatus.WAITING, SideStatus.DONE):
            status = f"{s.status} · PATTERN ×{s.pattern[1]}"  # the quiet signal: muted, never red
        elif s.status in LOAD_PHASES and s.phase_t is not None and now is not None:
            status = f"{s.status} {max(0.0, now - s.phase_t):.0f} s"
        style = STATUS_STYLE.get(SideStatus.LOOPING if looping else s.status, "")
        subtitle = f"[{style}] {status} [/]" if style else f" {status} "
        if self._changed("subtitle", subtitle):
            self._set_status(subtitle)
        # once a run ends: the server's own rate, or kvtui's (marked) when the server sent none (aborted, loop)
        own = s.stop is not None and s.predicted_per_second is None
        final = None
        if s.stop is not None:
            final = s.predicted_per_second if not own else (s.client_tokens_per_second or s.meter.average)
        current = s.meter.current(now)
        gauge = (None if current is None else round(current, 1), s.meter.average, len(s.buckets),
                 s.buckets[-1] if s.buckets else 0, final, own)
        if self._changed("gauge", gauge):
            self.gauge.show(current, s.meter.average, s.rates, final, own=own)
        memory = (s.mem_source, s.mem_mib, s.mem_peak_mib, s.device_total_mib, s.device_used_mib, s.kv_cache_mib,
                  s.kv_estimate_mib)
        figures = self._figures()
        if self._changed("figures", (figures.plain, memory, self.content_region.width)):
            figures.append("\n")
            figures.append_text(memory_text(*memory, width=self.content_region.width))
            self.figures.set_lines(figures.split("\n"))
        alert = self._alert()
        if self._changed("alert", alert.plain):
            self.alert.update(alert)
            self.set_class(bool(alert), "-alert")
        classes = {
            "-streaming": s.status == SideStatus.GENERATING, "-looping": looping,
            "-crashed": s.status in FAILED, "-done": s.status == SideStatus.DONE,
            "-waiting": s.status == SideStatus.WAITING, "-aborted": s.status == SideStatus.ABORTED,
        }
        if self._changed("classes", tuple(classes.values())):
            self.update_classes(classes)

    def _set_status(self, markup: str) -> None:
        """Show the status in the bottom border, repainting that row alone: a loop's count rises with every
        cycle, and repainting the whole pane (its text too) for it cost more than all the streaming text."""
        self._bottom_row_only = True
        try:
            self.border_subtitle = markup
        finally:
            self._bottom_row_only = False

    def refresh(self, *regions: Region, repaint: bool = True, layout: bool = False,
                recompose: bool = False) -> Self:
        if self._bottom_row_only and not regions and not layout and not recompose and self.outer_size.height:
            width, height = self.outer_size
            dx, dy = self.content_offset  # a region is given relative to the content; the border lies outside it
            regions = (Region(-dx, height - 1 - dy, width, 1),)
        return super().refresh(*regions, repaint=repaint, layout=layout, recompose=recompose)

    def _changed(self, key: str, value: object) -> bool:
        if self._last.get(key, self) == value:
            return False
        self._last[key] = value
        return True

    def _figures(self) -> Text:
        s = self.state
        assert s is not None
        narrow = self.narrow
        t = Text(no_wrap=True, overflow="ellipsis")
        gap = "  " if narrow else "   "
        if narrow:
            t.append(f"{s.tokens:,}")
            t.append(" tok", style="dim")
        t.append(f"{gap if narrow else ''}TTFT ", style="dim")
        t.append(f"{s.ttft_ms:,.0f} ms" if s.ttft_ms is not None else "–")
        t.append(f"{gap}pp ", style="dim")
        if s.prompt_per_second is None:
            t.append("–")
        else:
            t.append(f"{s.prompt_per_second:,.0f}" if narrow else f"{s.prompt_per_second:,.1f} t/s")
        if not narrow:
            t.append(f"{gap}tokens ", style="dim")
            t.append(f"{s.tokens:,}")
        tail = Text()
        if s.stop:
            tail.append("stop ", style="dim")
            tail.append(s.stop, style="bold red" if s.stop in (StopReason.LOOP, StopReason.ERROR) else "bold")
        if s.turn is not None:
            if s.context_n is not None:
                tail.append(f"{gap if tail else ''}context ", style="dim")
                tail.append(f"{s.context_n:,}")
            tail.append(f"{gap if tail else ''}turn {s.turn}", style="dim")
        elif s.run:
            tail.append(f"{gap if tail else ''}run {s.run + 1}", style="dim")
        if tail:
            t.append("\n" if narrow else gap)
            t.append_text(tail)
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
        if s.reply_loop is not None:
            first, count = s.reply_loop
            what = "" if self.narrow else "loop of replies: "
            t.append(f"{what}the same reply in turns {first}-{first + count - 1}", style="bold red")
            if s.stop == StopReason.LOOP:
                t.append(" (stopped)", style="red")
            if s.loop is not None:
                t.append("\n")
        if s.loop is not None:
            t.append(f"repetition loop from token {s.loop[1]}: ", style="bold red")
            t.append(repr(s.loop_text[:60]) if s.loop_text else "", style="red")
        elif s.pattern is not None:
            t.append(f"pattern from piece {s.pattern[2]}: ", style="yellow")
            t.append(f"{s.pattern[0].strip()[:50]!r} ×{s.pattern[1]}", style="dim")
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
