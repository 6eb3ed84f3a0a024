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
    TokenReceived,
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
        self._partial: dict[int, dict[str, Any]] = {}  # side -> the run still streaming (saved as "aborted")
        self._cut: dict[tuple[int, int], int] = {}  # (side, run) -> index of a run finalize_partial cut short
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
                if event.warnings:
                    d["warnings"] = list(event.warnings)
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
                self._partial[event.side] = {"run": event.run, "t_sent": round(event.t, 3), "prompt": event.prompt_name,
                                             "pieces": [], "t_ms": [], "ids": [], "counts": []}
            case TokenReceived():
                p = self._partial.get(event.side)
                if p is not None and p["run"] == event.run:
                    p["pieces"].append(event.text)
                    p["t_ms"].append(round((event.t - p["t_sent"]) * 1000, 1))
                    p["ids"].append(event.token_id if event.token_id is not None else -1)
                    p["counts"].append(event.n)
            case MemorySampled():
                self._memory(event)
            case LoopDetected():
                self.side(event.side)["status"] = "looping"
            case RunFinished():
                self._partial.pop(event.side, None)
                runs = self.side(event.side)["runs"]
                cut = self._cut.pop((event.side, event.run), None)
                if cut is not None:  # finished after finalize_partial saved it cut short: the real one wins
                    runs[cut] = _run_dict(event)
                else:
                    runs.append(_run_dict(event))
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
                self._derive()
                self.save()
                return
        if self.clock() - self._last_save >= AUTOSAVE_S:
            self.save()

    def _derive(self) -> None:
        """Divergence between sides and paired verdicts: computed once, from the runs, when the session ends."""
        from .summary import divergences, reply_loop, verdict_dicts

        self.data["comparisons"] = divergences(self.data)
        self.data["verdicts"] = verdict_dicts(self.data)
        for side in self.data["sides"]:
            found = reply_loop(side.get("runs", []))
            if found is not None:
                side["reply_loop"] = {"first_run": found[0], "runs": found[1]}

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
        """Mark a record cut short (signal, crash of kvtui) and save it; a run still streaming is kept, aborted."""
        if self.data.get("status") == "running":
            self.data["status"] = status
            for i, p in self._partial.items():
                self._cut[(i, p["run"])] = len(self.side(i)["runs"])
                self.side(i)["runs"].append(_partial_run(p))
            self._partial.clear()
            for s in self.data["sides"]:
                if s.get("status") not in ("done", "aborted", "crashed", "error"):
                    s["status"] = "aborted"
        self.save()

    def save(self) -> None:
        """Write the record atomically (no-op without a path)."""
        self._last_save = self.clock()
        if self.path is not None:
            write_record(self.path, self._with_partial())

    def _with_partial(self) -> dict[str, Any]:
        """The record as saved mid-run: runs still streaming are written as aborted, so a kill loses at most
        the tokens since the last autosave."""
        if not self._partial or self.data.get("status") != "running":
            return self.data
        data = dict(self.data)
        data["sides"] = [dict(s) for s in self.data["sides"]]
        for i, p in self._partial.items():
            if i < len(data["sides"]):
                data["sides"][i]["runs"] = [*data["sides"][i].get("runs", []), _partial_run(p)]
        return data


def _partial_run(p: dict[str, Any]) -> dict[str, Any]:
    """A run cut short by kvtui's end: what had streamed, marked aborted."""
    return {"run": p["run"], "stop": "aborted", "predicted_n": p["counts"][-1] if p["counts"] else 0,
            "error": "cut short: kvtui ended before the run finished", "t_sent": p["t_sent"],
            "prompt": p["prompt"] or None, "text": "".join(p["pieces"]), "pieces": list(p["pieces"]),
            "t_ms": list(p["t_ms"]), "ids": list(p["ids"]), "counts": list(p["counts"])}


def _run_dict(e: RunFinished) -> dict[str, Any]:
    run: dict[str, Any] = {
        "run": e.run, "stop": e.stop, "prompt_n": e.prompt_n, "prompt_per_second": e.prompt_per_second,
        "predicted_n": e.predicted_n, "predicted_per_second": e.predicted_per_second, "ttft_ms": e.ttft_ms,
        "client_tokens_per_second": e.client_tokens_per_second, "t_end": round(e.t, 3), "error": e.error,
        "t_sent": e.t_sent, "text": e.text, "pieces": list(e.pieces), "t_ms": list(e.t_ms), "ids": list(e.ids),
        "counts": list(e.counts),
    }
    run.update(prompt=e.prompt or None, repeat=e.repeat, seed=e.seed)
    if e.check is not None:
        run["check"] = dict(e.check)
    if e.top:
        run["top_ids"] = [[i for i, _ in t] for t in e.top]
        run["top_logprobs"] = [[round(lp, 4) for _, lp in t] for t in e.top]
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
    except RecursionError:  # tomllib recurses into nested arrays and tables
        raise RecordError(f"{p}: not a valid TOML record: nested too deeply",
                          "this is not a kvtui session record") from None
    schema = data.get("schema")
    if schema != SCHEMA:
        raise RecordError(f"{p}: schema {schema!r} is not {SCHEMA!r}",
                          "a newer kvtui wrote it: upgrade kvtui"
                          if isinstance(schema, str) and schema.startswith("kvtui.session/")
                          else "this is not a kvtui session record")
    from .recordcheck import check_record

    check_record(data, str(p))
    return data


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
    from .errors import ProfileError
    from .profiles import parse_profile

    data = read_record(path)
    raw = data.get("profile")
    if not isinstance(raw, dict) or not raw:
        raise RecordError(f"{path}: the record holds no profile",
                          "it was written by an older kvtui; run the profile itself")
    raw = {k: v for k, v in raw.items() if k != "description" or isinstance(v, str)}
    try:
        profile = parse_profile(raw, source=f"{path} [profile]")
    except ProfileError as exc:
        raise RecordError(exc.message, exc.hint) from None
    server_bin = data.get("server", {}).get("bin")
    return profile, server_bin if isinstance(server_bin, str) and Path(server_bin).is_file() else None
