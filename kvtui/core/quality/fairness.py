"""Is the comparison fair? What differs between two sides besides their cache types.

A pure function of what each side ran with (its argv and what its log said,
:mod:`kvtui.core.logs.provenance`). Every other side is checked against side 0, as
comparisons and verdicts are; a pair with a reason is "not comparable" and its
verdicts say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kvtui.core.logs.provenance import RanWith, cpu_line_key, cpu_line_keys
from kvtui.core.quality.speculative import speculative_flags
from kvtui.core.record.tomlmodel import key
from kvtui.core.vocab import QUANTIZED_TYPES

# CUDA flash-attention kernels of a default build (llama.cpp issues #28455, #27109, #24485): K type = V type, one of
CUDA_FA_TYPES = ("f16", "q4_0", "q8_0", "bf16", "f32")
CUDA_FIX = "build with -DGGML_CUDA_FA_ALL_QUANTS=ON"
NOT_COMPARABLE = "not comparable"

# speculative decoding: draft models, MTP, ngram and lookup decoding (`llama-server --help`, b10434)
_VALUE_FLAGS = {"ngl": ("-ngl", "--n-gpu-layers", "--gpu-layers"), "threads": ("-t", "--threads"),
                "ctx": ("-c", "--ctx-size"), "threads_batch": ("-tb", "--threads-batch"),
                "device": ("-dev", "--device"), "split_mode": ("-sm", "--split-mode"),
                "tensor_split": ("-ts", "--tensor-split"), "batch": ("-b", "--batch-size"),
                "ubatch": ("-ub", "--ubatch-size"), "flash_attn": ("-fa", "--flash-attn")}
_LABELS = {"ngl": "-ngl", "threads": "threads", "ctx": "n_ctx", "threads_batch": "batch threads",
           "device": "--device", "split_mode": "--split-mode", "tensor_split": "--tensor-split",
           "batch": "-b", "ubatch": "-ub", "flash_attn": "-fa"}


@dataclass(frozen=True, slots=True)
class Fairness:
    """Why another side cannot be compared with side 0 (only pairs with a reason are recorded)."""

    base: str = key("side 0's name")
    other: str = key("the other side's name")
    reasons: tuple[str, ...] = key("each thing that differs besides the cache, or that makes one side's figures "
                                   "not its cache's (e.g. `rotation differs: K+V vs off`)", ())

    @property
    def line(self) -> str:
        """``not comparable: rotation differs: K+V vs off; graph splits differ: 1 vs 3``."""
        return f"{NOT_COMPARABLE}: " + "; ".join(self.reasons)


@dataclass(frozen=True, slots=True)
class SideFacts:
    """What the check needs of one side."""

    name: str
    cache_type_k: str
    cache_type_v: str
    argv: tuple[str, ...] = ()
    ran_with: RanWith | None = None
    n_ctx: int | None = None  # from /props


def speculative_args(argv: Sequence[str]) -> tuple[str, ...]:
    """The speculative-decoding flags in a command line (a draft model, MTP, ngram or lookup decoding)."""
    return speculative_flags(argv)


def arg_values(argv: Sequence[str]) -> dict[str, str]:
    """The last value of each setting the check compares, from a command line."""
    out: dict[str, str] = {}
    names = {flag: name for name, flags in _VALUE_FLAGS.items() for flag in flags}
    for i, a in enumerate(argv):
        flag, eq, value = a.partition("=")
        if flag in names:
            if eq:
                out[names[flag]] = value
            elif i + 1 < len(argv):
                out[names[flag]] = argv[i + 1]
    return out


def on_cuda(rw: RanWith | None) -> bool:
    """The server used a CUDA device."""
    if rw is None:
        return False
    names = [d.split(":", 1)[0] for d in rw.devices] + [b.device for b in (*rw.kv_buffers, *rw.compute_buffers,
                                                                            *rw.model_buffers)]
    return any(n.startswith("CUDA") for n in names)


def side_problems(side: SideFacts) -> list[str]:
    """What makes one side's figures not its cache's, whatever the other side does."""
    out = []
    spec = speculative_args(side.argv)
    if spec:
        out.append(f"{side.name} uses speculative decoding ({', '.join(spec)}): its speed and probabilities are "
                   "not the cache's")
    k, v = side.cache_type_k, side.cache_type_v
    if on_cuda(side.ran_with) and (k != v or k not in CUDA_FA_TYPES):
        out.append(f"{side.name}: K {k} / V {v} has no flash-attention kernel in a default CUDA build, so attention "
                   f"may run on the CPU ({CUDA_FIX})")
    return out


def check_pair(base: SideFacts, other: SideFacts) -> tuple[str, ...]:
    """Every reason the two sides' figures differ for something other than their cache types (empty: fair)."""
    reasons: list[str] = []
    a, b = base.ran_with, other.ran_with
    if a is not None and b is not None:
        if a.graph_splits is not None and b.graph_splits is not None and a.graph_splits != b.graph_splits:
            reasons.append(f"graph splits differ: {a.graph_splits} vs {b.graph_splits} (some op runs on another "
                           "backend on one side)")
        if a.kv_devices and b.kv_devices and a.kv_devices != b.kv_devices:
            reasons.append(f"KV cache on different devices: {'+'.join(a.kv_devices)} vs {'+'.join(b.kv_devices)}")
        if a.kv_on_host != b.kv_on_host:
            which = base.name if a.kv_on_host else other.name
            reasons.append(f"a KV buffer is on the CPU for {which} only")
        only_a, only_b = cpu_line_keys(a) - cpu_line_keys(b), cpu_line_keys(b) - cpu_line_keys(a)
        if only_a or only_b:
            which, rw, keys = (base.name, a, only_a) if only_a else (other.name, b, only_b)
            line = next(ln for ln in rw.cpu_lines if cpu_line_key(ln) in keys)
            reasons.append(f"{which} put work on the CPU: {line}")
        reasons += _rotation(base, other)
        if a.flash_attn and b.flash_attn and a.flash_attn != b.flash_attn:
            reasons.append(f"flash attention differs: {a.flash_attn} vs {b.flash_attn}")
        if a.n_threads and b.n_threads and a.n_threads != b.n_threads:
            reasons.append(f"threads differ: {a.n_threads} vs {b.n_threads}")
        if a.layers_offloaded and b.layers_offloaded and a.layers_offloaded != b.layers_offloaded:
            reasons.append(f"layers on the GPU differ: {a.layers_offloaded} vs {b.layers_offloaded}")
        if a.commit and b.commit and (a.commit, a.build_number) != (b.commit, b.build_number):
            reasons.append(f"builds differ: {a.build_label} vs {b.build_label}")
    ctx_a = base.n_ctx or (a.n_ctx if a else None)
    ctx_b = other.n_ctx or (b.n_ctx if b else None)
    if ctx_a and ctx_b and ctx_a != ctx_b:
        reasons.append(f"n_ctx differs: {ctx_a} vs {ctx_b}")
    va, vb = arg_values(base.argv), arg_values(other.argv)
    for name in _VALUE_FLAGS:
        if name == "ctx" and ctx_a and ctx_b:
            continue
        if name == "flash_attn" and a is not None and b is not None and a.flash_attn and b.flash_attn:
            continue  # the logs say what really ran (kvtui turns -fa on for a quantized V cache)
        if name == "threads" and a is not None and b is not None and a.n_threads and b.n_threads:
            continue
        if va.get(name) != vb.get(name):
            reasons.append(f"{_LABELS[name]} differs: {va.get(name, 'default')} vs {vb.get(name, 'default')}")
    reasons += side_problems(base) + side_problems(other)
    return tuple(dict.fromkeys(reasons))


def _rotation(base: SideFacts, other: SideFacts) -> list[str]:
    """Rotation on one side only, where it could apply to both: only a quantized cache is rotated, so an f16 side
    is not rotated by default and that alone is not a difference; LLAMA_ATTN_ROT_DISABLE on one side is."""
    a, b = base.ran_with, other.ran_with
    assert a is not None and b is not None
    if a.rotation_disabled != b.rotation_disabled:
        off = base if a.rotation_disabled else other
        if off.cache_type_k in QUANTIZED_TYPES or off.cache_type_v in QUANTIZED_TYPES:
            return [f"rotation differs: {a.rotation} vs {b.rotation} (LLAMA_ATTN_ROT_DISABLE=1 on {off.name} only)"]
    for ka, kb, ra, rb in ((base.cache_type_k, other.cache_type_k, a.attn_rot_k, b.attn_rot_k),
                           (base.cache_type_v, other.cache_type_v, a.attn_rot_v, b.attn_rot_v)):
        if ka in QUANTIZED_TYPES and kb in QUANTIZED_TYPES and ra is not None and rb is not None and ra != rb:
            return [f"rotation differs: {a.rotation} vs {b.rotation}"]
    return []


def check_sides(sides: Sequence[SideFacts]) -> list[Fairness]:
    """Each other side against side 0: a :class:`Fairness` for every pair with a reason."""
    if len(sides) < 2:
        return []
    base = sides[0]
    out = []
    for other in sides[1:]:
        reasons = check_pair(base, other)
        if reasons:
            out.append(Fairness(base.name, other.name, reasons))
    return out
