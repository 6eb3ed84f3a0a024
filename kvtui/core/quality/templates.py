"""Template repetition: text stuck in one skeleton while only numbers or one word change.

``7 x 10 = 10``, ``7 x 11 = 10``, ``7 x 12 = 10``, ... never repeats a line, so the
verbatim :mod:`kvtui.core.quality.loops` detector rightly stays silent, yet a reader calls
the model stuck. This module finds that shape and reports it as a *quiet* signal
(a pattern, not a failure): the same shape also describes a multiplication table
someone asked for, a run of similar test functions or a dispatch table, and
telling those apart takes the meaning of the text, which no token rule has.

How it reads the text (a finished reply or a stream, the same way):

* **Unit.** The text is split into lexemes: a number (a run of digits), a word (a
  run of letters and ``_``), a run of spaces, a line break, or one symbol. Each lexeme
  gets a *shape*: every number is ``#``, every word is ``W``, the rest stay
  themselves. A template is a tail whose shapes repeat with a fixed period, found by
  running :class:`~kvtui.core.quality.loops.LoopDetector` on the shapes. The period is in
  lexemes, so one unit covers a line (``7 x # = #\\n``), a block of lines (an
  ``elif``/``return`` pair), a sentence among others on one line (``Add W and
  stir.``) and an item inside a line (``*p#,``); ``lines`` in the result says how
  many line breaks one cycle holds.
* **Slots.** Cycle by cycle, each lexeme is compared with the one a period back. A
  change is *predictable* when a number stays, keeps its step, or goes back to the
  value two cycles back, and when a word goes back to the value two cycles back
  (``water``, ``flour``, ``water``); a number's first change is always allowed (its
  step shows in the next cycle). Any number of predictable changes may go on. At
  most one position may change unpredictably, the *free slot* (``The cat is happy.
  The dog is happy.``), and then the skeleton must keep at least
  :data:`MIN_FIXED_WORDS` words that never change, so that a shopping list (``- W``)
  or a CSV of names is no template. A second unpredictable position ends the run: a
  table whose rows hold data. A cycle equal to the one before it, or to the one two
  before, ends it too: that is verbatim repetition, the other detector's business.
* **Thresholds** (chosen on the labelled corpus in ``tests/data/loops/``; the README
  gives the figures): at least :data:`MIN_REPEATS` whole cycles in a row; a cycle
  inside one line (a list item, a sentence) must also cover :data:`MIN_INLINE_CHARS`
  characters, since one line holds short lists legitimately (a header of twenty
  columns ``c0`` .. ``c19``). The run must reach the newest lexeme (whitespace after
  it aside): the pattern is the tail of the text, not something it left behind.

:class:`TemplateDetector` answers after every piece of text in amortized O(1) per
lexeme; :func:`find_template` runs it over a finished reply, so both always agree.
It needs no token ids, only the streamed text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from kvtui.core.quality.loops import LoopDetector
from kvtui.core.record.tomlmodel import key

MIN_REPEATS = 8  # whole cycles of the skeleton in a row
MIN_INLINE_CHARS = 160  # characters a run of cycles inside one line must cover (two 80-column lines)
MIN_FIXED_WORDS = 2  # unchanging words a skeleton needs when one position changes freely
MAX_PERIOD = 256  # the longest cycle looked for, in lexemes

NUMBER, WORD = -1, -2  # shapes of numbers and words; spaces, line breaks and symbols get ids >= 0
_SPACE = -3  # the kind of a run of spaces, which the next piece may continue
_LEX = re.compile(r"(\d+)|([^\W\d]+)|([^\S\n]+)|(.)", re.DOTALL)  # a line break is a symbol of its own
_KIND = (0, NUMBER, WORD, _SPACE, 0)  # by match group; 0: a symbol, always whole
_STEP_DIGITS = 18  # longer numbers are compared as text only


@dataclass(frozen=True, slots=True)
class TemplateRepeat:
    """A run of one skeleton at the end of a text, only numbers or one word changing."""

    skeleton: str = key("one cycle as text; a number that kept changing is `#`, a word `…`")
    lines: int = key("line breaks in one cycle: 1 for a repeated line, 2 for a two-line block, 0 within a line")
    period: int = key("lexemes (numbers, words, symbols, line breaks, runs of spaces) in one cycle")
    repeats: int = key("whole cycles in the run")
    start: int = key("index of the piece where the run's first whole line (or item) begins")
    slots: int = key("positions of the cycle that changed in its last cycles")


class TemplateDetector:
    """Streaming template detector: feed it the text pieces, it says when the tail is a template.

    Only whole lexemes are judged: a piece that ends inside a number or a word waits
    for the next piece, so the answer does not depend on how the text was tokenized.
    It keeps the lexemes it has read, so memory grows with the stream (as for
    :class:`~kvtui.core.quality.loops.LoopDetector`).

    Args:
        min_repeats: whole cycles needed.
        min_inline_chars: characters needed for a run of cycles without a line break.
        min_fixed_words: unchanging words a skeleton needs when one position changes freely.
        max_period: the longest cycle looked for, in lexemes.
    """

    def __init__(self, min_repeats: int = MIN_REPEATS, min_inline_chars: int = MIN_INLINE_CHARS,
                 min_fixed_words: int = MIN_FIXED_WORDS, max_period: int = MAX_PERIOD) -> None:
        if min_repeats < 3:
            raise ValueError("min_repeats must be at least 3")
        if max_period < 1:
            raise ValueError("max_period must be at least 1")
        self._min_repeats, self._min_chars = min_repeats, min_inline_chars
        self._min_fixed, self._maxp = min_fixed_words, max_period
        self.reset()

    def reset(self) -> None:
        """Forget everything fed so far."""
        self._shapes = LoopDetector(1, self._maxp, 3, 0)  # loops of shapes; the thresholds are applied here
        self._ids: dict[str, int] = {}  # text of spaces, line breaks and symbols -> shape id
        self._lex: list[str] = []  # lexeme texts
        self._shape: list[int] = []  # their shapes
        self._tok: list[int] = []  # the piece each lexeme begins in
        self._end: list[int] = []  # characters up to the end of each lexeme
        self._chars = 0
        self._pending: list[str] = []  # the last lexeme, while the next piece may continue it
        self._pending_kind = 0
        self._pending_tok = 0
        self._n = 0  # pieces fed
        self._key = (0, 0)  # (period, start) of the shape loop followed; (0, 0) for none
        self._last: TemplateRepeat | None = None  # the latest template found, even one the text left
        self._phase = 0  # a lexeme where a cycle begins, as a reader counts cycles
        self._diff1 = self._diff2 = False  # this cycle so far differs from the one before / two before
        self._restart(0)

    def _restart(self, run: int) -> None:
        """Begin a new run of fitting cycles at lexeme ``run``."""
        self._run = run
        self._slot = -1  # offset in the cycle of the free slot, or -1
        self._free_at = -1  # the latest lexeme where the slot took a new value
        self._changed: dict[int, int] = {}  # offset -> the latest lexeme where it changed
        self._repeat: TemplateRepeat | None = None

    @property
    def repeat(self) -> TemplateRepeat | None:
        """The template reported by the latest ``feed`` (None when the tail is none)."""
        return self._repeat

    @property
    def last(self) -> TemplateRepeat | None:
        """The latest template found since the last reset, even when the text has left it."""
        return self._last

    @property
    def count(self) -> int:
        """How many pieces were fed since the last reset."""
        return self._n

    @property
    def lexemes(self) -> int:
        """How many whole lexemes the pieces fed so far made (the last one may still be growing)."""
        return len(self._lex)

    def feed(self, piece: str) -> TemplateRepeat | None:
        """Take the next piece of text and report the template the text now ends in.

        Args:
            piece: the token's text.

        Returns:
            The template run (a new object whenever it grows by a cycle), or None when
            the tail is not one.
        """
        tok = self._n
        self._n += 1
        pending = self._pending
        for m in _LEX.finditer(piece):
            kind = _KIND[m.lastindex]
            if pending:
                if kind and kind == self._pending_kind and m.start() == 0:
                    pending.append(m.group())
                    continue
                self._emit("".join(pending), self._pending_kind, self._pending_tok)
                pending.clear()
            if kind:
                pending.append(m.group())
                self._pending_kind, self._pending_tok = kind, tok
            else:
                self._emit(m.group(), 0, tok)
        return self._repeat

    def _emit(self, text: str, kind: int, tok: int) -> None:
        """Take one whole lexeme."""
        if kind == NUMBER or kind == WORD:
            shape = kind
        else:
            shape = self._ids.get(text)
            if shape is None:
                shape = self._ids[text] = len(self._ids)
        i = len(self._lex)
        self._lex.append(text)
        self._shape.append(shape)
        self._tok.append(tok)
        self._chars += len(text)
        self._end.append(self._chars)
        # LoopDetector's own step, without building a Loop per lexeme (as find_loop does).
        p = self._shapes._advance(shape, "")
        if not p:
            self._key = (0, 0)
            if not text.isspace():  # whitespace after a template (a line break) does not end it yet
                self._repeat = None
            return
        s = self._shapes._live[p]
        if (p, s) != self._key:
            # A new loop of shapes, reported once it has 3 cycles: follow its cycles so far.
            self._key = (p, s)
            self._align(p, s)
            self._restart(s)
            for j in range(s + p, i + 1):
                self._step(j, p, s)
        else:
            self._step(i, p, s)
        if (i + 1 - self._phase) % p == 0:
            self._judge(i, p, s)

    def _align(self, p: int, s: int) -> None:
        """Count cycles as a reader does: a block of lines from its least indented line (``elif``,
        not the ``return`` below it), and items inside a line from the spaces after a symbol
        (``*p1, *p2,``: each item ends with its comma, which arrives at once, and ``The cat is
        happy.`` reads as a sentence)."""
        lex, shape = self._lex, self._shape

        def at(j: int) -> int:  # lexeme j of the cycle s .. s + p - 1, counted round
            return j - p if j >= s + p else j + p if j < s else j

        cycle = range(s, s + p)
        # Line starts (blank lines aside), and of those the least indented one.
        starts = [j + 1 for j in cycle if lex[j] == "\n" and lex[at(j + 1)] != "\n"]
        if starts:
            self._phase = min(starts, key=lambda j: len(lex[at(j)]) if lex[at(j)].isspace() else 0)
            return
        spaces = [j for j in cycle if lex[j].isspace()]
        after_symbol = [j for j in spaces if shape[at(j - 1)] >= 0 and not lex[at(j - 1)].isspace()]
        self._phase = (after_symbol or spaces or [s])[0]

    def _step(self, i: int, p: int, s: int) -> None:
        """Follow lexeme i of the shape loop (period p from s); end the run where it stops fitting."""
        o = (i - self._phase) % p
        if o == 0:
            self._diff1 = self._diff2 = False
        if i - p >= self._run and not self._fits(i, p, s):
            # A second position changing freely. A new run may begin a cycle back, with this
            # change as its free slot, if the rest of this cycle fits that; else it begins here.
            cycle = i - o
            self._restart(cycle - p)
            if not all(self._fits(j, p, s) for j in range(cycle, i + 1)):
                self._restart(cycle)
        if o == p - 1 and i + 1 - p > self._run:
            # A cycle equal to the one before (or to the one two before) is verbatim
            # repetition, the other detector's business: the template run begins again after it.
            if not self._diff1:
                self._restart(i + 1 - p)
            elif not self._diff2 and i + 1 - 3 * p >= s:
                self._restart(i + 1 - 2 * p)

    def _fits(self, i: int, p: int, s: int) -> bool:
        """Whether lexeme i keeps the run going (noting what changed); False for a second free slot."""
        lex = self._lex
        x, a = lex[i], lex[i - p]
        b = lex[i - 2 * p] if i - 2 * p >= s else None
        if b is not None and x != b:
            self._diff2 = True
        if x == a:
            return True
        self._diff1 = True
        o = (i - self._phase) % p
        self._changed[o] = i
        if x == b:
            return True  # back to the value two cycles back: it alternates
        if self._shape[i] == NUMBER and (b is None or (max(len(x), len(a), len(b)) <= _STEP_DIGITS
                                                       and int(x) - int(a) == int(a) - int(b))):
            return True  # a number's first change, or one that keeps its step
        if self._slot < 0 or self._slot == o:
            self._slot = o
            if b is not None:  # a word's first change may still turn out to alternate
                self._free_at = i
            return True
        return False

    def _judge(self, i: int, p: int, s: int) -> None:
        """At the end of a cycle (as a reader counts them): is the run a template worth reporting?"""
        first = i + 1 - p  # the newest cycle
        run = self._run
        lex, shape, changed = self._lex, self._shape, self._changed
        if self._free_at >= run:
            fixed = sum(1 for j in range(first, i + 1) if shape[j] == WORD and (j - self._phase) % p not in changed)
            if fixed < self._min_fixed:
                # Too little skeleton around a free slot; from the cycle of its last new value
                # on, the run may still be a template without one.
                run = self._free_at - (self._free_at - first) % p
        begin = run + (first - run) % p  # the first whole cycle of the run
        repeats = (i + 1 - begin) // p
        if repeats < self._min_repeats:
            self._repeat = None
            return
        lines = lex[first:i + 1].count("\n")
        if not lines and self._end[i] - self._end[begin] + len(lex[begin]) < self._min_chars:
            self._repeat = None
            return
        inline_space = not lines and lex[first].isspace()  # an item inside a line begins after its spaces
        start = self._tok[begin + inline_space]
        old = self._repeat
        if old is not None and old.repeats == repeats and old.start == start:
            return
        recent = i - self._min_repeats * p  # positions that changed lately are shown as slots
        slots = {o for o, j in changed.items() if j > recent}
        parts = [("#" if shape[j] == NUMBER else "…") if (j - self._phase) % p in slots else lex[j]
                 for j in range(first, i + 1)]
        if inline_space:
            parts.append(parts.pop(0))
        self._repeat = self._last = TemplateRepeat("".join(parts), lines, p, repeats, start, len(slots))


def find_template(pieces: Sequence[str] | str, *, anywhere: bool = False,
                  **params: int) -> TemplateRepeat | None:
    """Find the template a finished text ends in, or the last one it had.

    The text's last number, word or run of spaces counts only once something follows
    it, as in a stream, so a reply's last item may be missing from ``repeats`` when the
    reply ends without a line break or a symbol.

    Args:
        pieces: the text's pieces (tokens) in order; a plain string is read one
            character per piece, so ``start`` is then a character offset.
        anywhere: report the last template seen anywhere in the text, as a live run
            last showed it, even when the text went on past it (a list closed by ``}``).
        params: as for :class:`TemplateDetector`.

    Returns:
        The template run that reaches the end of the text (or, with ``anywhere``, the
        last one reported along it), or None.
    """
    det = TemplateDetector(**params)
    for piece in pieces:
        det.feed(piece)
    return det.last if anywhere else det.repeat
