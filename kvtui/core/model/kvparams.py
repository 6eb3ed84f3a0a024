"""What the KV-cache size of a model depends on, read from its GGUF metadata.

Per layer: whether it keeps a cache, how many values K and V hold per cell,
whether it slides (SWA) and what recurrent state it carries. The rules per
architecture family (SWA patterns, hybrids, MLA) mirror llama.cpp's
``load_hparams``; only gemma3 was checked on a real server (facts §4).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from kvtui.core.model.gguf import read_metadata

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

    heads = _kv_heads(get, arch, n_layer)
    if isinstance(heads, str):
        return problem(heads)
    head_count, head_count_kv = heads
    has_kv, n_main = _layers_with_cache(get, arch, n_layer, head_count_kv, caveats)
    recurrent, has_kv = _recurrent_layers(get, arch, n_layer, n_main, head_count_kv, has_kv, caveats)
    widths = _head_widths(get, arch, head_count, has_kv, caveats)
    if isinstance(widths, str):
        return problem(widths)
    key_length, value_length, mla = widths
    swa_layout = _swa_layout(meta, arch, n_layer)
    if isinstance(swa_layout, str):
        return problem(swa_layout)
    n_swa, swa, swa_note = swa_layout
    if swa_note:
        caveats.append(swa_note)
    key_swa = _int(get("attention.key_length_swa")) or key_length
    value_swa = _int(get("attention.value_length_swa")) or value_length

    k_values, v_values = [], []
    for il in range(n_layer):
        k_len, v_len = (key_swa, value_swa) if swa[il] else (key_length, value_length)
        k_values.append(head_count_kv[il] * k_len if has_kv[il] else 0)
        v_values.append(head_count_kv[il] * v_len if has_kv[il] and not mla else 0)
    r_values, s_values = _recurrent_state(get, arch, _int(get("embedding_length")) or 0, recurrent, caveats)
    return KvParams(arch, n_layer, n_ctx_train, tuple(k_values), tuple(v_values), tuple(swa), n_swa, mla,
                    tuple(r_values), tuple(s_values), "", tuple(caveats))


def _kv_heads(get: Callable[[str], Any], arch: str, n_layer: int) -> tuple[tuple[int, ...], tuple[int, ...]] | str:
    """(heads, KV heads) per layer, or the reason they cannot be read; recurrent-only models have no KV heads."""
    recurrent_only = arch in _RECURRENT_ONLY
    head_count = _per_layer(get("attention.head_count"), n_layer)
    if head_count == ():
        return f"{arch}.attention.head_count is malformed (a per-layer array of the wrong length?)"
    head_count_kv = _per_layer(get("attention.head_count_kv"), n_layer)
    if head_count_kv is None:  # llama.cpp: n_head_kv defaults to n_head
        head_count_kv = head_count
    if head_count_kv == ():
        return f"{arch}.attention.head_count_kv is malformed (a per-layer array of the wrong length?)"
    if head_count_kv is None and not recurrent_only:
        return f"{arch}.attention.head_count is missing"
    if recurrent_only or head_count_kv is None:
        head_count_kv = (0,) * n_layer
    return head_count or (), head_count_kv


def _layers_with_cache(get: Callable[[str], Any], arch: str, n_layer: int, head_count_kv: tuple[int, ...],
                       caveats: list[str]) -> tuple[list[bool], int]:
    """Which layers keep a cache of their own, and how many layers are the main model's.

    Multi-token-prediction blocks at the end get no cache; shared-KV layers (gemma3n) reuse an earlier one's.
    """
    n_main = n_layer
    nextn = _int(get("nextn_predict_layers")) or 0
    if 0 < nextn < n_layer:
        n_main = n_layer - nextn
        caveats.append(f"the last {nextn} layer(s) (multi-token prediction) have no KV cache, {_UNVERIFIED}")
    kv_from_start = n_main
    shared = _int(get("attention.shared_kv_layers"))
    if arch == "gemma3n" and shared is None:
        shared = n_layer - 20  # llama.cpp hard-codes n_layer_kv_from_start = 20 for gemma3n
    if shared and 0 < shared < n_layer:
        kv_from_start = min(kv_from_start, n_layer - shared)
        caveats.append(f"the last {n_layer - kv_from_start} layers reuse earlier layers' KV, {_UNVERIFIED}")
    return [h > 0 and il < kv_from_start for il, h in enumerate(head_count_kv)], n_main


def _recurrent_layers(get: Callable[[str], Any], arch: str, n_layer: int, n_main: int,
                      head_count_kv: tuple[int, ...], has_kv: list[bool],
                      caveats: list[str]) -> tuple[list[bool], list[bool]]:
    """(recurrent layer flags, KV layer flags) for the hybrid and recurrent families."""
    interval = _int(get("full_attention_interval"))
    if interval is None and arch in _INTERVAL_HYBRIDS:
        interval = 4  # llama.cpp's default for these hybrids
    if interval:
        recurrent = [il < n_main and (il + 1) % interval != 0 for il in range(n_layer)]
        caveats.append(f"hybrid model: only every {interval}th layer has a KV cache, {_UNVERIFIED}")
        return recurrent, [k and not r for k, r in zip(has_kv, recurrent, strict=True)]
    if arch in _RECURRENT_ONLY or arch == "falcon-h1":  # falcon-h1: attention and SSM side by side in every layer
        return [True] * n_layer, has_kv
    if arch in ("nemotron_h", "nemotron_h_moe"):
        n_ff = _per_layer(get("feed_forward_length"), n_layer) or (1,) * n_layer
        return [h == 0 and f == 0 for h, f in zip(head_count_kv, n_ff, strict=True)], has_kv
    if arch in _HKV_ZERO_HYBRIDS:
        return [h == 0 for h in head_count_kv], has_kv
    return [False] * n_layer, has_kv


def _head_widths(get: Callable[[str], Any], arch: str, head_count: tuple[int, ...], has_kv: list[bool],
                 caveats: list[str]) -> tuple[int, int, bool] | str:
    """(key length, value length, MLA?) per KV head, or the reason they are unknown.

    MLA (deepseek2 and kin): K stores the compressed latent (kv_lora_rank + rope dims) and V is not stored.
    """
    embd = _int(get("embedding_length"))
    n_head0 = head_count[0] if head_count else 0
    default_len = embd // n_head0 if embd and n_head0 else None
    key_length = _int(get("attention.key_length")) or default_len
    value_length = _int(get("attention.value_length")) or default_len
    if any(has_kv) and (key_length is None or value_length is None):
        return f"{arch} has neither attention.key_length/value_length nor embedding_length/head_count"
    mla = False
    if get("attention.kv_lora_rank") is not None:
        if get("attention.key_length_mla") is None:
            return (f"{arch} uses MLA but its GGUF predates attention.key_length_mla; "
                    "llama.cpp's cache layout for such files is not modelled")
        mla = True
        caveats.append(f"MLA cache (K holds the compressed latent, no V), {_UNVERIFIED}")
    return key_length or 0, value_length or 0, mla


def _recurrent_state(get: Callable[[str], Any], arch: str, embd: int, recurrent: list[bool],
                     caveats: list[str]) -> tuple[list[int], list[int]]:
    """(R, S) f32 values per sequence for each layer (0 where the layer keeps no recurrent state)."""
    n_layer = len(recurrent)
    if any(recurrent):
        widths = _recurrent_widths(get, embd)
        if widths is None:
            caveats.append("the recurrent state is not included: its size keys are missing")
            return [0] * n_layer, [0] * n_layer
        caveats.append(f"the recurrent state size is {_UNVERIFIED}")
        return [widths[0] if r else 0 for r in recurrent], [widths[1] if r else 0 for r in recurrent]
    if any(get(k) is not None for k in ("ssm.conv_kernel", "shortconv.l_cache", "wkv.head_size")):
        caveats.append(f"{arch} has a recurrent state that this estimate does not include")
    return [0] * n_layer, [0] * n_layer


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


