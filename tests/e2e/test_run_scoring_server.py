"""Scoring inside `kvtui run` on the real bundled llama-server and model: the base's generation teacher-forced on
every side once generation ends, in the record, in the headless output and in `kvtui show`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from kvtui.core.record.recorder import read_record

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.server


def _profile(tmp_path: Path, n_predict: int, q8_args: str = "") -> Path:
    text = (REPO / "profiles" / "demo.toml").read_text()
    text = text.replace("n_predict = 160", f"n_predict = {n_predict}")
    if q8_args:
        text = text.replace('name = "q8_0"\ncache_type_k = "q8_0"\ncache_type_v = "q8_0"\n',
                            f'name = "q8_0"\ncache_type_k = "q8_0"\ncache_type_v = "q8_0"\nextra_args = {q8_args}\n')
    path = tmp_path / "profile.toml"
    path.write_text(text)
    return path


def _run(tmp_path: Path, server_binary, profile: Path, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    record = tmp_path / "run.toml"
    proc = subprocess.run([sys.executable, "-m", "kvtui", "run", str(profile), "--headless", "--record", str(record),
                           "--server-bin", str(server_binary.path), *extra],
                          capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, record


def test_a_two_side_run_records_its_scores_and_show_prints_them(tmp_path: Path, server_binary,
                                                               no_leftover_servers) -> None:
    proc, record = _run(tmp_path, server_binary, _profile(tmp_path, 24))
    assert "scoring: q8_0's generation" in proc.stdout and "scoring done in" in proc.stdout

    data = read_record(record)
    q8, q4 = data.sides
    scoring = data.scoring
    assert scoring is not None and scoring.status == "done" and scoring.base == "q8_0"
    assert scoring.sides == ("q4_0",) and scoring.prompts == ("palindromes.py",) and scoring.top_k == 1000
    assert scoring.positions == min(q8.runs[0].predicted_n, 64) > 0  # the base's tokens, up to the demo's cap
    assert scoring.t_start >= q4.runs[0].t_end and scoring.seconds > 0  # type: ignore[operator]
    (score,) = data.scores
    assert score.side == "q4_0" and score.base == "q8_0" and score.positions == scoring.positions
    assert score.kld_mean >= 0 and score.kld_median <= score.kld_p90 <= score.kld_p99 <= score.kld_max
    assert 0 < score.same_top_pct <= 100 and score.ppl_ratio is not None and score.ppl_base >= 1  # type: ignore[operator]
    # the servers were still running while scoring, and stopped afterwards as usual
    assert all(s.t_exit is not None and s.t_exit >= scoring.t_end for s in data.sides)  # type: ignore[operator]

    shown = subprocess.run([sys.executable, "-m", "kvtui", "show", str(record)], capture_output=True, text=True,
                           timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "quality: every side against q8_0" in shown.stdout
    assert re.search(rf"mean KLD\s*│\s*{score.kld_mean:.5f} ± {score.kld_mean_unc:.5f}", shown.stdout), shown.stdout
    assert f"{score.same_top_pct:.2f} ± {score.same_top_pct_unc:.2f}" in shown.stdout


def test_no_score_skips_scoring(tmp_path: Path, server_binary, no_leftover_servers) -> None:
    proc, record = _run(tmp_path, server_binary, _profile(tmp_path, 4), "--no-score")
    data = read_record(record)
    assert data.scoring is None and data.scores == []
    assert "scoring:" not in proc.stdout and "quality:" not in proc.stdout
    assert data.profile["run"]["score"] is False


def test_a_speculative_side_is_not_scored_and_the_run_goes_on(tmp_path: Path, server_binary,
                                                              no_leftover_servers) -> None:
    profile = _profile(tmp_path, 8, q8_args='["--spec-type", "ngram-simple"]')
    proc, record = _run(tmp_path, server_binary, profile)
    data = read_record(record)
    assert data.status == "done" and all(s.status == "done" for s in data.sides)
    scoring = data.scoring
    assert scoring is not None and scoring.status == "skipped" and data.scores == []
    assert "speculative decoding" in scoring.error  # type: ignore[operator]  # the base itself speculates
    assert "scoring skipped: q8_0: --spec-type ngram-simple turns on speculative decoding" in proc.stdout
