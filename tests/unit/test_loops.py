"""The repetition-loop detector against a brute-force reference and a labelled corpus."""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvtui.core.quality import loops
from kvtui.core.quality.loops import Loop, LoopDetector, ReplyLoopWatch, find_loop, replies_loop

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "data" / "loops"
DEFAULTS = {"min_period": 1, "max_period": 256, "min_repeats": 3, "min_span": 48}


def _need(p: int, min_repeats: int, min_span: int) -> int:
    return max(min_repeats * p, min_span, 64 if p <= 4 else 0)


def _find_loop_reference(tokens, *, min_period=1, max_period=256, min_repeats=3, min_span=48):
    """Slow, straight from the definition: (period, start, repeats) or None.

    For every period p, walk back from the end while tokens[s - 1] == tokens[s - 1 + p]
    to find the longest p-periodic tail. A period only counts when its tail is longer
    than that of every smaller period; of those that meet the thresholds, the last
    (the longest tail) wins.
    """
    n = len(tokens)
    best, longest = None, 0
    for p in range(1, min(max_period, n) + 1):
        s = n - p
        while s > 0 and tokens[s - 1] == tokens[s - 1 + p]:
            s -= 1
        span = n - s
        if span <= longest:
            continue  # a smaller period explains at least as long a tail
        longest = span
        if p >= min_period and span >= _need(p, min_repeats, min_span):
            best = (p, s, span // p)
    return best


def _reference_every_prefix(tokens, *, min_period=1, max_period=256, min_repeats=3, min_span=48):
    """The same definition for every prefix at once, O(n * max_period), for long inputs."""
    run = [0] * (max_period + 1)  # run[p]: positions i ending here with t[i] == t[i - p]
    out = []
    for i, tok in enumerate(tokens):
        best, longest = None, 0
        for p in range(1, max_period + 1):
            run[p] = run[p] + 1 if i >= p and tok == tokens[i - p] else 0
            if p > i + 1:
                continue
            span = run[p] + p
            if span > longest:
                longest = span
                if p >= min_period and span >= _need(p, min_repeats, min_span):
                    best = (p, i + 1 - span, span // p)
        out.append(best)
    return out


def _as_tuple(loop: Loop | None):
    return None if loop is None else (loop.period, loop.start, loop.repeats)


def _stream(tokens, **params):
    det = LoopDetector(**params)
    return [_as_tuple(det.feed(t)) for t in tokens]


def _random_sequence(rng: random.Random, length: int) -> list[int]:
    """Noise from small and large alphabets, mixed with cycles, cut-off copies and runs."""
    seq: list[int] = []
    while len(seq) < length:
        if rng.random() < 0.4:
            vocab = rng.choice([2, 3, 5, 50, 30000])
            seq += [rng.randrange(vocab) for _ in range(rng.randrange(1, 80))]
        else:
            cycle = [rng.randrange(rng.choice([2, 4, 30000]))
                     for _ in range(rng.choice([1, 2, 3, 4, 5, 7, 16, 33, 60, 150]))]
            copies = cycle * rng.randrange(1, 100 // len(cycle) + 4)
            seq += copies[: rng.randrange(1, len(copies) + 1)]
    return seq[:length]


# ---- the references ---------------------------------------------------------------


def test_reference_examples():
    x = list(range(1000, 1010))
    assert _find_loop_reference(x + [1, 2] * 40) == (2, 10, 40)
    assert _find_loop_reference(x + [1, 2] * 30) is None  # 60 < 64, and not period 6 either
    assert _find_loop_reference(x + [7] * 64) == (1, 10, 64)
    assert _find_loop_reference(x + [7] * 63) is None


def _copies(spec: tuple[list[int], int, int]) -> list[int]:
    """Copies of a cycle, the last one cut short by up to a cycle minus one token."""
    cycle, copies, cut = spec
    return (cycle * copies)[: len(cycle) * copies - cut % len(cycle)]


_segment = st.one_of(
    st.lists(st.integers(0, 3), max_size=30),
    st.lists(st.integers(0, 40), max_size=30),
    st.tuples(st.lists(st.integers(0, 3), min_size=1, max_size=12), st.integers(1, 80),
              st.integers(0, 11)).map(_copies),
)
_sequences = st.lists(_segment, max_size=8).map(lambda parts: [t for p in parts for t in p][:220])
_params = st.fixed_dictionaries({
    "min_period": st.integers(1, 5), "max_period": st.integers(5, 40),
    "min_repeats": st.integers(2, 4), "min_span": st.integers(0, 48),
})


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.lists(st.integers(0, 2), max_size=120), _sequences.map(lambda t: t[:150])),
       _params)
def test_prefix_reference_matches_brute_force(tokens, params):
    every = _reference_every_prefix(tokens, **params)
    assert every == [_find_loop_reference(tokens[: i + 1], **params) for i in range(len(tokens))]


# ---- detector == reference ------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(_sequences, _params)
def test_stream_matches_reference_hypothesis(tokens, params):
    assert _stream(tokens, **params) == _reference_every_prefix(tokens, **params)
    assert _as_tuple(find_loop(tokens, **params)) == _find_loop_reference(tokens, **params)


@settings(max_examples=200, deadline=None)
@given(_sequences)
def test_stream_matches_reference_default_params(tokens):
    assert _stream(tokens) == _reference_every_prefix(tokens, **DEFAULTS)


@pytest.mark.parametrize("seed", range(12))
def test_stream_matches_reference_random_long(seed):
    rng = random.Random(seed)
    tokens = _random_sequence(rng, 900)
    params = DEFAULTS if seed % 3 else {"min_period": 2, "max_period": 64, "min_repeats": 2,
                                       "min_span": 20}
    expected = _reference_every_prefix(tokens, **params)
    assert _stream(tokens, **params) == expected
    assert any(expected), "the generator should produce some loops"
    assert _as_tuple(find_loop(tokens, **params)) == _find_loop_reference(tokens, **params)


def test_hash_collisions_are_caught(monkeypatch):
    # With a tiny modulus nearly every gram collides; the slice check must reject them.
    monkeypatch.setattr(loops, "_MOD", 7)
    rng = random.Random(5)
    for _ in range(4):
        tokens = _random_sequence(rng, 500)
        assert _stream(tokens) == _reference_every_prefix(tokens, **DEFAULTS)


# ---- the rule, case by case -------------------------------------------------------

PREFIX = list(range(1000, 1200))  # 200 tokens that never repeat


@pytest.mark.parametrize("period,copies", [(1, 70), (2, 40), (3, 30), (4, 20), (33, 4), (150, 3)])
def test_positive_periods(period, copies):
    rng = random.Random(period)
    cycle = rng.sample(range(50000), period) if period > 1 else [9]
    loop = find_loop(PREFIX + cycle * copies)
    assert loop == Loop(period, 200, copies)


def test_loop_after_200_normal_tokens_is_found_in_the_stream():
    cycle = list(range(5000, 5020))
    det = LoopDetector()
    results = [det.feed(t) for t in PREFIX + cycle * 5]
    first = next(i for i, r in enumerate(results) if r)
    assert first == 200 + 60 - 1  # the token that completes 3 copies (60 >= 48 tokens)
    assert results[first] == Loop(20, 200, 3)
    assert all(r is None for r in results[:first])
    assert [r.repeats for r in results[first:]] == [(i + 60) // 20 for i in range(41)]


def test_cut_off_copy_counts_whole_cycles_only():
    cycle = list(range(5000, 5033))
    loop = find_loop(PREFIX + cycle * 3 + cycle[:20])
    assert loop == Loop(33, 200, 3)


def test_loop_may_begin_mid_cycle():
    cycle = list(range(5000, 5020))
    # The prefix ends with the cycle's last 5 tokens: periodicity starts 5 tokens early.
    assert find_loop(PREFIX + cycle[-5:] + cycle * 3) == Loop(20, 200, 3)


def test_smallest_period_is_reported():
    assert find_loop(PREFIX + [1, 2] * 50).period == 2
    assert find_loop(PREFIX + [1, 2, 3, 1, 2, 3] * 20).period == 3


def test_short_cycles_need_64_tokens():
    assert find_loop(PREFIX + [7] * 63) is None
    assert find_loop(PREFIX + [7] * 64) == Loop(1, 200, 64)
    assert find_loop(PREFIX + [1, 2] * 31) is None  # 62 tokens, and not period 6 either
    assert find_loop(PREFIX + [1, 2] * 32) == Loop(2, 200, 32)
    assert find_loop(PREFIX + [1, 2, 3, 4, 5] * 10) == Loop(5, 200, 10)  # 50 >= 48


def test_twelve_zeros_are_not_a_loop():
    zero, comma = 15, 11
    assert find_loop(PREFIX + [zero, comma] * 12) is None
    assert all(r is None for r in _stream(PREFIX + [zero, comma] * 12))


def test_the_longest_explained_tail_wins():
    # A 70-token run of one token inside a 71-token cycle: period 1 while the run goes
    # on, until three whole cycles make period 71 the better explanation.
    cycle = [5] + [9] * 70
    results = _stream(PREFIX + cycle * 3)
    assert results[200 + 64] == (1, 201, 64)  # only the run, the first time it counts
    assert results[200 + 63] is None
    assert results[-1] == (71, 200, 3)


def test_min_period_and_max_period():
    seq = PREFIX + [1, 2] * 50
    assert find_loop(seq, min_period=3) is None  # the tail is period 2, not 4 or 6
    cycle = list(range(5000, 5100))
    assert find_loop(PREFIX + cycle * 4, max_period=99) is None
    assert find_loop(PREFIX + cycle * 4, max_period=100) == Loop(100, 200, 4)


def test_text_and_pieces():
    pieces = [f"w{t} " for t in PREFIX] + [" the"] * 70
    tokens = PREFIX + [9] * 70
    assert find_loop(tokens, pieces=pieces).text == " the"
    cycle = [" I", " am", "."]
    loop = find_loop([1, 2, 3] * 30, pieces=cycle * 30)
    assert loop == Loop(3, 0, 30, " I am.")
    with pytest.raises(ValueError):
        find_loop([1, 2, 3], pieces=["a"])


def test_detector_state():
    det = LoopDetector()
    assert det.loop is None and det.count == 0
    for t in PREFIX + [4] * 64:
        det.feed(t, "x")
    assert det.loop == Loop(1, 200, 64, "x") and det.count == 264
    assert det.feed(5) is None and det.loop is None  # broken
    det.reset()
    assert det.count == 0 and det.loop is None
    assert all(det.feed(t) is None for t in [4] * 63)
    assert det.feed(4) == Loop(1, 0, 64)


def test_reports_the_same_object_while_nothing_changes():
    det = LoopDetector()
    for t in PREFIX + list(range(3000, 3050)) * 3:
        det.feed(t)
    a, b = det.loop, det.feed(3000)
    assert a is b and a.repeats == 3


def test_odd_token_ids():
    assert find_loop([-5, 10**12] * 40) == Loop(2, 0, 40)


@pytest.mark.parametrize("kwargs", [{"min_repeats": 1}, {"min_period": 0},
                                    {"min_period": 9, "max_period": 8}])
def test_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        LoopDetector(**kwargs)


def test_core_does_not_import_ui_libraries():
    code = ("import sys, kvtui.core.quality.loops; "
            "print([m for m in sys.modules if m.split('.')[0] in ('textual', 'rich')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- the labelled corpus ------------------------------------------------------------


def _corpus_cases() -> list[dict]:
    cases = []
    for f in sorted(CORPUS.glob("*.json")):
        data = json.loads(f.read_text(encoding="utf-8"))
        found = data["cases"] if "cases" in data else [data]
        cases += [c | {"file": f.name, "name": c.get("name", f"#{n}")} for n, c in enumerate(found)]
    return cases


CASES = _corpus_cases()

# Labelled loops the detector does not report. Kept in the corpus and reported, not hidden:
# each is an expected failure below, and the only mistake test_corpus_scores accepts.
# - real_gemma270m.json:t07-prose-village (real Gemma 3 270M, temperature 0.7): two whole
#   copies of a 42-token paragraph and 24 tokens of a third when n_predict ran out. A
#   person reads it as stuck; the rule needs three whole copies (126 tokens).
KNOWN_MISSES = {"real_gemma270m.json:t07-prose-village"}


def _case_param(c: dict):
    cid = f"{c['file']}:{c['name']}"
    marks = [pytest.mark.xfail(strict=True, reason="known miss: fewer than three whole cycles")] \
        if cid in KNOWN_MISSES else []
    return pytest.param(c, id=cid, marks=marks)


def test_corpus_has_both_labels():
    labels = [c["label"] for c in CASES]
    assert labels.count("loop") >= 15 and labels.count("none") >= 20


@pytest.mark.parametrize("case", [_case_param(c) for c in CASES])
def test_corpus_case(case):
    assert case["label"] in ("loop", "none")
    tokens, pieces = case["tokens"], case.get("pieces")
    params = case.get("params", {})
    loop = find_loop(tokens, pieces=pieces, **params)
    det = LoopDetector(**params)
    streamed = [det.feed(t, p) for t, p in zip(tokens, pieces or [""] * len(tokens), strict=False)]
    if case["label"] == "none":
        assert loop is None, case["description"]
        # Stricter than the tail: a live generation must never be stopped on it.
        assert all(r is None for r in streamed), case["description"]
    else:
        assert loop is not None, case["description"]
        assert streamed[-1] == loop
        if case.get("period") is not None:
            assert loop.period == case["period"]
        if case.get("start") is not None:
            assert loop.start == case["start"]
        if case.get("repeats") is not None:
            assert loop.repeats == case["repeats"]
        if pieces:
            assert loop.text == "".join(pieces[loop.start:loop.start + loop.period])


def test_corpus_scores():
    path = ROOT / "benchmarks" / "loops_corpus.py"
    spec = importlib.util.spec_from_file_location("loops_corpus", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    scores = mod.corpus_scores()
    for mode in ("tail", "stream"):
        s = scores[mode]
        assert s["precision"] == 1.0, s  # no false alarm, on any case
        # Measured 2026-11-29: 47 of 48 labelled loops (handmade 17/17, real 30/31); the miss
        # is KNOWN_MISSES, and any other mistake fails here by name.
        assert s["recall"] >= 47 / 48, s
        assert set(s["mistakes"]) == KNOWN_MISSES, s["mistakes"]
        assert s["exact"] == s["with_expected"] - len(KNOWN_MISSES)


# ---- turn level ---------------------------------------------------------------------

REPLY = ("I'm sorry, but I can't help with that request. If you have another question about "
         "the KV cache or quantization, I'd be happy to help.")


def test_replies_loop_identical_run():
    assert replies_loop(["Hello!", REPLY, REPLY, REPLY]) == (1, 3)
    assert replies_loop([REPLY, REPLY, REPLY, REPLY, "Bye"]) == (0, 4)


def test_replies_loop_near_identical():
    variant = REPLY.replace("another", "any other")
    assert replies_loop([REPLY, variant, REPLY]) == (0, 3)
    assert replies_loop([REPLY, variant, REPLY], similarity=0.99) is None


def test_replies_loop_negatives():
    assert replies_loop([]) is None
    assert replies_loop([REPLY, REPLY]) is None
    assert replies_loop([REPLY, REPLY, "Something else entirely.", REPLY]) is None
    assert replies_loop(["", "", ""]) is None  # empty replies are their own failure
    assert replies_loop(["The capital of France is Paris.", "The capital of Spain is Madrid.",
                         "The capital of Italy is Rome."]) is None
    assert replies_loop([REPLY, REPLY], min_run=2) == (0, 2)


def _watch(replies: list[str]) -> list[tuple[int, int] | None]:
    w = ReplyLoopWatch()
    return [w.feed(r) for r in replies]


def test_reply_loop_watch_reports_from_the_third_same_reply_on():
    variant = REPLY.replace("another", "any other")
    assert _watch(["Hello!", REPLY, variant, REPLY, REPLY, "Bye", REPLY]) == [
        None, None, None, (1, 3), (1, 4), None, None]
    assert _watch(["", "", ""]) == [None, None, None]  # as replies_loop: empty replies are no loop
    assert _watch(["The capital of France is Paris.", "The capital of Spain is Madrid.",
                   "The capital of Italy is Rome."]) == [None, None, None]


def test_reply_loop_watch_finds_a_second_loop_after_a_first():
    # live, a later loop counts too (replies_loop reports only the first)
    other = "Here's a test of the function with a few test cases."
    found = _watch([REPLY] * 3 + ["break"] + [other] * 3)
    assert found[2] == (0, 3) and found[-1] == (4, 3)


@settings(max_examples=300)
@given(st.lists(st.sampled_from([REPLY, REPLY.replace("another", "any other"), "Bye now.", "",
                                 "The capital of Spain is Madrid."]), max_size=12))
def test_reply_loop_watch_agrees_with_replies_loop(replies):
    # replies_loop's first run is what the watch reports at that run's last reply
    first = replies_loop(replies)
    live = _watch(replies)
    if first is None:
        assert all(x is None for x in live)
    else:
        start, count = first
        assert live[start + count - 1] == (start, count)
        assert all(x is None for x in live[:start + 2])


def test_a_multiple_just_outside_a_run_is_still_tracked():
    # When period 40 starts matching, the period-1 run is 39 tokens: one short of
    # covering a whole 40-token cycle, so period 40 is not its multiple in disguise.
    tokens = PREFIX + [7] + [9] * 32 + ([8] + [9] * 39) * 4
    assert _find_loop_reference(tokens) == (40, 201, 4)
    assert _stream(tokens) == _reference_every_prefix(tokens, **DEFAULTS)
