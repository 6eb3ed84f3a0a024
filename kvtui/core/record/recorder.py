"""The session recorder: an event consumer that builds the session record and keeps it saved.

The record (:mod:`kvtui.core.record.model`) is built only from events, so a live run
and a replay record the same thing. It is written atomically with mode 0600,
since it holds the prompt, and autosaved while a run goes on, with the tokens of
runs still streaming (saved as aborted), so a kill loses at most a few seconds.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from kvtui import __version__
from kvtui.core.errors import RecordError
from kvtui.core.events import (
    ErrorRaised,
    Event,
    LoopDetected,
    MemorySampled,
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
    TokenReceived,
    TurnStarted,
    WarmupDone,
)
from kvtui.core.record.accumulator import RunAccumulator
from kvtui.core.record.model import (  # noqa: F401 - read_record, write_record and SCHEMA are used through this module too
    SCHEMA,
    ConversationInfo,
    Host,
    Model,
    ReplyLoop,
    Server,
    SessionRecord,
    Side,
    TurnRecord,
    read_record,
    write_record,
)
from kvtui.core.vocab import ENDED, SessionStatus, SideStatus, session_status

AUTOSAVE_S = 3.0  # at most this long between saves while a session runs...
AUTOSAVE_COST = 0.0025  # ...unless saving would then take more than this share of one core: a long session's
# record (every piece, its time and id) takes longer to write, and kvtui must not slow the servers it measures
MEMORY_SERIES_S = 1.0  # one stored memory sample per second per side
_SEVERITY = {SessionStatus.RUNNING: 0, SessionStatus.DONE: 1, SessionStatus.ABORTED: 2, SessionStatus.FAILED: 3}


def host_info(devices: list[Any] | None = None) -> Host:
    """CPU, RAM and GPU facts for the record (None where unknown)."""
    import psutil

    cpu = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        pass
    gpu: dict[str, Any] = {}
    if devices:
        d = devices[0]
        total, driver = getattr(d, "total_mib", None), getattr(d, "driver", None)
        gpu = {"gpu_name": d.name, "gpu_count": len(devices), "gpu_driver": driver or None,
               "gpu_total_mib": None if total is None else float(round(total))}
    return Host(os=f"{platform.system()} {platform.release()}", machine=platform.machine(), cpu=cpu,
                cores=os.cpu_count() or 0, ram_mib=float(round(psutil.virtual_memory().total / 2**20)), **gpu)


def _worst(a: SessionStatus, b: SessionStatus) -> SessionStatus:
    return a if _SEVERITY[a] >= _SEVERITY[b] else b


class SessionRecorder:
    """Builds the session record from the event stream and keeps it saved.

    Args:
        path: where the record goes (None: keep it in memory only).
        profile: the profile as run (``Profile.to_dict()``).
        host: ``host_info()``.
        clock: for autosave pacing.
        cpu_clock: this thread's CPU seconds, to pace autosaves by what they cost.
    """

    def __init__(self, path: Path | None, profile: dict[str, Any], host: Host,
                 clock: Any = time.monotonic, cpu_clock: Any = time.thread_time) -> None:
        self.path = path
        self.clock = clock
        self.cpu_clock = cpu_clock
        self._last_save = clock()
        self._save_cpu_s = 0.0  # CPU seconds the last save took
        self._last_mem: dict[int, float] = {}
        self._open: dict[int, RunAccumulator] = {}  # side -> the run still streaming (saved as aborted)
        self._cut: dict[tuple[int, int], int] = {}  # (side, run) -> index of a run finalize_partial cut short
        self.record = SessionRecord(kvtui_version=__version__, host=host, profile=profile)

    def __call__(self, event: Event) -> None:
        self.handle(event)

    def side(self, i: int) -> Side:
        return self.record.sides[i]

    def handle(self, event: Event) -> None:
        """Fold one event into the record; autosave at most every few seconds."""
        rec = self.record
        match event:
            case SessionStarted():
                rec.created, rec.mode, rec.mode_reason, rec.schedule = (
                    event.created, event.mode, event.mode_reason, event.schedule)  # type: ignore[assignment]
                rec.status = SessionStatus.RUNNING
                rec.warnings = event.warnings
                rec.server = Server(bin=event.server_bin, version=event.server_version)
                rec.model = Model(path=event.model_path, name=event.model_name, size_mib=event.model_size_mib,
                                  arch=event.model_arch)
                rec.sides = [Side(s.name, s.cache_type_k, s.cache_type_v, argv=s.argv,
                                  kv_estimate_mib=s.kv_estimate_mib, placement=s.placement or None,
                                  cache_types="declared" if s.attached else "set") for s in event.sides]
                rec.conversation = ConversationInfo(event.conversation) if event.conversation else None  # type: ignore[arg-type]
                rec.turns = []
            case TurnStarted():
                if not rec.turns or rec.turns[-1].turn < event.turn:  # sequential mode: every side goes through them
                    rec.turns.append(TurnRecord(
                        event.turn, round(event.t, 3), event.keep,
                        json.dumps(list(event.messages), ensure_ascii=False),
                        json.dumps(event.params or {}, ensure_ascii=False)))
            case ReplyLoopDetected():
                s = self.side(event.side)
                first = next((k for k, r in enumerate(s.runs) if r.turn == event.first_turn), None)
                if first is not None:
                    s.reply_loop = ReplyLoop(first, event.turns)
            case ServerStarting():
                s = self.side(event.side)
                s.status, s.t_start, s.port, s.argv, s.log = (
                    SideStatus.STARTING, round(event.t, 3), event.port, event.argv, event.log_path or None)
                s.url = event.attached or None
            case ServerReady():
                s = self.side(event.side)
                s.status, s.t_ready, s.pid, s.load_s, s.n_ctx, s.build = (
                    SideStatus.READY, round(event.t, 3), event.pid, event.load_s, event.n_ctx, event.build)
                s.kv_cache_mib, s.flash_attn, s.warnings = event.kv_cache_mib, event.flash_attn, event.warnings
                s.ran_with = event.ran_with
                if event.attached:
                    s.served_model = event.model_path
                    if not event.pid:
                        s.pid, s.memory_source = None, "remote"
            case WarmupDone():
                s = self.side(event.side)
                s.warmup_ms, s.t_warm = event.ms, round(event.t, 3)
            case RequestSent():
                self.side(event.side).status = SideStatus.GENERATING
                self._open[event.side] = RunAccumulator(event.run, event.t, event.prompt_name, event.repeat,
                                                        event.seed, event.schedule, event.turn)
            case TokenReceived():
                acc = self._open.get(event.side)
                if acc is not None and acc.run == event.run:
                    acc.add(event.t, event.n, event.text, event.token_id)
            case MemorySampled():
                self._memory(event)
            case LoopDetected():
                self.side(event.side).status = SideStatus.LOOPING
            case RunFinished():
                self._open.pop(event.side, None)
                runs = self.side(event.side).runs
                cut = self._cut.pop((event.side, event.run), None)
                if cut is not None:  # finished after finalize_partial saved it cut short: the real one wins
                    runs[cut] = event.result
                else:
                    runs.append(event.result)
            case ErrorRaised():
                message = event.message + (f" ({event.hint})" if event.hint else "")
                if event.side is None:
                    rec.error = message
                else:
                    self.side(event.side).error = message
            case ServerExited():
                s = self.side(event.side)
                s.exit_code, s.t_exit = event.returncode, round(event.t, 3)
                if not event.expected:
                    s.log_tail = event.log_tail
            case SideFinished():
                self.side(event.side).status = SideStatus(event.status)
                if rec.status != SessionStatus.RUNNING:  # a rerun after the session finished
                    rec.status = session_status([s.status for s in rec.sides])
                    self._derive()
            case ScoringStarted():
                rec.scoring = event.scoring
            case ScoreReady():
                rec.scoring, rec.scores = event.scoring, list(event.scores)
            case SessionFinished():
                rec.status = _worst(SessionStatus(event.status), session_status([s.status for s in rec.sides]))
                rec.duration_s = round(event.t, 2)
                self._derive()
                self.save()
                return
        if self.clock() - self._last_save >= self.autosave_interval():
            self.save()

    def autosave_interval(self) -> float:
        """Seconds between saves mid-session: ``AUTOSAVE_S``, or longer when a save costs more than
        ``AUTOSAVE_COST`` of a core at that pace (a kill then loses at most this long of tokens)."""
        return max(AUTOSAVE_S, self._save_cpu_s / AUTOSAVE_COST)

    def _derive(self) -> None:
        """Divergence between sides and paired verdicts: computed from the runs when the session (or a rerun) ends."""
        from kvtui.core.quality.summary import divergences, fairness, reply_loop, verdict_records

        self.record.fairness = fairness(self.record)  # before any verdict: a flagged pair's verdicts say so
        self.record.comparisons = divergences(self.record)
        self.record.verdicts = verdict_records(self.record)
        for side in self.record.sides:
            found = reply_loop(side.runs)
            side.reply_loop = None if found is None else ReplyLoop(*found)

    def _memory(self, e: MemorySampled) -> None:
        s = self.side(e.side)
        if e.used_mib is not None:
            if e.source == "nvml":
                s.vram_peak_mib = max(s.vram_peak_mib or 0.0, e.used_mib)
            else:
                s.rss_peak_mib = max(s.rss_peak_mib or 0.0, e.used_mib)
        s.memory_source = e.source
        if e.device_name:
            s.gpu_name = e.device_name
        if e.device_total_mib is not None:
            s.gpu_total_mib = e.device_total_mib
        if e.source == "nvml" and e.device_used_mib is not None:
            s.gpu_used_peak_mib = max(s.gpu_used_peak_mib or 0.0, e.device_used_mib)
        if e.t - self._last_mem.get(e.side, -1e9) >= MEMORY_SERIES_S and e.used_mib is not None:
            self._last_mem[e.side] = e.t
            s.memory_t.append(round(e.t, 2))
            s.memory_mib.append(round(e.used_mib, 1))

    def finalize_partial(self, status: SessionStatus | str = SessionStatus.ABORTED) -> None:
        """Mark a record cut short (quit, signal, crash of kvtui) and save it; a run still streaming is kept, aborted.

        The session's status becomes ``status`` if it was still running (``failed`` if a side failed); a finished
        record changes only where a rerun was cut short.
        """
        rec = self.record
        changed = bool(self._open)
        for i, acc in self._open.items():
            self._cut[(i, acc.run)] = len(self.side(i).runs)
            self.side(i).runs.append(acc.cut_short())
        self._open.clear()
        for s in rec.sides:
            if s.status not in ENDED:
                s.status, changed = SideStatus.ABORTED, True
        if rec.scoring is not None and rec.scoring.status == "running":
            rec.scoring = replace(rec.scoring, status="aborted", error="kvtui ended before scoring finished")
        if rec.status == SessionStatus.RUNNING:
            rec.status = _worst(SessionStatus(status), session_status([s.status for s in rec.sides]))
        elif changed:
            rec.status = session_status([s.status for s in rec.sides])
        self.save()

    def save(self) -> None:
        """Write the record atomically (no-op without a path)."""
        self._last_save = self.clock()
        if self.path is not None:
            cpu = self.cpu_clock()
            write_record(self.path, self._with_open_runs())
            self._save_cpu_s = self.cpu_clock() - cpu

    def _with_open_runs(self) -> SessionRecord:
        """The record as saved mid-run: runs still streaming are written as aborted, so a kill loses at most
        the tokens since the last autosave."""
        if not self._open:
            return self.record
        sides = list(self.record.sides)
        for i, acc in self._open.items():
            if i < len(sides):
                sides[i] = replace(sides[i], runs=[*sides[i].runs, acc.cut_short()])
        return replace(self.record, sides=sides)


def default_record_path(profile_name: str, base: Path | None = None) -> Path:
    """``sessions/<profile>-<YYYYmmdd-HHMMSS>.toml`` under the current folder."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    # the name comes from the profile: never a path of its own ("../x", "a/b", NUL)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in profile_name)[:80].lstrip(".") or "session"
    return (base or Path("sessions")) / f"{safe}-{stamp}.toml"


def profile_from_record(path: str | Path) -> tuple[Any, str | None]:
    """The profile a record was run with, and the llama-server it used (None if that is gone).

    Raises:
        RecordError: the record is unreadable or holds no valid profile.
    """
    from kvtui.core.errors import ProfileError
    from kvtui.core.profiles import parse_profile

    record = read_record(path)
    raw = record.profile
    if not raw:
        raise RecordError(f"{path}: the record holds no profile",
                          "it was written by an older kvtui; run the profile itself")
    raw = {k: v for k, v in raw.items() if k != "description" or isinstance(v, str)}
    if isinstance(raw.get("sides"), list):  # an attached side's key was masked: the server will ask for it
        raw["sides"] = [{k: v for k, v in s.items() if not (k == "api_key" and v == "***")} if isinstance(s, dict)
                        else s for s in raw["sides"]]
    try:
        profile = parse_profile(raw, source=f"{path} [profile]")
    except ProfileError as exc:
        raise RecordError(exc.message, exc.hint) from None
    server_bin = record.server.bin
    return profile, server_bin if server_bin and Path(server_bin).is_file() else None
