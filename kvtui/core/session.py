"""Session records: the recorder (an event consumer) and reading/writing the TOML file.

The record is built only from events, so a live run and a replay record the
same thing. It is written atomically (temp file, fsync, rename) with mode
0600, since it holds the prompt, and autosaved while a run goes on.
"""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
import time
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any

import tomli_w

from .. import __version__
from .errors import RecordError
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
    WarmupDone,
)

SCHEMA = "kvtui.session/1"
AUTOSAVE_S = 3.0
MEMORY_SERIES_S = 1.0  # one stored memory sample per second per side


def host_info(devices: list[Any] | None = None) -> dict[str, Any]:
    """CPU, RAM and GPU facts for the record (keys absent where unknown)."""
    import psutil

    info: dict[str, Any] = {"os": f"{platform.system()} {platform.release()}", "machine": platform.machine(),
                            "cores": os.cpu_count() or 0, "ram_mib": round(psutil.virtual_memory().total / 2**20)}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if devices:
        d = devices[0]
        info["gpu_name"] = d.name
        info["gpu_count"] = len(devices)
        if getattr(d, "total_mib", None) is not None:
            info["gpu_total_mib"] = round(d.total_mib)
        if getattr(d, "driver", None):
            info["gpu_driver"] = d.driver
    return info


def _clean(value: Any) -> Any:
    """Drop None (TOML has no null) and turn tuples into lists, recursively."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value if v is not None]
    return value


class SessionRecorder:
    """Builds the session record from the event stream and keeps it saved.

    Args:
        path: where the record goes (None: keep it in memory only).
        profile: the profile as run (``Profile.to_dict()``).
        host: ``host_info()``.
        clock: for autosave pacing.
    """

    def __init__(self, path: Path | None, profile: dict[str, Any], host: dict[str, Any],
                 clock: Any = time.monotonic) -> None:
        self.path = path
        self.clock = clock
        self._last_save = clock()
        self._last_mem: dict[int, float] = {}
        self.data: dict[str, Any] = {"schema": SCHEMA, "kvtui_version": __version__, "status": "running",
                                     "host": host, "profile": profile, "sides": []}

    def __call__(self, event: Event) -> None:
        self.handle(event)

    def side(self, i: int) -> dict[str, Any]:
        return self.data["sides"][i]

    def handle(self, event: Event) -> None:
        """Fold one event into the record; autosave at most every few seconds."""
        d = self.data
        match event:
            case SessionStarted():
                d.update(created=event.created, mode=event.mode, mode_reason=event.mode_reason,
                         schedule=event.schedule)
                d["server"] = {"bin": event.server_bin, "version": event.server_version}
                d["model"] = {"path": event.model_path, "name": event.model_name, "size_mib": event.model_size_mib,
                              "arch": event.model_arch}
                d["sides"] = [{"name": s.name, "cache_type_k": s.cache_type_k, "cache_type_v": s.cache_type_v,
                               "argv": list(s.argv), "kv_estimate_mib": s.kv_estimate_mib, "status": "waiting",
                               "runs": []} for s in event.sides]
            case ServerStarting():
                self.side(event.side).update(status="starting", t_start=round(event.t, 3), port=event.port,
                                             argv=list(event.argv), log=event.log_path)
            case ServerReady():
                self.side(event.side).update(status="ready", t_ready=round(event.t, 3), pid=event.pid,
                                             load_s=event.load_s, n_ctx=event.n_ctx, build=event.build,
                                             kv_cache_mib=event.kv_cache_mib, flash_attn=event.flash_attn,
                                             warnings=list(event.warnings))
            case WarmupDone():
                self.side(event.side).update(warmup_ms=event.ms, t_warm=round(event.t, 3))
            case RequestSent():
                self.side(event.side)["status"] = "generating"
            case MemorySampled():
                self._memory(event)
            case LoopDetected():
                self.side(event.side)["status"] = "looping"
            case RunFinished():
                self.side(event.side)["runs"].append(_run_dict(event))
            case ErrorRaised():
                target = self.side(event.side) if event.side is not None else d
                target["error"] = event.message + (f" ({event.hint})" if event.hint else "")
            case ServerExited():
                s = self.side(event.side)
                s["exit_code"] = event.returncode
                s["t_exit"] = round(event.t, 3)
                if not event.expected:
                    s["log_tail"] = list(event.log_tail)
            case SideFinished():
                self.side(event.side)["status"] = event.status
            case SessionFinished():
                d["status"] = event.status
                d["duration_s"] = round(event.t, 2)
                self.save()
                return
        if self.clock() - self._last_save >= AUTOSAVE_S:
            self.save()

    def _memory(self, e: MemorySampled) -> None:
        s = self.side(e.side)
        key = "vram_peak_mib" if e.source == "nvml" else "rss_peak_mib"
        if e.used_mib is not None:
            s[key] = max(s.get(key, 0.0), e.used_mib)
        s["memory_source"] = e.source
        if e.device_name:
            s["gpu_name"] = e.device_name
        if e.device_total_mib is not None:
            s["gpu_total_mib"] = e.device_total_mib
        if e.source == "nvml" and e.device_used_mib is not None:
            s["gpu_used_peak_mib"] = max(s.get("gpu_used_peak_mib", 0.0), e.device_used_mib)
        if e.t - self._last_mem.get(e.side, -1e9) >= MEMORY_SERIES_S and e.used_mib is not None:
            self._last_mem[e.side] = e.t
            s.setdefault("memory_t", []).append(round(e.t, 2))
            s.setdefault("memory_mib", []).append(round(e.used_mib, 1))

    def finalize_partial(self, status: str = "aborted") -> None:
        """Mark a record cut short (signal, crash of kvtui) and save it."""
        if self.data.get("status") == "running":
            self.data["status"] = status
            for s in self.data["sides"]:
                if s.get("status") not in ("done", "aborted", "crashed", "error"):
                    s["status"] = "aborted"
        self.save()

    def save(self) -> None:
        """Write the record atomically (no-op without a path)."""
        self._last_save = self.clock()
        if self.path is not None:
            write_record(self.path, self.data)


def _run_dict(e: RunFinished) -> dict[str, Any]:
    run: dict[str, Any] = {
        "run": e.run, "stop": e.stop, "prompt_n": e.prompt_n, "prompt_per_second": e.prompt_per_second,
        "predicted_n": e.predicted_n, "predicted_per_second": e.predicted_per_second, "ttft_ms": e.ttft_ms,
        "client_tokens_per_second": e.client_tokens_per_second, "t_end": round(e.t, 3), "error": e.error,
        "t_sent": e.t_sent, "text": e.text, "pieces": list(e.pieces), "t_ms": list(e.t_ms), "ids": list(e.ids),
        "counts": list(e.counts),
    }
    if e.loop is not None:
        run["loop"] = {"period": e.loop[0], "start": e.loop[1], "repeats": e.loop[2]}
    return run


def write_record(path: Path, data: dict[str, Any]) -> None:
    """Write TOML atomically: temp file in the same folder, fsync, rename; mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = tomli_w.dumps(_clean(data), multiline_strings=True).encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_record(path: str | Path) -> dict[str, Any]:
    """Read and check a record; never modifies the file.

    Raises:
        RecordError: missing, not TOML, another schema, or keys of the wrong type.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise RecordError(f"{p}: no such record", "check the path (records are in sessions/)") from None
    except OSError as exc:
        raise RecordError(f"{p}: cannot read: {exc.strerror}") from None
    if not raw.strip():
        raise RecordError(f"{p}: the file is empty", "the run that wrote it may have been killed before saving")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RecordError(f"{p}: not a valid TOML record: {exc}", "the file is truncated or was edited badly") from None
    schema = data.get("schema")
    if schema != SCHEMA:
        raise RecordError(f"{p}: schema {schema!r} is not {SCHEMA!r}",
                          "a newer kvtui wrote it: upgrade kvtui" if isinstance(schema, str) and schema.startswith("kvtui.session/")
                          else "this is not a kvtui session record")
    from .recordcheck import check_record

    check_record(data, str(p))
    return data


def default_record_path(profile_name: str, base: Path | None = None) -> Path:
    """``sessions/<profile>-<YYYYmmdd-HHMMSS>.toml`` under the current folder."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return (base or Path("sessions")) / f"{profile_name}-{stamp}.toml"


def profile_from_record(path: str | Path) -> tuple[Any, str | None]:
    """The profile a record was run with, and the llama-server it used (None if that is gone).

    Raises:
        RecordError: the record is unreadable or holds no valid profile.
    """
    from .errors import ProfileError
    from .profiles import parse_profile

    data = read_record(path)
    raw = data.get("profile")
    if not isinstance(raw, dict) or not raw:
        raise RecordError(f"{path}: the record holds no profile", "it was written by an older kvtui; run the profile itself")
    raw = {k: v for k, v in raw.items() if k != "description" or isinstance(v, str)}
    try:
        profile = parse_profile(raw, source=f"{path} [profile]")
    except ProfileError as exc:
        raise RecordError(exc.message, exc.hint) from None
    server_bin = data.get("server", {}).get("bin")
    return profile, server_bin if isinstance(server_bin, str) and Path(server_bin).is_file() else None
