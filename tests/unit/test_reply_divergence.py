"""A side's reply to a turn set against the primary's: by token ids where both have them, else by words."""

from __future__ import annotations

from kvtui.core.quality.replies import reply_divergence
from kvtui.core.record.model import Run
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
