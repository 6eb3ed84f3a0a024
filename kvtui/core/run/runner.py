"""The runner: turns a plan into running servers, measured requests and one event stream.

Every consumer gets the same events through ``sink``. The runner owns the
servers: it starts them, warms them up, measures, samples their memory, scores
the base side's generations on them once generation ends
(:mod:`kvtui.core.run.gen_scoring`, unless the profile says ``score = false``),
and stops them whatever happens (``aclose``). A side that fails does not stop
the others; data already gathered is always emitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from kvtui.core.errors import KvtuiError, ServerError
from kvtui.core.events import (
    Event,
    RequestSent,
    RunFinished,
    ServerExited,
    ServerReady,
    ServerStarting,
    SessionFinished,
    SessionStarted,
    SideFinished,
    SideInfo,
    SideWaiting,
    WarmupDone,
)
from kvtui.core.profiles import Prompt
from kvtui.core.quality.checks import check_text
from kvtui.core.record.accumulator import RunAccumulator
from kvtui.core.record.model import Run
from kvtui.core.run.failures import FailureReports
from kvtui.core.run.gen_scoring import GenerationScoring
from kvtui.core.run.plan import Plan
from kvtui.core.run.request import RequestContext, stream_request
from kvtui.core.run.sampling import sample_memory
from kvtui.core.server import client
from kvtui.core.server.attached import AttachedServer
from kvtui.core.server.base import Server
from kvtui.core.server.process import LlamaServer
from kvtui.core.vocab import Schedule

Sink = Callable[[Event], None]
WARMUP_TOKENS = 8
WARMUP_CHARS = 8000  # the warm-up sends at most this much of the prompt (a couple of thousand tokens)


class Runner(FailureReports):
    """Runs a plan and emits its events.

    Args:
        plan: what to run.
        sink: called with every event, in order, on the event loop's thread.
        log_dir: where the servers' logs go.
        probe: a memory probe with ``sample(pids)`` (``kvtui.core.run.memory``), or None.
        clock: monotonic seconds; injectable for tests.
    """

    def __init__(self, plan: Plan, sink: Sink, *, log_dir: Path, probe: object | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
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
                warnings=p.warnings,
            ))
        for i in sides:
            self._aborted.discard(i)
            self.status[i] = "waiting"
        score = only is None and self.scoring.enabled  # a rerun of some sides is not scored
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
                            await self._measure_side(i)
                        if score:
                            await self._score([i])  # while its server is up
                        await self._stop(i)
                else:
                    up = await self._bring_up(sides)
                    await self._measure_all(up)
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

    # -- servers --------------------------------------------------------------------------------

    async def _bring_up(self, sides: list[int]) -> list[int]:
        """Start these sides' servers and warm them up; returns the ones that came up."""
        results = await asyncio.gather(*(self._start(i) for i in sides))
        up = [i for i, ok in zip(sides, results, strict=True) if ok]
        if self.plan.profile.run.warmup:
            # one at a time, so that warm-up of one does not slow the other's
            for i in list(up):
                if i in self._aborted or not await self._warmup(i):
                    up.remove(i)
        return up

    async def _start(self, i: int) -> bool:
        side = self.plan.sides[i]
        starts = self._starts[i] = self._starts.get(i, 0) + 1  # a rerun's server keeps the earlier logs
        suffix = "" if starts == 1 else f".{starts}"
        srv: Server
        if side.attached:
            srv = AttachedServer(side.url, side.api_key)
            self.servers[i] = srv
            self._set(i, "starting")
            self.emit(ServerStarting(self.now(), i, urlsplit(side.url).port or 0, (), "", attached=side.url))
        else:
            srv = LlamaServer(self.plan.binary, list(side.args),
                              self.log_dir / f"side{i}-{_slug(side.name)}{suffix}.log", env=side.env)
            self.servers[i] = srv
            self._set(i, "starting")
            self.emit(ServerStarting(self.now(), i, srv.port, tuple(srv.argv), str(srv.log_path),
                                     env=side.env))
        try:
            await srv.start()
            self._set(i, "loading")
            assert self._http is not None
            ready = await srv.wait_ready(self._http)
        except ServerError as exc:
            self._fail(i, exc, "crashed" if srv.started else "error")
            return False
        model = None
        if isinstance(srv, AttachedServer) and srv.props is not None:
            model = srv.props.model_path
        self.emit(ServerReady(self.now(), i, ready.pid, round(ready.load_s, 3), ready.n_ctx, ready.build,
                              ready.facts.kv_cache_mib, ready.facts.flash_attn, ready.facts.warnings,
                              ready.ran_with, attached=isinstance(srv, AttachedServer), model_path=model))
        return True

    async def _warmup(self, i: int) -> bool:
        self._set(i, "warming")
        srv = self.servers[i]
        prompt = self.plan.profile.prompt
        if len(prompt.text) > WARMUP_CHARS:  # a long-context prompt: warming up on all of it would double the wait
            prompt = replace(prompt, text=prompt.text[:WARMUP_CHARS])
        path, body = client.build_request(prompt, self.plan.profile.sampling,
                                          n_predict=WARMUP_TOKENS, cache_prompt=False)
        t = self.clock()
        try:
            assert self._http is not None
            async for _ in client.stream(self._http, srv.base_url, path, body, api_key=srv.api_key,
                                         stall_timeout_s=self.plan.profile.run.stall_timeout_s):
                pass
        except (KvtuiError, httpx.HTTPError) as exc:
            stalled = isinstance(exc, client.StreamStalled)
            if not stalled:
                await self._settle(i)
            self._fail(i, self._explain(i, exc), "crashed" if self._dead(i) else "error")
            if stalled:
                await self._stop(i)  # a hung server is stopped now, not at the end of the session
            return False
        self.emit(WarmupDone(self.now(), i, round((self.clock() - t) * 1000, 1)))
        return True

    async def _stop(self, i: int) -> None:
        srv = self.servers.get(i)
        if srv is None or not srv.started:
            return
        was_running = srv.alive
        rc = await srv.stop()
        if was_running and not isinstance(srv, AttachedServer):  # an attached server is left running
            self.emit(ServerExited(self.now(), i, rc, expected=True))

    # -- measuring ------------------------------------------------------------------------------

    def _run_index(self, i: int) -> int:
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
                    await self._measure(i, self._run_index(i), prompt, repeat, schedule)
            else:
                await asyncio.gather(*(self._measure(i, self._run_index(i), prompt, repeat, schedule) for i in live))
        for i in up:
            if self.status[i] not in ("crashed", "error", "aborted"):
                self._finish_side(i)

    async def _measure_side(self, i: int) -> None:
        for prompt, repeat in self._jobs():
            if self.status[i] in ("crashed", "error", "aborted"):
                return
            await self._measure(i, self._run_index(i), prompt, repeat, Schedule.SOLO)
        if self.status[i] not in ("crashed", "error", "aborted"):
            self._finish_side(i)

    def _finish_side(self, i: int) -> None:
        self._set(i, "done")
        self.emit(SideFinished(self.now(), i, "done"))

    async def _measure(self, i: int, run: int, prompt: Prompt, repeat: int, schedule: Schedule) -> None:
        if i in self._aborted:
            self._aborted_side(i)
            return
        srv = self.servers[i]
        prof = self.plan.profile
        seed = prof.sampling.seed + repeat
        path, body = client.build_request(prompt, prof.sampling, cache_prompt=False, seed=seed)
        sent = RequestSent(self.now(), i, run, prompt.name, repeat, seed, schedule)
        acc = RunAccumulator(run, sent.t, prompt.name, repeat, seed, schedule)
        result = client.StreamResult()
        self._set(i, "generating")
        self.emit(sent)
        task = asyncio.create_task(self._consume(i, run, srv, path, body, acc, result))
        self._requests[i] = task
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
            self._emit_run(i, acc, result, prompt)
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
        self._emit_run(i, acc, result, prompt)
        if error is not None:
            self._fail(i, error, "crashed" if self._dead(i) else "error")
            if stalled:
                await self._stop(i)  # a hung server is stopped now (SIGTERM + SIGCONT, then SIGKILL)
        elif result.stop == "aborted":
            self._aborted_side(i)

    def _aborted_side(self, i: int) -> None:
        if self.status[i] != "aborted":
            self._set(i, "aborted")
            self.emit(SideFinished(self.now(), i, "aborted"))

    async def _consume(self, i: int, run: int, srv: Server, path: str, body: dict, acc: RunAccumulator,
                       result: client.StreamResult) -> None:
        assert self._http is not None
        ctx = RequestContext(i, run, self.emit, self.now, aborted=lambda: i in self._aborted,
                             on_loop=lambda: self._set(i, "looping"),
                             stall_timeout_s=self.plan.profile.run.stall_timeout_s,
                             stop_on_loop=self.plan.profile.run.stop_on_loop)
        await stream_request(self._http, srv, path, body, acc, result, ctx)

    def _emit_run(self, i: int, acc: RunAccumulator, result: client.StreamResult, prompt: Prompt) -> None:
        check = check_text(acc.text, expected=prompt.expected or None, regex=prompt.expected_regex or None)
        t = self.now()
        run = acc.finish(t, result.stop, timings=result.timings, error=result.error, check=check)
        self._runs.setdefault(i, []).append(run)
        self.emit(RunFinished(t, i, run))

    # -- memory ---------------------------------------------------------------------------------

    async def _sample_memory(self) -> None:
        if self.probe is not None:
            await sample_memory(self.probe, lambda: {i: s.pid for i, s in self.servers.items()
                                                     if s.pid is not None and s.alive}, self.emit, self.now)

    def _set(self, i: int, status: str) -> None:
        self.status[i] = status

    def _final_status(self) -> str:
        values = list(self.status.values())
        if any(v in ("crashed", "error") for v in values):
            return "failed"
        if any(v == "aborted" for v in values):
            return "aborted"
        return "done"



def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:40]
