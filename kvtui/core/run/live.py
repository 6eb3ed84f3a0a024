"""A live session: the runner plus its recorder, with abort and rerun, for any consumer.

The app and the headless console both drive a ``LiveSession``; the recorder
sees every event before any consumer does, so nothing shown is unrecorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from kvtui.core.events import Event
from kvtui.core.record.recorder import SessionRecorder, default_record_path
from kvtui.core.run.plan import Plan
from kvtui.core.run.prepare import Prepared
from kvtui.core.run.runner import Runner
from kvtui.core.run.turns import TurnSource


class LiveSession:
    """Runs a prepared plan, records it, and fans its events out to ``sinks`` (an ``EventSource``).

    Args:
        prepared: from :func:`kvtui.core.run.prepare.prepare`.
        source: a conversation's turns (``kvtui mirror``'s agent); by default the profile's conversation, if it
            has one.
    """

    reruns = True

    def __init__(self, prepared: Prepared, source: TurnSource | None = None) -> None:
        self.prepared = prepared
        self.source = source
        self.sinks: list[Callable[[Event], None]] = []
        self.runner: Runner | None = None
        self.status: str | None = None

    @property
    def recorder(self) -> SessionRecorder:
        return self.prepared.recorder

    @property
    def plan(self) -> Plan:
        return self.prepared.plan

    @property
    def memory_source(self) -> str | None:
        return getattr(self.prepared.probe, "source", None)

    def finalize(self, status: str = "aborted") -> None:
        """Mark the record cut short (a signal, a quit mid-run) and save it; runs still streaming are kept, and so
        are the figures of a scoring cut short."""
        if self.runner is not None:
            self.runner.scoring.end("aborted", "kvtui ended before scoring finished")
        self.recorder.finalize_partial(status)

    def emit(self, event: Event) -> None:
        self.recorder.handle(event)
        for sink in self.sinks:
            sink(event)

    async def run(self) -> str:
        """Run every side; returns "done", "failed" or "aborted"."""
        p = self.prepared
        self.runner = Runner(p.plan, self.emit, log_dir=p.log_dir, probe=p.probe, source=self.source)
        self.status = await self.runner.run()
        return self.status

    async def rerun(self, side: int | None = None) -> str:
        """Rerun one side (appending runs to this record) or all sides (a new record)."""
        if side is not None and self.runner is not None:
            status = await self.runner.run(only=[side])
            self.recorder.save()
            return status
        p = self.prepared
        if p.record_path is not None:
            path = default_record_path(p.plan.profile.name, p.record_path.parent)
            if path == p.record_path:
                path = path.with_name(path.stem + f"-{int(time.time() * 1000) % 1000:03d}.toml")
            recorder = SessionRecorder(path, self.recorder.record.profile, self.recorder.record.host)
            self.prepared = replace(p, recorder=recorder, record_path=path, log_dir=path.with_suffix(".logs"))
        return await self.run()

    def abort(self, side: int | None = None) -> None:
        """Abort one side's generation, or all."""
        if self.runner is not None:
            self.runner.abort(side)

    async def aclose(self) -> None:
        """Stop every server (idempotent)."""
        if self.runner is not None:
            await self.runner.aclose()

    def side_count(self) -> int:
        return len(self.prepared.plan.sides)

    def now(self) -> float:
        """Seconds since the session started (for live rates)."""
        return self.runner.now() if self.runner is not None else 0.0

    def kill_now(self) -> None:
        if self.runner is not None:
            self.runner.kill_all_now()

    def save(self) -> str | None:
        """Save the record now; returns its path."""
        self.recorder.save()
        return str(self.prepared.record_path) if self.prepared.record_path else None
