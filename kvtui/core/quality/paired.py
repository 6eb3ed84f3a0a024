"""Paired statistics: is a difference between two configurations bigger than the noise?

kvtui pairs runs that share a prompt and a seed, so each pair differs only in
the cache type. It uses the exact two-sided **sign test** on the paired
differences (for speed) and on the discordant pairs (for right/wrong answers,
which is McNemar's exact test). The sign test assumes nothing about the shape
of the noise; with few pairs it cannot reach significance (5 pairs all in one
direction give p = 0.0625), and the verdict says so instead of guessing.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from math import comb

ALPHA = 0.05


def sign_test_p(wins: int, losses: int) -> float:
    """Exact two-sided sign-test p-value for ``wins`` against ``losses`` (ties dropped)."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True, slots=True)
class PairedVerdict:
    """The paired comparison of ``other`` against ``base`` on one measure."""

    measure: str
    pairs: int
    wins: int  # pairs where other is better
    losses: int
    p: float
    median_change_pct: float | None
    rates: tuple[float, float] | None = None  # pass rates (base, other) for answers

    @property
    def significant(self) -> bool:
        return self.p < ALPHA

    @property
    def verdict(self) -> str:
        """``beyond noise``, ``within noise``, or, with fewer than MIN_PAIRS pairs that differ, too few to tell."""
        differ = self.wins + self.losses
        if differ < MIN_PAIRS:
            counted = f"{differ} pairs" if differ == self.pairs else f"{differ} of {self.pairs} pairs differ"
            return f"{counted}: too few to tell, {MIN_PAIRS} or more needed"
        return "beyond noise" if self.significant else "within noise"

    def __str__(self) -> str:
        """The test and its verdict; the median change itself is on the comparison line (one figure, one place)."""
        if self.pairs == 0:
            return f"{self.measure}: no pairs to compare"
        if self.rates is not None:
            return (f"{self.measure} right {self.rates[1]:.0%} vs {self.rates[0]:.0%} over {self.pairs} pairs, "
                    f"{self.wins} won / {self.losses} lost, McNemar exact p={self.p:.3g}: {self.verdict}")
        return f"{self.measure}: {self.wins}/{self.pairs} pairs faster, sign test p={self.p:.3g}: {self.verdict}"


MIN_PAIRS = next(n for n in range(1, 64) if sign_test_p(n, 0) < ALPHA)
"""Pairs that differ needed before even a clean sweep is significant (6: 5 of 5 gives p = 0.0625)."""


def paired_speed(base: list[float | None], other: list[float | None], measure: str = "tg") -> PairedVerdict:
    """Sign test on paired rates (higher is better); pairs with a missing value are dropped."""
    pairs = [(a, b) for a, b in zip(base, other, strict=False) if a is not None and b is not None and a > 0]
    wins = sum(1 for a, b in pairs if b > a)
    losses = sum(1 for a, b in pairs if b < a)
    change = statistics.median((b - a) / a * 100 for a, b in pairs) if pairs else None
    return PairedVerdict(measure, len(pairs), wins, losses, sign_test_p(wins, losses), change)


def paired_pass(base: list[bool | None], other: list[bool | None], measure: str = "answers") -> PairedVerdict:
    """McNemar's exact test: only pairs where one side was right and the other wrong count."""
    pairs = [(a, b) for a, b in zip(base, other, strict=False) if a is not None and b is not None]
    wins = sum(1 for a, b in pairs if b and not a)
    losses = sum(1 for a, b in pairs if a and not b)
    rate_a = sum(1 for a, _ in pairs if a) / len(pairs) if pairs else None
    rate_b = sum(1 for _, b in pairs if b) / len(pairs) if pairs else None
    change = (rate_b - rate_a) * 100 if rate_a is not None and rate_b is not None else None
    rates = (rate_a, rate_b) if rate_a is not None and rate_b is not None else None
    return PairedVerdict(measure, len(pairs), wins, losses, sign_test_p(wins, losses), change, rates)
