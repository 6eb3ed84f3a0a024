"""Replay: a producer of the same events a live run emitted, rebuilt from a session record.

Loops are found again by the same detector the live run fed, from the recorded
token ids, so a replay shows loop badges exactly when the live run did.
Timing follows the record's offsets, scaled by ``speed``; it can pause,
change speed, restart and jump to the end.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from kvtui.core.conversation import content_text
from kvtui.core.events import (
    ErrorRaised,
    Event,
    LoopDetected,
    MemorySampled,
    PatternDetected,
    ReplyLoopDetected,
    RequestSent,
    RunFinished,
    ScoreReady,
    ScoringStarted,
    ServerExited,
    ServerReady,
    ServerStarting,
    SessionFinished,
    SessionStarted,
    SideFinished,
    SideInfo,
    TokenReceived,
    TurnStarted,
    WarmupDone,
)
from kvtui.core.quality.loops import LoopDetector, ReplyLoopWatch, piece_key
from kvtui.core.quality.templates import TemplateDetector
from kvtui.core.record.model import Run, SessionRecord
from kvtui.core.record.recorder import SessionRecorder
from kvtui.core.vocab import SessionStatus

_ORDER = {SessionStarted: 0, ServerStarting: 1, ServerReady: 2, WarmupDone: 3, TurnStarted: 3.5, RequestSent: 4,
          MemorySampled: 5, TokenReceived: 6, LoopDetected: 7, PatternDetected: 7, ReplyLoopDetected: 7.5,
          RunFinished: 8, ErrorRaised: 9, ServerExited: 10, SideFinished: 11, ScoringStarted: 12, ScoreReady: 13,
          SessionFinished: 14}


def _run_events(i: int, run: Run) -> list[Event]:
    n = len(run.pieces)
    ids = run.ids or (-1,) * n
    counts = run.counts or tuple(range(1, n + 1))
    t_sent = run.t_sent
    t_end = run.t_end
    if t_sent is None:
        t_sent = (t_end or 0.0) - (run.t_ms[-1] / 1000 if run.t_ms else 0.0)
    if t_end is None:  # a run cut short by kvtui's end: it ended with its last piece
        t_end = t_sent + (run.t_ms[-1] / 1000 if run.t_ms else 0.0)
    out: list[Event] = [RequestSent(t_sent, i, run.run, run.prompt, run.repeat, run.seed, run.schedule, run.turn)]
    detector, patterns = LoopDetector(), TemplateDetector()
    last_repeats = last_pattern = None
    for k, text in enumerate(run.pieces):
        t = t_sent + run.t_ms[k] / 1000
        tid = ids[k] if ids[k] >= 0 else None
        out.append(TokenReceived(t, i, run.run, counts[k], text, tid))
        pattern = patterns.feed(text)
        if pattern is not None and (pattern.skeleton, pattern.repeats) != last_pattern:
            last_pattern = (pattern.skeleton, pattern.repeats)
            out.append(PatternDetected(t, i, run.run, pattern.skeleton, pattern.repeats, pattern.start, pattern.lines))
        key = tid if tid is not None else piece_key(text)  # as live: chat pieces stand in for unknown ids
        if key is not None:
            found = detector.feed(key, text)
            if found is not None and found.repeats != last_repeats:
                last_repeats = found.repeats
                out.append(LoopDetected(t, i, run.run, found.period, found.start, found.repeats, found.text))
    out.append(RunFinished(t_end, i, replace(run, ids=ids, counts=counts)))
    return out


def _scoring_events(record: SessionRecord, end: float) -> list[Event]:
    """The scoring as it started and as it ended (its progress is not recorded)."""
    scoring = record.scoring
    if scoring is None:
        return []
    t_end = scoring.t_end if scoring.t_end is not None else end
    t_start = scoring.t_start if scoring.t_start is not None else t_end
    started = replace(scoring, status="running", t_end=None, seconds=None, error=None)
    ready = ScoreReady(t_end, scoring, tuple(record.scores))
    return [ready] if scoring.status == "skipped" else [ScoringStarted(t_start, started), ready]


def record_events(record: SessionRecord) -> list[Event]:
    """Rebuild the event stream of a record, in time order.

    Args:
        record: a record as :func:`kvtui.core.record.model.read_record` returns it.

    Returns:
        Events equal (tokens, order, timing) to the ones the live run emitted.
    """
    sides = record.sides
    model, server = record.model, record.server
    name = record.profile.get("name")
    events: list[Event] = [SessionStarted(
        t=0.0, profile_name=name if isinstance(name, str) else "?", mode=record.mode or "?",
        mode_reason=record.mode_reason, schedule=record.schedule or "?",  # type: ignore[arg-type]
        sides=tuple(SideInfo(s.name, s.cache_type_k, s.cache_type_v, s.argv, s.kv_estimate_mib) for s in sides),
        model_path=model.path or "", model_name=model.name or "?", model_size_mib=model.size_mib or 0.0,
        model_arch=model.arch or "?", server_bin=server.bin or "", server_version=server.version or "?",
        created=record.created, replay=True, warnings=record.warnings,
        conversation=record.conversation.mode if record.conversation is not None else "",
    )]
    events += _turn_events(record)
    end = record.duration_s or 0.0
    for i, s in enumerate(sides):
        if s.t_start is not None:
            events.append(ServerStarting(s.t_start, i, s.port or 0, s.argv, s.log or ""))
        if s.t_ready is not None:
            events.append(ServerReady(s.t_ready, i, s.pid or 0, s.load_s or 0.0, s.n_ctx, s.build or "",
                                      s.kv_cache_mib, s.flash_attn, s.warnings, s.ran_with))
        if s.t_warm is not None:
            events.append(WarmupDone(s.t_warm, i, s.warmup_ms or 0.0))
        for t, mib in zip(s.memory_t, s.memory_mib, strict=False):
            events.append(MemorySampled(t, i, s.memory_source or "rss", mib, s.gpu_total_mib, None, s.gpu_name))
        last = 0.0
        watch = ReplyLoopWatch()
        for run in s.runs:
            evs = _run_events(i, run)
            if record.conversation is not None:  # found again as live: after each reply, before its RunFinished
                found = watch.feed(run.text)
                if found is not None:
                    first = s.runs[found[0]].turn or 0
                    evs.insert(-1, ReplyLoopDetected(evs[-1].t, i, first, found[1]))
            events += evs
            last = max(last, evs[-1].t)
        t_fin = max(last, end - 0.001) if end else last
        if s.error is not None:
            events.append(ErrorRaised(t_fin, i, s.error))
        if s.log_tail is not None:
            events.append(ServerExited(t_fin, i, s.exit_code, expected=False, log_tail=s.log_tail))
        events.append(SideFinished(t_fin, i, s.status))
        end = max(end, t_fin)
    scoring = _scoring_events(record, end)
    events += scoring
    end = max([end, *(e.t for e in scoring)])
    status = record.status if record.status != SessionStatus.RUNNING else SessionStatus.ABORTED
    events.append(SessionFinished(end, status))
    events.sort(key=lambda e: (e.t, _ORDER.get(type(e), 99)))
    return events


def _turn_events(record: SessionRecord) -> list[Event]:
    """A conversation's ``TurnStarted`` events, from its ``[[turns]]``."""
    out: list[Event] = []
    full: list[dict[str, Any]] = []
    for tr in record.turns:
        try:
            new, params = json.loads(tr.messages), json.loads(tr.params)
        except ValueError:
            new, params = [], {}
        new = [m for m in new if isinstance(m, dict)] if isinstance(new, list) else []
        full = [*full[:tr.keep], *new] if tr.keep is not None else new
        user = next((content_text(m) for m in reversed(full) if m.get("role") == "user"), "")
        out.append(TurnStarted(tr.t or 0.0, tr.turn, user, len(new), tr.keep, tuple(new),
                               params if isinstance(params, dict) and params else None))
    return out


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

    reruns = False  # history: nothing to run again

    def __init__(self, record: SessionRecord, speed: float = 1.0, *, clock: Callable[[], float] = time.monotonic,
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
        return self.record.status

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
        return len(self.record.sides)

    def kill_now(self) -> None:
        return None

    @property
    def plan(self) -> None:
        """A replay runs no plan."""
        return None

    @property
    def memory_source(self) -> None:
        """A replay measures nothing."""
        return None

    def finalize(self, status: str = "aborted") -> None:
        """Nothing to save: a replay never writes its record."""
        return None

    def save(self) -> str | None:
        return None

    def _new_recorder(self) -> SessionRecorder:
        """A record rebuilt from the replayed events (never written), which the comparison strip reads."""
        return SessionRecorder(None, self.record.profile, self.record.host)

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
