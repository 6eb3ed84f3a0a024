"""The loop detector live, on the real bundled llama-server and model.

The bundled Gemma 3 270M is a base model: given a chat-style turn at temperature 0 it
echoes the turn again and again (tests/data/sessions/loop-profile.toml). With
``run.stop_on_loop = true`` each side must be stopped with reason "loop" long before
``n_predict``; with it off, the same generation runs to ``n_predict`` and the record
still says where the loop was.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kvtui.core.quality.loops import find_loop
from kvtui.core.record.recorder import read_record

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "tests" / "data" / "sessions" / "loop-profile.toml"
N_PREDICT = 400  # the profile's n_predict
pytestmark = pytest.mark.server


def _run(profile: Path, record: Path, server_bin: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kvtui", "run", str(profile), "--headless", "--record", str(record),
         "--server-bin", str(server_bin)],
        capture_output=True, text=True, timeout=400, cwd=cwd,
    )


def test_stop_on_loop_stops_each_side_early(tmp_path: Path, server_binary, no_leftover_servers) -> None:
    assert "stop_on_loop = true" in PROFILE.read_text() and f"n_predict = {N_PREDICT}" in PROFILE.read_text()
    record = tmp_path / "loop.toml"
    proc = _run(PROFILE, record, server_binary.path, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out

    data = read_record(record)
    assert data.status == "done", out
    assert [s.name for s in data.sides] == ["q8_0", "q4_0"]
    for side in data.sides:
        assert side.status == "done", side.error
        (run,) = side.runs
        ids, counts = run.ids, run.counts
        assert run.stop == "loop", (side.name, run.stop, run.text[-300:])
        # cut short: the record's predicted_n is the client's count then, which is the
        # server's own count at the last chunk received
        assert len(ids) == len(counts) == len(run.pieces) > 0
        assert list(counts) == sorted(counts) and run.predicted_n == counts[-1]
        # the README's claim: both sides stop within 110 of the 400 tokens (b10434: 104-107, b11434: 72-78)
        assert counts[-1] <= 110, f"{side.name} stopped only after {counts[-1]} tokens"
        assert -1 not in ids  # every chunk named its token, so the detector saw them all

        loop = run.loop
        assert loop is not None and loop.text, "the loop and its cycle's text are recorded"
        # The detector stopped the stream at the token where it first reported the loop,
        # so the loop the record holds is the one the recorded ids end in.
        found = find_loop(ids, pieces=run.pieces)
        assert found is not None, run.text
        assert (found.period, found.start, found.repeats) == (loop.period, loop.start, loop.repeats)
        assert loop.repeats >= 3 and loop.start + loop.repeats * loop.period <= len(ids)
        cycle = found.text
        assert cycle and run.text.endswith(cycle * 2)

        # the headless console said so, in the side's own line
        line = (f"repetition loop: {loop.period}-token cycle from token {loop.start}, "
                f"x{loop.repeats} so far")
        assert any(side.name in ln and line in ln for ln in out.splitlines()), out
        assert "stop: loop" in out


def test_without_stop_on_loop_the_run_goes_to_n_predict(tmp_path: Path, server_binary,
                                                        no_leftover_servers) -> None:
    text = PROFILE.read_text()
    assert "stop_on_loop = true" in text
    profile = tmp_path / "loop-nostop.toml"
    profile.write_text(text.replace("stop_on_loop = true", "stop_on_loop = false"))
    record = tmp_path / "nostop.toml"
    proc = _run(profile, record, server_binary.path, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "repetition loop:" in out

    data = read_record(record)
    assert data.status == "done", out
    for side in data.sides:
        (run,) = side.runs
        assert run.stop == "length", (side.name, run.stop)
        assert run.predicted_n == N_PREDICT and run.counts[-1] == N_PREDICT
        loop = run.loop
        assert loop is not None and loop.repeats >= 3
        # The record keeps the last loop reported during the run. The detector saw the
        # same ids as the record, so replaying them up to where that loop last grew
        # finds the same loop.
        ids = run.ids
        assert -1 not in ids
        end = loop.start + loop.repeats * loop.period
        assert end <= len(ids)
        prefix = find_loop(ids[:end])
        assert prefix is not None
        assert (prefix.period, prefix.start) == (loop.period, loop.start)
        # and a loop that went on to the end is the one the whole run ends in
        whole = find_loop(ids)
        if whole is not None and whole.start == loop.start:
            assert (whole.period, whole.repeats) == (loop.period, loop.repeats)


def test_chat_runs_find_loops_without_token_ids(tmp_path: Path, server_binary, no_leftover_servers) -> None:
    """A chat stream carries no token ids unless logprobs are asked for (which would slow the server at every
    token), so loops are found on the streamed pieces: the base model, given a chat turn, echoes the generic
    template and is stopped early on both sides."""
    text = PROFILE.read_text()
    profile = tmp_path / "loop-chat.toml"
    profile.write_text(text.replace('endpoint = "completion"', 'endpoint = "chat"').replace(
        '''text = """<start_of_turn>user
Write a Python function `is_palindrome(s)` that ignores case and punctuation, with two pytest tests.<end_of_turn>
<start_of_turn>model
"""''', 'text = "Write a Python function `is_palindrome(s)` with two pytest tests."'))
    assert 'endpoint = "chat"' in profile.read_text() and "<start_of_turn>" not in profile.read_text()
    record = tmp_path / "chat.toml"
    proc = _run(profile, record, server_binary.path, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "has no chat template" in out
    data = read_record(record)
    for side in data.sides:
        (run,) = side.runs
        assert set(run.ids) == {-1}, "chat runs ask for no logprobs: the ids are unknown"
        assert run.stop == "loop", (side.name, run.stop, run.text[-300:])
        assert run.predicted_n < N_PREDICT
        assert run.text.endswith(run.pieces[-1])
    # never "identical" for two different texts: without ids the streamed pieces are compared, and it says so
    (comparison,) = data.comparisons
    a, b = (side.runs[0] for side in data.sides)
    assert comparison.basis == "pieces"
    assert comparison.identical == (a.pieces == b.pieces)
    assert "compared by streamed pieces: the chat stream sent no token ids" in out
