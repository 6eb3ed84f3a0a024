"""Memory sampling while servers run: one probe poll at a time, in a worker thread, as events."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from kvtui.core.events import MemorySampled
from kvtui.core.quality.figures import round3
from kvtui.core.run.memory import MemoryProbe

MEMORY_INTERVAL_S = 0.5


async def sample_memory(probe: MemoryProbe, live_pids: Callable[[], dict[int, int]],
                        emit: Callable[[MemorySampled], None], now: Callable[[], float],
                        interval_s: float = MEMORY_INTERVAL_S) -> None:
    """Sample each live server's memory every ``interval_s`` in a worker thread, never two polls at once.

    Args:
        probe: NVML or RSS.
        live_pids: side -> pid of each server running now.
        emit: where ``MemorySampled`` events go.
        now: the session's clock.
    """
    source = getattr(probe, "source", "rss")
    while True:
        await asyncio.sleep(interval_s)
        pids = live_pids()
        if not pids:
            continue
        try:
            sample = await asyncio.to_thread(probe.sample, list(pids.values()))
        except Exception:  # a probe that fails gives no reading, never a crash
            continue
        for i, pid in pids.items():
            own = sample.device_of(pid) if hasattr(sample, "device_of") else None
            if own is not None:  # each side against its own GPU (they may be on different ones)
                name, total, used = own
            else:
                name, total, used = sample.device_name, sample.device_total_mib, sample.device_used_mib
            emit(MemorySampled(now(), i, source, round3(sample.per_pid.get(pid)), round3(total), round3(used), name))

