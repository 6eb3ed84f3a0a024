"""Short probe servers: start llama-server with one K/V pair, read what it ran with, stop it.

``kvtui doctor --server-bin PATH`` uses these to measure, per K/V pair, whether
flash attention and the KV cache stay on the GPU with that build (a pair the
build has no flash-attention kernel for puts attention on the CPU: more graph
splits than the f16 pair, or a CPU line in the log), and whether rotation is on
by default for a quantized cache.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx

from kvtui.core.errors import ServerError
from kvtui.core.logs.provenance import RanWith, cpu_line_key, cpu_line_keys
from kvtui.core.profiles import Profile, Side
from kvtui.core.server.locate import ServerBinary, help_flags
from kvtui.core.server.process import LlamaServer, server_args, side_env

PROBE_PAIRS: tuple[tuple[str, str], ...] = (
    ("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0"), ("bf16", "bf16"),
    ("q8_0", "q4_0"), ("q4_0", "q8_0"), ("q5_0", "q5_0"), ("q4_1", "q4_1"), ("iq4_nl", "iq4_nl"),
)
PROBE_CTX = 1024


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One pair's probe: what the server ran with, or why it did not start."""

    cache_type_k: str
    cache_type_v: str
    ran_with: RanWith | None
    error: str | None = None


async def probe_pair(binary: ServerBinary, model: Path, k: str, v: str, *, n_gpu_layers: int = 99,
                     attn_rotation: str = "default", log_dir: Path | None = None,
                     timeout_s: float = 180.0) -> ProbeResult:
    """Start one server with ``-ctk k -ctv v -fa on`` and a small context, read its log, stop it."""
    profile = Profile(name="probe", model=str(model), ctx_size=PROBE_CTX, n_gpu_layers=n_gpu_layers,
                      flash_attn="on", sides=(Side("a", k, v), Side("b", k, v)), prompts=())
    side = Side(f"{k}-{v}", k, v, attn_rotation=attn_rotation)
    folder = log_dir or Path(tempfile.mkdtemp(prefix="kvtui-probe-"))
    log = folder / f"probe-{k}-{v}{'-norot' if attn_rotation == 'off' else ''}.log"
    srv = LlamaServer(binary, server_args(profile, side, model, help_flags(binary)), log, side_env(side))
    try:
        async with httpx.AsyncClient() as http:
            await srv.start()
            ready = await srv.wait_ready(http, timeout_s)
        return ProbeResult(k, v, ready.ran_with)
    except ServerError as exc:
        return ProbeResult(k, v, None, str(exc))
    finally:
        await srv.stop()


def probe_pairs(binary: ServerBinary, model: Path, pairs: tuple[tuple[str, str], ...] = PROBE_PAIRS,
                **kw: object) -> list[ProbeResult]:
    """Probe each pair in turn (one server at a time)."""
    async def go() -> list[ProbeResult]:
        return [await probe_pair(binary, model, k, v, **kw) for k, v in pairs]  # type: ignore[arg-type]
    return asyncio.run(go())


def on_fast_path(result: ProbeResult, base: RanWith | None) -> tuple[bool | None, str]:
    """Whether a pair ran flash attention where the f16 pair did (None: unknown), and the evidence."""
    rw = result.ran_with
    if rw is None:
        return None, result.error or "did not start"
    if rw.flash_attn != "enabled":
        return False, f"flash attention {rw.flash_attn or '?'}"
    extra = cpu_line_keys(rw) - (cpu_line_keys(base) if base is not None else frozenset())
    if extra:
        return False, next(ln for ln in rw.cpu_lines if cpu_line_key(ln) in extra)
    if base is not None and base.graph_splits is not None and rw.graph_splits is not None \
            and rw.graph_splits > base.graph_splits:
        return False, f"graph splits {rw.graph_splits} > {base.graph_splits} for f16"
    return True, f"graph splits {rw.graph_splits}, KV on {'+'.join(rw.kv_devices) or '?'}"
