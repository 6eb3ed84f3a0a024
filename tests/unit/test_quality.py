"""The quality statistics (kvtui/core/quality/kld.py) against values worked out by hand, and the chunking."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvtui.core.errors import KvtuiError
from kvtui.core.quality.kld import (
    Position,
    PositionStat,
    compare_position,
    mean_and_uncertainty,
    percentile,
    summarize,
    tail_bound,
)
from kvtui.core.run.scoring import (
    ScoreReport,
    Segment,
    check_not_speculative,
    choose_base,
    speculative_argument,
    text_segments,
)


def pos(probs: dict[int, float], actual: int | None = None, p_actual: float | None = None) -> Position:
    ids = list(probs)
    return Position(ids, [math.log(probs[t]) for t in ids], actual,
                    None if p_actual is None else math.log(p_actual))


def full_kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


# --- one position --------------------------------------------------------------------------------


def test_every_token_listed_gives_the_exact_kl() -> None:
    # vocabulary of 3, both lists complete: KL = 0.5 ln(0.5/0.35) + 0.3 ln(0.3/0.45) + 0.2 ln(1) = 0.0566974
    s = compare_position(pos({0: 0.5, 1: 0.3, 2: 0.2}), pos({0: 0.35, 1: 0.45, 2: 0.2}))
    assert s.kld == pytest.approx(0.0566974, abs=1e-6)
    assert s.same_top is False and s.unresolved == pytest.approx(0.0, abs=1e-12)


def test_equal_tails_add_nothing_and_unequal_tails_are_bounded_from_below() -> None:
    # top-2 of a vocabulary of 4; the tails (0.1, 0.1) and (0.15, 0.05) are not seen, only their sums (0.2, 0.2)
    base, side = pos({0: 0.5, 1: 0.3}), pos({0: 0.4, 1: 0.4})
    s = compare_position(base, side)
    assert s.kld == pytest.approx(0.0252675, abs=1e-6)  # the known part; the bucket term 0.2 ln(0.2/0.2) = 0
    true = full_kl([0.5, 0.3, 0.1, 0.1], [0.4, 0.4, 0.15, 0.05])  # 0.0252675 + 0.0287682 = 0.0540357
    assert true == pytest.approx(0.0540357, abs=1e-6)
    assert s.kld <= true and s.unresolved == pytest.approx(0.2)


def test_a_likely_token_missing_from_the_other_list_is_bounded_by_that_lists_limits() -> None:
    # base: a 0.6, b 0.3 (rest 0.1); other side: a 0.5, c 0.45 (rest 0.05). b is not in the other list, so there
    # it has at most the other side's rest (0.05); c has at most the base's rest (0.1). The smallest KL they allow:
    # 0.6 ln(0.6/0.5) + 0.3 ln(0.3/0.05) + 0.1 ln(0.1/0.45) = 0.1093929 + 0.5375278 - 0.1504077 = 0.496513
    s = compare_position(pos({10: 0.6, 11: 0.3}), pos({10: 0.5, 12: 0.45}))
    assert s.kld == pytest.approx(0.496513, abs=2e-4)  # MASS_TOL (1e-5) of slack for float32 rounding
    # the one-bucket figure would have been 0.1093929 + 0.4 ln(0.4/0.5) = 0.0201: far too low
    assert s.kld > 0.1093929 + 0.4 * math.log(0.4 / 0.5) + 0.4
    assert s.same_top is True


def test_the_forced_actual_token_counts_exactly_and_gives_the_nlls() -> None:
    # top-1 lists {a: 0.7}; the actual token d is outside both: 0.1 on the base, 0.05 on the other side.
    # known: a (0 contribution), d: 0.1 ln(0.1/0.05) = 0.0693147; rest 0.2 vs 0.25: 0.2 ln(0.8) = -0.0446287
    s = compare_position(pos({1: 0.7}, actual=4, p_actual=0.1), pos({1: 0.7}, actual=4, p_actual=0.05))
    assert s.kld == pytest.approx(0.0693147 - 0.0446287, abs=1e-6)
    assert s.nll_base == pytest.approx(-math.log(0.1)) and s.nll == pytest.approx(-math.log(0.05))


def test_tail_bound_is_the_one_bucket_figure_when_no_limit_binds() -> None:
    assert tail_bound(0.1, 0.1, 0.3, 0.2, 1.0, 1.0) == pytest.approx(0.3 * math.log(0.3 / 0.2))
    assert tail_bound(0.0, 0.0, 0.0, 0.0, 0.0, 0.0) == 0.0


probs = st.lists(st.floats(0.001, 1.0), min_size=3, max_size=12)


@given(probs, probs, st.integers(1, 12), st.integers(1, 12))
def test_the_bound_never_exceeds_the_true_kl(a: list[float], b: list[float], ka: int, kb: int) -> None:
    n = min(len(a), len(b))
    p = [x / sum(a[:n]) for x in a[:n]]
    q = [x / sum(b[:n]) for x in b[:n]]
    top_p = sorted(range(n), key=lambda i: -p[i])[:ka]
    top_q = sorted(range(n), key=lambda i: -q[i])[:kb]
    s = compare_position(pos({i: p[i] for i in top_p}), pos({i: q[i] for i in top_q}))
    assert 0.0 <= s.kld <= full_kl(p, q) + 1e-9
    # never below the one-bucket figure (tokens known on both sides exactly, everything else merged)
    common = set(top_p) & set(top_q)
    pr, qr = 1 - sum(p[i] for i in common), 1 - sum(q[i] for i in common)
    merged = sum(p[i] * math.log(p[i] / q[i]) for i in common) + (pr * math.log(pr / qr) if pr > 1e-12 else 0.0)
    assert s.kld >= merged - 1e-4


# --- the summary -----------------------------------------------------------------------------------


def test_mean_uncertainty_and_percentiles_by_hand() -> None:
    m, u = mean_and_uncertainty([0.0, 0.1, 0.2, 0.5])
    # mean 0.2; population variance (0.04 + 0.01 + 0 + 0.09) / 4 = 0.035; standard error sqrt(0.035 / 3)
    assert m == pytest.approx(0.2) and u == pytest.approx(math.sqrt(0.035 / 3))
    xs = [0.0, 0.1, 0.2, 0.5]
    assert percentile(xs, 0.5) == pytest.approx(0.15)
    assert percentile(xs, 0.9) == pytest.approx(0.2 + 0.7 * 0.3)  # at 0.9 * 3 = 2.7
    assert percentile(xs, 0.0) == 0.0 and percentile(xs, 1.0) == 0.5


def test_summary_by_hand() -> None:
    stats = [PositionStat(0.0, 0.1, True, 1.0, 1.0), PositionStat(0.1, 0.1, True, 2.0, 2.0),
             PositionStat(0.2, 0.1, False, 1.0, 2.0), PositionStat(0.5, 0.3, True, 2.0, 2.0)]
    s = summarize(stats, side="q4_0", base="f16", top_k=100)
    assert (s.positions, s.top_k, s.side, s.base) == (4, 100, "q4_0", "f16")
    assert s.kld_mean == pytest.approx(0.2) and s.kld_median == pytest.approx(0.15)
    assert s.kld_p90 == pytest.approx(0.41) and s.kld_p99 == pytest.approx(0.491) and s.kld_max == 0.5
    assert s.same_top_pct == pytest.approx(75.0) and s.same_top_pct_unc == pytest.approx(25.0)  # sqrt(.75*.25/3)
    assert s.unresolved_mean == pytest.approx(0.15)
    # delta-p: only position 3 moves, e^-2 - e^-1 = -0.2325442
    dp = math.exp(-2) - math.exp(-1)
    assert s.mean_dp_pct == pytest.approx(100 * dp / 4)
    assert s.rms_dp_pct == pytest.approx(100 * math.sqrt(dp * dp / 4))
    # ln(PPL ratio) = mean NLL 1.75 - base 1.5 = 0.25; errors 0.25 and 0.288675, covariance 0.5/4/3
    assert s.ln_ppl_ratio == pytest.approx(0.25)
    assert s.ln_ppl_ratio_unc == pytest.approx(math.sqrt(0.25**2 + 0.25 / 3 - 2 * 0.5 / 12))
    assert s.ppl_ratio == pytest.approx(math.exp(0.25)) and s.ppl_ratio_unc == pytest.approx(math.exp(0.25) * 0.25)
    assert s.ppl == pytest.approx(math.exp(1.75)) and s.ppl_base == pytest.approx(math.exp(1.5))
    d = s.to_dict()
    assert {"kld_mean", "kld_median", "kld_p99", "same_top_pct", "rms_dp_pct", "ppl_ratio", "positions",
            "top_k"} <= set(d)


def test_summary_without_the_actual_token_leaves_the_probability_figures_out() -> None:
    s = summarize([PositionStat(0.1, 0.0, True), PositionStat(0.3, 0.0, True)], side="b", base="a", top_k=5)
    assert s.ppl_ratio is None and "ppl_ratio" not in s.to_dict() and s.kld_mean == pytest.approx(0.2)
    with pytest.raises(ValueError):
        summarize([], side="b", base="a", top_k=5)


def test_report_json_shape() -> None:
    s = summarize([PositionStat(0.1, 0.0, True, 1.0, 1.1)] * 3, side="q8_0", base="f16", top_k=100)
    noise = summarize([PositionStat(0.0, 0.0, True, 1.0, 1.0)] * 3, side="f16 (2nd server)", base="f16", top_k=100)
    d = ScoreReport(base="f16", top_k=100, ctx=512, chunks=1, positions=3, text_tokens=600, sides=(s,),
                    noise_floor=noise).to_dict()
    assert d["base"] == "f16" and set(d["sides"]) == {"q8_0"}  # type: ignore[arg-type]
    assert d["sides"]["q8_0"]["positions"] == 3 and d["noise_floor"]["kld_mean"] == 0.0  # type: ignore[index]


# --- chunks, base, speculative decoding ---------------------------------------------------------------


def test_chunks_like_llama_perplexity() -> None:
    tokens = [2] + list(range(100, 120))  # BOS + 20 tokens = 21
    segs = text_segments(tokens, 8, bos=2)
    assert len(segs) == 2  # 21 // 8 complete chunks
    assert segs[0].tokens == (2, *range(100, 107)) and segs[1].tokens == (2, *range(108, 115))  # BOS replaces
    assert segs[0].first == 4 and segs[0].positions == 3  # ctx - 1 - ctx // 2
    assert len(text_segments(tokens, 8, chunks=1, bos=2)) == 1
    assert text_segments(tokens, 8)[1].tokens[0] == 107  # no BOS: the chunk is left as it is
    assert Segment((1, 2, 3), 0).positions == 2
    with pytest.raises(KvtuiError, match="shorter than one chunk"):
        text_segments(tokens, 64)


def test_base_is_f16_by_default_else_the_first_side() -> None:
    sides = [("q8_0", "q8_0", "q8_0"), ("f16", "f16", "f16")]
    assert choose_base(sides) == "f16"
    assert choose_base(sides[:1] + [("q4_0", "q4_0", "q4_0")]) == "q8_0"
    assert choose_base(sides, "q8_0") == "q8_0"
    with pytest.raises(KvtuiError, match="not a side"):
        choose_base(sides, "bf16")


@pytest.mark.parametrize("args,found", [
    (["-md", "draft.gguf"], "-md"),
    (["--model-draft", "d.gguf"], "--model-draft"),
    (["--spec-type", "ngram-simple"], "--spec-type ngram-simple"),
    (["--spec-type=draft-mtp"], "--spec-type draft-mtp"),
    (["--spec-default"], "--spec-default"),
    (["--spec-draft-n-max", "8"], "--spec-draft-n-max"),
    (["--draft-max", "8"], "--draft-max"),
    (["-lcd", "cache.bin"], "-lcd"),
    (["-mtp"], "-mtp"),
    (["--fim-qwen-7b-spec"], "--fim-qwen-7b-spec"),
    (["--spec-type", "none"], None),
    (["-t", "4", "--mlock"], None),
])
def test_speculative_arguments_are_found(args: list[str], found: str | None) -> None:
    assert speculative_argument(args) == found


def test_speculative_side_is_refused_with_the_argument_and_why() -> None:
    with pytest.raises(KvtuiError, match=r"q8_0: -md turns on speculative decoding.*probability 1"):
        check_not_speculative("q8_0", ["-ctk", "q8_0", "-md", "small.gguf"])
    assert speculative_argument([], {"LLAMA_ARG_SPEC_TYPE": "ngram-mod"}) == "$LLAMA_ARG_SPEC_TYPE=ngram-mod"
    assert speculative_argument([], {"LLAMA_ARG_SPEC_TYPE": "none"}) is None


def test_headless_table_shows_every_side_and_the_noise_floor() -> None:
    from rich.console import Console

    from kvtui.score_cli import print_report

    s = summarize([PositionStat(0.01, 0.1, True, 1.0, 1.1)] * 20, side="q4_0", base="f16", top_k=100)
    noise = summarize([PositionStat(0.0, 0.1, True, 1.0, 1.0)] * 20, side="f16 (2nd server)", base="f16", top_k=100)
    report = ScoreReport(base="f16", top_k=100, ctx=512, chunks=1, positions=20, text_tokens=600, sides=(s,),
                         noise_floor=noise, kv_types={"f16": "K f16 / V f16", "q4_0": "K q4_0 / V q4_0"})
    console = Console(record=True, width=200)
    print_report(console, report)
    out = console.export_text()
    assert "against f16" in out and "f16 (2nd server)" in out and "noise floor" in out
    assert "q4_0" in out and "K q4_0 / V q4_0" in out and "0.01000 ± 0.00000" in out
    assert "20 positions" in out and "top-100" in out and "lower bound" in out
    for row in ("mean KLD", "median KLD", "99.9% KLD", "maximum KLD", "same top %", "RMS Δp %", "mean Δp %",
                "ln(PPL/PPL base)", "PPL/PPL base", "beyond both top-100"):
        assert row in out, row


def test_collector_pairs_positions_in_any_order_and_lets_go_of_the_base() -> None:
    from kvtui.core.run.scoring import Collector

    c = Collector("f16", others=2)
    p = pos({1: 0.5, 2: 0.3}, actual=2, p_actual=0.3)
    q = pos({1: 0.4, 2: 0.4}, actual=2, p_actual=0.4)
    c.add("q8_0", 0, q)  # ahead of the base: waits
    assert c.pending["q8_0"] and not c.stats
    c.add("f16", 0, p)
    c.add("q4_0", 0, q)
    assert len(c.stats["q8_0"]) == len(c.stats["q4_0"]) == 1 and not c.pending["q8_0"]
    assert c.base_positions == {}  # both other sides compared at 0: the base's position is dropped
    assert c.stats["q8_0"][0].kld == pytest.approx(compare_position(p, q).kld, abs=1e-6)  # float32 storage
