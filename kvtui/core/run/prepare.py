"""From command-line inputs to a ready-to-run session: profile, binary, model, plan, recorder.

Everything that can be wrong with the input is found here, before any server
starts: the profile, the paths, and whether the record can be written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from kvtui.core.errors import KvtuiError
from kvtui.core.profiles import Profile, load_profile
from kvtui.core.record.recorder import SessionRecorder, default_record_path, host_info
from kvtui.core.remote import check_remote
from kvtui.core.run.memory import make_probe, probe_devices
from kvtui.core.run.plan import Plan, make_plan
from kvtui.core.server.attached import Props
from kvtui.core.server.locate import find_model, find_server


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
            no_record: bool = False, allow_remote: bool = False, force: bool = False,
            no_score: bool = False) -> Prepared:
    """Validate everything and build the plan.

    ``allow_remote`` accepts extra_args that make a server listen beyond
    127.0.0.1 (``--host 0.0.0.0``), and sides attached to servers on other
    machines; without it such a profile is refused. Attached sides are asked
    for /props now: sides that serve different models or contexts are refused
    unless ``force``. ``no_score`` turns the profile's ``run.score`` off.

    Raises:
        KvtuiError: bad profile, missing model or binary, unwritable record.
    """
    prof = profile if isinstance(profile, Profile) else load_profile(profile)
    if no_score and prof.run.score:
        prof = replace(prof, run=replace(prof.run, score=False))
    check_remote(prof, allow_remote)
    if mode is not None and mode not in ("auto", "parallel", "sequential"):
        raise KvtuiError(f"--mode {mode} is not allowed", "use auto, parallel or sequential")
    if vram_budget_mib is not None and vram_budget_mib <= 0:
        raise KvtuiError(f"--vram-budget {vram_budget_mib:g} must be positive", "give MiB, e.g. --vram-budget 8000")
    record_path = None if no_record else Path(record) if record else default_record_path(prof.name)
    if record_path is not None:
        check_writable(record_path)
    attached = read_attached(prof)
    if model is None and not prof.model and attached and all(s.url for s in prof.sides):
        first = next(iter(attached.values()))
        if first.model_path and Path(first.model_path).is_file():
            model = first.model_path  # every side attached: the model is the one they serve
    binary = find_server(server_bin, prof.server_bin)
    model_path = find_model(model, prof.model)
    check_attached(prof, attached, model_path, force)
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


def read_attached(profile: Profile, timeout_s: float = 10.0) -> dict[int, Props]:
    """/props of every attached side, read before anything starts.

    Raises:
        KvtuiError: a server cannot be reached, refuses the key, or is not a llama-server (exit 2).
    """
    import httpx

    out: dict[int, Props] = {}
    for i, side in enumerate(profile.sides):
        if not side.url:
            continue
        headers = {"Authorization": f"Bearer {side.api_key}"} if side.api_key else {}
        where = f"sides[{i}] ({side.name}) url {side.url}"
        try:
            r = httpx.get(side.url + "/props", headers=headers, timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise KvtuiError(f"{where}: cannot reach the server ({exc.__class__.__name__})",
                             "start llama-server there first, or fix the url") from None
        if r.status_code == 401:
            raise KvtuiError(f"{where}: the server refused the API key (HTTP 401)",
                             "set api_key in that [[sides]] table to the server's --api-key")
        if r.status_code == 503:
            raise KvtuiError(f"{where}: the server is still loading its model",
                             "wait until its /health answers 200, then run again")
        try:
            if r.status_code != 200:
                raise ValueError
            out[i] = Props.parse(r.json())
        except ValueError:
            raise KvtuiError(f"{where}: /props answered HTTP {r.status_code}, not a llama-server's JSON",
                             "check the url points at llama-server (e.g. http://127.0.0.1:8080)") from None
    return out


def _same_model(a: str, b: Path) -> bool:
    """Whether a server's ``model_path`` is ``b``: the same file, or (on another machine) the same name."""
    pa = Path(a)
    if pa.is_file():
        try:
            return pa.resolve() == b.resolve() or (pa.name == b.name and pa.stat().st_size == b.stat().st_size)
        except OSError:
            return False
    return pa.name == b.name


def check_attached(profile: Profile, attached: dict[int, Props], model_path: Path, force: bool) -> None:
    """Refuse attached sides that serve another model, or another context, than the rest (exit 2).

    Raises:
        KvtuiError: naming the side, what it serves and what the others use; ``--force`` runs anyway.
    """
    if force or not attached:
        return
    fix = "start that server with the same -m and -c, or pass --force to compare anyway"
    for i, props in attached.items():
        side = profile.sides[i]
        if not _same_model(props.model_path, model_path):
            raise KvtuiError(f"sides[{i}] ({side.name}) serves {props.model_path or 'an unnamed model'}, "
                             f"the comparison uses {model_path}", fix)
    started_ctx = -(-profile.ctx_size // 256) * 256  # llama-server rounds -c up to a multiple of 256
    ctxs = {i: p.n_ctx for i, p in attached.items() if p.n_ctx is not None}
    if any(not s.url for s in profile.sides):
        for i, n in ctxs.items():
            if n != started_ctx:
                raise KvtuiError(f"sides[{i}] ({profile.sides[i].name}) has a {n}-token context, the started "
                                 f"sides get {started_ctx} (server.ctx_size)",
                                 "set server.ctx_size to match, or restart that server with -c "
                                 f"{started_ctx}; --force compares anyway")
    elif len(set(ctxs.values())) > 1:
        shown = ", ".join(f"{profile.sides[i].name}: {n}" for i, n in ctxs.items())
        raise KvtuiError(f"the attached servers have different contexts ({shown})",
                         "restart them with the same -c, or pass --force to compare anyway")
