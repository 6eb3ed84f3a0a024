"""Task checks, divergence and paired statistics (the parts of the verdict)."""

from __future__ import annotations

import math

import pytest

from kvtui.core.quality.checks import check_text
from kvtui.core.quality.divergence import alignment, compare, first_divergence, kl_lower_bound
from kvtui.core.quality.paired import paired_pass, paired_speed, sign_test_p

ANSWER = '''Here is the client.

**rate_limiter.py**
```python
import asyncio

class TokenBucket:
    def __init__(self, rate):
        self.rate = rate
```

```python
# test_rate_limiter.py
from rate_limiter import TokenBucket

def test_rate():
    assert TokenBucket(3).rate == 3

def test_other():
    assert True
```

```python
def broken(:
```

```bash
pytest -q
```
'''


def test_code_blocks_files_tests_and_parse() -> None:
    c = check_text(ANSWER)
    assert [b.language for b in c.blocks] == ["python", "python", "python", "bash"]
    assert c.files == ("rate_limiter.py", "test_rate_limiter.py")
    assert c.python_blocks == 3 and c.python_parse_ok == 2
    assert c.tests == 2 and c.to_dict()["asserts"] == 2
    assert c.answer_ok is None and "answer_ok" not in c.to_dict()


def test_unclosed_block_counts() -> None:
    c = check_text("```python\ndef f():\n    return 1\n")
    assert len(c.blocks) == 1 and c.blocks[0].parses is True


def test_unfenced_python_from_a_base_model() -> None:
    c = check_text("    return s == s[::-1]\n\n\ndef test_x():\n    assert is_p('aa')\n")
    assert len(c.blocks) == 1 and c.tests == 1


def test_expected_answers() -> None:
    assert check_text("It is 19,121 days.", regex=r"\b19,?121\b").answer_ok is True
    assert check_text("It is 19120 days.", regex=r"\b19,?121\b").answer_ok is False
    assert check_text("Paris", expected="Paris").answer_ok is True
    assert check_text("paris", expected="Paris").answer_ok is False


def test_first_divergence_and_alignment() -> None:
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 9, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2
    assert alignment([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert alignment([1, 2, 3, 4], [1, 2, 9, 3, 4]) == pytest.approx(4 / 5)


def test_kl_and_top1_on_the_common_prefix() -> None:
    p = {1: 0.7, 2: 0.2, 3: 0.1}
    assert kl_lower_bound(p, p) == pytest.approx(0.0, abs=1e-12)
    q = {1: 0.6, 2: 0.3, 4: 0.1}
    assert kl_lower_bound(p, q) > 0
    # tokens 1 and 2 count exactly; 3 and 4, each missing from one list, and the unlisted rest (0.1 on both
    # sides) can be in the same proportion on both sides, so they add nothing to the bound
    p2, q2 = {1: 0.6, 2: 0.2, 3: 0.1}, {1: 0.5, 2: 0.3, 4: 0.1}
    assert kl_lower_bound(p2, q2) == pytest.approx(0.6 * math.log(0.6 / 0.5) + 0.2 * math.log(0.2 / 0.3), abs=1e-9)
    # a likely token (0.45) missing from the other list has at most that side's unlisted mass there (0.05),
    # and the other side's unlisted tokens (0.45) at most the base's (0.05): no 1e-6 floor, a bound
    assert kl_lower_bound({1: 0.5, 2: 0.45}, {1: 0.5, 3: 0.4, 4: 0.05}) == pytest.approx(
        0.45 * math.log(0.45 / 0.05) + 0.05 * math.log(0.05 / 0.45), abs=1e-3)
    d = compare([1, 1, 5], [1, 1, 6], [p, p, {5: 0.6, 6: 0.4}], [p, q, {6: 0.55, 5: 0.45}])
    assert d.first == 2 and d.prefix_agreement == pytest.approx(2 / 3)
    assert d.top1_agreement == pytest.approx(2 / 3)  # the divergence point's argmax differs
    assert d.kl_mean > 0 and math.isfinite(d.kl_mean)
    assert d.to_dict()["kl_top_n"] == 2 and d.to_dict()["kl_positions"] == 3
    same = compare([1, 2], [1, 2])
    assert same.first is None and same.to_dict()["identical"] is True and same.top1_agreement is None


def test_sign_test_exact_values() -> None:
    assert sign_test_p(5, 0) == pytest.approx(0.0625)
    assert sign_test_p(6, 0) == pytest.approx(0.03125)
    assert sign_test_p(3, 3) == 1.0 and sign_test_p(0, 0) == 1.0
    assert sign_test_p(8, 2) == pytest.approx(2 * sum(math.comb(10, i) for i in range(3)) / 2**10)


def test_paired_speed_verdict() -> None:
    v = paired_speed([10, 10, 10, 10, 10, 10], [11, 12, 11, 10.5, 11, 13])
    assert v.wins == 6 and v.significant and v.median_change_pct == pytest.approx(10.0)
    assert "beyond noise" in str(v)
    v = paired_speed([10] * 7, [11, 9, 10.2, 9.9, 10.1, 10.3, 9.8])
    assert not v.significant and "within noise" in str(v)
    assert paired_speed([None, 10], [5, None]).pairs == 0


def test_too_few_pairs_say_so_instead_of_within_noise() -> None:
    """Fewer than 6 pairs that differ can never reach p < 0.05 (5 of 5 gives 0.0625): the verdict says so."""
    from kvtui.core.quality.paired import MIN_PAIRS

    assert MIN_PAIRS == 6
    v = paired_speed([10, 10, 10], [11, 12, 13])
    assert str(v) == "tg: 3/3 pairs faster, sign test p=0.25: 3 pairs: too few to tell, 6 or more needed"
    tied = paired_speed([10] * 7, [10, 10, 11, 11, 11, 11, 11])  # two ties: 5 pairs differ
    assert "5 of 7 pairs differ: too few to tell" in str(tied) and "noise" not in str(tied)
    assert "%" not in str(v), "the change itself is on the comparison line, once"


def test_paired_pass_is_mcnemar_on_discordant_pairs() -> None:
    v = paired_pass([True] * 3 + [False] * 7, [True] * 3 + [True] * 7, "answers")
    assert (v.wins, v.losses, v.pairs) == (7, 0, 10) and v.significant
    assert v.rates == (0.3, 1.0) and "McNemar" in str(v)


def test_reply_loop_needs_different_prompts() -> None:
    from kvtui.core.quality.summary import reply_loop
    from kvtui.core.record.model import Run

    def run(prompt: str, text: str) -> Run:
        return Run(0, "eos", prompt=prompt, text=text)

    stuck = "I will now write the file. Done."
    runs = [run("a", "def f(): return 1")] + [run(p, stuck) for p in ("b", "c", "d")]
    assert reply_loop(runs) == (1, 3)
    same_prompt = [run("a", stuck) for _ in range(4)]  # greedy repeats agree by design
    assert reply_loop(same_prompt) is None
    varied = [run(p, t) for p, t in (("a", "one answer"), ("b", "another one"), ("c", "a third"))]
    assert reply_loop(varied) is None


def test_live_divergence_is_incremental_and_per_run() -> None:
    from kvtui.core.events import RequestSent, SessionStarted, SideInfo, TokenReceived
    from kvtui.core.view import SessionState

    st = SessionState()
    st.apply(SessionStarted(0, "p", "parallel", "", "simultaneous",
                            (SideInfo("a", "f16", "f16", ()), SideInfo("b", "q4_0", "q4_0", ())), "", "", 0, "", "", "", ""))
    for side in (0, 1):
        st.apply(RequestSent(0, side, 0))
    for k, (x, y) in enumerate([(1, 1), (2, 2), (3, 9), (4, 4)]):
        st.apply(TokenReceived(k, 0, 0, k + 1, "t", x))
        st.apply(TokenReceived(k, 1, 0, k + 1, "t", y))
        expected = None if k < 2 else 2
        assert st.divergence(1) == ("a", expected) and st.divergence(0) == ("b", expected)
    for side in (0, 1):  # a new run starts from scratch
        st.apply(RequestSent(1, side, 1))
        st.apply(TokenReceived(2, side, 1, 1, "t", 5))
    assert st.divergence(1) == ("a", None)
