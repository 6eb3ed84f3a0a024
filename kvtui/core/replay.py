"""Replay: a producer of the same events a live run emitted, rebuilt from a session record.

Loops are found again by the same detector the live run fed, from the recorded
token ids, so a replay shows loop badges exactly when the live run did.
Timing follows the record's offsets, scaled by ``speed``; it can pause,
change speed, restart and jump to the end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from .events import (
    ErrorRaised,
    Event,
    LoopDetected,
    MemorySampled,
    RequestSent,
    RunFinished,
    ServerExited,
    ServerReady,
    ServerStarting,
    SessionFinished,
    SessionStarted,
    SideFinished,
    SideInfo,
    TokenReceived,
    WarmupDone,
)
from .loops import LoopDetector
from .session import SessionRecorder

_ORDER = {SessionStarted: 0, ServerStarting: 1, ServerReady: 2, WarmupDone: 3, RequestSent: 4, MemorySampled: 5,
          TokenReceived: 6, LoopDetected: 7, RunFinished: 8, ErrorRaised: 9, ServerExited: 10, SideFinished: 11,
          SessionFinished: 12}


def _tops(run: dict[str, Any]) -> tuple[tuple[tuple[int, float], ...], ...]:
    ids, lps = run.get("top_ids", []), run.get("top_logprobs", [])
    return tuple(tuple(zip(a, b, strict=False)) for a, b in zip(ids, lps, strict=False))


def _run_events(i: int, run: dict[str, Any]) -> list[Event]:
    pieces, t_ms = run.get("pieces", []), run.get("t_ms", [])
    ids = run.get("ids") or [-1] * len(pieces)
    counts = run.get("counts") or list(range(1, len(pieces) + 1))
    t_end = float(run.get("t_end", 0.0))
    t_sent = run.get("t_sent")
    if t_sent is None:
        t_sent = t_end - (t_ms[-1] / 1000 if t_ms else 0.0)
    r = int(run.get("run", 0))
    out: list[Event] = [RequestSent(t_sent, i, r)]
    detector = LoopDetector()
    last_repeats = None
    for k, text in enumerate(pieces):
        t = t_sent + t_ms[k] / 1000
        tid = ids[k] if ids[k] >= 0 else None
        out.append(TokenReceived(t, i, r, counts[k], text, tid))
        if tid is not None:
            found = detector.feed(tid, text)
            if found is not None and found.repeats != last_repeats:
                last_repeats = found.repeats
                out.append(LoopDetected(t, i, r, found.period, found.start, found.repeats, found.text))
    loop = run.get("loop")
    out.append(RunFinished(
        t=t_end, side=i, run=r, stop=run.get("stop", "eos"), prompt_n=run.get("prompt_n"),
        prompt_per_second=run.get("prompt_per_second"), predicted_n=run.get("predicted_n"),
        predicted_per_second=run.get("predicted_per_second"), ttft_ms=run.get("ttft_ms"),
        client_tokens_per_second=run.get("client_tokens_per_second"), text=run.get("text", ""),
        pieces=tuple(pieces), t_ms=tuple(t_ms), ids=tuple(ids), counts=tuple(counts),
        loop=(loop["period"], loop["start"], loop["repeats"]) if isinstance(loop, dict) else None,
        error=run.get("error"), t_sent=t_sent, prompt=run.get("prompt", ""), repeat=run.get("repeat", 0),
        seed=run.get("seed"), check=run.get("check"), top=_tops(run),
    ))
    return out


def record_events(record: dict[str, Any]) -> list[Event]:
    """Rebuild the event stream of a record, in time order.

    Args:
        record: a record as :func:`kvtui.core.session.read_record` returns it.

    Returns:
        Events equal (tokens, order, timing) to the ones the live run emitted.
    """
    sides = record.get("sides", [])
    model, server = record.get("model", {}), record.get("server", {})
    events: list[Event] = [SessionStarted(
        t=0.0, profile_name=record.get("profile", {}).get("name", "?"), mode=record.get("mode", "?"),
        mode_reason=record.get("mode_reason", ""), schedule=record.get("schedule", "?"),
        sides=tuple(SideInfo(s["name"], s["cache_type_k"], s["cache_type_v"], tuple(s.get("argv", [])),
                             s.get("kv_estimate_mib")) for s in sides),
        model_path=model.get("path", ""), model_name=model.get("name", "?"), model_size_mib=model.get("size_mib", 0.0),
        model_arch=model.get("arch", "?"), server_bin=server.get("bin", ""), server_version=server.get("version", "?"),
        created=record.get("created", ""), replay=True, warnings=tuple(record.get("warnings", [])),
    )]
    end = float(record.get("duration_s", 0.0))
    for i, s in enumerate(sides):
        if "t_start" in s:
            events.append(ServerStarting(s["t_start"], i, s.get("port", 0), tuple(s.get("argv", [])), s.get("log", "")))
        if "t_ready" in s:
            events.append(ServerReady(s["t_ready"], i, s.get("pid", 0), s.get("load_s", 0.0), s.get("n_ctx"),
                                      s.get("build", ""), s.get("kv_cache_mib"), s.get("flash_attn"),
                                      tuple(s.get("warnings", []))))
        if "t_warm" in s:
            events.append(WarmupDone(s["t_warm"], i, s.get("warmup_ms", 0.0)))
        source = s.get("memory_source", "rss")
        for t, mib in zip(s.get("memory_t", []), s.get("memory_mib", []), strict=False):
            events.append(MemorySampled(t, i, source, mib, s.get("gpu_total_mib"), None, s.get("gpu_name")))
        last = 0.0
        for run in s.get("runs", []):
            evs = _run_events(i, run)
            events += evs
            last = max(last, evs[-1].t)
        t_fin = max(last, end - 0.001) if end else last
        if "error" in s:
            events.append(ErrorRaised(t_fin, i, s["error"]))
        if "log_tail" in s:
            events.append(ServerExited(t_fin, i, s.get("exit_code"), expected=False, log_tail=tuple(s["log_tail"])))
        events.append(SideFinished(t_fin, i, s.get("status", "done")))
        end = max(end, t_fin)
    status = record.get("status", "done")
    events.append(SessionFinished(end, status if status in ("done", "failed", "aborted") else "aborted"))
    events.sort(key=lambda e: (e.t, _ORDER.get(type(e), 99)))
    return events


class Replayer:
    """Plays a record's events to sinks with the recorded timing.

    Args:
        record: the record to play.
        speed: 1.0 is real time; larger is faster.
        clock: monotonic seconds (injectable for tests).
        sleep: an async sleep (injectable for tests).
        stop_at: deliver, at once, every event up to this record time and stop there
            (a frozen moment of the session, for screenshots and snapshot tests).
    """

    def __init__(self, record: dict[str, Any], speed: float = 1.0, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Any] = asyncio.sleep, stop_at: float | None = None) -> None:
        self.record = record
        self.events = record_events(record)
        self.speed = speed
        self.clock = clock
        self.sleep = sleep
        self.sinks: list[Callable[[Event], None]] = []
        self.position = 0  # index of the next event
        self.paused = False
        self._base_t = 0.0  # record time at _base_wall
        self._base_wall = clock()
        self._skip = False
        self._restart = False
        self.stop_at = stop_at
        self.recorder = self._new_recorder()

    # -- the Session protocol the app uses --------------------------------------------------------

    def now(self) -> float:
        """The record time being shown."""
        if self.stop_at is not None:
            return self.stop_at
        if self.paused:
            return self._base_t
        return self._base_t + (self.clock() - self._base_wall) * self.speed

    async def run(self) -> str:
        """Play from the current position to the end; returns the record's status."""
        if self.stop_at is not None:
            while self.position < len(self.events) and self.events[self.position].t <= self.stop_at:
                self._deliver(self.events[self.position])
            return "paused"
        while True:
            self._rebase(self.events[self.position].t if self.position < len(self.events) else 0.0)
            while self.position < len(self.events):
                if self._restart:
                    break
                e = self.events[self.position]
                while not self._skip and not self._restart and (self.paused or e.t > self.now()):
                    wait = 0.05 if self.paused else min(0.05, (e.t - self.now()) / self.speed)
                    await self.sleep(max(wait, 0.0))
                if self._restart:
                    break
                self._deliver(e)
            if not self._restart:
                break
            self._restart, self._skip, self.position = False, False, 0
            self.recorder = self._new_recorder()
        self._skip = False
        return self.record.get("status", "done")

    def _deliver(self, e: Event) -> None:
        self.position += 1
        self.recorder.handle(e)
        for sink in self.sinks:
            sink(e)

    async def rerun(self, side: int | None = None) -> str:
        self.restart()
        return await self.run()

    def abort(self, side: int | None = None) -> None:
        """Replays have nothing to abort; jumping to the end is the nearest thing."""
        self.jump_to_end()

    async def aclose(self) -> None:
        return None

    def side_count(self) -> int:
        return len(self.record.get("sides", []))

    def kill_now(self) -> None:
        return None

    def save(self) -> str | None:
        return None

    def _new_recorder(self) -> SessionRecorder:
        """A record rebuilt from the replayed events (never written), which the comparison strip reads."""
        return SessionRecorder(None, self.record.get("profile", {}), self.record.get("host", {}))

    # -- controls --------------------------------------------------------------------------------

    def _rebase(self, t: float) -> None:
        self._base_t, self._base_wall = t, self.clock()

    def toggle_pause(self) -> bool:
        """Pause or resume; returns True when now paused."""
        self._rebase(self.now())
        self.paused = not self.paused
        return self.paused

    def set_speed(self, speed: float) -> None:
        self._rebase(self.now())
        self.speed = max(0.01, min(speed, 1000.0))

    def restart(self) -> None:
        self._restart = True

    def jump_to_end(self) -> None:
        self._skip = True
