"""A side's reply to a turn set against the primary's: by token ids where both have them, else by words."""

from __future__ import annotations

from kvtui.core.events import RequestSent, RunFinished, SessionStarted, SideInfo, TurnStarted
from kvtui.core.quality.replies import reply_divergence
from kvtui.core.record.model import Run
from kvtui.core.view import SessionState
from kvtui.core.vocab import StopReason


def _run(text: str, ids: tuple[int, ...] = ()) -> Run:
    pieces = (text,) if not ids else tuple("x" for _ in ids)
    return Run(run=0, stop=StopReason.EOS, text=text, pieces=pieces, t_ms=tuple(0.0 for _ in pieces),
               ids=ids or (-1,), turn=1)


def test_identical_replies_by_words():
    d = reply_divergence("q8_0", _run("def f(s): return s[::-1]"), _run("def f(s): return s[::-1]"))
    assert d.identical and d.line() == "vs q8_0: identical"


def test_parting_replies_name_the_first_differing_word():
    d = reply_divergence("q8_0", _run("def reverse(s): return s[::-1]  # done"),
                         _run("def reverse(s): return ''.join(reversed(s))"))
    assert d.unit == "word" and d.first == 3  # def, reverse(s):, return, then they part
    assert d.line().startswith("vs q8_0: parts at word 3, ")


def test_spacing_alone_is_a_difference():
    assert not reply_divergence("a", _run("x  y"), _run("x y")).identical


def test_token_ids_win_when_both_runs_have_them():
    d = reply_divergence("q8_0", _run("abc", (1, 2, 3, 4)), _run("abd", (1, 2, 9, 4)))
    assert (d.unit, d.first, d.alignment) == ("token", 2, 0.75)


def _turns(mode: str, schedule_first: int) -> SessionState:
    """Two sides answer turn 1 (``schedule_first`` finishes first); the replies part at word 3 (0-based), 6 of 7 units alike."""
    st = SessionState()
    sides = tuple(SideInfo(name, name, name, ()) for name in ("q8_0", "q4_0"))
    st.apply(SessionStarted(0.0, "t", "parallel", "", "simultaneous", sides, "/m", "m", 1.0, "a", "/b", "v", "now",
                            conversation=mode))
    st.apply(TurnStarted(0.1, 1, "reverse a string", 1, 0, ({"role": "user", "content": "reverse a string"},)))
    texts = {0: "def f(s): return s[::-1]", 1: "def f(s): return ''.join(reversed(s))"}
    for i in (0, 1):
        st.apply(RequestSent(0.2, i, 0, "turn 1", turn=1))
    for i in (schedule_first, 1 - schedule_first):
        st.apply(RunFinished(1.0 + i, i, Run(run=0, stop=StopReason.EOS, text=texts[i], turn=1)))
    return st


def test_the_view_sets_each_turns_reply_against_the_primarys_once_both_are_in():
    for first in (0, 1):  # alternate (primary first) or simultaneous (either first)
        st = _turns("mirror", first)
        (side, d), = st.new_divergences
        assert side == 1 and d.line() == "vs q8_0: parts at word 3, 86% aligned"
        assert st.sides[1].pending[-1] == "  ↳ vs q8_0: parts at word 3, 86% aligned\n"
    assert _turns("free", 0).new_divergences == []  # own histories: the contexts differ by design
