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

from dataclasses import dataclass
from pathlib import Path

from kvtui.core.errors import KvtuiError
from kvtui.core.model.info import model_bytes
from kvtui.core.model.kvparams import KvParams, params_from_metadata, read_kv_params
from kvtui.core.vocab import CACHE_TYPES as _CACHE_TYPES

__all__ = [
    "CACHE_TYPES", "KvEstimate", "KvParams", "KvPart", "estimate_from_params", "estimate_kv_mib",
    "model_bytes", "params_from_metadata", "read_kv_params",
]

MIB = 2**20
CELL_PAD = 256  # llama.cpp pads n_ctx and n_ctx_seq to this
AUTO_SLOTS = 4  # llama-server's -np -1 (the default): 4 slots sharing one unified buffer

# (values per block, bytes per block) of every type -ctk/-ctv accept; ggml's block layouts (defined once, in vocab)
CACHE_TYPES: dict[str, tuple[int, int]] = _CACHE_TYPES

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
