"""The plan: which servers run, with which flags, together or one after the other, and why.

Parallel runs both servers at once; sequential runs one side alone, stops it,
then the next. ``auto`` chooses parallel when the model (counted once: the
servers share its file pages on the CPU, but each GPU server holds its own
copy), every side's KV cache and a compute allowance fit the memory budget
with headroom.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kvtui.core.model import kvsize
from kvtui.core.model.info import ModelInfo, read_model_info
from kvtui.core.profiles import Profile, Side
from kvtui.core.run.memory import probe_devices
from kvtui.core.server.attached import _own_addresses
from kvtui.core.server.locate import ServerBinary, help_flags, server_version
from kvtui.core.server.process import server_args, side_env
from kvtui.core.vocab import Schedule

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
    url: str = ""  # attached: the running server's URL (args are then empty)
    api_key: str = ""
    env: tuple[tuple[str, str], ...] = ()  # for its server only: CUDA_VISIBLE_DEVICES, LLAMA_ATTN_ROT_DISABLE=1
    gpu: int | None = None  # the GPU index it is placed on, when the profile says (device or gpus)
    placement: str = ""  # as the profile says it: "CUDA1", "GPU 1", a URL, or ""

    @property
    def attached(self) -> bool:
        return bool(self.url)


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
    schedule: str  # a Schedule: simultaneous | alternate | solo
    need_mib: float | None = None
    budget_mib: float | None = None
    budget_source: str = ""
    fits: bool | None = None
    warnings: tuple[str, ...] = ()  # said at the start of the run, kept in the record
    per_device: tuple[DeviceFit, ...] = ()  # with sides on their own GPUs: each GPU's need against its free VRAM


@dataclass(frozen=True, slots=True)
class DeviceFit:
    """One GPU's share of the plan: the sides placed on it, what they need and what it has free."""

    gpu: int
    name: str
    sides: tuple[str, ...]
    need_mib: float | None
    free_mib: float | None

    @property
    def fits(self) -> bool | None:
        if self.need_mib is None or self.free_mib is None:
            return None
        return self.need_mib <= self.free_mib * HEADROOM


def gpu_index(side: Side) -> int | None:
    """The GPU a side is placed on: ``gpus = "1"`` or ``device = "CUDA1"``/``"Vulkan1"`` give 1; None = unplaced.

    With ``gpus`` of several GPUs (``"0,1"``) the side spans them: None. The
    Vulkan numbering usually follows the PCI order as NVML's does; check with
    ``kvtui doctor`` (it lists both) where it matters.
    """
    if side.url:
        return None
    if side.gpus:
        parts = side.gpus.split(",")
        return int(parts[0]) if len(parts) == 1 and parts[0].isdigit() else None
    m = re.fullmatch(r"[A-Za-z]+(\d+)", side.device)
    return int(m.group(1)) if m else None


def separate(sides: tuple[SidePlan, ...]) -> bool:
    """Every side runs on hardware of its own: each on a different GPU, or attached on different machines."""
    from urllib.parse import urlsplit

    keys = []
    for s in sides:
        if s.url:
            host = urlsplit(s.url).hostname or ""
            if host in ("127.0.0.1", "localhost", "::1") or host in _own_addresses():
                return False  # a server on this machine: which GPU it uses is not known
            keys.append("host:" + host)
        elif s.gpu is not None:
            keys.append(f"gpu:{s.gpu}")
        else:
            return False
    return len(set(keys)) == len(keys)


def plan_warnings(profile: Profile, model: ModelInfo) -> tuple[str, ...]:
    """What is legal but likely not what the user meant."""
    out = []
    if model.chat_template is False and any(p.endpoint == "chat" for p in profile.prompts):
        out.append(f"{Path(model.path).name} has no chat template (tokenizer.chat_template), so chat prompts get "
                   "llama-server's generic one and a base model tends to echo it: use endpoint = \"completion\" "
                   "with text to continue, or an instruct model")
    return tuple(out)


def kv_estimate(model_path: Path, profile: Profile, k: str, v: str) -> float | None:
    """KV-cache MiB from the GGUF metadata, or None where the model is not understood."""
    est = kvsize.estimate_kv_mib(model_path, ctx=profile.ctx_size, cache_type_k=k, cache_type_v=v, n_parallel=1)
    return est.total_mib


def memory_budget(vram_budget_mib: float | None, probe: object | None) -> tuple[float | None, str, bool]:
    """The memory both servers must fit in: (MiB, where it came from, on a GPU?)."""
    if vram_budget_mib is not None:
        return vram_budget_mib, "--vram-budget", True
    devices = probe_devices(probe)  # type: ignore[arg-type]
    if devices:
        free = sum(d.free_mib for d in devices if d.free_mib is not None)
        return free, f"free VRAM on {devices[0].name}", True
    import psutil

    return psutil.virtual_memory().available / 2**20, "available RAM", False


def memory_need(info: ModelInfo, n_gpu_layers: int, kv_mib: list[float], on_gpu: bool) -> float:
    """MiB that all sides need at once in the budget's memory (VRAM when ``on_gpu``, else RAM).

    The weights are the tensor bytes (``model_mib``, not the file size). On a
    GPU every server holds its own copy of the offloaded layers (all of them
    for ``-ngl`` at or above the layer count, or negative); on the CPU the
    servers share the mmapped file's pages, so it counts once. Each side adds
    its KV cache (on the GPU only the offloaded layers' share) and a compute
    allowance.
    """
    n = len(kv_mib)
    if not on_gpu:
        return info.model_mib + sum(kv_mib) + COMPUTE_ALLOWANCE_MIB * n
    share = 1.0
    if info.layers and 0 <= n_gpu_layers < info.layers:
        share = n_gpu_layers / info.layers
    return (info.model_mib * share) * n + sum(kv_mib) * share + COMPUTE_ALLOWANCE_MIB * n


def make_plan(profile: Profile, model_path: Path, binary: ServerBinary, *, mode: str | None = None,
              vram_budget_mib: float | None = None, probe: object | None = None) -> Plan:
    """Decide the servers' arguments, parallel or sequential, and the schedule.

    Args:
        profile: the validated profile (with command-line overrides applied).
        model_path: the resolved GGUF file.
        binary: the llama-server to run.
        mode: ``auto`` / ``parallel`` / ``sequential``; None takes the profile's.
        vram_budget_mib: pretend this much memory is free (planning tests, shared GPUs).
        probe: a GPU probe (``kvtui.core.run.memory``) or None for RAM only.
    """
    info = read_model_info(model_path)
    known = help_flags(binary)
    sides = tuple(
        SidePlan(s.name, s.cache_type_k, s.cache_type_v,
                 () if s.url else tuple(server_args(profile, s, model_path, known)),
                 kv_estimate(model_path, profile, s.cache_type_k, s.cache_type_v),
                 url=s.url, api_key=s.api_key, env=side_env(s), gpu=gpu_index(s),
                 placement=s.placement)
        for s in profile.sides
    )
    # -ngl 0 keeps weights and KV in RAM, so the budget is RAM even where a GPU is present
    budget, source, on_gpu = memory_budget(vram_budget_mib, probe if profile.n_gpu_layers != 0 else None)
    on_gpu = on_gpu and profile.n_gpu_layers != 0
    started = [s for s in sides if not s.attached]  # an attached server already holds its memory
    kvs = [s.kv_estimate_mib for s in started]
    need = None
    if all(k is not None for k in kvs):
        need = memory_need(info, profile.n_gpu_layers, kvs, on_gpu) if started else 0.0  # type: ignore[arg-type]
    per_device: tuple[DeviceFit, ...] = ()
    if on_gpu and started and all(s.gpu is not None for s in started):
        per_device = device_fits(info, profile.n_gpu_layers, started, probe, vram_budget_mib)
        # the figures said are the tightest GPU's: the first that does not fit, else the one with least to spare
        worst = min(per_device, key=lambda d: (d.fits is not False, (d.free_mib or 0.0) - (d.need_mib or 0.0)))
        need, budget = worst.need_mib, worst.free_mib
        source = f"free VRAM on GPU {worst.gpu} ({worst.name})"
    fits = None if need is None or budget is None else need <= budget * HEADROOM
    if per_device:
        verdicts = [d.fits for d in per_device]
        fits = False if False in verdicts else None if None in verdicts else True

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
        unknown = [s.name for s in sides if s.kv_estimate_mib is None]
        reason = (f"both fit: ~{need:,.0f} of {budget:,.0f} MiB {source}" if fits
                  else f"memory need unknown (no KV estimate for {', '.join(unknown)}): assuming both fit")

    if per_device and chosen == "parallel" and fits:
        reason = "each side on its own GPU: " + ", ".join(
            f"GPU {d.gpu} ~{d.need_mib:,.0f} of {d.free_mib:,.0f} MiB free" for d in per_device)
    schedule = profile.run.schedule
    if chosen == "sequential":
        schedule = Schedule.SOLO
    elif separate(sides) and schedule in ("auto", Schedule.SIMULTANEOUS):
        schedule = Schedule.SEPARATE  # at once, but each on hardware of its own: not contended
    elif schedule == "auto":
        schedule = Schedule.ALTERNATE if profile.run.repeats > 1 else Schedule.SIMULTANEOUS
    return Plan(profile, info, binary, server_version(binary), sides, chosen, reason, schedule,
                need, budget, source, fits, plan_warnings(profile, info), per_device)


def device_fits(info: ModelInfo, n_gpu_layers: int, sides: list[SidePlan], probe: object | None,
                vram_budget_mib: float | None) -> tuple[DeviceFit, ...]:
    """Each GPU's need (the sides placed on it) against its own free VRAM (``--vram-budget``: that much each)."""
    devices = {d.index: d for d in probe_devices(probe)}  # type: ignore[arg-type]
    out = []
    for gpu in sorted({s.gpu for s in sides if s.gpu is not None}):
        on = [s for s in sides if s.gpu == gpu]
        kvs = [s.kv_estimate_mib for s in on]
        need = None if any(k is None for k in kvs) else memory_need(info, n_gpu_layers, kvs, True)  # type: ignore[arg-type]
        dev = devices.get(gpu)
        free = vram_budget_mib if vram_budget_mib is not None else dev.free_mib if dev else None
        out.append(DeviceFit(gpu, dev.name if dev else "not seen by NVML", tuple(s.name for s in on), need, free))
    return tuple(out)


def overcommit(plan: Plan) -> str | None:
    """One line saying why a parallel run will not fit, or None when it fits (or nobody can tell).

    Only a parallel run asked for (``--mode parallel`` or the profile) can be
    one the plan says will not fit: ``auto`` would have chosen sequential.
    """
    if plan.mode != "parallel" or plan.fits is not False or plan.need_mib is None or plan.budget_mib is None:
        return None
    return (f"parallel run will not fit: the servers need ~{plan.need_mib:,.0f} MiB, {plan.budget_source} is "
            f"{plan.budget_mib:,.0f} MiB ({HEADROOM:.0%} usable); pass --force to run anyway, "
            "or --mode sequential")
