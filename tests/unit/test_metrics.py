"""Rates and repeat statistics."""

from __future__ import annotations

import pytest

from kvtui.core.quality.figures import RateMeter, pct_change, spread


def test_rate_matches_the_servers_definition() -> None:
    m = RateMeter()
    # first token at t=1.0 (from prompt processing); 10 more over 0.5 s
    m.add(1.0, 1)
    for k in range(1, 11):
        m.add(1.0 + 0.05 * k, 1 + k)
    assert m.average == pytest.approx(20.0)


def test_rate_unknown_before_two_points() -> None:
    m = RateMeter()
    assert m.average is None and m.current() is None
    m.add(0.0, 1)
    assert m.average is None


def test_current_rate_window_and_quiet_stream() -> None:
    m = RateMeter(window_s=1.0)
    for k in range(0, 50):
        m.add(k * 0.1, k * (1 if k < 25 else 3))
    assert m.current() == pytest.approx(30.0, rel=0.2)
    assert m.current(now=100.0) == 0.0


def test_multi_token_chunks_count_by_n() -> None:
    m = RateMeter()
    m.add(0.0, 1)
    m.add(1.0, 5)  # one chunk carrying four tokens
    assert m.average == 4.0


def test_spread_and_change() -> None:
    s = spread([3.0, None, 1.0, 2.0])
    assert (s.median, s.low, s.high, s.n) == (2.0, 1.0, 3.0, 3)
    assert str(s) == "2 (1-3)"  # whole numbers (token counts) print without decimals
    assert str(spread([1.25, 2.5])) == "1.9 (1.2-2.5)"
    assert spread([None]) is None
    assert pct_change(106, 100) == pytest.approx(6.0)
    assert pct_change(1, 0) is None and pct_change(None, 1) is None
