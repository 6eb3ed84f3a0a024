"""Repetition-loop detection on token streams, and on whole replies of a chat.

A *loop* is the tail of a token sequence being one cycle of ``period`` tokens
repeated: the tail ``tokens[start:]`` has period ``period``, holds at least
``min_repeats`` whole cycles and at least ``min_span`` tokens; for cycles of
1-4 tokens it must span at least 64 tokens, because real text has short exact
runs ("0, 0, 0, 0", "| --- | --- |", "........"). When several periods fit the
tail, the one explaining the longest tail wins, and a period is never reported
when a smaller one explains at least as long a tail: a period-2 loop is not
also a period-4 loop, and a period-2 run too short to count is not reported as
period 6 instead.

Near-loops (a block repeating with a counter changing inside, "Step 7: ...",
"Step 8: ...") are deliberately *not* reported: that shape is exactly a
numbered list, a dict literal, a run of similar test functions or a switch
statement, which are legitimate, and telling them apart needs the meaning of
the text, not its tokens. The turn-level check :func:`replies_loop` (live:
:class:`ReplyLoopWatch`) and the generation length limit catch those runs instead.

:class:`LoopDetector` answers after every token in amortized O(1) (it keeps the
token history, so memory grows with the stream); :func:`find_loop` runs it over a
finished sequence, so both always agree.
"""

from __future__ import annotations

import difflib
import re
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from kvtui.core.record.tomlmodel import key

SHORT_PERIOD = 4  # cycles this short need SHORT_SPAN tokens to count
SHORT_SPAN = 64

_MOD = (1 << 61) - 1  # a Mersenne prime: hashes almost never collide (and are checked)
_BASE = 1_000_003
_WORDS = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True, slots=True)
class Loop:
    """A repetition loop at the end of a token sequence (a run's ``loop`` in the session record)."""

    period: int = key("tokens in one cycle")
    start: int = key("index of the first token of the looping region")
    repeats: int = key("whole cycles in the looping region")
    text: str = key("one cycle, as text (not in records written before kvtui.session/2)", "")


_SETTERS = tuple(getattr(Loop, f).__set__ for f in ("period", "start", "repeats", "text"))


def _new_loop(period: int, start: int, repeats: int, text: str) -> Loop:
    # A frozen dataclass's __init__ goes through object.__setattr__ per field, which
    # is a third of the time per token of a period-1 loop; the slot setters are not.
    loop = object.__new__(Loop)
    set_period, set_start, set_repeats, set_text = _SETTERS
    set_period(loop, period)
    set_start(loop, start)
    set_repeats(loop, repeats)
    set_text(loop, text)
    return loop


class LoopDetector:
    """Streaming loop detector: feed it tokens, it says when the tail loops.

    For period p, a *run* is the stretch of latest positions i with
    ``tokens[i] == tokens[i - p]``. A period that can become a loop has a run of
    at least K tokens (K follows from the thresholds: 32 by default), so only
    runs reaching exactly K are noticed: the last K tokens (a "gram") equal the K
    tokens p back, while the token before them differs. Grams are indexed by
    hash and then by that preceding token, so a long loop adds nothing per token.
    A noticed run is not followed token by token; it is checked once, with
    prefix hashes, at the token where it would be long enough to count, and only
    then followed. At that check a cycle that is itself a repetition (period 4
    made of period 2) is dropped: a smaller period explains that tail.

    Args:
        min_period: the shortest cycle reported.
        max_period: the longest cycle looked for.
        min_repeats: whole cycles needed (at least 2).
        min_span: tokens the looping region must cover (64 for cycles of 1-4).
    """

    __slots__ = ("_minp", "_maxp", "_thr", "_k", "_bk", "_pow", "_subs", "_toks", "_pieces",
                 "_prefix", "_same", "_grams", "_pending", "_newest", "_live", "_loop", "_text_key", "_text")

    def __init__(self, min_period: int = 1, max_period: int = 256, min_repeats: int = 3,
                 min_span: int = 48) -> None:
        if not 1 <= min_period <= max_period:
            raise ValueError("need 1 <= min_period <= max_period")
        if min_repeats < 2:
            raise ValueError("min_repeats must be at least 2")
        self._minp, self._maxp = min_period, max_period
        short = max(min_span, SHORT_SPAN)
        periods = range(max_period + 1)
        self._thr = [max(min_repeats * p, short if p <= SHORT_PERIOD else min_span)
                     for p in periods]
        # A loop of period p has a run of thr(p) - p tokens when it starts counting.
        self._k = min(self._thr[p] - p for p in range(min_period, max_period + 1))
        self._bk = pow(_BASE, self._k, _MOD)
        self._pow = [pow(_BASE, self._thr[p] - p, _MOD) for p in periods]
        # A cycle of p tokens repeats a smaller one iff it has period p // r, r prime.
        self._subs = [[p // r for r in range(2, p + 1) if p % r == 0
                       and all(r % f for f in range(2, r))] for p in periods]
        self.reset()

    def reset(self) -> None:
        """Forget everything fed so far."""
        self._toks: list[int] = []
        self._pieces: list[str] = []
        self._prefix: list[int] = [0]  # hash of tokens[:i] at index i
        self._same = 0  # where the current run of one repeated token began
        self._grams: dict[int, dict[int | None, deque[int]]] = {}  # hash -> prev token -> ends
        # Only the latest run noticed at a period can still be going on: an older one
        # broke before the newer one began.
        self._newest = [-1] * (self._maxp + 1)  # period -> start of its latest run
        self._pending: dict[int, list[int]] = {}  # length due -> periods to check then
        self._live: dict[int, int] = {}  # period -> start, for loops going on now
        self._loop: Loop | None = None
        self._text_key: tuple[int, int] = (0, 0)
        self._text = ""

    @property
    def loop(self) -> Loop | None:
        """The loop reported by the latest ``feed`` (None when the tail does not loop)."""
        return self._loop

    @property
    def count(self) -> int:
        """How many tokens were fed since the last reset."""
        return len(self._toks)

    def feed(self, token_id: int, piece: str = "") -> Loop | None:
        """Take the next token and report the loop the sequence now ends in.

        Args:
            token_id: the token's id.
            piece: the token's text, used for ``Loop.text``.

        Returns:
            The loop (the same one, with growing ``repeats``, while it goes on),
            or None when the tail does not loop.
        """
        p = self._advance(token_id, piece)
        if not p:
            self._loop = None
            return None
        start = self._live[p]
        repeats = (len(self._toks) - start) // p
        old = self._loop
        if old is None or old.repeats != repeats or old.period != p or old.start != start:
            self._loop = _new_loop(p, start, repeats, self._cycle_text(p, start))
        return self._loop

    def _cycle_text(self, period: int, start: int) -> str:
        # The text only depends on where the cycle is, so it is joined once per loop.
        if self._text_key != (period, start):
            self._text_key = (period, start)
            self._text = "".join(self._pieces[start:start + period])
        return self._text

    def _advance(self, tok: int, piece: str) -> int:
        """Append one token; return the loop's period, or 0 when there is none."""
        toks, prefix, live = self._toks, self._prefix, self._live
        i = len(toks)
        toks.append(tok)
        self._pieces.append(piece)
        whole = (prefix[-1] * _BASE + tok) % _MOD
        prefix.append(whole)
        if i and tok != toks[i - 1]:
            self._same = i
        for p in live:
            if toks[i - p] != tok:  # rare: build the list only when a loop broke
                for q in [q for q in live if toks[i - q] != tok]:
                    del live[q]
                break
        k = self._k
        if i >= k - 1:
            grams, bk = self._grams, self._bk
            old = i - self._maxp - 1  # this gram end just left the window
            if old >= k - 1:
                oh = (prefix[old + 1] - prefix[old + 1 - k] * bk) % _MOD
                og = grams[oh]
                oprev = toks[old - k] if old >= k else None
                ends = og[oprev]
                ends.popleft()
                if not ends:
                    del og[oprev]
                    if not og:
                        del grams[oh]
            h = (whole - prefix[i + 1 - k] * bk) % _MOD
            prev = toks[i - k] if i >= k else None
            g = grams.get(h)
            if g is None:
                grams[h] = {prev: deque((i,))}
            else:
                ends = g.get(prev)
                if ends is None or len(g) > 1:
                    self._notice(i, prev, g)
                if ends is None:
                    g[prev] = deque((i,))
                else:
                    ends.append(i)
        due = self._pending.pop(i + 1, None)
        if due:
            newest, thr = self._newest, self._thr
            for p in due:
                s = newest[p]
                # Most runs died long ago: a newer run at p, or the newest token, says so.
                if s + thr[p] == i + 1 and toks[i - p] == tok and self._holds(p, s, i + 1):
                    live[p] = s
        if not live:
            return 0
        # Of the loops going on, the longest period explains the longest tail: were
        # a smaller one as long, the cycles would share their gcd as a period
        # (Fine and Wilf), and cycles that repeat a smaller one never get here.
        return max(live) if len(live) > 1 else next(iter(live))

    def _notice(self, i: int, prev: int | None, group: dict[int | None, deque[int]]) -> None:
        """Schedule a check of every run that reached exactly K at token i."""
        k, minp, thr, pending, newest = self._k, self._minp, self._thr, self._pending, self._newest
        same = self._same + k - 1  # a gram ending here or later is one token repeated
        for gp, ends in group.items():
            if gp == prev:
                continue  # same preceding token: that run was already longer than K
            for j in ends:
                d = i - j
                # Inside one long run of a token, every distance matches; period 1
                # explains them all, and they break when it breaks.
                if d >= minp and (j < same or d == 1):
                    newest[d] = j - k + 1
                    due = j - k + 1 + thr[d]  # the length at which this run would be a loop
                    if due in pending:
                        pending[due].append(d)
                    else:
                        pending[due] = [d]

    def _holds(self, p: int, s: int, n: int) -> bool:
        """Whether tokens[s:n] still has period p, with a cycle that repeats nothing smaller."""
        pre = self._prefix
        e = self._pow[p]  # n - s == thr(p) here: compare tokens[s + p:n] with tokens[s:n - p]
        if (pre[n] - pre[n - p] - (pre[s + p] - pre[s]) * e) % _MOD:
            return False
        toks = self._toks
        if toks[s + p:n] != toks[s:n - p]:
            return False  # a hash collision
        cycle = toks[s:s + p]
        return all(cycle[g:] != cycle[:-g] for g in self._subs[p])


def find_loop(token_ids: Sequence[int], *, min_period: int = 1, max_period: int = 256,
              min_repeats: int = 3, min_span: int = 48,
              pieces: Sequence[str] | None = None) -> Loop | None:
    """Find the loop a finished sequence ends in.

    Args:
        token_ids: the whole sequence.
        min_period, max_period, min_repeats, min_span: as for :class:`LoopDetector`.
        pieces: each token's text, to fill ``Loop.text``; same length as token_ids.

    Returns:
        The loop that reaches the end of the sequence, or None.
    """
    if pieces is not None and len(pieces) != len(token_ids):
        raise ValueError("pieces and token_ids differ in length")
    det = LoopDetector(min_period, max_period, min_repeats, min_span)
    p = 0
    for idx, tok in enumerate(token_ids):
        p = det._advance(tok, pieces[idx] if pieces is not None else "")
    if not p:
        return None
    start = det._live[p]
    return Loop(p, start, (len(token_ids) - start) // p, det._cycle_text(p, start))


def _similar(a: list[str], b: list[str], threshold: float) -> bool:
    if not a or not b:
        return False  # an empty reply is a failure of its own, not a repeat
    if a == b:
        return True
    sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
    # The cheap upper bounds reject most pairs before the quadratic ratio().
    return (sm.real_quick_ratio() >= threshold and sm.quick_ratio() >= threshold
            and sm.ratio() >= threshold)


def replies_loop(replies: list[str], *, min_run: int = 3,
                 similarity: float = 0.9) -> tuple[int, int] | None:
    """Find the first run of consecutive near-identical replies in a conversation.

    Args:
        replies: the assistant's replies, in order.
        min_run: how many consecutive similar replies make a loop.
        similarity: word-level difflib ratio at which two neighbours count as the same.

    Returns:
        (index of the run's first reply, number of replies in the run), or None.
    """
    words = [_WORDS.findall(r) for r in replies]
    start = 0
    for i in range(1, len(words) + 1):
        if i < len(words) and _similar(words[i - 1], words[i], similarity):
            continue
        if i - start >= min_run:
            return start, i - start
        start = i
    return None


class ReplyLoopWatch:
    """:func:`replies_loop` live, one reply at a time: the run of near-identical replies ending at the latest one.

    Each new reply is compared with the one before only (the same neighbour rule as ``replies_loop``), so a
    long conversation costs one comparison per turn.

    Args:
        min_run, similarity: as for :func:`replies_loop`.
    """

    def __init__(self, min_run: int = 3, similarity: float = 0.9) -> None:
        self.min_run, self.similarity = min_run, similarity
        self._last: list[str] | None = None
        self._start = 0  # index of the first reply of the current run of similar ones
        self.count = 0  # replies fed

    def feed(self, reply: str) -> tuple[int, int] | None:
        """Take the next reply; returns (index of the run's first reply, replies in the run) when that run of
        near-identical replies, ending with this one, is ``min_run`` long or longer, else None."""
        words = _WORDS.findall(reply)
        if self._last is None or not _similar(self._last, words, self.similarity):
            self._start = self.count
        self._last = words
        self.count += 1
        run = self.count - self._start
        return (self._start, run) if run >= self.min_run else None


def piece_key(text: str) -> int | None:
    """A stand-in token id for a piece whose id the server did not send (a chat stream asks for no logprobs).

    Chat streams carry token ids only with ``logprobs``, which would make the
    server softmax and sort its whole vocabulary at every token (10+ ms for a
    262k vocabulary) and so slow down the generation being measured. A chat
    event usually carries one token's text (24 of 24 on b10434; a reasoning or
    tool-call parser may merge some), so equal texts stand for equal tokens and
    verbatim loops are still found, live. Keys stay clear of real ids (< 2**32).
    """
    return (1 << 40) + zlib.crc32(text.encode("utf-8")) if text else None
