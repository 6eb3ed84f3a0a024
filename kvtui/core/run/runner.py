"""The runner: turns a plan into running servers, measured requests and one event stream.

Every consumer gets the same events through ``sink``. The runner owns the
servers (``kvtui.core.run.servers``): it starts them, warms them up, measures,
samples their memory, scores the base side's generations on them once
generation ends (:mod:`kvtui.core.run.gen_scoring`, unless the profile says
``score = false``), and stops them whatever happens (``aclose``). A side
that fails does not stop the others; data already gathered is always emitted.
It measures a profile's prompts, or, given a ``TurnSource`` (a profile's
conversation, ``kvtui mirror``'s agent), a conversation turn by turn
(``kvtui.core.run.converse``; conversations are not scored).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx

from kvtui.core.errors import KvtuiError, RequestRefused
from kvtui.core.events import (
    ErrorRaised,
    Event,
    RequestSent,
    RunFinished,
    SessionFinished,
    SessionStarted,
    SideFinished,
    SideInfo,
    SideWaiting,
)
from kvtui.core.profiles import Prompt
from kvtui.core.quality.checks import check_text
from kvtui.core.record.accumulator import RunAccumulator
from kvtui.core.record.model import Run
from kvtui.core.run.converse import converse
from kvtui.core.run.gen_scoring import GenerationScoring
from kvtui.core.run.plan import Plan
from kvtui.core.run.request import RequestContext, post_request, stream_request
from kvtui.core.run.sampling import sample_memory
from kvtui.core.run.servers import ServerControl
from kvtui.core.run.turns import ProfileTurns, TurnSource
from kvtui.core.server import client
from kvtui.core.server.base import Server
from kvtui.core.vocab import Schedule

Sink = Callable[[Event], None]


class Runner(ServerControl):
    """Runs a plan and emits its events.

    Args:
        plan: what to run.
        sink: called with every event, in order, on the event loop's thread.
        log_dir: where the servers' logs go.
        probe: a memory probe with ``sample(pids)`` (``kvtui.core.run.memory``), or None.
        clock: monotonic seconds; injectable for tests.
        source: a conversation's turns; by default the profile's conversation, if it has one (else its
            prompts are measured).
    """

    def __init__(self, plan: Plan, sink: Sink, *, log_dir: Path, probe: object | None = None,
                 clock: Callable[[], float] = time.monotonic, source: TurnSource | None = None) -> None:
        self.plan = plan
        self.sink = sink
        self.log_dir = log_dir
        self.probe = probe
        self.clock = clock
        self.t0 = clock()
        self.servers: dict[int, Server] = {}
        self.status: dict[int, str] = {i: "waiting" for i in range(len(plan.sides))}
        self._requests: dict[int, asyncio.Task[None]] = {}
        self._aborted: set[int] = set()
        self._http: httpx.AsyncClient | None = None
        self._next_run: dict[int, int] = {}
        self._starts: dict[int, int] = {}
        conversation = plan.profile.conversation
        self.source = source if source is not None or conversation is None else ProfileTurns(conversation)
        self._runs: dict[int, list[Run]] = {}  # every side's runs as emitted (the base's are scored)
        self.scoring = GenerationScoring(plan, self.emit, self.now)

    # -- public ---------------------------------------------------------------------------------

    def now(self) -> float:
        """Seconds since the session started."""
        return self.clock() - self.t0

    def emit(self, event: Event) -> None:
        self.sink(event)

    def abort(self, side: int | None = None) -> None:
        """Stop a side's generation now (closing its stream); None aborts every side. While the base's generations
        are scored, None or a side that has finished stops the scoring."""
        if self.scoring.running and (side is None or self.status.get(side) in ("done", "crashed", "error", "aborted")):
            self.scoring.abort()  # a finished side's abort key stops the scoring; its figures so far are kept
        targets = range(len(self.plan.sides)) if side is None else [side]
        for i in targets:
            if self.status.get(i) in ("done", "crashed", "error", "aborted"):
                continue
            self._aborted.add(i)
            task = self._requests.get(i)
            if task is not None and not task.done():
                task.cancel()

    async def run(self, only: list[int] | None = None) -> str:
        """Run the plan (or rerun just the sides in ``only``); returns "done", "failed" or "aborted"."""
        p = self.plan
        sides = list(range(len(p.sides))) if only is None else list(only)
        if only is None:
            self.emit(SessionStarted(
                t=self.now(), profile_name=p.profile.name, mode=p.mode, mode_reason=p.mode_reason,
                schedule=p.schedule, model_path=p.model.path, model_name=p.model.name,
                model_size_mib=round(p.model.size_mib, 1), model_arch=p.model.arch,
                server_bin=str(p.binary.path), server_version=p.server_version,
                created=datetime.now(UTC).astimezone().isoformat(timespec="seconds"),
                sides=tuple(SideInfo(s.name, s.cache_type_k, s.cache_type_v, s.args, s.kv_estimate_mib,
                                     s.placement, s.attached)
                            for s in p.sides),
                warnings=p.warnings, conversation=getattr(self.source, "mode", ""),
            ))
        for i in sides:
            self._aborted.discard(i)
            self.status[i] = "waiting"
        # a rerun of some sides is not scored, nor a conversation (its turns are not one prompt each)
        score = only is None and self.scoring.enabled and self.source is None
        sampler = asyncio.create_task(self._sample_memory())
        try:
            async with client.http_client() as http:
                self._http = http
                if p.mode == "sequential" or len(sides) == 1:
                    sides = self.scoring.order(sides) if score else sides  # the base first: see GenerationScoring
                    for i in sides[1:]:
                        self.emit(SideWaiting(self.now(), i, "sequential: " + p.mode_reason))
                    for i in sides:
                        if await self._bring_up([i]):
                            await (self._measure_side(i) if self.source is None else converse(self, [i]))
                        if score:
                            await self._score([i])  # while its server is up
                        await self._stop(i)
                else:
                    up = await self._bring_up(sides)
                    await (self._measure_all(up) if self.source is None else converse(self, up))
                    if score:
                        await self._score(up)
                self.scoring.end()
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            await self.aclose()
        final = self._final_status()
        if only is None:
            self.emit(SessionFinished(self.now(), final))
        return final

    async def _score(self, sides: list[int]) -> None:
        """Score the base's generations on these sides' running servers (planned with the first call)."""
        assert self._http is not None
        if self.scoring.scoring is None and not await self.scoring.begin(
                self._http, self.servers.get(self.scoring.base_index), self.status,  # type: ignore[arg-type]
                self._runs.get(self.scoring.base_index, [])):
            return
        await self.scoring.score(self._http, self.servers, self.status, sides)

    async def aclose(self) -> None:
        """Stop every server this runner started (safe to call more than once)."""
        await asyncio.gather(*(self._stop(i) for i in list(self.servers)), return_exceptions=True)

    def kill_all_now(self) -> None:
        """Synchronous last resort for signal handlers and atexit."""
        for srv in self.servers.values():
            srv.kill_now()

    # -- measuring ------------------------------------------------------------------------------

    def run_index(self, i: int) -> int:
        """The next run number of side ``i``."""
        n = self._next_run.get(i, 0)
        self._next_run[i] = n + 1
        return n

    def _jobs(self) -> list[tuple[Prompt, int]]:
        """Every measured request of a side: each prompt, each repeat (a repeat gets its own seed)."""
        prof = self.plan.profile
        return [(prompt, r) for r in range(prof.run.repeats) for prompt in prof.prompts]

    async def _measure_all(self, up: list[int]) -> None:
        for k, (prompt, repeat) in enumerate(self._jobs()):
            live = [i for i in up if self.status[i] not in ("crashed", "error", "aborted")]
            if not live:
                break
            schedule = Schedule(self.plan.schedule) if len(live) > 1 else Schedule.SOLO  # alone: uncontended
            if self.plan.schedule == "alternate":
                order = live if k % 2 == 0 else list(reversed(live))  # alternate who goes first
                for i in order:
                    await self._measure(i, self.run_index(i), prompt, repeat, schedule)
            else:
                await asyncio.gather(*(self._measure(i, self.run_index(i), prompt, repeat, schedule) for i in live))
        for i in up:
            if self.status[i] not in ("crashed", "error", "aborted"):
                self.finish_side(i)

    async def _measure_side(self, i: int) -> None:
        for prompt, repeat in self._jobs():
            if self.status[i] in ("crashed", "error", "aborted"):
                return
            await self._measure(i, self.run_index(i), prompt, repeat, Schedule.SOLO)
        if self.status[i] not in ("crashed", "error", "aborted"):
            self.finish_side(i)

    def finish_side(self, i: int) -> None:
        """Side ``i`` has done all it had to: status done."""
        self._set(i, "done")
        self.emit(SideFinished(self.now(), i, "done"))

    async def _measure(self, i: int, run: int, prompt: Prompt, repeat: int, schedule: Schedule) -> None:
        seed = self.plan.profile.sampling.seed + repeat
        path, body = client.build_request(prompt, self.plan.profile.sampling, cache_prompt=False, seed=seed)
        sent = RequestSent(self.now(), i, run, prompt.name, repeat, seed, schedule)
        await self.request(i, sent, path, body, expected=prompt.expected, regex=prompt.expected_regex)

    async def request(self, i: int, sent: RequestSent, path: str, body: dict, *, expected: str = "",
                      regex: str = "", raw: Callable[[bytes], Awaitable[None]] | None = None,
                      adjust: Callable[[Run], Run] | None = None) -> Run | None:
        """Send one measured request on side ``i`` and emit its events; returns the run (None: not sent).

        Args:
            sent: the ``RequestSent`` to emit (it names the run, its prompt or turn, its schedule).
            path, body: the endpoint and JSON body; ``"stream": false`` sends it unstreamed.
            expected, regex: the task check's expected answer.
            raw: gets the response's bytes as they arrive (``kvtui mirror``).
            adjust: may change the finished run before ``RunFinished`` is emitted (a conversation's loop of
                replies sets its stop).
        """
        if i in self._aborted:
            self._aborted_side(i)
            return None
        srv = self.servers[i]
        prof = self.plan.profile
        acc = RunAccumulator(sent.run, sent.t, sent.prompt_name, sent.repeat, sent.seed, sent.schedule, sent.turn)
        result = client.StreamResult()
        self._set(i, "generating")
        self.emit(sent)
        task = asyncio.create_task(self._consume(i, sent.run, srv, path, body, acc, result, raw))
        self._requests[i] = task
        check = (expected, regex)
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:  # the session is cancelled (signal, quit): keep what came as an aborted run
            task.cancel()
            await asyncio.wait({task})
            if not task.cancelled():
                task.exception()  # retrieved: the server may have died first
            self._requests.pop(i, None)
            self._aborted.add(i)
            result.stop = "aborted"
            self._emit_run(i, acc, result, check, adjust)
            self._aborted_side(i)
            raise
        self._requests.pop(i, None)
        error: KvtuiError | None = None
        stalled = False
        if task.cancelled():
            result.stop = "loop" if acc.loop and prof.run.stop_on_loop and i not in self._aborted else "aborted"
        elif task.exception() is not None:
            exc = task.exception()
            stalled = isinstance(exc, client.StreamStalled)
            if not stalled:
                await self._settle(i)
            error = self._explain(i, exc) if isinstance(exc, KvtuiError | httpx.HTTPError) else KvtuiError(
                f"internal error: {exc!r}", "please report this", exit_code=1)
            result.stop = "error"
            result.error = error.message
        done = self._emit_run(i, acc, result, check, adjust)
        if error is not None and self._refused_turn(i, error):
            self.emit(ErrorRaised(self.now(), i, error.message, error.hint))  # the side takes the next turn
        elif error is not None:
            self._fail(i, error, "crashed" if self._dead(i) else "error")
            if stalled:
                await self._stop(i)  # a hung server is stopped now (SIGTERM + SIGCONT, then SIGKILL)
        elif result.stop == "aborted":
            self._aborted_side(i)
        return done

    def _refused_turn(self, i: int, error: KvtuiError) -> bool:
        """A turn the side's server refused (HTTP 4xx, e.g. a context too small for it) in a conversation whose
        turns do not build on the side's own replies (forced, an agent's): the next turn may well fit."""
        return (isinstance(error, RequestRefused) and 400 <= error.status < 500 and not self._dead(i)
                and self.source is not None and getattr(self.source, "mode", "") != "free")

    def _aborted_side(self, i: int) -> None:
        if self.status[i] != "aborted":
            self._set(i, "aborted")
            self.emit(SideFinished(self.now(), i, "aborted"))

    async def _consume(self, i: int, run: int, srv: Server, path: str, body: dict, acc: RunAccumulator,
                       result: client.StreamResult, raw: Callable[[bytes], Awaitable[None]] | None) -> None:
        assert self._http is not None
        ctx = RequestContext(i, run, self.emit, self.now, aborted=lambda: i in self._aborted,
                             on_loop=lambda: self._set(i, "looping"),
                             stall_timeout_s=self.plan.profile.run.stall_timeout_s,
                             stop_on_loop=self.plan.profile.run.stop_on_loop, raw=raw)
        send = stream_request if body.get("stream", True) else post_request
        await send(self._http, srv, path, body, acc, result, ctx)

    def _emit_run(self, i: int, acc: RunAccumulator, result: client.StreamResult, check: tuple[str, str],
                  adjust: Callable[[Run], Run] | None) -> Run:
        expected, regex = check
        t = self.now()
        run = acc.finish(t, result.stop, timings=result.timings, error=result.error,
                         check=check_text(acc.text, expected=expected or None, regex=regex or None))
        if adjust is not None:
            run = adjust(run)
        self._runs.setdefault(i, []).append(run)
        self.emit(RunFinished(t, i, run))
        return run

    # -- memory ---------------------------------------------------------------------------------

    async def _sample_memory(self) -> None:
        if self.probe is not None:
            await sample_memory(self.probe, lambda: {i: s.pid for i, s in self.servers.items()
                                                     if s.pid is not None and s.alive}, self.emit, self.now)

    def _final_status(self) -> str:
        values = list(self.status.values())
        if any(v in ("crashed", "error") for v in values):
            return "failed"
        if any(v == "aborted" for v in values):
            return "aborted"
        return "done"
