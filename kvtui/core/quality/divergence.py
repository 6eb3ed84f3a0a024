"""How two generations of the same prompt differ: where they part, how much they agree.

With greedy sampling (temperature 0, same seed) two configurations produce the
same tokens until the cache's rounding flips an argmax; from that point on the
texts differ. ``first_divergence`` finds that token; ``alignment`` measures how
much of the two sequences still lines up after it. With ``n_probs`` the server
sends each token's top-N probabilities, so on the common prefix (identical
context on both sides) kvtui compares the two distributions directly: top-1
agreement and a lower bound of the KL divergence from the two top-N lists
(``quality.kld``: tokens missing from one list are bounded, never given an
invented probability). It is a rough figure, over the few positions two free
generations share; ``kvtui score`` measures quality properly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

from kvtui.core.quality.kld import Position, compare_position


@dataclass(frozen=True, slots=True)
class Divergence:
    """One pair of runs (same prompt and seed), ``other`` against ``base``."""

    first: int | None  # index of the first differing token; None when identical
    prefix_agreement: float  # share of positions equal before the first divergence
    alignment: float  # matched tokens / longer length, after aligning the two sequences
    top1_agreement: float | None = None  # over the common prefix, from n_probs
    kl_mean: float | None = None  # lower bound of the mean KL(base || other) over the common prefix, nats
    kl_top_n: int | None = None  # the bound came from top-N lists of this length (the shortest)
    kl_positions: int | None = None  # over this many positions

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"prefix_agreement": round(self.prefix_agreement, 4),
                                "alignment": round(self.alignment, 4), "identical": self.first is None}
        if self.first is not None:
            d["first_divergence"] = self.first
        if self.top1_agreement is not None:
            d["top1_agreement"] = round(self.top1_agreement, 4)
        if self.kl_mean is not None:
            d["kl_mean"] = round(self.kl_mean, 6)
            d["kl_top_n"] = self.kl_top_n
            d["kl_positions"] = self.kl_positions
        return d


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first position where the sequences differ (a length difference counts)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def alignment(a: Sequence[int], b: Sequence[int]) -> float:
    """Tokens in common after alignment (difflib), over the longer sequence."""
    if not a and not b:
        return 1.0
    sm = SequenceMatcher(None, list(a), list(b), autojunk=False)
    return sum(m.size for m in sm.get_matching_blocks()) / max(len(a), len(b))


def kl_lower_bound(p: Mapping[int, float], q: Mapping[int, float]) -> float:
    """A lower bound of KL(p || q) from two top-N lists (token id -> probability), in nats.

    Tokens in both lists count exactly; the rest of the vocabulary is bounded as
    ``quality.kld.compare_position`` does (masses and per-token limits only).
    """
    def pos(d: Mapping[int, float]) -> Position:
        ids = [t for t, v in d.items() if v > 0]
        return Position(ids, [math.log(d[t]) for t in ids])

    return compare_position(pos(p), pos(q)).kld


def compare(a: Sequence[int], b: Sequence[int], top_a: Sequence[dict[int, float]] | None = None,
            top_b: Sequence[dict[int, float]] | None = None) -> Divergence:
    """Compare two runs' token ids (and, when given, their per-token top-N probabilities).

    Args:
        a: the baseline's token ids.
        b: the other side's token ids.
        top_a: per token of ``a``, token id → probability of its top-N (from ``n_probs``).
        top_b: the same for ``b``.
    """
    first = first_divergence(a, b)
    shortest = min(len(a), len(b))
    prefix = shortest if first is None else first
    prefix_agreement = prefix / shortest if shortest else 1.0
    top1 = kl_mean = top_n = None
    pairs: list[tuple[dict[int, float], dict[int, float]]] = []
    if top_a and top_b:
        # positions whose context is identical on both sides: the common prefix and the divergence point
        n = min(len(top_a), len(top_b), prefix + 1)
        pairs = [(top_a[i], top_b[i]) for i in range(n) if top_a[i] and top_b[i]]
        if pairs:
            top1 = sum(1 for p, q in pairs if max(p, key=p.__getitem__) == max(q, key=q.__getitem__)) / len(pairs)
            kl_mean = sum(kl_lower_bound(p, q) for p, q in pairs) / len(pairs)
            top_n = min(min(len(p), len(q)) for p, q in pairs)
    return Divergence(first, prefix_agreement, alignment(a, b), top1, kl_mean, top_n,
                      len(pairs) if kl_mean is not None else None)
