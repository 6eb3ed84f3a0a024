"""Comparisons that stay honest: like with like, kvtui's own rate marked and never compared with the server's,
one figure per comparison (paired medians when runs pair), and "too few to tell" below 6 pairs."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from kvtui.cli import main
from kvtui.core.quality.summary import comparisons, summarize
from kvtui.core.record.model import Run, SessionRecord, Side, read_record
from kvtui.headless import HeadlessConsole

SESSIONS = Path(__file__).resolve().parents[1] / "data" / "sessions"


def run(k: int, tg: float | None, *, pp: float = 100.0, schedule: str = "simultaneous", prompt: str = "p",
        repeat: int = 0, client: float | None = None, stop: str = "length") -> Run:
    return Run(k, stop, schedule, prompt=prompt, repeat=repeat, predicted_n=16, predicted_per_second=tg,
               prompt_per_second=pp if tg is not None else None, ttft_ms=50.0,
               client_tokens_per_second=client if client is not None else tg)


def record(a: list[Run], b: list[Run]) -> SessionRecord:
    return SessionRecord(status="done", schedule="simultaneous", sides=[
        Side("q8_0", "q8_0", "q8_0", status="done", kv_cache_mib=14.0, runs=a),
        Side("q4_0", "q4_0", "q4_0", status="done", kv_cache_mib=7.0, runs=b)])


def headless_text(rec: SessionRecord) -> str:
    buf = io.StringIO()
    console = HeadlessConsole(Console(file=buf, width=200, highlight=False), live=False)
    console.print_summary(rec, None)
    return buf.getvalue()


def test_show_never_compares_kvtuis_rate_with_the_servers(capsys) -> None:
    """crash.toml: q8_0 has the server's 22.0, q4_0 (killed after 30 tokens) only kvtui's 14.0."""
    assert main(["show", str(SESSIONS / "crash.toml")]) == 0
    out = capsys.readouterr().out
    assert "tg -37%" not in out and "tg -" not in out
    assert "q4_0 vs q8_0: KV -47%, TTFT -26%; tg not compared: kvtui's rate (q4_0) vs the server's (q8_0)" in out
    assert "~14.0 (kvtui)" in out and "22.0 " in out  # the table marks kvtui's own rate


def test_two_kvtui_rates_compare_and_say_so() -> None:
    (c,) = comparisons(read_record(SESSIONS / "loop.toml"))  # both sides stopped on a loop: no server timings
    assert c.line() == "q4_0 vs q8_0: tg -1% (kvtui), KV -47%, TTFT -12%"


def test_a_solo_rerun_is_not_compared_with_simultaneous_runs() -> None:
    rec = record([run(0, 20.0), run(1, 33.0, schedule="solo")], [run(0, 19.0)])
    (c,) = comparisons(rec)
    assert c.line() == "q4_0 vs q8_0: KV -50%; tg, pp, TTFT not compared: simultaneous vs solo runs"
    base, _ = summarize(rec)
    assert base.tg is not None and base.tg.median == 33.0 and base.left_out == 1  # solo figures, not mixed
    assert "q8_0: speed figures from its solo runs; 1 run of the other kind left out" in headless_text(rec)


def test_solo_and_alternate_runs_compare() -> None:
    (c,) = comparisons(record([run(0, 20.0, schedule="solo")], [run(0, 22.0, schedule="alternate")]))
    assert c.line() == "q4_0 vs q8_0: tg +10%, pp +0%, KV -50%, TTFT +0%"


def test_paired_runs_give_the_median_of_paired_changes_once() -> None:
    """The change of the two medians is -2.5%; 5 of 6 pairs are 10% slower: the line gives the paired figure
    (-10%) and says so, and no other line gives a second tg figure."""
    a = [run(k, tg, repeat=k) for k, tg in enumerate([10.0, 20.0, 40.0, 10.0, 20.0, 40.0])]
    b = [run(k, tg, repeat=k) for k, tg in enumerate([9.0, 18.0, 36.0, 9.0, 18.0, 36.0])]
    b[1] = run(1, 21.0, repeat=1)  # one pair faster
    rec = record(a, b)
    (c,) = comparisons(rec)
    assert c.title == "q4_0 vs q8_0, median of 6 paired runs"
    tg = next(ch for ch in c.changes if ch.label == "tg")
    assert tg.pct == pytest.approx(-10.0)
    out = headless_text(rec)
    assert out.count("tg -10%") == 1 and "tg +" not in out  # one comparison per figure, no contradicting line
    assert "q4_0 vs q8_0: tg: 1/6 pairs faster, sign test p=0.219: within noise" in out
    assert "loops: runs that looped / runs (per 100 runs)" in out and "0/6 (0/100)" in out


def test_fewer_than_six_pairs_are_too_few_to_tell() -> None:
    a = [run(k, 10.0, repeat=k) for k in range(3)]
    b = [run(k, 11.0, repeat=k) for k in range(3)]
    out = headless_text(record(a, b))
    assert "tg: 3/3 pairs faster, sign test p=0.25: 3 pairs: too few to tell, 6 or more needed" in out
    assert "within noise" not in out


def test_a_rerun_pairs_with_the_other_sides_run_of_the_same_kind_only() -> None:
    """The rerun of q8_0 (solo) must not pair with q4_0's simultaneous run: no verdict mixes the two."""
    rec = record([run(0, 20.0), run(1, 33.0, schedule="solo")], [run(0, 19.0)])
    from kvtui.core.quality.summary import verdicts

    assert verdicts(rec) == []
