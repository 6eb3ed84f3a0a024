"""How one side's reply to a turn differs from the primary side's reply to the same turn.

Per turn, each side's reply is set against the primary's (side 0, the one an agent gets through
``kvtui mirror``): identical, or where it parts and how much of it still lines up. Token ids are compared
where both runs have them; otherwise (a chat stream sends none, an unstreamed reply is one piece) the words
of the two texts, whitespace included, so a reply that differs only in spacing does not count as identical.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kvtui.core.quality.divergence import compare
from kvtui.core.record.model import Run

_WORDS = re.compile(r"\s+|[^\s]+")


@dataclass(frozen=True, slots=True)
class ReplyDivergence:
    """One side's reply against the primary's, for one turn."""

    base: str  # the primary side's name
    unit: str  # "token" | "word"
    first: int | None  # index of the first differing unit; None when identical
    alignment: float  # units in common after alignment, over the longer reply

    @property
    def identical(self) -> bool:
        return self.first is None

    def line(self) -> str:
        """``vs q8_0: identical`` or ``vs q8_0: parts at word 12, 54% aligned``."""
        if self.identical:
            return f"vs {self.base}: identical"
        return f"vs {self.base}: parts at {self.unit} {self.first}, {self.alignment:.0%} aligned"


def word_keys(a: str, b: str) -> tuple[list[int], list[int]]:
    """Both texts as sequences of word keys (words and the whitespace between them), comparable key for key."""
    words: dict[str, int] = {}
    return ([words.setdefault(w, len(words)) for w in _WORDS.findall(a)],
            [words.setdefault(w, len(words)) for w in _WORDS.findall(b)])


def reply_divergence(base_name: str, base: Run, other: Run) -> ReplyDivergence:
    """Compare ``other``'s reply with ``base``'s (the same turn)."""
    if base.ids and other.ids and -1 not in base.ids and -1 not in other.ids:
        d = compare(base.ids, other.ids)
        return ReplyDivergence(base_name, "token", d.first, d.alignment)
    d = compare(*word_keys(base.text, other.text))
    first = None if d.first is None else sum(1 for w in _WORDS.findall(base.text)[: d.first] if not w.isspace())
    return ReplyDivergence(base_name, "word", first, d.alignment)
