"""From command-line inputs to a ready-to-run session: profile, binary, model, plan, recorder.

Everything that can be wrong with the input is found here, before any server
starts: the profile, the paths, and whether the record can be written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import KvtuiError
from .gpu import make_probe, probe_devices
from .locate import find_model, find_server
from .plan import Plan, make_plan
from .profiles import Profile, check_remote, load_profile
from .session import SessionRecorder, default_record_path, host_info


@dataclass
class Prepared:
    """A session ready to run: the plan, its recorder and where things go."""

    plan: Plan
    recorder: SessionRecorder
    record_path: Path | None
    log_dir: Path
    probe: object | None


def check_writable(path: Path) -> None:
    """Fail now, not after a 10-minute run, if the record cannot be written."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KvtuiError(f"cannot create the record folder {folder}: {exc.strerror}",
                         "pass --record PATH somewhere writable") from None
    if not os.access(folder, os.W_OK):
        raise KvtuiError(f"cannot write the record in {folder}: permission denied",
                         "pass --record PATH somewhere writable")
    if path.is_dir():
        raise KvtuiError(f"--record {path} is a folder", "give a file name, e.g. sessions/run.toml")


def prepare(profile: Profile | str | Path, *, model: str | None = None, server_bin: str | None = None,
            mode: str | None = None, vram_budget_mib: float | None = None, record: str | None = None,
            no_record: bool = False, allow_remote: bool = False) -> Prepared:
    """Validate everything and build the plan.

    ``allow_remote`` accepts extra_args that make a server listen beyond
    127.0.0.1 (``--host 0.0.0.0``); without it such a profile is refused.

    Raises:
        KvtuiError: bad profile, missing model or binary, unwritable record.
    """
    prof = profile if isinstance(profile, Profile) else load_profile(profile)
    check_remote(prof, allow_remote)
    if mode is not None and mode not in ("auto", "parallel", "sequential"):
        raise KvtuiError(f"--mode {mode} is not allowed", "use auto, parallel or sequential")
    if vram_budget_mib is not None and vram_budget_mib <= 0:
        raise KvtuiError(f"--vram-budget {vram_budget_mib:g} must be positive", "give MiB, e.g. --vram-budget 8000")
    record_path = None if no_record else Path(record) if record else default_record_path(prof.name)
    if record_path is not None:
        check_writable(record_path)
    binary = find_server(server_bin, prof.server_bin)
    model_path = find_model(model, prof.model)
    probe = make_probe()
    plan = make_plan(prof, model_path, binary, mode=mode, vram_budget_mib=vram_budget_mib, probe=probe)
    devices = probe_devices(probe)  # type: ignore[arg-type]
    profile_dict = prof.to_dict()
    profile_dict["model"]["path"] = str(model_path)
    recorder = SessionRecorder(record_path, profile_dict, host_info(devices))
    if record_path is not None:
        log_dir = record_path.with_suffix(".logs")
    else:
        import tempfile

        log_dir = Path(tempfile.mkdtemp(prefix="kvtui-logs-"))
    return Prepared(plan, recorder, record_path, log_dir, probe)
