"""One run while it streams: the one accumulator the runner and the recorder share, and the Run it becomes."""

from __future__ import annotations

from typing import Protocol

from kvtui.core.quality.checks import TaskCheck
from kvtui.core.quality.figures import as_int, round3
from kvtui.core.quality.loops import Loop
from kvtui.core.quality.templates import TemplateRepeat
from kvtui.core.record.model import CUT_SHORT, Run
from kvtui.core.vocab import Schedule, StopReason


class ServerTimings(Protocol):
    """The server's own figures of a request, as ``kvtui.core.server.wire.Timings`` reads them."""

    prompt_n: int | None
    prompt_per_second: float | None
    predicted_n: int | None
    predicted_per_second: float | None
    cache_n: int | None


class RunAccumulator:
    """One run while it streams: what it has gathered, and the :class:`Run` it becomes.

    Args:
        run: the run number on its side.
        t_sent: when the request was sent (seconds since the session started).
        prompt, repeat, seed, schedule, turn: as in :class:`Run`.
    """

    def __init__(self, run: int, t_sent: float, prompt: str = "", repeat: int = 0, seed: int | None = None,
                 schedule: Schedule | None = None, turn: int | None = None) -> None:
        self.run, self.t_sent, self.prompt, self.repeat, self.seed, self.schedule = (
            run, t_sent, prompt, repeat, seed, schedule)
        self.turn = turn
        self.pieces: list[str] = []
        self.t_ms: list[float] = []
        self.ids: list[int] = []
        self.counts: list[int] = []
        self.tops: list[tuple[tuple[int, float], ...]] = []
        self.first: tuple[float, int] | None = None  # (time, server count) of the first and last pieces
        self.last: tuple[float, int] | None = None
        self.loop: Loop | None = None  # the runner sets it as its detector reports
        self.pattern: TemplateRepeat | None = None  # likewise, from the template detector

    def add(self, t: float, n: int, text: str, token_id: int | None = None,
            top: tuple[tuple[int, float], ...] | None = None) -> None:
        """One streamed piece: its time, the server's token count, its text, its last token id, its top-N."""
        if self.first is None:
            self.first = (t, n)
        self.last = (t, n)
        self.pieces.append(text)
        self.t_ms.append(round((t - self.t_sent) * 1000, 1))
        self.ids.append(token_id if token_id is not None else -1)
        self.counts.append(n)
        if top is not None:
            self.tops.append(top)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def finish(self, t_end: float | None, stop: StopReason | str, *, timings: ServerTimings | None = None,
               error: str | None = None, check: TaskCheck | None = None) -> Run:
        """The run as recorded.

        Args:
            t_end: when it ended (None: unknown, a run cut short by kvtui's end).
            stop: why.
            timings: the server's own figures (``kvtui.core.server.wire.Timings``), when it sent them.
            error: what went wrong.
            check: the task check of its text.
        """
        ttft = (self.first[0] - self.t_sent) * 1000 if self.first else None
        client = None
        if self.first and self.last and self.last[0] > self.first[0]:
            client = (self.last[1] - self.first[1]) / (self.last[0] - self.first[0])
        tops = self.tops if self.tops and len(self.tops) == len(self.pieces) else []
        prompt_n = as_int(timings.prompt_n if timings else None)
        cache_n = as_int(getattr(timings, "cache_n", None))
        return Run(
            run=self.run, stop=StopReason(stop), schedule=self.schedule, prompt=self.prompt, turn=self.turn,
            repeat=self.repeat, seed=self.seed, prompt_n=prompt_n, cache_n=cache_n,
            context_n=prompt_n + cache_n if prompt_n is not None and cache_n is not None else None,
            prompt_per_second=round3(timings.prompt_per_second if timings else None),
            predicted_n=as_int(timings.predicted_n if timings and timings.predicted_n is not None
                             else self.last[1] if self.last else 0),
            predicted_per_second=round3(timings.predicted_per_second if timings else None), ttft_ms=round3(ttft),
            client_tokens_per_second=round3(client), t_sent=round(self.t_sent, 3),
            t_end=None if t_end is None else round(t_end, 3), text=self.text, pieces=tuple(self.pieces),
            t_ms=tuple(self.t_ms), ids=tuple(self.ids), counts=tuple(self.counts), loop=self.loop,
            pattern=self.pattern, error=error,
            check=check, top_ids=tuple(tuple(i for i, _ in t) for t in tops),
            top_logprobs=tuple(tuple(round(lp, 4) for _, lp in t) for t in tops))

    def cut_short(self) -> Run:
        """The run as saved when kvtui ends (or autosaves) before it finished: what streamed, marked aborted."""
        return self.finish(None, StopReason.ABORTED, error=CUT_SHORT)
