"""The demo comparison, headless, on the real bundled llama-server and model."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvtui.core.record.recorder import read_record

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.server


def _server_timings_from_log(log: str) -> list[tuple[int, float]]:
    """(tokens, tokens/s) from each `eval time = ... ms / N tokens (... per second)` line."""
    out = []
    for m in re.finditer(r"^\s*.*?\beval time =\s*([\d.]+) ms /\s*(\d+) (?:tokens|runs)\s*\(\s*[\d.]+ ms per token,\s*"
                         r"([\d.]+) tokens per second\)", log, re.M):
        if "prompt eval" in m.group(0):
            continue
        out.append((int(m.group(2)), float(m.group(3))))
    return out


def test_demo_headless_run_records_both_sides(tmp_path: Path, server_binary, model_path, no_leftover_servers) -> None:
    record = tmp_path / "demo.toml"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "kvtui", "run", str(REPO / "profiles" / "demo.toml"), "--headless",
         "--record", str(record), "--server-bin", str(server_binary.path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert elapsed < 120, f"the demo took {elapsed:.0f} s"
    assert "kvtui result" in proc.stdout and f"record: {record}" in proc.stdout

    data = read_record(record)
    assert data.status == "done" and data.schema == "kvtui.session/2"
    q8, q4 = data.sides
    assert (q8.cache_type_k, q8.cache_type_v) == ("q8_0", "q8_0")
    assert (q4.cache_type_k, q4.cache_type_v) == ("q4_0", "q4_0")
    assert 0 < q4.kv_cache_mib < q8.kv_cache_mib
    for side in (q8, q4):
        assert side.status == "done"
        assert "-ctk" in side.argv and "127.0.0.1" in side.argv and "-np" in side.argv
        assert side.argv[side.argv.index("-fa") + 1] == "on"
        assert side.rss_peak_mib is not None or side.vram_peak_mib is not None
        (run,) = side.runs
        assert run.predicted_n > 0 and run.text and "".join(run.pieces) == run.text
        assert run.stop in ("eos", "length")
        assert len(run.t_ms) == len(run.pieces) and list(run.t_ms) == sorted(run.t_ms)
        # the record's server timings are the server's own: the same figures are in its log
        log = Path(side.log).read_text()
        timings = _server_timings_from_log(log)
        assert timings, "no eval-time lines in the server log"
        n, tps = timings[1]  # the warm-up came first, then the measured run (scoring's one-token requests after)
        assert n == run.predicted_n
        assert run.predicted_per_second == pytest.approx(tps, rel=0.01)
        # the client's own rate agrees with the server's within a reasonable margin
        assert run.client_tokens_per_second == pytest.approx(run.predicted_per_second, rel=0.35)
