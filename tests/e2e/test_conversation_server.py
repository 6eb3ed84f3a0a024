"""Conversations on the real bundled llama-server and a real chat model (SmolLM2-135M-Instruct, ``chat_model``).

- free: six turns, each side's own replies go back into its own context, so the sides' contexts part;
- forced: every side answers each turn in the same context (the transcript's, or the primary side's replies);
- a loop of replies (the same reply to "the test failed, fix it", turn after turn) flagged live, and
  ``stop_on_loop`` ending that side's conversation at the loop's third turn.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kvtui.core.quality.loops import replies_loop
from kvtui.core.record.model import read_record

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data" / "conversations"
pytestmark = pytest.mark.server


def kvtui(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvtui", *args], capture_output=True, text=True, timeout=900,
                          cwd=cwd)


def run(profile: Path, record: Path, server_bin: Path) -> str:
    proc = kvtui("run", str(profile), "--headless", "--record", str(record), "--server-bin", str(server_bin),
                 cwd=record.parent)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return out


def test_free_conversation_each_side_keeps_its_own_history(tmp_path: Path, server_binary, chat_model,
                                                           no_leftover_servers) -> None:
    record = tmp_path / "free.toml"
    out = run(REPO / "profiles" / "coding-conversation.toml", record, server_binary.path)
    data = read_record(record)
    assert data.status == "done" and data.conversation is not None and data.conversation.mode == "free"
    assert [t.turn for t in data.turns] == [1, 2, 3, 4, 5, 6] and all(t.keep is None for t in data.turns)
    assert [json.loads(t.messages)[-1]["role"] for t in data.turns] == ["user"] * 6
    for side in data.sides:
        runs = side.runs
        assert [r.turn for r in runs] == [1, 2, 3, 4, 5, 6] and [r.prompt for r in runs] == [
            f"turn {k}" for k in range(1, 7)]
        assert all(r.text and r.stop in ("eos", "length") and r.context_n == r.prompt_n + r.cache_n for r in runs)
        for before, now in zip(runs, runs[1:], strict=False):
            # its own reply went into its next request: the context grew by that reply (its tokens again, give or
            # take a few of re-tokenizing) plus the new user message and the template's tokens ...
            grown = now.context_n - before.context_n - before.predicted_n
            assert 3 <= grown <= 40, (side.name, now.turn, grown)
            # ... and came from its own server's prompt cache: the last request and its reply, token for token
            assert now.cache_n >= before.context_n + before.predicted_n - 3, (side.name, now.turn)
        for k in range(1, 7):
            assert f"{side.name}: turn {k}: " in out
    a, b = data.sides
    assert [r.context_n for r in a.runs] != [r.context_n for r in b.runs], "the sides' histories part"
    assert a.runs[0].context_n == b.runs[0].context_n  # ... from the same first turn

    shown = kvtui("show", str(record), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "conversation: free, 6 turns" in shown.stdout
    for side in data.sides:
        last = side.runs[-1]
        row = next(ln for ln in shown.stdout.splitlines() if ln.split()[:2] == ["6", str(last.predicted_n)])
        assert f"{last.context_n}" in row.replace(",", "")
    replayed = kvtui("replay", str(record), "--headless", "--speed", "1000", cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stderr
    assert all(f"{s.name}: turn 6: " in replayed.stdout for s in data.sides)


def test_forced_conversation_gives_every_side_the_same_context(tmp_path: Path, server_binary, chat_model,
                                                               no_leftover_servers) -> None:
    record = tmp_path / "forced.toml"
    run(DATA / "forced.toml", record, server_binary.path)
    data = read_record(record)
    assert data.status == "done" and data.conversation is not None and data.conversation.mode == "forced"
    primary, other = data.sides
    assert [r.turn for r in primary.runs] == [r.turn for r in other.runs] == [1, 2, 3, 4]
    for p, o in zip(primary.runs, other.runs, strict=True):
        assert p.context_n == o.context_n, (p.turn, p.context_n, o.context_n)  # a paired comparison per turn
    # turn 2's history holds the primary side's reply to turn 1; turn 3's the given reply to turn 2
    keep = [t.keep for t in data.turns]
    new = [json.loads(t.messages) for t in data.turns]
    assert keep == [0, 2, 4, 6]
    assert new[1][0] == {"role": "assistant", "content": primary.runs[0].text}
    assert new[2][0]["role"] == "assistant" and new[2][0]["content"].startswith("```python\ndef reverse_string")
    assert new[3][0] == {"role": "assistant", "content": primary.runs[2].text}


def test_loop_of_replies_is_flagged_live_and_stops_its_side(tmp_path: Path, server_binary, chat_model,
                                                            no_leftover_servers) -> None:
    record = tmp_path / "loop.toml"
    out = run(DATA / "reply-loop.toml", record, server_binary.path)
    lines = out.splitlines()
    data = read_record(record)
    assert data.status == "done"
    looped = []
    for side in data.sides:
        texts = [r.text for r in side.runs]
        found = replies_loop(texts)  # found again here, from the recorded replies
        assert side.status == "done", side.error
        if found is None:
            assert side.reply_loop is None
            last = side.runs[-1]
            if last.stop == "loop":  # a repetition loop inside a reply ended this side's conversation there
                assert last.loop is not None and [r.turn for r in side.runs] == list(range(1, len(side.runs) + 1))
            else:  # (b10434: neither side did; b11434: q4_0 at turn 2)
                assert [r.turn for r in side.runs] == [1, 2, 3, 4, 5, 6]
            continue
        looped.append(side.name)
        first, count = found
        last = side.runs[-1]
        # stopped at the loop's third reply: that run's stop is "loop" and the side answered no further turn
        assert count == 3 and first + count == len(side.runs) < 6, (side.name, found, len(side.runs))
        assert last.stop == "loop" and all(r.stop != "loop" for r in side.runs[:-1])
        assert side.reply_loop is not None and (side.reply_loop.first_run, side.reply_loop.runs) == (first, 3)
        turn_a, turn_b = side.runs[first].turn, last.turn
        flagged = f"{side.name}: a loop of replies: turns {turn_a}-{turn_b} gave the same or a near-same reply"
        said = next(k for k, ln in enumerate(lines) if flagged in ln)
        reported = next(k for k, ln in enumerate(lines) if ln.startswith(f"{side.name}: turn {turn_b}: "))
        assert said < reported, "flagged live, as the turn ended, before its figures"
        assert lines[reported].endswith(" · loop")
    assert looped, "the model gave no loop of replies here (it did on b10434: both sides, turns 3-5)"
