"""The runner's servers: starting them (or attaching), warming them up, stopping them, reporting failures.

A mixin of :class:`kvtui.core.run.runner.Runner`, which holds the state it uses (``plan``, ``servers``,
``status``, the HTTP client) and emits the events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx

from kvtui.core.errors import KvtuiError, ServerError
from kvtui.core.events import (
    ErrorRaised,
    Event,
    ServerExited,
    ServerReady,
    ServerStarting,
    SideFinished,
    WarmupDone,
)
from kvtui.core.logs.failure import tail
from kvtui.core.profiles import Prompt
from kvtui.core.server import client
from kvtui.core.server.attached import AttachedServer
from kvtui.core.server.base import Server
from kvtui.core.server.process import LlamaServer

if TYPE_CHECKING:
    from kvtui.core.run.plan import Plan
    from kvtui.core.run.turns import TurnSource

WARMUP_TOKENS = 8
WARMUP_CHARS = 8000  # the warm-up sends at most this much of the prompt (a couple of thousand tokens)
WARMUP_CHAT = "Say hello."  # a conversation's warm-up


class ServerControl:
    """Server lifecycle for the runner (see the module docstring)."""

    plan: Plan
    servers: dict[int, Server]
    status: dict[int, str]
    log_dir: Path
    clock: Callable[[], float]
    _aborted: set[int]
    _http: httpx.AsyncClient | None
    _starts: dict[int, int]
    source: TurnSource | None
    now: Callable[[], float]  # the runner's: seconds since the session started
    emit: Callable[[Event], None]  # the runner's: one event to every consumer

    def _set(self, i: int, status: str) -> None:
        self.status[i] = status


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
        if self.source is not None:  # a conversation: not its first turn, which would then come from the cache
            prompt = Prompt(WARMUP_CHAT, endpoint="chat", name="warm-up")
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

    async def _settle(self, i: int, timeout_s: float = 2.0) -> None:
        """After a failed request, give a dying server a moment to exit, so the cause comes from its log."""
        srv = self.servers.get(i)
        if srv is not None and srv.alive:
            await srv.wait_exit(timeout_s)

    def _dead(self, i: int) -> bool:
        srv = self.servers.get(i)
        return srv is not None and srv.exited

    def _explain(self, i: int, exc: Exception) -> KvtuiError:
        """A crash mid-request shows as an HTTP error; the log says why."""
        if self._dead(i):
            return self.servers[i].failure()
        if isinstance(exc, KvtuiError):
            return exc
        log = self.servers[i].log_path
        where = f"read {log}" if log is not None else f"check the server at {self.servers[i].base_url}"
        return KvtuiError(f"request failed: {exc.__class__.__name__}: {exc}".rstrip(": "),
                          f"rerun the side (r in the app); if it fails again, {where}", exit_code=1)

    def _fail(self, i: int, exc: KvtuiError, status: str) -> None:
        self._set(i, status)
        self.emit(ErrorRaised(self.now(), i, exc.message, exc.hint))
        srv = self.servers.get(i)
        if srv is not None and srv.exited and srv.claim_exit_report():
            log_tail = getattr(exc, "log_tail", ()) or tail(srv.log_text())
            self.emit(ServerExited(self.now(), i, srv.exit_code, expected=False, log_tail=log_tail))
        self.emit(SideFinished(self.now(), i, status))  # type: ignore[arg-type]



def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:40]
