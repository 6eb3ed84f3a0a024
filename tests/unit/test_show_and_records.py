"""kvtui show, replay --headless and run --from on real recorded sessions; damaged records."""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from kvtui.cli import main
from kvtui.core.errors import RecordError
from kvtui.core.profiles import load_profile
from kvtui.core.record.recorder import profile_from_record, read_record

SESSIONS = Path(__file__).resolve().parents[1] / "data" / "sessions"
REPO = Path(__file__).resolve().parents[2]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_show_one_record(capsys) -> None:
    code, out, _ = run_cli(capsys, "show", str(SESSIONS / "demo.toml"))
    assert code == 0
    assert "K q8_0 / V q8_0" in out and "K q4_0 / V q4_0" in out
    assert "q4_0 vs q8_0:" in out and "KV -47%" in out and "clean finish: q8_0, q4_0" in out


def test_show_loops_and_crash(capsys) -> None:
    code, out, _ = run_cli(capsys, "show", str(SESSIONS / "loop.toml"), str(SESSIONS / "crash.toml"))
    assert code == 0
    lines = out.splitlines()
    # each looping side's row names its cycle, where it began and how often it repeated (not just the file name)
    assert any(ln.startswith("q8_0 ") and "26-tok from 0 x3" in ln and " loop " in ln for ln in lines), out
    assert any(ln.startswith("q4_0 ") and "24-tok from 0 x3" in ln for ln in lines), out
    assert "status failed" in out and "error" in out
    assert "across records" in out


@pytest.mark.parametrize("fmt", ["md", "csv", "json"])
def test_show_exports(capsys, fmt: str) -> None:
    code, out, _ = run_cli(capsys, "show", str(SESSIONS / "demo.toml"), str(SESSIONS / "crash.toml"), "--format", fmt)
    assert code == 0
    if fmt == "json":
        rows = json.loads(out)
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(out)))
    else:
        lines = out.strip().splitlines()
        assert lines[0].startswith("| record | side") and lines[1].startswith("|---")
        rows = lines[2:]
    assert len(rows) == 4
    if fmt != "md":
        assert {r["side"] for r in rows} == {"q8_0", "q4_0"}
        assert float(next(r for r in rows if r["side"] == "q4_0")["kv_mib"]) < 10


def test_show_never_modifies(tmp_path: Path, capsys) -> None:
    copy = tmp_path / "r.toml"
    shutil.copy(SESSIONS / "demo.toml", copy)
    before = copy.read_bytes(), copy.stat().st_mtime_ns
    run_cli(capsys, "show", str(copy))
    assert (copy.read_bytes(), copy.stat().st_mtime_ns) == before


def test_truncated_record_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    raw = (SESSIONS / "demo.toml").read_bytes()
    cut = tmp_path / "cut.toml"
    cut.write_bytes(raw[: len(raw) // 2])
    code, out, err = run_cli(capsys, "show", str(cut))
    assert code == 2 and "Traceback" not in err
    first = err.splitlines()[0]
    assert first.startswith("kvtui: error: ") and "cut.toml" in first


def test_wrong_type_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text((SESSIONS / "demo.toml").read_text().replace('predicted_n = 160', 'predicted_n = "many"', 1))
    with pytest.raises(RecordError, match=r"runs\[0\]\.predicted_n has the wrong type"):
        read_record(bad)


def test_replay_headless_prints_the_same_summary(capsys) -> None:
    code, out, _ = run_cli(capsys, "replay", str(SESSIONS / "demo.toml"), "--headless", "--speed", "1000")
    assert code == 0
    assert "replay of demo" in out and "q4_0 vs q8_0:" in out and "KV -47%" in out


def test_replay_rejects_bad_speed(capsys) -> None:
    code, _, err = run_cli(capsys, "replay", str(SESSIONS / "demo.toml"), "--speed", "0", "--headless")
    assert code == 2 and "--speed" in err


def test_run_from_record_repeats_the_profile() -> None:
    profile, _ = profile_from_record(SESSIONS / "demo.toml")
    demo = load_profile(REPO / "profiles" / "demo.toml")
    assert profile.sides == demo.sides and profile.prompt == demo.prompt and profile.sampling == demo.sampling
    assert profile.ctx_size == demo.ctx_size
    # the record predates [run] score and score_positions: it takes their defaults, the demo scores 64 positions
    assert profile.run.score and profile.run.score_positions == 256
    assert replace(profile.run, score_positions=demo.run.score_positions) == demo.run
    assert profile.model.endswith(".gguf")  # the model as it was resolved for the run


def test_run_from_and_profile_together_is_bad_input(capsys) -> None:
    code, _, err = run_cli(capsys, "run", "profiles/demo.toml", "--from", str(SESSIONS / "demo.toml"), "--headless")
    assert code == 2 and "not both" in err
