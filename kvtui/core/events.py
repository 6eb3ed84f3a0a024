"""The typed event stream that the runner and the replayer produce.

Every consumer (the Textual app, the headless console, the session recorder)
reads only these events, so a live run and a replay look the same to them.
Events are frozen dataclasses; ``t`` is seconds since the session started
(monotonic), which is what replay reproduces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kvtui.core.logs.provenance import RanWith
from kvtui.core.quality.kld import SideScore
from kvtui.core.record.model import Run, Scoring
from kvtui.core.vocab import Schedule, SessionStatus, SideStatus, StopReason  # noqa: F401 - the vocabulary, re-exported


@dataclass(frozen=True, slots=True)
class SessionStarted:
    """The plan is fixed: which sides run, how, and on what."""

    t: float
    profile_name: str
    mode: str  # "parallel" | "sequential"
    mode_reason: str
    schedule: Schedule  # as planned; each RequestSent says how its run is measured
    sides: tuple[SideInfo, ...]
    model_path: str
    model_name: str
    model_size_mib: float
    model_arch: str
    server_bin: str
    server_version: str
    created: str  # ISO 8601 wall-clock time
    replay: bool = False
    warnings: tuple[str, ...] = ()  # from the plan: legal, but likely not what was meant
    conversation: str = ""  # a conversation's mode: "free", "forced" or "mirror"; "" for prompts


@dataclass(frozen=True, slots=True)
class SideInfo:
    """One side of the comparison as planned."""

    name: str
    cache_type_k: str
    cache_type_v: str
    argv: tuple[str, ...]
    kv_estimate_mib: float | None = None
    placement: str = ""  # device, "GPU n" or the attached URL; "" where the profile does not say
    attached: bool = False  # cache types as declared: an attached server does not report them


@dataclass(frozen=True, slots=True)
class SideWaiting:
    """A side waits for its turn (sequential mode)."""

    t: float
    side: int
    reason: str


@dataclass(frozen=True, slots=True)
class ServerStarting:
    t: float
    side: int
    port: int
    argv: tuple[str, ...]
    log_path: str
    attached: str = ""  # the URL of a server that was already running (nothing is started; argv is empty)
    env: tuple[tuple[str, str], ...] = ()  # environment given to this server on top of kvtui's (CUDA_VISIBLE_DEVICES)


@dataclass(frozen=True, slots=True)
class ServerReady:
    """The server answers /health 200; what it really runs with."""

    t: float
    side: int
    pid: int
    load_s: float
    n_ctx: int | None
    build: str
    kv_cache_mib: float | None  # parsed from the server's own log
    flash_attn: str | None  # "enabled" | "disabled" | "auto" as the log says
    warnings: tuple[str, ...] = ()
    ran_with: RanWith | None = None  # build, KV buffers per device, rotation, graph splits, CPU lines (its -lv 4 log)
    attached: bool = False  # a server kvtui did not start: pid 0 when its process is not on this machine
    model_path: str | None = None  # what an attached server's /props says it serves


@dataclass(frozen=True, slots=True)
class ServerExited:
    """A server process ended; ``expected`` is False for a crash."""

    t: float
    side: int
    returncode: int | None
    expected: bool
    log_tail: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WarmupDone:
    t: float
    side: int
    ms: float


@dataclass(frozen=True, slots=True)
class RequestSent:
    """A measured request went out: which run, which prompt and repeat, and how it is measured."""

    t: float
    side: int
    run: int
    prompt_name: str = ""
    repeat: int = 0
    seed: int | None = None
    schedule: Schedule | None = None  # solo when no other side generates (a rerun, sequential mode)
    turn: int | None = None  # the conversation's turn (1-based); None outside conversations


@dataclass(frozen=True, slots=True)
class TokenReceived:
    """One chunk of generated text (a chunk may carry several tokens)."""

    t: float
    side: int
    run: int
    n: int  # tokens generated so far, as the server counts them
    text: str
    token_id: int | None = None


@dataclass(frozen=True, slots=True)
class MemorySampled:
    """A memory reading for one side's server process."""

    t: float
    side: int
    source: Literal["nvml", "rss"]
    used_mib: float | None  # this process: VRAM (nvml) or RSS; None = N/A
    device_total_mib: float | None = None
    device_used_mib: float | None = None
    device_name: str | None = None


@dataclass(frozen=True, slots=True)
class PatternDetected:
    """The quiet signal: the text has been repeating one skeleton (only numbers or one word change); never stops."""

    t: float
    side: int
    run: int
    skeleton: str
    repeats: int
    start: int
    lines: int = 1


@dataclass(frozen=True, slots=True)
class PromptProgress:
    """A measured request's prompt is being processed.

    From the server's ``prompt_progress`` (``return_progress``) where the build
    sends it; else (chat, older builds) only ``elapsed_s``, with the token
    figures None. The record does not keep these: they show the wait.
    """

    t: float
    side: int
    run: int
    elapsed_s: float  # since the request was sent, kvtui's clock
    total: int | None = None  # prompt tokens
    processed: int | None = None  # done so far, the cached ones included
    cache: int | None = None  # taken from the prompt cache
    tokens_per_second: float | None = None  # the server's: (processed - cache) / its time so far
    eta_s: float | None = None  # the rest at that rate

    @property
    def fraction(self) -> float | None:
        return self.processed / self.total if self.total and self.processed is not None else None

    def line(self) -> str:
        """``prompt 12,288/24,576 (50%) 1,843 t/s ~7 s left`` or ``prompt processing… 12 s``."""
        if self.total is None or self.processed is None:
            return f"prompt processing… {self.elapsed_s:.0f} s"
        out = f"prompt {self.processed:,}/{self.total:,} ({self.processed / self.total:.0%})" if self.total else ""
        if self.tokens_per_second:
            out += f" {self.tokens_per_second:,.0f} t/s"
        if self.eta_s is not None:
            out += f" ~{self.eta_s:.0f} s left"
        return out


@dataclass(frozen=True, slots=True)
class LoopDetected:
    t: float
    side: int
    run: int
    period: int
    start: int
    repeats: int
    text: str = ""


@dataclass(frozen=True, slots=True)
class TurnStarted:
    """A conversation's turn begins (session level): what it adds, before any side's ``RequestSent``.

    ``messages`` are the turn's new messages: in a free conversation what it adds to every side's own
    history; otherwise the request's messages after the ``keep`` leading ones it shares with the previous
    turn's request. ``params`` are the request's other fields (tools, max_tokens, ...).
    """

    t: float
    turn: int  # 1-based
    user: str  # the turn's last user message, as text (what the app shows)
    messages_new: int
    keep: int | None = None  # None: a free conversation (each side's history is its own)
    messages: tuple[dict, ...] = ()
    params: dict | None = None


@dataclass(frozen=True, slots=True)
class ReplyLoopDetected:
    """A loop of replies: the side gave the same or a near-same reply in ``turns`` consecutive turns (3 or more)."""

    t: float
    side: int
    first_turn: int
    turns: int


@dataclass(frozen=True, slots=True)
class RunFinished:
    """A measured request ended: ``result`` is the run exactly as the record keeps it."""

    t: float
    side: int
    result: Run

    @property
    def run(self) -> int:
        return self.result.run


@dataclass(frozen=True, slots=True)
class SideFinished:
    t: float
    side: int
    status: SideStatus


@dataclass(frozen=True, slots=True)
class ErrorRaised:
    """Something went wrong; ``message`` is one line, ``hint`` the fix."""

    t: float
    side: int | None
    message: str
    hint: str = ""


@dataclass(frozen=True, slots=True)
class ScoringStarted:
    """Generation has ended: the base side's generations are scored teacher-forced on every side's server.

    ``scoring`` is the record's ``[scoring]`` as it starts (status ``running``).
    """

    t: float
    scoring: Scoring


@dataclass(frozen=True, slots=True)
class ScoringProgress:
    """Positions scored so far, summed over the servers being scored (the record does not keep these)."""

    t: float
    done: int
    total: int

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


@dataclass(frozen=True, slots=True)
class ScoreReady:
    """Scoring ended (done, aborted, failed or skipped): every side's figures against the base, as recorded."""

    t: float
    scoring: Scoring
    scores: tuple[SideScore, ...] = ()


@dataclass(frozen=True, slots=True)
class SessionFinished:
    t: float
    status: SessionStatus


Event = (
    SessionStarted
    | SideWaiting
    | ServerStarting
    | ServerReady
    | ServerExited
    | WarmupDone
    | RequestSent
    | TokenReceived
    | MemorySampled
    | PromptProgress
    | LoopDetected
    | PatternDetected
    | TurnStarted
    | ReplyLoopDetected
    | RunFinished
    | SideFinished
    | ErrorRaised
    | ScoringStarted
    | ScoringProgress
    | ScoreReady
    | SessionFinished
)
