"""Scoring inside a run: once generation ends, the base side's generations teacher-forced on every side.

The same measurement as ``kvtui score`` (:mod:`kvtui.core.run.scoring`), on the text the user's own task
produced: each side's server, still running, is given the base's prompt and generation one position at a
time, and its next-token distributions are compared with the base's. What is scored is planned in
:mod:`kvtui.core.run.score_plan`. Events: ``ScoringStarted``, ``ScoringProgress`` (about 4 a second),
``ScoreReady`` (done, aborted, failed or skipped, with the figures of every position scored until then).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import httpx

from kvtui.core.errors import KvtuiError
from kvtui.core.events import Event, ScoreReady, ScoringProgress, ScoringStarted
from kvtui.core.profiles import Prompt
from kvtui.core.quality import DEFAULT_TOP_K
from kvtui.core.record.model import Run, Scoring
from kvtui.core.run.plan import Plan
from kvtui.core.run.score_plan import generated_ids, not_scored, per_run_limit, scored_runs, segment
from kvtui.core.run.scoring import Collector, Segment, choose_base, score_side
from kvtui.core.server.base import Server
from kvtui.core.server.client import chat_messages
from kvtui.core.server.teacher import BATCH, Endpoint, Teacher

PROGRESS_S = 0.25  # at most this often a ScoringProgress


class GenerationScoring:
    """Scores the base side's generations on each side's own running server, for the runner.

    The runner calls :meth:`begin` once the base side has generated (its server still up), :meth:`score`
    with the sides whose servers are up (all at once in a parallel plan; one at a time, the base first, in
    a sequential plan), then :meth:`end`. :meth:`abort` stops it; the figures of the positions scored so
    far are kept.

    Args:
        plan: the run's plan; its profile's ``run.score`` and ``run.score_positions`` apply.
        emit: the runner's sink.
        now: seconds since the session started.
        top_k: ``n_probs`` per position.
    """

    def __init__(self, plan: Plan, emit: Callable[[Event], None], now: Callable[[], float],
                 top_k: int = DEFAULT_TOP_K) -> None:
        self.plan, self.emit, self.now, self.top_k = plan, emit, now, top_k
        self.base = choose_base([(s.name, s.cache_type_k, s.cache_type_v) for s in plan.sides])
        self.base_index = next(i for i, s in enumerate(plan.sides) if s.name == self.base)
        self.enabled = plan.profile.run.score
        self.scoring: Scoring | None = None  # as it started; None until begin()
        self.sides: list[str] = []  # the other sides still to be scored or scored
        self.skipped: list[str] = []  # "name: why" of the sides left out
        self.segments: list[Segment] = []
        self.collector: Collector | None = None
        self.done: dict[str, int] = {}
        self._probe: tuple[str, bool, list[int]] | None = None  # the first prompt's text, add_special, tokens
        self._task: asyncio.Future[None] | None = None
        self._last_progress = -1e9
        self._ended = False
        self.seconds = 0.0  # spent scoring (a sequential plan generates in between)
        self._since: float | None = None  # when the scoring in progress began

    @property
    def running(self) -> bool:
        """Started and not yet ended."""
        return self.scoring is not None and not self._ended

    def order(self, sides: list[int]) -> list[int]:
        """A sequential plan's order: the base first when scoring is on, so each other side is scored while its
        server is up."""
        if not self.enabled or self.base_index not in sides:
            return sides
        return [self.base_index, *(i for i in sides if i != self.base_index)]

    async def begin(self, http: httpx.AsyncClient, base_server: Server, status: Mapping[int, str],
                    runs: Sequence[Run]) -> bool:
        """Plan what is scored from the base's runs and say so (``ScoringStarted``, or ``ScoreReady`` skipped).

        Args:
            http: the runner's client, for ``/tokenize`` and ``/apply-template``.
            base_server: the base side's server, running.
            status: each side's status; a side not yet run (a sequential plan) is judged when its turn comes.
            runs: the base side's runs.

        Returns:
            Whether there is something to score.
        """
        sides = self.plan.sides
        env = self.plan.binary.launch_env()
        t0 = self.now()
        why = not_scored(self.base, status.get(self.base_index, ""), sides[self.base_index].args, env)
        chosen = scored_runs(runs, self.plan.profile.prompts)
        for i, side in enumerate(sides):
            if i != self.base_index:
                reason = not_scored(side.name, status[i] if status[i] in ("crashed", "error", "aborted") else "done",
                                    side.args, dict(env, **dict(side.env)))
                (self.skipped if reason else self.sides).append(reason or side.name)
        if why is None and not chosen:
            why = f"{self.base} (the base) generated nothing to score"
        if why is None and not self.sides:
            why = "no other side can be scored"
        if why is None:
            try:
                self.segments = await self._segments(http, base_server, chosen)
            except (KvtuiError, httpx.HTTPError) as exc:
                why = f"could not read the base's prompts back: {getattr(exc, 'message', None) or exc!r}"
        prompts = tuple(p.name for p, _ in chosen)
        positions = sum(s.positions for s in self.segments)
        self.scoring = Scoring(status="running", base=self.base, top_k=self.top_k,
                               positions_cap=self.plan.profile.run.score_positions, prompts=prompts,
                               positions=positions, sides=tuple(self.sides), not_scored=tuple(self.skipped),
                               t_start=round(t0, 3))
        if why is not None or positions == 0:
            self.end("skipped", why or "the base's generations have no position to score")
            return False
        self.collector = Collector(self.base, len(self.sides))
        self.emit(ScoringStarted(t0, self.scoring))
        return True

    async def _segments(self, http: httpx.AsyncClient, server: Server,
                        chosen: list[tuple[Prompt, Run]]) -> list[Segment]:
        """The base's prompts, tokenized as the server saw them, each with its generation."""
        teacher = Teacher(http, Endpoint(self.base, server.base_url, server.api_key), self.top_k)
        limit = per_run_limit(self.plan.profile.run.score_positions, len(chosen))
        out = []
        try:
            for prompt, run in chosen:
                text = prompt.text
                if prompt.endpoint == "chat":  # the templated text the model saw, not the message
                    text = await teacher.apply_template(chat_messages(prompt))
                special = True
                tokens = await teacher.tokenize(text)
                if run.prompt_n is not None and len(tokens) != run.prompt_n:  # the server's own count decides
                    bare = await teacher.tokenize(text, add_special=False)
                    if len(bare) == run.prompt_n:
                        special, tokens = False, bare
                if self._probe is None:
                    self._probe = (text, special, tokens)
                ids = generated_ids(run)
                if ids is None:
                    ids = await teacher.tokenize(run.text, add_special=False) if run.text else []
                out.append(segment(tokens, ids, limit, self.plan.profile.ctx_size))
        finally:
            await teacher.aclose()
        return out

    async def score(self, http: httpx.AsyncClient, servers: Mapping[int, Server], status: Mapping[int, str],
                    indices: Sequence[int]) -> None:
        """Score these sides now, together (their servers are up); a side that cannot be scored is left out.

        Raises:
            asyncio.CancelledError: the session was cancelled (the figures so far are emitted first).
        """
        if not self.running:
            return
        targets = []
        for i in indices:
            name = self.plan.sides[i].name
            if i != self.base_index and name not in self.sides:
                continue
            if status.get(i) != "done" or i not in servers:
                self._leave_out(name, not_scored(name, status.get(i, "?"), (), {}) or f"{name}: no server")
                continue
            targets.append((name, servers[i]))
        if not targets:
            return
        self._task = asyncio.ensure_future(self._score_all(http, targets))
        self._since = self.now()
        try:
            await asyncio.wait({self._task})
            self._clock_out()
        except asyncio.CancelledError:
            self._task.cancel()
            await asyncio.wait({self._task})
            self.end("aborted", "kvtui was stopped before scoring finished")
            raise
        if self._task.cancelled():
            self.end("aborted", "stopped before it finished")
        elif self._task.exception() is not None:
            exc = self._task.exception()
            self.end("failed", getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}")

    async def _score_all(self, http: httpx.AsyncClient, targets: list[tuple[str, Server]]) -> None:
        assert self.collector is not None and self._probe is not None
        total = sum(s.positions for s in self.segments)

        async def one(name: str, srv: Server) -> None:
            props = getattr(srv, "props", None)  # an attached server may have several slots: one position a request
            batch = BATCH if (getattr(props, "total_slots", None) or 1) == 1 else 1
            teacher = Teacher(http, Endpoint(name, srv.base_url, srv.api_key), self.top_k, batch=batch)
            try:
                if name != self.base:
                    text, special, tokens = self._probe  # type: ignore[misc]
                    if await teacher.tokenize(text, add_special=special) != tokens:
                        self._leave_out(name, f"{name}: tokenizes the prompt differently from {self.base}")
                        return
                await score_side(teacher, self.segments, self.collector, total, self._progress)  # type: ignore[arg-type]
            except (KvtuiError, httpx.HTTPError) as exc:
                if name == self.base:
                    raise
                self._leave_out(name, f"{name}: {getattr(exc, 'message', None) or type(exc).__name__}")
            finally:
                await teacher.aclose()

        tasks = [asyncio.ensure_future(one(name, srv)) for name, srv in targets]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _leave_out(self, name: str, reason: str) -> None:
        if name in self.sides:
            self.sides.remove(name)
            self.skipped.append(reason)

    def _progress(self, name: str, done: int, total: int) -> None:
        self.done[name] = done
        now = self.now()
        servers = 1 + len(self.sides)
        finished = sum(self.done.values()) >= total * servers
        if now - self._last_progress >= PROGRESS_S or finished:
            self._last_progress = now
            self.emit(ScoringProgress(now, sum(self.done.values()), total * servers))

    def _clock_out(self) -> None:
        if self._since is not None:
            self.seconds += self.now() - self._since
            self._since = None

    def abort(self) -> None:
        """Stop scoring now; the figures of the positions scored so far are emitted."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self.end("aborted", "stopped before it finished")

    def end(self, status: str = "done", error: str | None = None) -> None:
        """Emit ``ScoreReady`` with every side's figures so far (once; later calls do nothing)."""
        if self.scoring is None or self._ended:
            return
        self._ended = True
        self._clock_out()
        found = self.collector.scores(self.top_k) if self.collector is not None else {}
        scores = tuple(found[n].rounded() for n in self.sides if n in found)
        final = replace(self.scoring, status=status, sides=tuple(self.sides), not_scored=tuple(self.skipped),  # type: ignore[arg-type]
                        t_end=round(self.now(), 3), seconds=round(self.seconds, 1), error=error)
        self.emit(ScoreReady(self.now(), final, scores))
