"""KvtuiApp: split panes fed by the core's event stream, live or replayed.

The app never talks to llama-server itself. A session object (``LiveSession``
or a replay) produces events; the sink folds them into ``SessionState``
without rendering, and one frame timer redraws: text at most 4 times a second
(fewer when a slow stream has little new), figures about twice (in frames that
paint text anyway), so a fast stream costs the same frames as a slow one.
The app must not slow what it measures: the timer sleeps when no event has
come and nothing streams (the next event wakes it), a pane redraws only the
parts whose state changed, and the text view repaints only the rows that did.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psutil
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Grid
from textual.widgets import Footer

from kvtui.core.errors import EXIT_BAD_INPUT
from kvtui.core.events import Event, RequestSent, RunFinished
from kvtui.core.quality.summary import comparisons, summarize, verdicts
from kvtui.core.source import EventSource
from kvtui.core.view import LOAD_PHASES, SessionState
from kvtui.core.vocab import SideStatus
from kvtui.ui.logfollow import LogFollower
from kvtui.ui.quitting import QuitControl
from kvtui.ui.replay_keys import ReplayKeys
from kvtui.ui.screens.confirm import ConfirmScreen
from kvtui.ui.screens.help import HelpScreen
from kvtui.ui.screens.server_log import ServerLogScreen
from kvtui.ui.side_keys import SideKeys
from kvtui.ui.widgets.comparison_strip import ComparisonStrip
from kvtui.ui.widgets.generation_pane import TIMED, GenerationPane
from kvtui.ui.widgets.session_header import SessionHeader

TEXT_MIN_PIECES = 3  # a text frame waits for this many new pieces in some pane...
TEXT_MAX_WAIT_S = 0.3  # ...or until text has waited this long (a slow stream paints ~3 times a second)
CLOCK_S = 1.0  # load-phase seconds, and the log lines that move a load phase on
CPU_S = 5.0  # kvtui's own CPU while the servers run on the CPU: a 5 s average reads steadier, and costs less


@dataclass(frozen=True, slots=True)
class Pace:
    """How often the app draws while text streams.

    Args:
        text_s: seconds between text frames (the frame timer's period).
        figures_min_s: the figures redraw in a text frame at most this often...
        figures_max_s: ...and without text at least this often (the current rate looks back 1 s).
    """

    text_s: float
    figures_min_s: float
    figures_max_s: float


PACE = Pace(0.25, 0.35, 0.6)  # 4 text frames a second, figures about twice: enough to read along
# when the servers run on the CPU, every frame is taken from them (2-3 ms of Textual's compositor each, here):
# text twice a second, figures once (measured by benchmarks/observer.py)
PACE_SHARED = Pace(0.5, 0.9, 1.0)


class Panes(Grid):
    """The panes' grid: it draws nothing itself, so Textual can skip painting it on every frame."""

    BLANK = True


class KvtuiApp(QuitControl, ReplayKeys, SideKeys, App[int]):
    """The kvtui terminal app.

    Args:
        session: the event producer; the app adds its sink to ``session.sinks``.
        replay_label: shown in the header when replaying (e.g. "replay 2026-11-29").
        autostart: start the session on mount (tests may start it themselves).
        force: start a parallel run that the memory plan says will not fit without asking.
    """

    CSS_PATH = "kvtui.tcss"
    TITLE = "kvtui"
    # the footer shows the first ones; ? lists them all (screens/help.py)
    BINDINGS = [
        Binding("q", "quit", "quit"),
        Binding("ctrl+c", "interrupt", "quit", show=False, priority=True),
        Binding("question_mark", "help", "help"),
        Binding("x", "abort_focused", "abort"),
        Binding("r", "rerun_focused", "rerun"),
        Binding("l", "show_log", "log"),
        Binding("X", "abort_all", "abort all"),
        Binding("R", "rerun_all", "rerun all"),
        Binding("s", "save", "save"),
        Binding("left_square_bracket", "abort_first", "abort first", show=False),
        Binding("right_square_bracket", "abort_last", "abort last", show=False),
        *(Binding(str(k), f"focus_side({k - 1})", f"side {k}", show=False) for k in range(1, 10)),
        Binding("space", "pause", "pause"),
        Binding("plus,equals_sign", "faster", "faster"),
        Binding("minus", "slower", "slower"),
        Binding("home,0", "restart", "restart"),
        Binding("end,e", "jump_to_end", "to end"),
    ]

    def __init__(self, session: EventSource, *, replay_label: str = "", autostart: bool = True,
                 force: bool = False) -> None:
        super().__init__()
        self.force = force
        self.session = session
        self.state = SessionState()
        self.replay_label = replay_label
        self.autostart = autostart
        self._header_shown: tuple[object, ...] | None = None
        self._runs_shown: tuple[object, ...] | None = None
        self._events_drawn = -1  # state.events at the last figures redraw
        self._awake = False  # the frame timer runs (it sleeps while nothing happens)
        self._figures_now = True  # the next frame redraws the figures whenever they were last drawn
        self._panes: list[GenerationPane] | None = None
        self._clock_last = 0.0
        self._cpu_last = 0.0  # when kvtui's CPU figure was last taken
        self._text_since: float | None = None  # when the text now waiting was first seen
        self._figures_t = 0.0  # when the figures were last redrawn
        self._session_running = False
        self._quitting = False
        self._interrupted = False  # quit by a signal (SIGTERM, SIGHUP, SIGINT): exit code 1
        self._killed = False  # quit without waiting (a second ctrl+c or signal): servers killed
        self._followers: dict[int, LogFollower] = {}  # side -> its server log, read while it loads
        self._proc = psutil.Process()
        self._cpu_text: str | None = None  # kvtui's own CPU use, shown when the servers run on the CPU
        self._measuring_cpu = False  # a live run on CPU servers: the header ends with kvtui's CPU while generating
        self._cpu_start: tuple[float, float] | None = None  # (CPU seconds, wall seconds) at the first request
        self._cpu_end: tuple[float, float] | None = None  # the same when the last run ended
        session.sinks.append(self._on_event)

    # -- layout ---------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        n = self.session.side_count()
        yield SessionHeader(id="header")
        with Panes(id="panes") as grid:
            grid.styles.grid_size_columns = n if n <= 3 else 2
            grid.styles.grid_size_rows = 1 if n <= 3 else (n + 1) // 2
            for i in range(n):
                yield GenerationPane(i)
        yield ComparisonStrip(id="comparison")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        # looked up once: the timers use them on every frame, and may fire while the app is being torn down
        self._header = self.query_one(SessionHeader)
        self._strip = self.query_one(ComparisonStrip)
        self._header.show(None, None, self.replay_label)
        panes = self.panes()
        if panes:
            panes[0].focus()
        self._pace = PACE
        self._frame_timer = self.set_interval(self._pace.text_s, self._frame, pause=True)
        self._clock_timer = self.set_interval(CLOCK_S, self._tick_clock, pause=True)
        self._wake()
        if self.handle_signals:
            self._install_signal_handlers()
        if self.autostart:
            self._start_or_confirm()

    def _start_or_confirm(self) -> None:
        """Start the session, first asking when the plan says a parallel run will not fit."""
        from kvtui.core.run.plan import overcommit

        plan = self.session.plan
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
        """The sink: fold the event into state; rendering happens on the timers, which an event wakes."""
        self.state.apply(event)
        if self._measuring_cpu and isinstance(event, RequestSent | RunFinished):
            self._cpu_mark(event)
        if not self._awake:
            self._wake()

    def panes(self) -> list[GenerationPane]:
        if self._panes is None:  # fixed once composed; a DOM query on every frame cost more than the frame's work
            self._panes = list(self.query(GenerationPane))
        return self._panes

    # -- redrawing: only while something happens ------------------------------------------------------

    def _wake(self) -> None:
        if not hasattr(self, "_frame_timer"):
            return  # not mounted yet: on_mount wakes the timer
        self._awake = True
        self._figures_now = True
        self._frame_timer.resume()
        if self._clock_needed():
            self._clock_timer.resume()

    def _frame(self) -> None:
        """Write new text; redraw the figures about twice a second, in a frame that paints text anyway when one
        comes soon enough; sleep when there is nothing to do."""
        now = time.monotonic()
        with self.batch_update():
            painted = self._flush_text(now)
            since = now - self._figures_t
            pace = self._pace
            if since >= pace.figures_max_s or (painted and since >= pace.figures_min_s) or self._figures_now:
                self._figures_now = False
                self._figures_t = now
                self._refresh_figures()
            if self._clock_due():
                self._clock_work()  # once a second, in a frame that paints anyway

    def draw_now(self) -> None:
        """Draw the state as it is, without waiting for the next frame (screenshots, and tests that must not
        depend on how soon a busy machine gets to a frame)."""
        with self.batch_update():
            for pane in self.panes():
                pane.flush()
            self._events_drawn = -1  # whatever was drawn before: draw every figure again
            self._figures_t = time.monotonic()
            self._refresh_figures()

    def _flush_text(self, now: float) -> bool:
        """Write the new text of every pane in one frame, once there is enough of it to be worth a frame.

        Returns:
            Whether text was written.
        """
        sides = self.state.sides
        waiting = max((len(s.pending) for s in sides), default=0)
        if not waiting and not any(s.reset_text for s in sides):
            self._text_since = None
            return False
        if self._text_since is None:
            self._text_since = now
        if (waiting < TEXT_MIN_PIECES and now - self._text_since < TEXT_MAX_WAIT_S
                and not any(s.reset_text for s in sides)):
            return False  # a slow stream: let a few pieces gather rather than paint one at a time
        self._text_since = None
        for pane in self.panes():
            pane.flush()
        return True

    def _refresh_figures(self) -> None:
        """Redraw what changed; go to sleep when no event came since the last redraw and nothing streams."""
        sides = self.state.sides
        changed = self.state.events != self._events_drawn
        if not changed and not any(s.status in TIMED for s in sides):
            if not any(s.pending or s.reset_text for s in sides):
                self._awake = False
                self._frame_timer.pause()
            return
        self._events_drawn = self.state.events
        now = self.session.now()
        for pane in self.panes():
            pane.refresh_view(now)
        if changed:
            self._refresh_header()
            self._refresh_strip()

    def _refresh_header(self) -> None:
        if self.state.finished is not None and self._measuring_cpu:
            self._cpu_text = self._cpu_average()
        k = self.state.turn
        turn = (k, self.state.turn_users.get(k, "")) if k is not None else None
        header = (self.state.started, self.state.finished, self._cpu_text, turn)
        if header != self._header_shown:
            self._header_shown = header
            self._header.show(self.state.started, self.state.finished, self.replay_label, self._cpu_text, turn)

    def _refresh_strip(self) -> None:
        record = self.session.recorder.record if self.session.recorder is not None else None
        runs = tuple(len(s.runs) for s in record.sides) if record else ()
        sc = self.state.scoring
        runs += (self.state.finished is not None, sc and sc.status, self.state.score_done)
        if runs != self._runs_shown:  # the strip changes only when a run ends, or as scoring goes
            self._runs_shown = runs
            final = record is not None and self.state.finished is not None
            self._strip.show(summarize(record) if record else [],
                             comparisons(record, with_runs_only=True) if record else [],
                             verdicts(record) if final else [], self.state)

    # -- once a second: load phases, kvtui's own CPU ----------------------------------------------------

    def _servers_on_cpu(self) -> bool:
        """A live session whose servers run on the CPU (no NVIDIA GPU to measure): kvtui shares cores with them."""
        return not self.replaying and self.session.memory_source == "rss"

    def _clock_needed(self) -> bool:
        return self.state.loading() or (self._session_running and self._servers_on_cpu())

    def _clock_due(self) -> bool:
        return time.monotonic() - self._clock_last >= CLOCK_S * 0.9 and self._clock_needed()

    def _tick_clock(self) -> None:
        """The clock timer, for when the frames sleep (servers loading); streaming frames do the same themselves."""
        if not self._clock_needed():
            self._clock_timer.pause()
        elif self._clock_due():
            with self.batch_update():
                self._clock_work()

    def _clock_work(self) -> None:
        self._clock_last = time.monotonic()
        now = self.session.now()
        for i, s in enumerate(self.state.sides):
            if s.status in (SideStatus.STARTING, SideStatus.READY) and s.log_path:
                follower = self._followers.get(i)
                if follower is None or follower.path != s.log_path:
                    follower = self._followers[i] = LogFollower(s.log_path)
                self.state.note_log(i, follower.read_new(), now)
        if self._session_running and self._servers_on_cpu() and self._clock_last - self._cpu_last >= CPU_S * 0.9:
            self._cpu_last = self._clock_last
            self._cpu_text = f"kvtui {self._proc.cpu_percent(None):.1f}% CPU"
            self._refresh_header()
        for pane, s in zip(self.panes(), self.state.sides, strict=False):
            if s.status in LOAD_PHASES:  # their seconds
                pane.refresh_view(now)

    def _cpu_mark(self, event: Event) -> None:
        """kvtui's CPU seconds when the first request goes out and when each run ends: the average it shows at
        the end covers the generation only, not the servers' start-up (loading a model is not kvtui's cost)."""
        t = self._proc.cpu_times()
        mark = (t.user + t.system, time.monotonic())
        if isinstance(event, RequestSent):
            if self._cpu_start is None:
                self._cpu_start = mark
        elif self._cpu_start is not None:
            self._cpu_end = mark

    def _cpu_average(self) -> str | None:
        """kvtui's CPU while the sides generated, once the run has ended (None: nothing was generated)."""
        if self._cpu_start is None or self._cpu_end is None:
            return None
        (cpu0, wall0), (cpu1, wall1) = self._cpu_start, self._cpu_end
        share = (cpu1 - cpu0) / (wall1 - wall0) * 100 if wall1 > wall0 else 0.0
        return f"kvtui {share:.1f}% CPU while generating"

    # -- running --------------------------------------------------------------------------------

    @work(exclusive=True, group="session", exit_on_error=False)
    async def start_session(self, side: int | None = None, rerun: bool = False) -> str:
        """Run (or rerun) the session in the app's event loop."""
        self._session_running = True
        self._set_pace(PACE_SHARED if self._servers_on_cpu() else PACE)
        if self._servers_on_cpu():
            self._measuring_cpu = True
            self._cpu_start = self._cpu_end = None
            self._cpu_text = None
            self._proc.cpu_percent(None)  # the first call starts the measurement
            self._cpu_last = time.monotonic()
        self._wake()
        try:
            if rerun:
                return await self.session.rerun(side)
            return await self.session.run()
        finally:
            self._session_running = False

    def _set_pace(self, pace: Pace) -> None:
        if pace == self._pace:
            return
        self._pace = pace
        awake = self._awake
        self._frame_timer.stop()
        self._frame_timer = self.set_interval(pace.text_s, self._frame, pause=not awake)

    def focused_side(self) -> int:
        node = self.focused
        while node is not None and not isinstance(node, GenerationPane):
            node = node.parent  # type: ignore[assignment]
        return node.index if isinstance(node, GenerationPane) else 0

    def action_focus_side(self, side: int) -> None:
        panes = self.panes()
        if 0 <= side < len(panes):
            panes[side].focus()

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

    def action_help(self) -> None:
        self.push_screen(HelpScreen())


from kvtui.ui.launch import exit_lines, run_app  # noqa: E402,F401 - `kvtui.ui.app.run_app` is the entry point
