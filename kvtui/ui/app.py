"""KvtuiApp: split panes fed by the core's event stream, live or replayed.

The app never talks to llama-server itself. A session object (``LiveSession``
or a replay) produces events; the sink folds them into ``SessionState``
without rendering, and timers redraw at a fixed rate: text at 15 Hz, figures
at 4 Hz. So a fast stream costs the same frames as a slow one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from typing import Any, Protocol

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Grid
from textual.widgets import Footer

from kvtui.core.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_RUN_FAILED
from kvtui.core.events import Event
from kvtui.core.quality.summary import comparisons, summarize, verdicts
from kvtui.core.view import SessionState
from kvtui.core.vocab import FAILED, SessionStatus
from kvtui.ui.screens.confirm import ConfirmScreen
from kvtui.ui.screens.help import HelpScreen
from kvtui.ui.screens.server_log import ServerLogScreen
from kvtui.ui.widgets.comparison_strip import ComparisonStrip
from kvtui.ui.widgets.generation_pane import GenerationPane
from kvtui.ui.widgets.session_header import SessionHeader

TEXT_HZ = 15
FIGURES_HZ = 4


class Session(Protocol):
    """What the app needs from a producer of events (live or replay)."""

    sinks: list[Any]

    async def run(self) -> str: ...
    async def rerun(self, side: int | None = None) -> str: ...
    def abort(self, side: int | None = None) -> None: ...
    async def aclose(self) -> None: ...
    def save(self) -> str | None: ...
    def now(self) -> float: ...
    def side_count(self) -> int: ...


class KvtuiApp(App[int]):
    """The kvtui terminal app.

    Args:
        session: the event producer; the app adds its sink to ``session.sinks``.
        replay_label: shown in the header when replaying (e.g. "replay 2026-11-29").
        autostart: start the session on mount (tests may start it themselves).
        force: start a parallel run that the memory plan says will not fit without asking.
    """

    CSS_PATH = "kvtui.tcss"
    TITLE = "kvtui"
    BINDINGS = [
        Binding("x", "abort_focused", "abort side"),
        Binding("left_square_bracket", "abort(0)", "abort left", show=False),
        Binding("right_square_bracket", "abort(1)", "abort right", show=False),
        Binding("X", "abort_all", "abort all"),
        Binding("r", "rerun_focused", "rerun side"),
        Binding("R", "rerun_all", "rerun all"),
        Binding("s", "save", "save"),
        Binding("l", "show_log", "server log"),
        Binding("space", "pause", "pause/resume"),
        Binding("plus,equals_sign", "faster", "faster"),
        Binding("minus", "slower", "slower"),
        Binding("home,0", "restart", "restart"),
        Binding("end,e", "jump_to_end", "to end"),
        Binding("question_mark", "help", "help"),
        Binding("q", "quit", "quit"),
    ]

    def __init__(self, session: Session, *, replay_label: str = "", autostart: bool = True,
                 force: bool = False) -> None:
        super().__init__()
        self.force = force
        self.session = session
        self.state = SessionState()
        self.replay_label = replay_label
        self.autostart = autostart
        self._header_shown: tuple[object, object] = (None, None)
        self._runs_shown: tuple[int, ...] | None = None
        self._session_running = False
        self._quitting = False
        self._interrupted = False  # quit by a signal (SIGTERM, SIGHUP, SIGINT): exit code 1
        session.sinks.append(self._on_event)

    # -- layout ---------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        n = self.session.side_count()
        yield SessionHeader(id="header")
        with Grid(id="panes") as grid:
            grid.styles.grid_size_columns = n if n <= 3 else 2
            grid.styles.grid_size_rows = 1 if n <= 3 else (n + 1) // 2
            for i in range(n):
                yield GenerationPane(i)
        yield ComparisonStrip(id="comparison")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(SessionHeader).show(None, None, self.replay_label)
        panes = self.panes()
        if panes:
            panes[0].focus()
        self.set_interval(1 / TEXT_HZ, self._flush_text)
        self.set_interval(1 / FIGURES_HZ, self._refresh_figures)
        if self.handle_signals:
            self._install_signal_handlers()
        if self.autostart:
            self._start_or_confirm()

    def _start_or_confirm(self) -> None:
        """Start the session, first asking when the plan says a parallel run will not fit."""
        from kvtui.core.run.plan import overcommit

        plan = getattr(getattr(self.session, "prepared", None), "plan", None)
        refusal = None if self.force or plan is None else overcommit(plan)
        if refusal is None:
            self.start_session()
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.start_session()
            else:
                self.exit(EXIT_BAD_INPUT)

        self.push_screen(ConfirmScreen(refusal.split(";")[0] + ".\n\nStart both servers anyway?"), answer)

    def _on_event(self, event: Event) -> None:
        """The sink: fold the event into state; rendering happens on the timers."""
        self.state.apply(event)

    def panes(self) -> list[GenerationPane]:
        return list(self.query(GenerationPane))

    def _flush_text(self) -> None:
        with self.batch_update():
            for pane in self.panes():
                pane.flush()

    def _refresh_figures(self) -> None:
        now = self.session.now()
        with self.batch_update():
            for pane in self.panes():
                pane.refresh_view(now)
            header = (self.state.started, self.state.finished)
            if header != self._header_shown:
                self._header_shown = header
                self.query_one(SessionHeader).show(self.state.started, self.state.finished, self.replay_label)
            record = getattr(getattr(self.session, "recorder", None), "record", None)
            runs = tuple(len(s.runs) for s in record.sides) if record else ()
            runs += (self.state.finished is not None,)
            if runs != self._runs_shown:  # the strip changes only when a run ends
                self._runs_shown = runs
                final = record is not None and self.state.finished is not None
                summaries = summarize(record) if record else []
                self.query_one(ComparisonStrip).show(summaries, comparisons(record, with_runs_only=True) if record
                                                     else [], verdicts(record) if final else [])

    # -- running --------------------------------------------------------------------------------

    @work(exclusive=True, group="session", exit_on_error=False)
    async def start_session(self, side: int | None = None, rerun: bool = False) -> str:
        """Run (or rerun) the session in the app's event loop."""
        self._session_running = True
        try:
            if rerun:
                return await self.session.rerun(side)
            return await self.session.run()
        finally:
            self._session_running = False

    def focused_side(self) -> int:
        node = self.focused
        while node is not None and not isinstance(node, GenerationPane):
            node = node.parent  # type: ignore[assignment]
        return node.index if isinstance(node, GenerationPane) else 0

    def action_abort_focused(self) -> None:
        self.action_abort(self.focused_side())

    def action_abort(self, side: int) -> None:
        if side < len(self.state.sides):
            self.session.abort(side)
            self.notify(f"aborting {self.state.sides[side].name}")

    def action_abort_all(self) -> None:
        self.session.abort(None)
        self.notify("aborting all sides")

    def action_rerun_focused(self) -> None:
        self._rerun(self.focused_side())

    def action_rerun_all(self) -> None:
        self._rerun(None)

    def _rerun(self, side: int | None) -> None:
        if self._session_running:
            self.notify("a run is still going: abort it first (x or X)", severity="warning")
            return
        if side is not None and side >= len(self.state.sides):
            return
        self.start_session(side, rerun=True)
        self.notify("rerunning " + ("all sides" if side is None else self.state.sides[side].name))

    def action_save(self) -> None:
        path = self.session.save()
        self.notify(f"record saved: {path}" if path else "this session has no record file")

    def action_show_log(self) -> None:
        side = self.focused_side()
        if side < len(self.state.sides) and self.state.sides[side].log_path:
            s = self.state.sides[side]
            self.push_screen(ServerLogScreen(s.name, s.log_path, s.ran_with.details() if s.ran_with else None))
        else:
            self.notify("no server log for this side yet", severity="warning")

    # -- replay controls (shown only when the session is a replay) -----------------------------------

    REPLAY_ACTIONS = frozenset({"pause", "faster", "slower", "restart", "jump_to_end"})
    LIVE_ACTIONS = frozenset({"abort_focused", "abort", "abort_all", "rerun_focused", "rerun_all", "save"})

    @property
    def replaying(self) -> bool:
        return hasattr(self.session, "toggle_pause")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in self.REPLAY_ACTIONS:
            return self.replaying
        if action in self.LIVE_ACTIONS:
            return not self.replaying
        return True

    def action_pause(self) -> None:
        paused = self.session.toggle_pause()  # type: ignore[attr-defined]
        self.notify("paused" if paused else "playing")

    def action_faster(self) -> None:
        self.session.set_speed(self.session.speed * 2)  # type: ignore[attr-defined]
        self.notify(f"speed x{self.session.speed:g}")  # type: ignore[attr-defined]

    def action_slower(self) -> None:
        self.session.set_speed(self.session.speed / 2)  # type: ignore[attr-defined]
        self.notify(f"speed x{self.session.speed:g}")  # type: ignore[attr-defined]

    def action_restart(self) -> None:
        if not self._session_running:
            self.start_session()
        else:
            self.session.restart()  # type: ignore[attr-defined]

    def action_jump_to_end(self) -> None:
        self.session.jump_to_end()  # type: ignore[attr-defined]

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    handle_signals = False  # run_app sets it: SIGTERM and SIGINT quit like `q`; SIGHUP (terminal closed) at once
    LAST_RESORT_S = 10.0  # after a signal, the longest the app may take to close before kvtui ends anyway

    def _install_signal_handlers(self) -> None:
        """Plain signal handlers, not the event loop's: they run even when the loop is stuck.

        SIGTERM and SIGINT ask the loop to quit like `q` (runs end as aborted, servers stopped, record
        saved, exit code 1) and start a last-resort timer. SIGHUP means the terminal is gone, and then
        Textual's output blocks the loop (its writer thread dies on EIO and its queue fills up), so the
        handler ends kvtui itself, in the main thread: servers killed, record finalized, exit code 1.
        """
        loop = asyncio.get_running_loop()
        started: list[int] = []

        def handler(signum: int, frame: object) -> None:
            if signum == signal.SIGHUP:
                self._end_now()
            if not started:
                started.append(signum)
                threading.Thread(target=self._last_resort, name="kvtui-last-resort", daemon=True).start()
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(self._on_signal)

        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, handler)

    def _last_resort(self) -> None:
        time.sleep(self.LAST_RESORT_S)
        self._end_now()

    def _end_now(self) -> None:
        """Kill the servers, finalize the record, exit 1: when the app cannot close by itself."""
        with contextlib.suppress(Exception):
            getattr(self.session, "kill_now", lambda: None)()
        with contextlib.suppress(Exception):
            self._finalize()
        os._exit(EXIT_RUN_FAILED)

    def _on_signal(self) -> None:
        """A signal quits like `q` (servers stopped, record saved); a second one does not wait for that."""
        if self._interrupted:
            getattr(self.session, "kill_now", lambda: None)()
            self._finalize()
            self.exit(EXIT_RUN_FAILED)
            return
        self._interrupted = True
        self.call_later(self.action_quit)

    def _finalize(self) -> None:
        finalize = getattr(getattr(self.session, "recorder", None), "finalize_partial", None)
        if finalize is not None:
            finalize(SessionStatus.ABORTED)

    async def action_quit(self) -> None:
        """Stop the servers, save the record, leave."""
        if self._quitting:
            return
        self._quitting = True
        self.session.abort(None)
        self.workers.cancel_group(self, "session")
        await self.session.aclose()
        self._finalize()
        # sides you aborted yourself are not failures; a crashed or erroring side, or a signal, is
        self.exit(EXIT_RUN_FAILED if self._failed() or self._interrupted else EXIT_OK)

    def _failed(self) -> bool:
        return any(s.status in FAILED for s in self.state.sides)

    async def on_unmount(self) -> None:
        await self.session.aclose()


def run_app(prepared: Any, force: bool = False) -> int:
    """Open the app on a prepared live session; returns the exit code."""
    from kvtui.core.run.live import LiveSession

    session = LiveSession(prepared)
    app = KvtuiApp(session, force=force)
    app.handle_signals = True
    try:
        code = app.run()
    finally:  # however the app ended (an exception too): no server left, the record finalized
        session.kill_now()
        session.recorder.finalize_partial(SessionStatus.ABORTED)
    return code if isinstance(code, int) else EXIT_OK
