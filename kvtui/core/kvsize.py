"""KV-cache size from a GGUF file's metadata, the way llama-server allocates it.

Checked against llama-server b10434's own ``llama_kv_cache: size`` lines (see
``llama-server-facts.md`` §3-4). Per layer that has a KV cache, K holds
``head_count_kv[il] * key_length`` values per cell and V
``head_count_kv[il] * value_length``; a cache type stores ``block`` values in
``bytes`` bytes; the context is rounded up to 256 cells (per stream when the
slots do not share one buffer); sliding-window (SWA) layers keep only the
window plus one micro-batch. Where a model's layout is not understood the
estimate says so (``known=False``, ``total_mib=None``) rather than guess.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import KvtuiError
from .ggufmeta import read_metadata
from .modelinfo import model_bytes
from .vocab import CACHE_TYPES as _CACHE_TYPES

__all__ = [
    "CACHE_TYPES", "KvEstimate", "KvParams", "KvPart", "estimate_from_params", "estimate_kv_mib",
    "model_bytes", "params_from_metadata", "read_kv_params",
]

MIB = 2**20
CELL_PAD = 256  # llama.cpp pads n_ctx and n_ctx_seq to this
AUTO_SLOTS = 4  # llama-server's -np -1 (the default): 4 slots sharing one unified buffer

# (values per block, bytes per block) of every type -ctk/-ctv accept; ggml's block layouts (defined once, in vocab)
CACHE_TYPES: dict[str, tuple[int, int]] = _CACHE_TYPES

_UNVERIFIED = "from llama.cpp's source, not yet checked against a real server"


@dataclass(frozen=True, slots=True)
class _SwaRule:
    """How llama.cpp lays out one architecture's sliding-window layers."""

    period: int  # il is SWA iff il % period < period - 1 (or != 0 when dense_first)
    dense_first: bool = False
    fixed_window: int = 0  # llama.cpp ignores the file's window and uses this
    default_window: int = 0  # used when the file has no sliding_window key
    only_n_layer: int = 0  # exaone4: only the 64-layer model slides
    verified: bool = False


# Hard-coded in llama.cpp's load_hparams; only gemma3 was checked on b10434 (facts §4).
_SWA_RULES: dict[str, _SwaRule] = {
    "gemma3": _SwaRule(6, verified=True),
    "gemma2": _SwaRule(2, default_window=4096),
    "gemma3n": _SwaRule(5),
    "cohere2": _SwaRule(4),
    "olmo2": _SwaRule(4),
    "exaone4": _SwaRule(4, default_window=4096, only_n_layer=64),
    "llama4": _SwaRule(4, fixed_window=8192),  # chunked attention; a window of 0 in the file turns it off
    "gpt-oss": _SwaRule(2),
    "smallthinker": _SwaRule(4, dense_first=True, fixed_window=4096),
    "afmoe": _SwaRule(4),
}
# Architectures whose GGUFs may carry a sliding_window that llama.cpp does not apply.
_NO_SWA = frozenset({"phi3", "llama", "qwen2", "qwen2moe", "qwen3", "qwen3moe", "mistral3", "starcoder2"})
# Architectures with a recurrent state in every layer and no attention KV at all.
_RECURRENT_ONLY = frozenset({"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"})
# Hybrids whose attention layers come every full_attention_interval layers (default 4).
_INTERVAL_HYBRIDS = frozenset({"qwen3next", "qwen35", "qwen35moe"})
# Hybrids where a layer without KV heads is a recurrent layer.
_HKV_ZERO_HYBRIDS = frozenset({"jamba", "plamo2", "granitehybrid", "lfm2", "lfm2moe"})


@dataclass(frozen=True, slots=True)
class KvParams:
    """What the KV-cache size depends on, read once per model file.

    ``k_values``/``v_values`` are the values one cell holds per layer (0 = the
    layer has no KV cache); ``r_values``/``s_values`` the f32 values of a
    recurrent layer's state per sequence. ``problem`` is why no estimate can be
    given ("" when the model is understood).
    """

    arch: str
    n_layer: int = 0
    n_ctx_train: int | None = None
    k_values: tuple[int, ...] = ()
    v_values: tuple[int, ...] = ()
    swa: tuple[bool, ...] = ()
    n_swa: int = 0
    mla: bool = False
    r_values: tuple[int, ...] = ()
    s_values: tuple[int, ...] = ()
    problem: str = ""
    caveats: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class KvPart:
    """One cache as llama-server logs it: ``cells`` per stream, times ``streams``.

    For the ``recurrent`` part, K is the R (convolution) state and V the S state,
    as the server's ``llama_memory_recurrent`` line names them.
    """

    name: str  # "KV", "non-SWA", "SWA", "MLA" or "recurrent"
    cells: int
    streams: int
    layers: int
    type_k: str
    type_v: str
    k_mib: float
    v_mib: float

    @property
    def total_mib(self) -> float:
        return self.k_mib + self.v_mib


@dataclass(frozen=True, slots=True)
class KvEstimate:
    """A KV-cache size estimate; ``total_mib`` is None when ``known`` is False.

    ``total_mib`` counts every part, the recurrent state too (what memory
    planning needs); ``attention_mib`` only what the server's
    ``llama_kv_cache: size`` lines add up to.
    """

    total_mib: float | None
    parts: tuple[KvPart, ...] = ()
    known: bool = True
    reason: str = ""  # why it is unknown; "" when known
    caveats: tuple[str, ...] = ()  # rules used that were not checked on a real server

    @classmethod
    def unknown(cls, reason: str, caveats: tuple[str, ...] = ()) -> KvEstimate:
        """An estimate that declines to give a number.

        Args:
            reason: why, one line.
            caveats: notes carried over from the model's parameters.
        """
        return cls(None, (), False, reason, caveats)

    @property
    def attention_mib(self) -> float | None:
        """The attention KV only, comparable with ``serverlog.parse_log(...).kv_cache_mib``."""
        if not self.known:
            return None
        return sum(p.total_mib for p in self.parts if p.name != "recurrent")

    @property
    def recurrent_mib(self) -> float:
        return sum(p.total_mib for p in self.parts if p.name == "recurrent")

    def describe(self) -> str:
        """One line for people, e.g. ``39.00 MiB (non-SWA 24.00 + SWA 15.00)``.

        Returns:
            The total and its parts, or ``unknown: <reason>``.
        """
        if not self.known or self.total_mib is None:
            return f"unknown: {self.reason}"
        if len(self.parts) <= 1:
            return f"{self.total_mib:.2f} MiB"
        inner = " + ".join(f"{p.name} {p.total_mib:.2f}" for p in self.parts)
        return f"{self.total_mib:.2f} MiB ({inner})"


# -- reading --------------------------------------------------------------------------------------


def read_kv_params(model_path: str | Path) -> KvParams:
    """Read what the KV size depends on from a GGUF file (cached per path, mtime and size).

    Args:
        model_path: a .gguf file.

    Returns:
        The parameters; ``problem`` says when the model is not understood.

    Raises:
        OSError: the file cannot be read.
        KvtuiError: the file is not a GGUF file or its header is truncated.
    """
    p = Path(model_path)
    st = p.stat()
    return _read_cached(str(p), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=32)
def _read_cached(path: str, mtime_ns: int, size: int) -> KvParams:
    return params_from_metadata(read_metadata(path))


def params_from_metadata(meta: Mapping[str, Any]) -> KvParams:
    """Work out per-layer KV widths, SWA layers and recurrent state from GGUF metadata.

    Args:
        meta: key to value, as ``ggufmeta.read_metadata`` returns them.

    Returns:
        The parameters; ``problem`` is set instead of raising when something is missing or unknown.
    """
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        return KvParams("unknown", problem="the GGUF has no general.architecture")

    def get(key: str) -> Any:
        return meta.get(f"{arch}.{key}")

    n_layer = _int(get("block_count"))
    if not n_layer:
        return KvParams(arch, problem=f"{arch}.block_count is missing")
    n_ctx_train = _int(get("context_length"))
    caveats: list[str] = []

    def problem(text: str) -> KvParams:
        return KvParams(arch, n_layer, n_ctx_train, problem=text, caveats=tuple(caveats))

    recurrent_only = arch in _RECURRENT_ONLY
    head_count = _per_layer(get("attention.head_count"), n_layer)
    if head_count == ():
        return problem(f"{arch}.attention.head_count is malformed (a per-layer array of the wrong length?)")
    head_count_kv = _per_layer(get("attention.head_count_kv"), n_layer)
    if head_count_kv is None:  # llama.cpp: n_head_kv defaults to n_head
        head_count_kv = head_count
    if head_count_kv == ():
        return problem(f"{arch}.attention.head_count_kv is malformed (a per-layer array of the wrong length?)")
    if head_count_kv is None:
        if not recurrent_only:
            return problem(f"{arch}.attention.head_count is missing")
        head_count_kv = (0,) * n_layer
    if recurrent_only:
        head_count_kv = (0,) * n_layer

    # which layers have their own KV cache
    has_kv = [h > 0 for h in head_count_kv]
    n_main = n_layer
    nextn = _int(get("nextn_predict_layers")) or 0
    if 0 < nextn < n_layer:  # multi-token-prediction blocks at the end get no cache
        n_main = n_layer - nextn
        caveats.append(f"the last {nextn} layer(s) (multi-token prediction) have no KV cache, {_UNVERIFIED}")
    kv_from_start = n_main
    shared = _int(get("attention.shared_kv_layers"))
    if arch == "gemma3n" and shared is None:
        shared = n_layer - 20  # llama.cpp hard-codes n_layer_kv_from_start = 20 for gemma3n
    if shared and 0 < shared < n_layer:  # these layers reuse an earlier layer's cache
        kv_from_start = min(kv_from_start, n_layer - shared)
        caveats.append(f"the last {n_layer - kv_from_start} layers reuse earlier layers' KV, {_UNVERIFIED}")
    has_kv = [h and il < kv_from_start for il, h in enumerate(has_kv)]

    recurrent = [False] * n_layer
    interval = _int(get("full_attention_interval"))
    if interval is None and arch in _INTERVAL_HYBRIDS:
        interval = 4  # llama.cpp's default for these hybrids
    if interval:
        recurrent = [il < n_main and (il + 1) % interval != 0 for il in range(n_layer)]
        has_kv = [k and not r for k, r in zip(has_kv, recurrent, strict=True)]
        caveats.append(f"hybrid model: only every {interval}th layer has a KV cache, {_UNVERIFIED}")
    elif recurrent_only or arch == "falcon-h1":  # falcon-h1 runs attention and SSM side by side in every layer
        recurrent = [True] * n_layer
    elif arch in ("nemotron_h", "nemotron_h_moe"):
        n_ff = _per_layer(get("feed_forward_length"), n_layer) or (1,) * n_layer
        recurrent = [h == 0 and f == 0 for h, f in zip(head_count_kv, n_ff, strict=True)]
    elif arch in _HKV_ZERO_HYBRIDS:
        recurrent = [h == 0 for h in head_count_kv]

    # K and V widths per head
    mla = False
    embd = _int(get("embedding_length"))
    n_head0 = head_count[0] if head_count else 0
    default_len = embd // n_head0 if embd and n_head0 else None
    key_length = _int(get("attention.key_length")) or default_len
    value_length = _int(get("attention.value_length")) or default_len
    if any(has_kv) and (key_length is None or value_length is None):
        return problem(f"{arch} has neither attention.key_length/value_length nor embedding_length/head_count")
    if get("attention.kv_lora_rank") is not None:
        if get("attention.key_length_mla") is None:
            return problem(f"{arch} uses MLA but its GGUF predates attention.key_length_mla; "
                           "llama.cpp's cache layout for such files is not modelled")
        mla = True  # K stores the compressed latent (kv_lora_rank + rope dims), V is not stored
        caveats.append(f"MLA cache (K holds the compressed latent, no V), {_UNVERIFIED}")

    swa_layout = _swa_layout(meta, arch, n_layer)
    if isinstance(swa_layout, str):
        return problem(swa_layout)
    n_swa, swa, swa_note = swa_layout
    if swa_note:
        caveats.append(swa_note)
    key_swa = _int(get("attention.key_length_swa")) or key_length or 0
    value_swa = _int(get("attention.value_length_swa")) or value_length or 0

    k_values, v_values = [], []
    for il in range(n_layer):
        if not has_kv[il]:
            k_values.append(0)
            v_values.append(0)
            continue
        k_len, v_len = (key_swa, value_swa) if swa[il] else (key_length or 0, value_length or 0)
        k_values.append(head_count_kv[il] * k_len)
        v_values.append(0 if mla else head_count_kv[il] * v_len)

    r_values, s_values = [0] * n_layer, [0] * n_layer
    if any(recurrent):
        widths = _recurrent_widths(get, embd or 0)
        if widths is None:
            caveats.append("the recurrent state is not included: its size keys are missing")
        else:
            r_values = [widths[0] if r else 0 for r in recurrent]
            s_values = [widths[1] if r else 0 for r in recurrent]
            caveats.append(f"the recurrent state size is {_UNVERIFIED}")
    elif any(get(k) is not None for k in ("ssm.conv_kernel", "shortconv.l_cache", "wkv.head_size")):
        caveats.append(f"{arch} has a recurrent state that this estimate does not include")

    return KvParams(arch, n_layer, n_ctx_train, tuple(k_values), tuple(v_values), tuple(swa), n_swa, mla,
                    tuple(r_values), tuple(s_values), "", tuple(caveats))


def _swa_layout(meta: Mapping[str, Any], arch: str, n_layer: int) -> tuple[int, list[bool], str] | str:
    """(window, SWA flag per layer, caveat) or the reason the layout is unknown."""
    none = (0, [False] * n_layer, "")
    if arch in _NO_SWA:
        return none
    raw_window = meta.get(f"{arch}.attention.sliding_window")
    if raw_window is not None and _int(raw_window) is None:
        return f"{arch}.attention.sliding_window is not a single number; per-layer windows are not modelled"
    file_window = _int(raw_window)
    rule = _SWA_RULES.get(arch)
    if rule is None:
        window = file_window or 0
    elif rule.only_n_layer and n_layer != rule.only_n_layer:
        return none
    elif rule.fixed_window:
        on = (file_window is None or file_window > 0) if arch == "llama4" else bool(file_window)
        window = rule.fixed_window if on else 0
    else:
        window = file_window if file_window is not None else rule.default_window
    if window <= 0:
        return none

    pattern = meta.get(f"{arch}.attention.sliding_window_pattern")
    if isinstance(pattern, list):  # the per-layer flags, when the file has them, win
        if len(pattern) != n_layer:
            return f"{arch}.attention.sliding_window_pattern has {len(pattern)} entries for {n_layer} layers"
        return window, [bool(x) for x in pattern], "the sliding-window layers come from the GGUF's per-layer pattern"
    period = _int(pattern) if (rule is None or arch == "cohere2") else None
    if period is None and rule is not None:
        period = rule.period
    if period is None:
        return (f"{arch} has sliding-window attention (window {window}) but kvtui does not know "
                "which of its layers use it")
    dense_first = rule.dense_first if rule else False
    swa = [period == 0 or (il % period != 0 if dense_first else il % period < period - 1) for il in range(n_layer)]
    if rule is not None and rule.verified:
        note = ""
    elif rule is None:
        note = "the sliding-window period comes from the GGUF's sliding_window_pattern"
    else:
        note = f"the sliding-window layout of {arch} (period {period}) is {_UNVERIFIED}"
    return window, swa, note


def _recurrent_widths(get: Callable[[str], Any], embd: int) -> tuple[int, int] | None:
    """(R, S) f32 values per sequence for one recurrent layer, as llama_hparams::n_embd_r/_s count them."""
    head_size = _int(get("wkv.head_size"))
    if head_size:  # RWKV: token-shift state and the wkv state
        shifts = _int(get("token_shift_count")) or 2
        return shifts * embd, embd * head_size
    l_cache = _int(get("shortconv.l_cache"))
    if l_cache:  # LFM2: short-convolution state only
        return embd * (l_cache - 1), 0
    d_conv, d_inner, d_state = (_int(get(f"ssm.{k}")) for k in ("conv_kernel", "inner_size", "state_size"))
    if d_conv is None or d_inner is None or d_state is None:
        return None
    n_group = _int(get("ssm.group_count")) or 0
    return max(d_conv - 1, 0) * (d_inner + 2 * n_group * d_state), d_state * d_inner


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _per_layer(value: Any, n_layer: int) -> tuple[int, ...] | None:
    """A scalar or per-layer key as one value per layer; None if absent, () if malformed."""
    if value is None:
        return None
    if isinstance(value, list):
        if len(value) != n_layer or not all(_int(v) is not None for v in value):
            return ()
        return tuple(value)
    v = _int(value)
    return (v,) * n_layer if v is not None else ()


# -- estimating -----------------------------------------------------------------------------------


def estimate_kv_mib(model_path: str | Path, *, ctx: int, cache_type_k: str = "f16", cache_type_v: str = "f16",
                    n_parallel: int = 1, kv_unified: bool = False, swa_full: bool = False,
                    n_ubatch: int = 512) -> KvEstimate:
    """Estimate the KV cache llama-server would allocate for this model and these flags.

    Never raises: a file that cannot be read gives ``known=False`` with the reason.

    Args:
        model_path: the .gguf file.
        ctx: ``-c``; 0 or less means the model's trained context, as in llama-server.
        cache_type_k: ``-ctk``.
        cache_type_v: ``-ctv``.
        n_parallel: ``-np``; -1 is llama-server's auto (4 slots, unified).
        kv_unified: ``--kv-unified``.
        swa_full: ``--swa-full``.
        n_ubatch: ``-ub``.

    Returns:
        The estimate with its parts.
    """
    try:
        params = read_kv_params(model_path)
    except (OSError, KvtuiError) as exc:
        return KvEstimate.unknown(f"cannot read {model_path}: {exc}")
    return estimate_from_params(params, ctx=ctx, cache_type_k=cache_type_k, cache_type_v=cache_type_v,
                                n_parallel=n_parallel, kv_unified=kv_unified, swa_full=swa_full, n_ubatch=n_ubatch)


def estimate_from_params(params: KvParams, *, ctx: int, cache_type_k: str = "f16", cache_type_v: str = "f16",
                         n_parallel: int = 1, kv_unified: bool = False, swa_full: bool = False,
                         n_ubatch: int = 512) -> KvEstimate:
    """Estimate from already-read parameters (cheap: the runner may call it for many configurations).

    Args:
        params: from ``read_kv_params``.
        ctx: ``-c``; 0 or less means the model's trained context.
        cache_type_k: ``-ctk``.
        cache_type_v: ``-ctv``.
        n_parallel: ``-np``; -1 is llama-server's auto (4 slots, unified).
        kv_unified: ``--kv-unified``.
        swa_full: ``--swa-full``.
        n_ubatch: ``-ub``.

    Returns:
        The estimate; ``known=False`` with a reason where no honest number can be given.
    """
    if params.problem:
        return KvEstimate.unknown(params.problem, params.caveats)
    for flag, t in (("-ctk", cache_type_k), ("-ctv", cache_type_v)):
        if t not in CACHE_TYPES:
            return KvEstimate.unknown(f"{flag} {t} is not a KV cache type llama-server accepts")
    if n_parallel < 1:
        n_seq, unified = AUTO_SLOTS, True
    else:
        n_seq, unified = n_parallel, kv_unified
    if ctx <= 0:
        if not params.n_ctx_train:
            return KvEstimate.unknown("ctx 0 means the trained context, which the GGUF does not give")
        ctx = params.n_ctx_train

    # llama_context: n_ctx = pad(c); each stream gets pad(n_ctx / n_seq) cells unless unified
    n_ctx = _pad(ctx)
    cells, streams = (n_ctx, 1) if unified else (_pad(n_ctx // n_seq), n_seq)
    if cells == 0:
        return KvEstimate.unknown(f"-c {ctx} leaves no cells for each of {n_seq} slots")

    groups: list[tuple[str, int, list[int]]] = []
    kv_layers = [il for il in range(params.n_layer) if params.k_values[il] or params.v_values[il]]
    swa_layers = [il for il in kv_layers if params.swa[il]] if params.n_swa > 0 else []
    if swa_layers:
        # llama_kv_cache_iswa: the window for every sequence that may share the buffer, plus one ubatch
        swa_cells = cells if swa_full else min(cells, _pad(params.n_swa * (n_seq if unified else 1) + n_ubatch))
        groups.append(("non-SWA", cells, [il for il in kv_layers if not params.swa[il]]))
        groups.append(("SWA", swa_cells, swa_layers))
    else:
        groups.append(("MLA" if params.mla else "KV", cells, kv_layers))

    parts: list[KvPart] = []
    for name, n_cells, layers in groups:
        if not layers:
            continue
        k_bytes = v_bytes = 0
        for il in layers:
            k_row = _row_bytes(cache_type_k, params.k_values[il])
            v_row = _row_bytes(cache_type_v, params.v_values[il])
            if k_row is None or v_row is None:
                bad, t = (params.k_values[il], cache_type_k) if k_row is None else (params.v_values[il], cache_type_v)
                return KvEstimate.unknown(f"layer {il} stores {bad} values per cell, not a multiple of "
                                          f"{CACHE_TYPES[t][0]}: llama-server cannot use {t} for this model")
            k_bytes += k_row
            v_bytes += v_row
        scale = n_cells * streams / MIB
        parts.append(KvPart(name, n_cells, streams, len(layers), cache_type_k, cache_type_v,
                            k_bytes * scale, v_bytes * scale))

    rec_layers = [il for il in range(params.n_layer) if params.r_values[il] or params.s_values[il]]
    if rec_layers:
        # llama_memory_recurrent: one f32 state per sequence slot, whatever -c and -ctk/-ctv say
        slots = max(1, n_seq)
        parts.append(KvPart("recurrent", slots, 1, len(rec_layers), "f32", "f32",
                            sum(params.r_values) * 4 * slots / MIB, sum(params.s_values) * 4 * slots / MIB))

    return KvEstimate(sum(p.total_mib for p in parts), tuple(parts), True, "", params.caveats)


def _pad(n: int) -> int:
    return (n + CELL_PAD - 1) // CELL_PAD * CELL_PAD


def _row_bytes(cache_type: str, n_values: int) -> int | None:
    """ggml_row_size: bytes for ``n_values`` values of a type; None if they don't fill whole blocks."""
    block, size = CACHE_TYPES[cache_type]
    if n_values % block:
        return None
    return n_values // block * size
