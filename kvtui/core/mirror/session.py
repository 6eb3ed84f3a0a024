"""A mirror session: the live session (runner + recorder) with the agent's HTTP server as its turn source.

It is an ``EventSource`` like any live session, so the app and the headless console drive it unchanged.
The HTTP server listens before any llama-server starts (a taken port fails at once) and answers
``/health`` 503 until the sides are up; the first turn the engine asks for marks them up. Ending it closes
the source: no new turns, requests not yet taken get 503; headless, a turn still running first finishes on
every side (a second Ctrl-C aborts it); the app's quit aborts it (its runs recorded as such). Then the
servers stop and the record is saved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvtui.core.mirror.guard import Guard
from kvtui.core.mirror.server import MirrorServer
from kvtui.core.mirror.source import MirrorSource
from kvtui.core.run.live import LiveSession
from kvtui.core.run.prepare import Prepared
from kvtui.core.run.runner import Runner
from kvtui.core.run.turns import TurnRequest


@dataclass(frozen=True, slots=True)
class MirrorSettings:
    """Where and how the mirror listens."""

    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str = ""
    allow_remote: bool = False


class _ReadySource(MirrorSource):
    """The mirror's source, which tells when the engine first asks for a turn (every side is up by then)."""

    def __init__(self, on_ready: Callable[[], None]) -> None:
        super().__init__(TurnRequest)
        self.on_ready = on_ready

    async def __anext__(self) -> Any:
        self.on_ready()
        return await super().__anext__()


class MirrorSession(LiveSession):
    """The live session of ``kvtui mirror``.

    Args:
        prepared: from :func:`kvtui.core.run.prepare.prepare` (parallel mode: every side up at once).
        settings: where the HTTP server listens, and its key.
        on_listening: called with the server's URL once it listens.
        on_ready: called once the sides are up and turns are taken.
    """

    reruns = False  # an agent's turns cannot be asked again

    def __init__(self, prepared: Prepared, settings: MirrorSettings,
                 on_listening: Callable[[str], None] | None = None,
                 on_ready: Callable[[], None] | None = None) -> None:
        super().__init__(prepared)
        self.settings = settings
        self.on_listening = on_listening
        self.on_ready_cb = on_ready
        self.ready = False
        self.source: _ReadySource | None = None
        self.server: MirrorServer | None = None

    def _ready(self) -> None:
        if not self.ready:
            self.ready = True
            if self.on_ready_cb is not None:
                self.on_ready_cb()

    async def listen(self) -> str:
        """Start the HTTP server (idempotent); returns its URL."""
        if self.server is None:
            s = self.settings
            self.source = _ReadySource(self._ready)
            self.server = MirrorServer(self.source.submit, guard=Guard(s.api_key, s.allow_remote),
                                       model_id=Path(self.plan.model.path).name, host=s.host, port=s.port,
                                       ready=lambda: self.ready)
            await self.server.start()
            if self.on_listening is not None:
                self.on_listening(self.server.url)
        return self.server.url

    async def run(self) -> str:
        """Listen, bring the sides up, and run the agent's turns until the mirror is ended."""
        await self.listen()
        assert self.source is not None
        p = self.prepared
        self.runner = Runner(p.plan, self.emit, log_dir=p.log_dir, probe=p.probe, source=self.source)
        try:
            self.status = await self.runner.run()
        finally:
            self.source.close()
            await self.source.refuse_pending()
        return self.status

    async def rerun(self, side: int | None = None) -> str:
        """A live agent's turns cannot be asked again: the session goes on as it is."""
        return self.status or "done"

    def stop(self, abort_running: bool = False) -> None:
        """End the mirror: no new turns; the turn running now finishes on every side, or is aborted."""
        if self.source is not None:
            self.source.close()
        if abort_running and self.runner is not None:
            running = getattr(self.runner, "_requests", {})  # side -> its request in flight
            for i in [i for i, task in running.items() if not task.done()]:
                self.runner.abort(i)

    def abort(self, side: int | None = None) -> None:
        """One side: abort its generation (it leaves the conversation); all: end the mirror at once."""
        if side is None:
            self.stop(abort_running=True)
        else:
            super().abort(side)

    async def aclose(self) -> None:
        """Stop listening and stop every server (idempotent)."""
        self.stop(abort_running=True)
        if self.source is not None:
            await self.source.refuse_pending()
        if self.server is not None:
            await self.server.close()
        await super().aclose()
