"""KL divergence and the other statistics ``llama-perplexity --kl-divergence`` prints, from top-K lists.

llama-perplexity sees every logit; over HTTP llama-server reports, per position,
the top-K tokens with their exact (full-softmax) log-probabilities, and the
probability of the one token kvtui forces as the sampled token (the actual next
token of the text). Everything else is unknown, so the KL divergence at a
position is bounded from below, soundly:

* tokens known on both sides (both top-K lists, and the actual token) count
  exactly, ``p log(p/q)``;
* the rest of the vocabulary is split into three buckets: ``X`` (in the base's
  list only: its base mass is known, its other-side mass is not, but each of
  its tokens has at most the other side's K-th probability), ``Y`` (the mirror
  image) and ``Z`` (in neither list). Merging tokens into buckets can only lower
  KL (the log-sum inequality), so the smallest bucket KL that the known masses
  and those per-token limits allow is a lower bound of the true KL. Without the
  limits it is the one-bucket figure ``P_rest log(P_rest/Q_rest)``; with them it
  is tighter where a likely token fell out of the other side's list.

No token is ever given an invented probability. What the bound cannot see is
how the two sides differ *inside* the tail beyond the top-K; its base mass is
reported per position (``unresolved``) so a reader knows how much that is.

Same-top, delta-p and the perplexities need only the top-1 and the actual
token's probability, which are exact. The summary follows
tools/perplexity/perplexity.cpp: mean with its standard error, percentiles by
linear interpolation, the RMS of delta-p with its propagated error, and
ln(PPL(Q)/PPL(base)) with the covariance of the two NLLs taken into account.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from kvtui.core.record.tomlmodel import key

# Masses below this are float32 rounding of the server's softmax (it normalises 32-bit floats over the whole
# vocabulary): a bucket whose other-side mass comes out smaller is given this much, the largest mass rounding
# could have hidden, so the bound stays a lower bound.
MASS_TOL = 1e-5


@dataclass(frozen=True, slots=True)
class Position:
    """One side's next-token distribution at one position of the scored text.

    Args:
        ids: the top-K token ids, as the server listed them.
        logprobs: their natural-log probabilities (full softmax, before sampling).
        actual: the token that really comes next, or None where it is not known.
        actual_logprob: its log-probability on this side (exact even outside the top-K).
    """

    ids: Sequence[int]
    logprobs: Sequence[float]
    actual: int | None = None
    actual_logprob: float | None = None

    @property
    def top(self) -> int | None:
        """The most probable token (None for an empty list)."""
        if not self.ids:
            return None
        best = max(range(len(self.ids)), key=self.logprobs.__getitem__)
        return self.ids[best]


@dataclass(frozen=True, slots=True)
class PositionStat:
    """``side`` against ``base`` at one position."""

    kld: float  # lower bound of KL(base || side), nats
    unresolved: float  # base mass outside the tokens known on both sides (bucketed by the bound)
    same_top: bool
    nll_base: float | None = None  # -log p_base(actual); None where the actual token is unknown
    nll: float | None = None  # -log p_side(actual)


def _known(pos: Position) -> dict[int, float]:
    """token id -> log-probability of every token whose probability this side reported."""
    known = dict(zip(pos.ids, pos.logprobs, strict=True))
    if pos.actual is not None and pos.actual_logprob is not None:
        known[pos.actual] = pos.actual_logprob
    return known


def _g(a: float, b: float) -> float:
    """One bucket's KL term ``a log(a/b)``; a mass that rounding made zero on the other side gets MASS_TOL."""
    if a <= 0.0:
        return 0.0
    return a * math.log(a / max(b, MASS_TOL))


def tail_bound(px: float, qy: float, p_rest: float, q_rest: float, cap_qx: float, cap_py: float) -> float:
    """The smallest KL the three buckets X, Y, Z can have, given what is known of them.

    Args:
        px: base mass of X (tokens only the base listed).
        qy: other-side mass of Y (tokens only the other side listed).
        p_rest: base mass outside the tokens known on both sides (X + Y + Z).
        q_rest: other-side mass outside them.
        cap_qx: the most other-side mass X can have (its size times the other side's K-th probability).
        cap_py: the most base mass Y can have.

    Returns:
        min over qX in [0, cap_qx], pY in [0, cap_py] of the KL of the three buckets (nats, >= 0 up to rounding).
        The function is jointly convex, so the minimum is at the unconstrained optimum (all three buckets in the
        same proportion: the one-bucket figure) or, when that breaks a limit, with that limit active and the
        other variable at its one-dimensional optimum; every candidate is feasible, so the smallest is the bound.
    """
    p_rest = max(p_rest, 0.0)
    q_rest = max(q_rest, 0.0)
    cap_qx = max(min(cap_qx, q_rest - qy + MASS_TOL), 0.0)
    cap_py = max(min(cap_py, p_rest - px + MASS_TOL), 0.0)

    def f(qx: float, py: float) -> float:
        return _g(px, qx) + _g(py, qy) + _g(max(p_rest - px - py, 0.0), max(q_rest - qy - qx, 0.0))

    def opt_qx(py: float) -> float:  # qX / pX = qZ / pZ
        denom = p_rest - py
        return min(max(px * (q_rest - qy) / denom, 0.0), cap_qx) if denom > 0 else cap_qx

    def opt_py(qx: float) -> float:  # pY / qY = pZ / qZ
        denom = q_rest - qx
        return min(max(qy * (p_rest - px) / denom, 0.0), cap_py) if denom > 0 else cap_py

    candidates = [f(cap_qx, cap_py), f(cap_qx, opt_py(cap_qx)), f(opt_qx(cap_py), cap_py)]
    if p_rest > 0 and q_rest > 0:
        qx0, py0 = px * q_rest / p_rest, qy * p_rest / q_rest
        if qx0 <= cap_qx and py0 <= cap_py:
            candidates.append(f(qx0, py0))
    return min(candidates)


def compare_position(base: Position, side: Position) -> PositionStat:
    """Bound KL(base || side) at one position and take the exact figures (same top, NLLs).

    Both positions must be of the same context (the same text up to here).
    """
    p, q = _known(base), _known(side)
    common = p.keys() & q.keys()
    kl = sp = sq = 0.0
    for t in common:
        pt = math.exp(p[t])
        kl += pt * (p[t] - q[t])
        sp += pt
        sq += math.exp(q[t])
    only_p = [math.exp(lp) for t, lp in p.items() if t not in common]
    only_q = [math.exp(lq) for t, lq in q.items() if t not in common]
    # every token missing from a list has at most that list's smallest probability
    k_p = math.exp(min(base.logprobs)) if base.logprobs else 1.0
    k_q = math.exp(min(side.logprobs)) if side.logprobs else 1.0
    p_rest, q_rest = 1.0 - sp, 1.0 - sq
    kl += tail_bound(sum(only_p), sum(only_q), p_rest, q_rest, len(only_p) * k_q, len(only_q) * k_p)
    nll_base = nll = None
    if base.actual is not None and base.actual_logprob is not None and side.actual_logprob is not None:
        nll_base, nll = -base.actual_logprob, -side.actual_logprob
    return PositionStat(max(kl, 0.0), max(p_rest, 0.0), base.top == side.top, nll_base, nll)


# --- the summary llama-perplexity prints ---------------------------------------------------------------


def mean_and_uncertainty(values: Sequence[float]) -> tuple[float, float]:
    """The mean and its standard error (sample standard deviation / sqrt(n)); 0 error below 2 values."""
    n = len(values)
    if n == 0:
        return 0.0, 0.0
    mean = math.fsum(values) / n
    if n < 2:
        return mean, 0.0
    var = math.fsum((v - mean) ** 2 for v in values) / n
    return mean, math.sqrt(var / (n - 1))


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """llama-perplexity's percentile: linear interpolation at ``fraction * (n - 1)`` of sorted values."""
    if fraction <= 0:
        return sorted_values[0]
    if fraction >= 1:
        return sorted_values[-1]
    x = fraction * (len(sorted_values) - 1)
    i = int(x)
    w = x - i
    return (1 - w) * sorted_values[i] + w * sorted_values[min(i + 1, len(sorted_values) - 1)]


@dataclass(frozen=True, slots=True)
class SideScore:
    """How far one side's next-token distributions are from the base side's, over the same positions.

    KLD figures are lower bounds (see the module docstring); ``unresolved_mean``
    is the mean base probability outside the tokens known on both sides.
    Percent figures are percents. Figures that need the actual next token are
    None when it was not known. ``kvtui score --json`` prints these keys, and a
    session record keeps them as ``[[scores]]``.
    """

    side: str = key("the side scored")
    base: str = key("the side it is compared with: the f16 side, else the first")
    positions: int = key("positions scored: the distributions compared")
    top_k: int = key("`n_probs` per position; beyond the top-K the KLD is a lower bound")
    kld_mean: float = key("mean KL divergence KL(base ‖ side), nats (a lower bound: exact on the tokens both "
                          "sides listed)")
    kld_mean_unc: float = key("its standard error")
    kld_median: float = key("median KLD")
    kld_p90: float = key("90th percentile of the KLD")
    kld_p95: float = key("95th percentile")
    kld_p99: float = key("99th percentile")
    kld_p999: float = key("99.9th percentile")
    kld_max: float = key("the largest KLD of a position")
    same_top_pct: float = key("positions whose most likely token is the same on both sides, %")
    same_top_pct_unc: float = key("its standard error, %")
    unresolved_mean: float = key("mean base probability beyond the tokens both sides listed (counted as buckets)")
    rms_dp_pct: float | None = key("RMS of delta-p, the change in probability of the actual next token, %", None)
    rms_dp_pct_unc: float | None = key("its standard error", None)
    mean_dp_pct: float | None = key("mean delta-p, %", None)
    mean_dp_pct_unc: float | None = key("its standard error", None)
    ln_ppl_ratio: float | None = key("mean ln(PPL(side) / PPL(base)) over the actual tokens", None)
    ln_ppl_ratio_unc: float | None = key("its standard error (with the covariance of the two)", None)
    ppl_ratio: float | None = key("PPL(side) / PPL(base)", None)
    ppl_ratio_unc: float | None = key("its standard error", None)
    ppl: float | None = key("the side's perplexity of the actual tokens", None)
    ppl_base: float | None = key("the base's", None)

    def to_dict(self) -> dict[str, object]:
        """The figures as JSON/TOML-ready data (None fields left out: TOML has no null)."""
        out: dict[str, object] = {}
        for name in self.__slots__:  # type: ignore[attr-defined]
            value = getattr(self, name)
            if value is None:
                continue
            out[name] = round(value, 6) if isinstance(value, float) else value
        return out

    def rounded(self) -> SideScore:
        """The same figures at the precision ``to_dict`` prints (what a record keeps)."""
        return SideScore(**self.to_dict())  # type: ignore[arg-type]


def summarize(stats: Sequence[PositionStat], *, side: str, base: str, top_k: int) -> SideScore:
    """The statistics of llama-perplexity's KL-divergence summary over these positions.

    Raises:
        ValueError: no positions.
    """
    n = len(stats)
    if n == 0:
        raise ValueError("no positions to summarize")
    klds = sorted(s.kld for s in stats)
    kld_mean, kld_unc = mean_and_uncertainty(klds)
    same = sum(1 for s in stats if s.same_top) / n
    same_unc = math.sqrt(same * (1 - same) / (n - 1)) if n > 1 else 0.0
    score = dict(
        side=side, base=base, positions=n, top_k=top_k, kld_mean=kld_mean, kld_mean_unc=kld_unc,
        kld_median=percentile(klds, 0.5), kld_p90=percentile(klds, 0.90), kld_p95=percentile(klds, 0.95),
        kld_p99=percentile(klds, 0.99), kld_p999=percentile(klds, 0.999), kld_max=klds[-1],
        same_top_pct=100 * same, same_top_pct_unc=100 * same_unc,
        unresolved_mean=math.fsum(s.unresolved for s in stats) / n,
    )
    pairs = [(s.nll, s.nll_base) for s in stats if s.nll is not None and s.nll_base is not None]
    if len(pairs) == n:
        score.update(_probability_stats([a for a, _ in pairs], [b for _, b in pairs]))
    return SideScore(**score)  # type: ignore[arg-type]


def _probability_stats(nll: list[float], nll_base: list[float]) -> dict[str, float]:
    """Delta-p and perplexity figures from the actual token's NLL on both sides."""
    n = len(nll)
    dp = [math.exp(-a) - math.exp(-b) for a, b in zip(nll, nll_base, strict=True)]
    mean_dp, mean_dp_unc = mean_and_uncertainty(dp)
    mse, mse_unc = mean_and_uncertainty([d * d for d in dp])
    rms = math.sqrt(mse)
    rms_unc = 0.5 / rms * mse_unc if rms > 0 else 0.0
    m, m_unc = mean_and_uncertainty(nll)
    mb, mb_unc = mean_and_uncertainty(nll_base)
    cov = math.fsum((a - m) * (b - mb) for a, b in zip(nll, nll_base, strict=True)) / n / (n - 1) if n > 1 else 0.0
    ln_ratio = m - mb
    ln_ratio_unc = math.sqrt(max(m_unc**2 + mb_unc**2 - 2 * cov, 0.0))
    ratio = math.exp(ln_ratio)
    return dict(rms_dp_pct=100 * rms, rms_dp_pct_unc=100 * rms_unc, mean_dp_pct=100 * mean_dp,
                mean_dp_pct_unc=100 * mean_dp_unc, ln_ppl_ratio=ln_ratio, ln_ppl_ratio_unc=ln_ratio_unc,
                ppl_ratio=ratio, ppl_ratio_unc=ratio * ln_ratio_unc, ppl=math.exp(m), ppl_base=math.exp(mb))
