"""The plan: which servers run, with which flags, together or one after the other, and why.

Parallel runs both servers at once; sequential runs one side alone, stops it,
then the next. ``auto`` chooses parallel when the model (counted once: the
servers share its file pages on the CPU, but each GPU server holds its own
copy), every side's KV cache and a compute allowance fit the memory budget
with headroom.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .locate import ServerBinary, help_flags, server_version
from .modelinfo import ModelInfo, read_model_info
from .profiles import Profile
from .server import server_args

COMPUTE_ALLOWANCE_MIB = 512.0  # compute + output buffers per server (grows with ctx and ubatch)
HEADROOM = 0.9  # use at most 90% of the budget


@dataclass(frozen=True, slots=True)
class SidePlan:
    """One side's server arguments and its KV estimate (MiB, None when unknown)."""

    name: str
    cache_type_k: str
    cache_type_v: str
    args: tuple[str, ...]
    kv_estimate_mib: float | None


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything the runner needs, decided before any server starts."""

    profile: Profile
    model: ModelInfo
    binary: ServerBinary
    server_version: str
    sides: tuple[SidePlan, ...]
    mode: str  # parallel | sequential
    mode_reason: str
    schedule: str  # simultaneous | alternate | solo
    need_mib: float | None = None
    budget_mib: float | None = None
    budget_source: str = ""
    fits: bool | None = None
    notes: tuple[str, ...] = field(default=())


def kv_estimate(model_path: Path, profile: Profile, k: str, v: str) -> float | None:
    """KV-cache MiB from the GGUF metadata, or None where the model is not understood."""
    try:
        from .kvsize import estimate_kv_mib
    except ImportError:
        return None
    try:
        est = estimate_kv_mib(model_path, ctx=profile.ctx_size, cache_type_k=k, cache_type_v=v, n_parallel=1)
    except Exception:  # an estimate is advice; a model it can't read must not stop the run
        return None
    total = getattr(est, "total_mib", est)
    return float(total) if isinstance(total, int | float) else None


def memory_budget(vram_budget_mib: float | None, probe: object | None) -> tuple[float | None, str, bool]:
    """The memory both servers must fit in: (MiB, where it came from, on a GPU?)."""
    if vram_budget_mib is not None:
        return vram_budget_mib, "--vram-budget", True
    devices = []
    if probe is not None and getattr(probe, "available", False):
        try:
            devices = probe.devices()  # type: ignore[attr-defined]
        except Exception:
            devices = []
    if devices:
        free = sum(d.free_mib for d in devices if d.free_mib is not None)
        return free, f"free VRAM on {devices[0].name}", True
    import psutil

    return psutil.virtual_memory().available / 2**20, "available RAM", False


def make_plan(profile: Profile, model_path: Path, binary: ServerBinary, *, mode: str | None = None,
              vram_budget_mib: float | None = None, probe: object | None = None) -> Plan:
    """Decide the servers' arguments, parallel or sequential, and the schedule.

    Args:
        profile: the validated profile (with command-line overrides applied).
        model_path: the resolved GGUF file.
        binary: the llama-server to run.
        mode: ``auto`` / ``parallel`` / ``sequential``; None takes the profile's.
        vram_budget_mib: pretend this much memory is free (planning tests, shared GPUs).
        probe: a GPU probe (``kvtui.core.gpu``) or None for RAM only.
    """
    info = read_model_info(model_path)
    known = help_flags(binary)
    sides = tuple(
        SidePlan(s.name, s.cache_type_k, s.cache_type_v, tuple(server_args(profile, s, model_path, known)),
                 kv_estimate(model_path, profile, s.cache_type_k, s.cache_type_v))
        for s in profile.sides
    )
    budget, source, on_gpu = memory_budget(vram_budget_mib, probe)
    kvs = [s.kv_estimate_mib for s in sides]
    need = None
    if all(k is not None for k in kvs):
        # each GPU server holds its own weights; CPU servers share the mmapped file
        weights = info.size_mib * (len(sides) if on_gpu and profile.n_gpu_layers != 0 else 1)
        need = weights + sum(kvs) + COMPUTE_ALLOWANCE_MIB * len(sides)  # type: ignore[arg-type]
    fits = None if need is None or budget is None else need <= budget * HEADROOM

    chosen = mode or profile.run.mode
    if chosen == "parallel":
        reason = "asked for parallel"
        if fits is False:
            reason += f" (plan says {need:,.0f} MiB needed, {budget:,.0f} MiB {source})"
    elif chosen == "sequential":
        reason = "asked for sequential"
    elif fits is False:
        chosen = "sequential"
        reason = f"both need ~{need:,.0f} MiB, {source} is {budget:,.0f} MiB: one at a time"
    else:
        chosen = "parallel"
        reason = (f"both fit: ~{need:,.0f} of {budget:,.0f} MiB {source}" if fits
                  else "memory need unknown: assuming both fit")

    schedule = profile.run.schedule
    if chosen == "sequential":
        schedule = "solo"
    elif schedule == "auto":
        schedule = "alternate" if profile.run.repeats > 1 else "simultaneous"
    return Plan(profile, info, binary, server_version(binary), sides, chosen, reason, schedule,
                need, budget, source, fits)
