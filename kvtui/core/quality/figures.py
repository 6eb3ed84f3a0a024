"""Rates and summaries: live tokens/s that matches the server's, and repeat statistics."""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass


class RateMeter:
    """Live generation rate of one stream.

    The server's ``predicted_per_second`` is ``(n - 1) / (t_n - t_1)``: the first
    token comes from prompt processing, so the rate starts at the first token.
    The meter uses the same definition, and a short window for the current rate.

    Args:
        window_s: how far back the "current" rate looks.
    """

    def __init__(self, window_s: float = 1.0) -> None:
        self.window_s = window_s
        self.t_first: float | None = None
        self.n_first = 0
        self.t_last: float | None = None
        self.n_last = 0
        self._recent: deque[tuple[float, int]] = deque()

    def add(self, t: float, n: int) -> None:
        """Record that ``n`` tokens had been generated at time ``t``."""
        if self.t_first is None:
            self.t_first, self.n_first = t, n
        self.t_last, self.n_last = t, n
        self._recent.append((t, n))
        while len(self._recent) > 2 and self._recent[0][0] < t - self.window_s:
            self._recent.popleft()

    @property
    def average(self) -> float | None:
        """Tokens/s since the first token, as the server computes it."""
        if self.t_first is None or self.t_last is None or self.t_last <= self.t_first:
            return None
        return (self.n_last - self.n_first) / (self.t_last - self.t_first)

    def current(self, now: float | None = None) -> float | None:
        """Tokens/s over the recent window (0 when the stream has gone quiet)."""
        if len(self._recent) < 2:
            return None
        t0, n0 = self._recent[0]
        t1, n1 = self._recent[-1]
        if now is not None and now - t1 > self.window_s:
            return 0.0
        return (n1 - n0) / (t1 - t0) if t1 > t0 else None


@dataclass(frozen=True, slots=True)
class Spread:
    """Median with min and max over repeats."""

    median: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        whole = all(float(v).is_integer() for v in (self.median, self.low, self.high))
        fmt = "{:,.0f}" if whole else "{:,.1f}"
        if self.n == 1 or self.low == self.high:
            return fmt.format(self.median)
        return f"{fmt.format(self.median)} ({fmt.format(self.low)}-{fmt.format(self.high)})"


def spread(values: Iterable[float | None]) -> Spread | None:
    """Median and range of the known values, or None when there are none."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return Spread(statistics.median(vals), min(vals), max(vals), len(vals))


def pct_change(new: float | None, base: float | None) -> float | None:
    """Relative change of ``new`` against ``base`` in percent."""
    if new is None or base is None or base == 0:
        return None
    return (new - base) / base * 100.0


def round3(x: object) -> float | None:
    """A figure as recorded and shown: a real number to 3 decimals; None for anything else (bool too)."""
    return round(float(x), 3) if isinstance(x, int | float) and not isinstance(x, bool) else None  # type: ignore[arg-type]


def as_int(x: object) -> int | None:
    """A count from outside kvtui (the server's JSON): an int, or None."""
    return int(x) if isinstance(x, int | float) and not isinstance(x, bool) else None  # type: ignore[arg-type]
