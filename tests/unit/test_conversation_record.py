"""A conversation's events: what the recorder keeps, what a replay gives back, what the view shows."""

from __future__ import annotations

import json
from pathlib import Path

from kvtui.core.events import (
    ReplyLoopDetected,
    RequestSent,
    RunFinished,
    SessionFinished,
    SessionStarted,
    SideFinished,
    SideInfo,
    TokenReceived,
    TurnStarted,
)
from kvtui.core.record.accumulator import RunAccumulator
from kvtui.core.record.model import Host, read_record
from kvtui.core.record.recorder import SessionRecorder
from kvtui.core.record.replay import record_events
from kvtui.core.server.wire import Timings
from kvtui.core.view import FIGURES_MARK, TURN_MARK, SessionState

USERS = ["write a function that reverses a string", "add a docstring", "add a test"]
STUCK = "Here's a test of the function with a few test cases: reverse_string('abc') == 'cba'."


def conversation_events() -> list:
    """Two sides, three turns of a free conversation; side 1 gives the same reply every turn."""
    events: list = [SessionStarted(0.0, "c", "parallel", "test", "alternate",
                                   (SideInfo("q8_0", "q8_0", "q8_0", ()), SideInfo("q4_0", "q4_0", "q4_0", ())),
                                   "/m.gguf", "m", 1.0, "llama", "/bin/x", "b1", "2026-12-01T00:00:00",
                                   conversation="free")]
    t = 1.0
    for k, user in enumerate(USERS, 1):
        events.append(TurnStarted(t, k, user, 1, None, ({"role": "user", "content": user},), None))
        for side in (0, 1):
            sent = RequestSent(t, side, k - 1, f"turn {k}", 0, 42, "alternate", turn=k)
            acc = RunAccumulator(k - 1, t, f"turn {k}", 0, 42, "alternate", turn=k)
            text = f"reply {k} of side {side}" if side == 0 else STUCK
            events += [sent, TokenReceived(t + 0.1, side, k - 1, 5, text)]
            acc.add(t + 0.1, 5, text)
            run = acc.finish(t + 0.2, "eos", timings=Timings(prompt_n=7, prompt_per_second=100.0, predicted_n=5,
                                                                  predicted_per_second=50.0, cache_n=20 * k))
            if side == 1 and k == 3:
                events.append(ReplyLoopDetected(t + 0.2, 1, 1, 3))
            events.append(RunFinished(t + 0.2, side, run))
            t += 0.5
    events += [SideFinished(t, 0, "done"), SideFinished(t, 1, "done"), SessionFinished(t, "done")]
    return events


def test_record_keeps_turns_and_replay_gives_them_back(tmp_path: Path) -> None:
    rec = SessionRecorder(tmp_path / "c.toml", {"name": "c"}, Host())
    for e in conversation_events():
        rec.handle(e)
    back = read_record(tmp_path / "c.toml")
    assert back.conversation is not None and back.conversation.mode == "free"
    assert [tr.turn for tr in back.turns] == [1, 2, 3] and all(tr.keep is None for tr in back.turns)
    assert json.loads(back.turns[1].messages) == [{"role": "user", "content": "add a docstring"}]
    runs = back.sides[1].runs
    assert [r.turn for r in runs] == [1, 2, 3] and [r.prompt for r in runs] == ["turn 1", "turn 2", "turn 3"]
    assert [r.context_n for r in runs] == [27, 47, 67] and runs[0].cache_n == 20
    assert back.sides[1].reply_loop is not None and (back.sides[1].reply_loop.first_run,
                                                     back.sides[1].reply_loop.runs) == (0, 3)
    assert back.sides[0].reply_loop is None

    replayed = record_events(back)
    turns = [e for e in replayed if isinstance(e, TurnStarted)]
    assert [(e.turn, e.user) for e in turns] == list(enumerate(USERS, 1))
    loops = [e for e in replayed if isinstance(e, ReplyLoopDetected)]
    assert [(e.side, e.first_turn, e.turns) for e in loops] == [(1, 1, 3)]
    k = replayed.index(loops[0])
    assert isinstance(replayed[k + 1], RunFinished) and replayed[k + 1].result.turn == 3  # live order: before it
    sent = [e for e in replayed if isinstance(e, RequestSent) and e.side == 0]
    assert [e.turn for e in sent] == [1, 2, 3]


def test_view_keeps_every_turn_in_the_pane_text() -> None:
    state = SessionState()
    for e in conversation_events():
        state.apply(e)
    s = state.sides[1]
    text = "".join(s.pending)
    assert not s.reset_text and state.conversation == "free" and state.turn == 3
    for k, user in enumerate(USERS, 1):
        assert f"{TURN_MARK}turn {k} · {user}\n" in text
    assert text.count(STUCK) == 3 and text.count(FIGURES_MARK) == 3
    assert "5 tok · tg 50.0 t/s · pp 100.0 t/s · context 67 · eos" in text
    assert s.reply_loop == (1, 3) and s.context_n == 67 and s.turn == 3
    assert s.shown == len(text) and text[s.reply_offset:].startswith(STUCK)


def test_free_conversation_speeds_are_not_paired_where_contexts_differ() -> None:
    from kvtui.core.quality.summary import fairness

    recorded = read_record(Path(__file__).resolve().parents[1] / "data" / "sessions" / "conversation.toml")
    (flag,) = fairness(recorded)
    a, b = recorded.sides
    differ = sum(1 for x, y in zip(a.runs, b.runs, strict=True) if x.context_n != y.context_n)
    assert differ and f"the contexts differ in {differ} of 6 turns" in flag.line
    assert flag.line.startswith("not comparable: a free conversation")
    rec = SessionRecorder(None, {"name": "c"}, Host())
    for e in conversation_events():  # the same context on both sides in every turn: nothing to flag
        rec.handle(e)
    assert fairness(rec.record) == []
