"""What a screen shows, folded from the event stream: one ``SideState`` per side.

The app applies every event here (cheap, no rendering) and redraws from this
state on a timer, so the token rate never drives the frame rate. Text arrives
in ``pending`` and is drained by the pane that shows it; ``version`` counts the
events folded into a side, so a consumer can tell in one comparison whether
anything changed since it last drew.

A side's status says what it is doing now: ``starting`` (process launched),
``loading`` (the model), ``ready`` (loaded, before its warm-up),
``warming``, ``generating``, ``waiting`` (for its turn, or for the other sides
between runs), then ``done``, ``aborted``, ``crashed`` or ``error``. The
events give all of these but two: the move from ``starting`` to ``loading``
and from ``ready`` to ``warming`` come from the server's log
(:meth:`SessionState.note_log`), which the app reads while a server loads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from kvtui.core.events import (
    ErrorRaised,
    Event,
    LoopDetected,
    MemorySampled,
    PatternDetected,
    PromptProgress,
    ReplyLoopDetected,
    RequestSent,
    RunFinished,
    ScoreReady,
    ScoringProgress,
    ScoringStarted,
    ServerExited,
    ServerReady,
    ServerStarting,
    SessionFinished,
    SessionStarted,
    SideFinished,
    SideWaiting,
    TokenReceived,
    TurnStarted,
    WarmupDone,
)
from kvtui.core.logs.provenance import RanWith
from kvtui.core.quality.figures import RateMeter
from kvtui.core.quality.kld import SideScore
from kvtui.core.quality.loops import piece_key
from kvtui.core.quality.replies import ReplyDivergence, reply_divergence
from kvtui.core.record.model import Run, Scoring
from kvtui.core.vocab import SideStatus, StopReason

RATE_HISTORY = 120  # sparkline points kept per side
# statuses that show the seconds since the phase began
LOAD_PHASES = (SideStatus.STARTING, SideStatus.LOADING, SideStatus.READY, SideStatus.WARMING)
# llama-server log lines that mark the next load phase (b10434 .. b11434); a build that prints neither stays put
_LOG_LOADING = ("load_model: loading model", "llama_model_loader:")
_LOG_WARMING = ("launch_slot_", "processing task")
_LOG_TIME = re.compile(r"^(\d+)\.(\d+)\.(\d+)\.(\d+) ")  # minutes.seconds.ms.us since the server started


def _log_time(line: str) -> float | None:
    """Seconds since the server started, from a log line's prefix (``0.06.802.900 I ...``)."""
    m = _LOG_TIME.match(line)
    if m is None:
        return None
    return int(m[1]) * 60 + int(m[2]) + int(m[3]) / 1e3 + int(m[4]) / 1e6
BUCKET_S = 0.25  # the sparkline's time step: tokens per bucket of event time, not of screen time
TURN_MARK = "» "  # a conversation's turn header in a pane's text
FIGURES_MARK = "  ↳ "  # the turn's figures under its reply


def turn_figures(run: Run) -> str:
    """One turn's figures: ``72 tok · tg 40.1 t/s · pp 310.2 t/s · context 312 · 1 code block · eos``."""
    parts = [f"{run.predicted_n or 0} tok"]
    if run.predicted_per_second is not None:
        parts.append(f"tg {run.predicted_per_second:.1f} t/s")
    elif run.client_tokens_per_second:
        parts.append(f"tg ~{run.client_tokens_per_second:.1f} t/s (kvtui)")
    if run.prompt_per_second is not None:
        parts.append(f"pp {run.prompt_per_second:.1f} t/s")
    if run.context_n is not None:
        parts.append(f"context {run.context_n:,}")
    brief = run.check.brief() if run.check is not None else ""
    if brief:
        parts.append(brief)
    parts.append(str(run.stop))
    return " · ".join(parts)


def one_line(text: str, limit: int = 200) -> str:
    """Text on one line (whitespace collapsed), cut at ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@dataclass
class SideState:
    """Everything one pane shows."""

    name: str
    cache_type_k: str
    cache_type_v: str
    kv_estimate_mib: float | None = None
    status: str = SideStatus.WAITING
    phase_t: float | None = None  # when the current load phase began (ServerStarting, ServerReady)
    phase_start_t: float | None = None  # when its server was started
    version: int = 0  # events folded into this side so far
    waiting_reason: str = ""
    run: int = 0
    tokens: int = 0
    pieces: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    reset_text: bool = False
    meter: RateMeter = field(default_factory=RateMeter)
    buckets: list[int] = field(default_factory=list)
    first_t: float | None = None
    sent_t: float | None = None
    ttft_ms: float | None = None
    prompt_per_second: float | None = None
    predicted_per_second: float | None = None
    client_tokens_per_second: float | None = None  # kvtui's own rate of the last run
    kv_cache_mib: float | None = None
    flash_attn: str | None = None
    load_s: float | None = None
    mem_source: str | None = None
    mem_mib: float | None = None
    mem_peak_mib: float | None = None
    device_total_mib: float | None = None
    device_used_mib: float | None = None
    device_name: str | None = None
    loop: tuple[int, int, int] | None = None  # period, start (token index), repeats
    loop_text: str = ""
    pattern: tuple[str, int, int] | None = None  # the quiet PATTERN signal: skeleton, repeats, start (piece)
    stop: str | None = None
    error: str | None = None
    hint: str = ""
    log_tail: tuple[str, ...] = ()
    log_path: str = ""
    warnings: tuple[str, ...] = ()
    ran_with: RanWith | None = None  # what its log says it ran with (the pane's badge, the log screen)
    placement: str = ""  # device, "GPU n" or the attached URL
    attached: bool = False  # cache types as declared; never stopped by kvtui
    memory_remote: bool = False  # attached to a server on another machine: memory not sampled
    progress: PromptProgress | None = None  # the prompt being processed (None once the first token came)
    turn: int | None = None  # a conversation's turn this side answers (or last answered)
    context_n: int | None = None  # that turn's context, prompt tokens in all (its RunFinished)
    reply_loop: tuple[int, int] | None = None  # a loop of replies: (first turn, turns)
    shown: int = 0  # characters of text handed to the pane since it was last cleared (turn headers included)
    reply_offset: int = 0  # where the current reply begins in them

    @property
    def progress_line(self) -> str:
        """One line for the pane's status while the prompt is processed ("" otherwise)."""
        return self.progress.line() if self.progress is not None else ""

    @property
    def rates(self) -> list[float]:
        """Tokens/s per time bucket since the first token (the run's sparkline)."""
        return [c / BUCKET_S for c in self.buckets[-RATE_HISTORY:]]

    def _count(self, t: float, n: int) -> None:
        if self.first_t is None:
            self.first_t = t
        idx = int((t - self.first_t) / BUCKET_S)
        if idx >= len(self.buckets):
            self.buckets.extend([0] * (idx + 1 - len(self.buckets)))
        self.buckets[idx] += max(0, n - self.tokens)

    @property
    def cache_label(self) -> str:
        return f"K {self.cache_type_k} / V {self.cache_type_v}"

    def loop_char_offset(self) -> int | None:
        """Where the loop begins in the shown text (pieces are fed one per chunk)."""
        if self.loop is None:
            return None
        return self.reply_offset + sum(len(p) for p in self.pieces[: self.loop[1]])

    def show_text(self, text: str) -> None:
        """Hand text to the pane (it draws what is pending on its next frame)."""
        self.pending.append(text)
        self.shown += len(text)


@dataclass
class SessionState:
    """The whole screen's state; ``apply`` every event, in order."""

    started: SessionStarted | None = None
    sides: list[SideState] = field(default_factory=list)
    finished: str | None = None
    now: float = 0.0
    events: int = 0
    conversation: str = ""  # "free", "forced", "mirror"; "" for prompts
    turn: int | None = None  # the conversation's latest turn
    turn_users: dict[int, str] = field(default_factory=dict)  # each turn's user message, as text
    turn_runs: dict[tuple[int, int], Run] = field(default_factory=dict)  # (side, turn) -> its reply
    new_divergences: list[tuple[int, ReplyDivergence]] = field(default_factory=list)  # the last event's
    scoring: Scoring | None = None  # the base's generations teacher-forced once generation ended
    score_done: int = 0  # positions scored so far, summed over the servers
    score_total: int = 0
    scores: tuple[SideScore, ...] = ()
    _div: dict[int, tuple[int, int, int | None]] = field(default_factory=dict)  # side -> (run, checked, first)

    def apply(self, e: Event) -> None:
        """Fold one event in."""
        self.events += 1
        self.now = max(self.now, getattr(e, "t", self.now))
        if isinstance(e, ScoringStarted | ScoringProgress | ScoreReady):
            self._apply_scoring(e)
            return
        if isinstance(e, SessionStarted):
            self.started = e
            self.finished = None
            self.conversation, self.turn, self.turn_users, self.turn_runs = e.conversation, None, {}, {}
            self.scoring, self.score_done, self.score_total, self.scores = None, 0, 0, ()
            self.sides = [SideState(s.name, s.cache_type_k, s.cache_type_v, s.kv_estimate_mib,
                                    placement=s.placement, attached=s.attached) for s in e.sides]
            return
        if isinstance(e, SessionFinished):
            self.finished = e.status
            return
        if isinstance(e, TurnStarted):
            self.turn = e.turn
            self.turn_users[e.turn] = e.user
            return
        side_index = getattr(e, "side", None)
        if side_index is None or not 0 <= side_index < len(self.sides):
            return
        s = self.sides[side_index]
        s.version += 1
        match e:
            case PromptProgress():
                if s.run == e.run and s.first_t is None and not s.pieces:
                    s.progress = e
            case TokenReceived():
                s.progress = None
                s._count(e.t, e.n)
                s.tokens = e.n
                s.pieces.append(e.text)
                # a chat stream names no token ids: its pieces stand in for them (as the record's comparison)
                s.ids.append(e.token_id if e.token_id is not None else piece_key(e.text) or -1)
                s.show_text(e.text)
                if s.ttft_ms is None and s.sent_t is not None:
                    s.ttft_ms = (e.t - s.sent_t) * 1000
                s.meter.add(e.t, e.n)
            case RequestSent():
                s.status, s.run, s.tokens, s.sent_t = SideStatus.GENERATING, e.run, 0, e.t
                s.pieces, s.ids = [], []
                if e.turn is None:  # a prompt's run: the pane starts over
                    s.pending, s.reset_text, s.shown = [], True, 0
                else:  # a conversation's turn: under the earlier ones, after a header
                    user = one_line(self.turn_users.get(e.turn, ""), 160)
                    s.show_text(("\n" if s.shown else "") + f"{TURN_MARK}turn {e.turn} · {user}\n")
                s.turn, s.context_n, s.reply_offset = e.turn, None, s.shown
                s.meter, s.buckets, s.first_t, s.ttft_ms, s.loop, s.stop = RateMeter(), [], None, None, None, None
                s.pattern = None
                s.prompt_per_second = s.predicted_per_second = s.client_tokens_per_second = None
                s.progress = None
            case MemorySampled():
                s.mem_source, s.mem_mib = e.source, e.used_mib
                if e.used_mib is not None:
                    s.mem_peak_mib = max(s.mem_peak_mib or 0.0, e.used_mib)
                s.device_total_mib, s.device_used_mib = e.device_total_mib, e.device_used_mib
                s.device_name = e.device_name
            case PatternDetected():
                s.pattern = (e.skeleton, e.repeats, e.start)
            case LoopDetected():
                s.loop, s.loop_text, s.status = (e.period, e.start, e.repeats), e.text, SideStatus.LOOPING
            case ReplyLoopDetected():
                s.reply_loop = (e.first_turn, e.turns)
            case RunFinished():
                run = e.result
                if s.status in (SideStatus.GENERATING, SideStatus.LOOPING):  # until its next run, or SideFinished
                    s.status = {StopReason.ERROR: SideStatus.ERROR, StopReason.ABORTED: SideStatus.ABORTED}.get(
                        run.stop, SideStatus.WAITING)
                s.stop, s.progress = run.stop, None
                s.prompt_per_second, s.predicted_per_second = run.prompt_per_second, run.predicted_per_second
                s.client_tokens_per_second = run.client_tokens_per_second
                if run.ttft_ms is not None:
                    s.ttft_ms = run.ttft_ms
                if run.predicted_n is not None:
                    s.tokens = run.predicted_n
                if run.turn is not None:
                    s.context_n = run.context_n
                    s.show_text(f"\n{FIGURES_MARK}{turn_figures(run)}\n")
                    self._turn_divergence(side_index, run)
            case SideWaiting():
                s.status, s.waiting_reason = SideStatus.WAITING, e.reason
            case ServerStarting():
                s.status, s.log_path, s.error, s.hint, s.log_tail = SideStatus.STARTING, e.log_path, None, "", ()
                s.phase_t = s.phase_start_t = e.t
                s.waiting_reason = ""
            case ServerReady():
                s.status, s.kv_cache_mib, s.flash_attn, s.load_s, s.warnings = (
                    SideStatus.READY, e.kv_cache_mib, e.flash_attn, e.load_s, e.warnings)
                s.phase_t = e.t
                s.ran_with = e.ran_with
                s.memory_remote = e.attached and not e.pid
            case WarmupDone():
                s.status = SideStatus.WAITING  # warmed up: its first run comes next
            case ErrorRaised():
                s.error, s.hint = e.message, e.hint
            case ServerExited():
                if not e.expected:
                    s.log_tail = e.log_tail
                    s.status = SideStatus.CRASHED
            case SideFinished():
                s.status = e.status  # a loop stays visible through ``loop``

    def _turn_divergence(self, i: int, run: Run) -> None:
        """Once a turn's reply and the primary's (side 0) are both in: how each other side's reply differs,
        under its figures (``new_divergences`` says it to the headless console too). Only where every side
        got the same request (forced, mirror): in a free conversation the contexts differ by design."""
        assert run.turn is not None
        self.new_divergences = []
        if self.conversation == "free":
            return
        self.turn_runs[(i, run.turn)] = run
        base = self.turn_runs.get((0, run.turn))
        if base is None or base.stop == StopReason.ERROR:
            return
        for k in range(1, len(self.sides)) if i == 0 else [i]:
            other = self.turn_runs.get((k, run.turn))
            if other is not None and other.stop != StopReason.ERROR:
                d = reply_divergence(self.sides[0].name, base, other)
                self.new_divergences.append((k, d))
                self.sides[k].show_text(f"{FIGURES_MARK}{d.line()}\n")

    def _apply_scoring(self, e: ScoringStarted | ScoringProgress | ScoreReady) -> None:
        if isinstance(e, ScoringProgress):
            self.score_done, self.score_total = e.done, e.total
            return
        self.scoring = e.scoring
        if isinstance(e, ScoringStarted):
            self.score_done, self.score_total = 0, e.scoring.positions * (1 + len(e.scoring.sides))
        else:
            self.scores = e.scores

    @property
    def scoring_now(self) -> bool:
        """Scoring has started and not ended."""
        return self.scoring is not None and self.scoring.status == "running"

    def loading(self) -> bool:
        """Whether any side is in a load phase (the app then redraws the elapsed seconds once a second)."""
        return any(s.status in LOAD_PHASES for s in self.sides)

    def note_log(self, i: int, text: str, now: float) -> bool:
        """Fold new lines of side ``i``'s server log in: they move ``starting`` to ``loading`` and ``ready`` to
        ``warming``.

        Args:
            i: the side.
            text: log text that arrived since the last call (whole lines).
            now: session time, for when a phase began if the log line carries no time of its own.

        Returns:
            Whether the status changed.
        """
        if not 0 <= i < len(self.sides):
            return False
        s = self.sides[i]
        markers = {SideStatus.STARTING: (_LOG_LOADING, SideStatus.LOADING),
                   SideStatus.READY: (_LOG_WARMING, SideStatus.WARMING)}.get(s.status)
        if markers is None:
            return False
        line = next((ln for ln in text.splitlines() if any(m in ln for m in markers[0])), None)
        if line is None:
            return False
        s.status = markers[1]
        if s.status == SideStatus.WARMING:  # the line's own time (since the server started) says when the warm-up began
            offset = _log_time(line)
            start = s.phase_start_t
            s.phase_t = start + offset if offset is not None and start is not None else now
        s.version += 1
        return True

    def divergence(self, i: int) -> tuple[str, int | None] | None:
        """Side ``i`` against its reference (side 0; side 1 for side 0) in the same run: (name, first differing
        piece or None while identical so far); None when there is nothing to compare yet.

        Incremental: each call compares only the pieces that arrived since the last one (it runs on every
        redraw of a long generation).
        """
        if len(self.sides) < 2 or i >= len(self.sides):
            return None
        ref = self.sides[1 if i == 0 else 0]
        me = self.sides[i]
        if ref.run != me.run or not ref.ids or not me.ids:
            return None
        run, checked, first = self._div.get(i, (-1, 0, None))
        if run != me.run:
            checked, first = 0, None
        if first is None:
            n = min(len(ref.ids), len(me.ids))
            first = next((k for k in range(checked, n) if ref.ids[k] != me.ids[k]), None)
            checked = n
        self._div[i] = (me.run, checked, first)
        return ref.name, first
