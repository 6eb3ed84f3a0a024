"""ScriptedSession: an event producer that the test drives by hand, for app behaviour no server can be asked for.

It stands in for ``LiveSession`` (the runner and its servers) where a test needs a moment that a real run
cannot be stopped at on demand: three sides streaming at once until told otherwise, servers that take long to
stop, a server log that grows while its pane is loading. Everything after the session (state, panes, keys,
timers) is the real app. Live runs on the real server are in ``test_app_live.py`` and ``tests/e2e``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from kvtui.core.events import SessionStarted, SideInfo


@dataclass
class _Probe:
    source: str


@dataclass
class _Prepared:
    probe: _Probe


class ScriptedSession:
    """Emits what the test tells it to; ``run()`` lasts until ``finish()`` (or an abort of every side)."""

    reruns = True

    def __init__(self, names: tuple[str, ...] = ("q8_0", "q4_0"), *, memory_source: str = "rss",
                 aclose_s: float = 0.0) -> None:
        self.names = names
        self.sinks: list[Any] = []
        self.t = 0.0
        self.aborted: list[int | None] = []
        self.closed = 0
        self.killed = 0
        self.aclose_s = aclose_s  # how long "stopping the servers" takes
        self.prepared = _Prepared(_Probe(memory_source))
        self._done = asyncio.Event()

    def started_event(self, schedule: str = "simultaneous") -> SessionStarted:
        sides = tuple(SideInfo(n, n, n, (), 10.0) for n in self.names)
        return SessionStarted(0.0, "scripted", "parallel", "test", schedule, sides, "/m", "model", 1.0, "arch",
                              "/bin/true", "b1", "2026-12-01T00:00:00")

    def emit(self, *events: Any) -> None:
        for e in events:
            self.t = max(self.t, getattr(e, "t", 0.0))
            for sink in self.sinks:
                sink(e)

    def finish(self) -> None:
        self._done.set()

    # -- the Session protocol ----------------------------------------------------------------------

    async def run(self) -> str:
        await self._done.wait()
        return "done"

    async def rerun(self, side: int | None = None) -> str:
        return "done"

    def abort(self, side: int | None = None) -> None:
        self.aborted.append(side)

    async def aclose(self) -> None:
        self.closed += 1
        self._done.set()
        await asyncio.sleep(self.aclose_s)

    def kill_now(self) -> None:
        self.killed += 1

    recorder = None  # nothing is recorded
    plan = None

    @property
    def memory_source(self) -> str:
        return self.prepared.probe.source

    def finalize(self, status: str) -> None:
        return None

    def save(self) -> str | None:
        return None

    def now(self) -> float:
        return self.t

    def side_count(self) -> int:
        return len(self.names)
