"""Per-side summaries and the comparison of every side with the first, computed from a session record.

The headless table, the app's comparison strip and ``kvtui show`` all read these, so a figure means the
same thing everywhere. Three rules keep the comparisons honest:

- **Like with like.** Speed figures come only from runs taken the same way: a side's figures are its runs of
  the same kind as its last run (``simultaneous``, contended; or one request at a time: ``solo`` and
  ``alternate``), and two sides whose figures are of different kinds are not compared ("tg, pp, TTFT not
  compared: solo vs simultaneous runs").
- **One meaning per figure.** tg is the server's ``predicted_per_second``. kvtui's own client rate stands in
  only where none of a side's runs has the server's figure (runs cut short), is marked ``~14.0 (kvtui)``, and
  is never compared with a server's figure.
- **One comparison per figure.** With two or more pairs of runs (same prompt and repeat on both sides) a
  change is the median of the paired changes, and the line says so; otherwise it is the change of the medians.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from kvtui.core.quality.divergence import compare as compare_runs
from kvtui.core.quality.fairness import Fairness, SideFacts, check_sides
from kvtui.core.quality.figures import Spread, pct_change, spread
from kvtui.core.quality.loops import piece_key
from kvtui.core.quality.paired import PairedVerdict, paired_pass, paired_speed
from kvtui.core.quality.replies import word_keys
from kvtui.core.record.model import Comparison, Run, SessionRecord, Side, Verdict
from kvtui.core.vocab import CLEAN_STOPS, Schedule, StopReason


def kind(schedule: Schedule | str | None) -> str:
    """The kind of measurement a schedule gives: contended (``simultaneous``) or uncontended.

    Uncontended is one request at a time (``solo``, ``alternate``) or at once
    on hardware of its own (``separate``: each side on its own GPU or machine).
    """
    return "simultaneous" if schedule == Schedule.SIMULTANEOUS else "one at a time"


def speed_runs(side: Side) -> list[Run]:
    """The runs a side's speed figures come from: measured runs of the same kind as its last measured run."""
    measured = [r for r in side.runs if r.measured]
    if not measured:
        return []
    last = kind(measured[-1].schedule)
    return [r for r in measured if kind(r.schedule) == last]


def _schedules(runs: list[Run]) -> str:
    names = list(dict.fromkeys(str(r.schedule) if r.schedule else "unknown" for r in runs))
    return "/".join(names) if names else "-"


@dataclass(frozen=True, slots=True)
class SideSummary:
    """One side's medians over its measured runs (speed figures: over its runs of one kind)."""

    name: str
    cache: str  # "K q8_0 / V q8_0"
    status: str
    runs: int
    pp: Spread | None  # server prompt_per_second
    tg: Spread | None  # server predicted_per_second, or kvtui's own rate where no run has it (tg_own)
    ttft_ms: Spread | None
    tokens: Spread | None
    kv_mib: float | None  # from the server's log
    kv_estimate_mib: float | None
    mem_peak_mib: float | None
    mem_kind: str  # "VRAM" | "RAM"
    stops: tuple[str, ...]
    loops: int
    error: str | None
    answers_right: int = 0
    answers_checked: int = 0  # runs whose prompt has an expected answer
    reply_loop: tuple[int, int] | None = None  # (first run, how many): near-identical replies to different prompts
    tg_own: bool = False  # tg is kvtui's client rate: the server sent no timings for any of these runs
    schedule: str = "-"  # how the speed figures were taken ("simultaneous", "solo", "alternate", "solo/alternate")
    left_out: int = 0  # measured runs of another kind, not mixed into the speed figures
    contended: bool = False  # the speed figures come from simultaneous runs: the servers shared the hardware

    @property
    def loops_per_100(self) -> float | None:
        return 100.0 * self.loops / self.runs if self.runs else None

    @property
    def tg_text(self) -> str:
        """tg as shown: ``25.3``, or ``~14.0 (kvtui)`` for kvtui's own rate."""
        if self.tg is None:
            return "-"
        return f"~{self.tg} (kvtui)" if self.tg_own else str(self.tg)

    @property
    def note(self) -> str | None:
        """Says which runs the speed figures leave out, when a side has runs of two kinds."""
        if not self.left_out:
            return None
        plural = "s" if self.left_out > 1 else ""
        return (f"{self.name}: speed figures from its {self.schedule} runs; {self.left_out} run{plural} of the other "
                "kind left out (figures taken differently are not mixed)")


def summarize_side(side: Side) -> SideSummary:
    """One side's summary."""
    runs = side.runs
    measured = [r for r in runs if r.measured]
    fast = speed_runs(side)
    server_tg = [r.predicted_per_second for r in fast if r.predicted_per_second is not None]
    own = not server_tg
    checked = [r.check.answer_ok for r in runs if r.check is not None and r.check.answer_ok is not None]
    return SideSummary(
        name=side.name, cache=side.cache, status=str(side.status), runs=len(runs),
        pp=spread(r.prompt_per_second for r in fast),
        tg=spread(r.client_tokens_per_second for r in fast) if own else spread(server_tg),
        ttft_ms=spread(r.ttft_ms for r in fast),
        tokens=spread(r.predicted_n for r in measured),
        kv_mib=side.kv_cache_mib, kv_estimate_mib=side.kv_estimate_mib,
        mem_peak_mib=side.vram_peak_mib if side.vram_peak_mib is not None else side.rss_peak_mib,
        mem_kind="VRAM" if side.vram_peak_mib is not None else "RAM",
        stops=tuple(str(r.stop) for r in runs), loops=sum(1 for r in runs if r.loop is not None), error=side.error,
        answers_right=sum(1 for ok in checked if ok), answers_checked=len(checked), reply_loop=reply_loop(runs),
        tg_own=own and any(r.client_tokens_per_second is not None for r in fast), schedule=_schedules(fast),
        left_out=len(measured) - len(fast), contended=bool(fast) and kind(fast[-1].schedule) == "simultaneous",
    )


def summarize(record: SessionRecord) -> list[SideSummary]:
    """Summaries for every side of a record (live or read from disk)."""
    return [summarize_side(s) for s in record.sides]


def reply_loop(runs: list[Run], min_run: int = 3) -> tuple[int, int] | None:
    """Three or more consecutive runs whose replies are near-identical although their prompts differ.

    The turn-level loop of a stuck model (the same short reply whatever it is asked). Repeats of one
    prompt are expected to agree, so a window must span at least two different prompts to count.
    """
    from kvtui.core.quality.loops import replies_loop

    start = 0
    while start < len(runs):
        found = replies_loop([r.text for r in runs[start:]], min_run=min_run)
        if found is None:
            return None
        first, count = found[0] + start, found[1]
        if len({r.prompt for r in runs[first:first + count]}) >= 2:
            return first, count
        start = first + count
    return None


def clean_finish(s: SideSummary) -> bool:
    """Every run ended on its own (end of text or the token limit), none looped or failed."""
    return bool(s.stops) and all(stop in CLEAN_STOPS for stop in s.stops) and s.loops == 0


# -- pairs ----------------------------------------------------------------------------------------


def pair_runs(base: list[Run], other: list[Run]) -> list[tuple[Run, Run]]:
    """Runs of two sides with the same prompt and repeat (so the same seed), in the base's order.

    Where a side has several runs of one prompt and repeat (a rerun), its latest counts.
    """
    latest_base = {(r.prompt, r.repeat): r for r in base}
    latest_other = {(r.prompt, r.repeat): r for r in other}
    return [(r, latest_other[k]) for k, r in latest_base.items() if k in latest_other]


def speed_pairs(record: SessionRecord, base: int, other: int) -> list[tuple[Run, Run]]:
    """Pairs for speed: both runs measured, and of the same kind of schedule."""
    a, b = speed_runs(record.sides[base]), speed_runs(record.sides[other])
    if not a or not b or kind(a[-1].schedule) != kind(b[-1].schedule):
        return []
    return pair_runs(a, b)


def _tg_of(own: bool) -> Callable[[Run], float | None]:
    return (lambda r: r.client_tokens_per_second) if own else (lambda r: r.predicted_per_second)


# -- the comparison line --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """One compared figure: ``other`` against ``base`` in percent."""

    label: str  # tg, pp, KV, TTFT
    pct: float
    lower_is_better: bool = False
    note: str = ""  # "kvtui": the two sides' kvtui rates; "4 pairs": fewer pairs than the line says

    @property
    def good(self) -> bool:
        return self.pct < 0 if self.lower_is_better else self.pct > 0

    def __str__(self) -> str:
        return f"{self.label} {self.pct:+.0f}%" + (f" ({self.note})" if self.note else "")


@dataclass(frozen=True, slots=True)
class SideComparison:
    """Every figure of one side against the base side, each compared once."""

    base: str
    other: str
    changes: tuple[Change, ...]
    pairs: int = 0  # >= 2: the speed changes are medians of paired changes
    not_compared: tuple[tuple[str, str], ...] = ()  # (figures, why)
    unfair: Fairness | None = None  # the pair is not comparable: the figures are shown after the reasons

    @property
    def title(self) -> str:
        """``q4_0 vs q8_0``, and ``, median of 6 paired runs`` when the speed changes are paired."""
        paired = self.pairs >= 2 and any(c.label != "KV" for c in self.changes)
        return f"{self.other} vs {self.base}" + (f", median of {self.pairs} paired runs" if paired else "")

    @property
    def skipped(self) -> str:
        """``tg not compared: ...`` for each figure left out, or ``""``."""
        return "; ".join(f"{figures} not compared: {why}" for figures, why in self.not_compared)

    def line(self) -> str:
        """E.g. ``q4_0 vs q8_0: tg +6%, pp +9%, KV -47%``."""
        text = ", ".join(str(c) for c in self.changes)
        if self.skipped:
            text = f"{text}; {self.skipped}" if text else self.skipped
        if self.unfair is not None:
            return f"{self.title}: {self.unfair.line} (figures: {text or 'none'})"
        return f"{self.title}: {text or 'no figures to compare'}"


def compare(record: SessionRecord, base: int, other: int) -> SideComparison:
    """Side ``other`` against side ``base``: speed like with like (paired where it can be), KV always."""
    sb, so = summarize_side(record.sides[base]), summarize_side(record.sides[other])
    changes: dict[str, Change] = {}
    skipped: list[tuple[str, str]] = []
    fast_b, fast_o = speed_runs(record.sides[base]), speed_runs(record.sides[other])
    pairs = speed_pairs(record, base, other)
    if fast_b and fast_o and kind(fast_b[-1].schedule) != kind(fast_o[-1].schedule):
        skipped.append(("tg, pp, TTFT", f"{so.schedule} vs {sb.schedule} runs"))
    elif fast_b and fast_o:
        figures: list[tuple[str, Callable[[Run], float | None], Spread | None, Spread | None, bool, str]] = []
        if sb.tg_own == so.tg_own:
            figures.append(("tg", _tg_of(sb.tg_own), sb.tg, so.tg, False, "kvtui" if sb.tg_own else ""))
        elif sb.tg is not None and so.tg is not None:
            mine, theirs = (so.name, sb.name) if so.tg_own else (sb.name, so.name)
            skipped.append(("tg", f"kvtui's rate ({mine}) vs the server's ({theirs})"))
        figures.append(("pp", lambda r: r.prompt_per_second, sb.pp, so.pp, False, ""))
        figures.append(("TTFT", lambda r: r.ttft_ms, sb.ttft_ms, so.ttft_ms, True, ""))
        for label, value, spread_b, spread_o, lower, note in figures:
            if len(pairs) >= 2:
                both = [(a, b) for a, b in ((value(x), value(y)) for x, y in pairs)
                        if a is not None and b is not None and a > 0]
                if not both:
                    continue
                pct = statistics.median((b - a) / a * 100 for a, b in both)
                if len(both) < len(pairs):
                    note = ", ".join(n for n in (note, f"{len(both)} pairs") if n)
            else:
                pct = pct_change(_med(spread_o), _med(spread_b))  # type: ignore[assignment]
                if pct is None:
                    continue
            changes[label] = Change(label, pct, lower, note)
    kv = pct_change(so.kv_mib, sb.kv_mib)
    if kv is not None:
        changes["KV"] = Change("KV", kv, True)
    ordered = tuple(changes[k] for k in ("tg", "pp", "KV", "TTFT") if k in changes)
    return SideComparison(sb.name, so.name, ordered, len(pairs) if len(pairs) >= 2 else 0, tuple(skipped),
                          unfair_pair(record, sb.name, so.name))


def comparisons(record: SessionRecord, with_runs_only: bool = False) -> list[SideComparison]:
    """Every side against the base side (side 0; with ``with_runs_only``, the first side that has runs)."""
    sides = [i for i, s in enumerate(record.sides) if s.runs or not with_runs_only]
    if len(sides) < 2:
        return []
    return [compare(record, sides[0], i) for i in sides[1:]]


def fairness(record: SessionRecord) -> list[Fairness]:
    """Each other side against side 0: what differs besides the cache (see :mod:`kvtui.core.quality.fairness`).

    In a free conversation each side answers in its own history, so a turn's two runs process different
    contexts: where their sizes differ, their speeds are not a pair (a forced conversation's are).
    """
    found = {f.other: f for f in check_sides([SideFacts(s.name, s.cache_type_k, s.cache_type_v, s.argv, s.ran_with,
                                                        s.n_ctx) for s in record.sides])}
    if record.conversation is not None and record.conversation.mode == "free" and len(record.sides) > 1:
        base = {r.turn: r.context_n for r in record.sides[0].runs}
        for side in record.sides[1:]:
            pairs = [(base[r.turn], r.context_n) for r in side.runs if r.turn in base]
            differ = sum(1 for a, b in pairs if a != b)
            if differ:
                reason = (f"a free conversation: the contexts differ in {differ} of {len(pairs)} turns (a forced "
                          "one pairs them)")
                old = found.get(side.name)
                found[side.name] = Fairness(record.sides[0].name, side.name,
                                            (*(old.reasons if old else ()), reason))
    return [found[s.name] for s in record.sides[1:] if s.name in found]


def unfair_pair(record: SessionRecord, base: str, other: str) -> Fairness | None:
    """The record's fairness flag for this pair (computed now where the record has none yet)."""
    found = record.fairness if record.fairness else (fairness(record) if base == record.sides[0].name else [])
    return next((f for f in found if (f.base, f.other) == (base, other)), None)


def _med(x: Spread | None) -> float | None:
    return x.median if x is not None else None


# -- divergence and verdicts ----------------------------------------------------------------------


def _tops(run: Run) -> list[dict[int, float]] | None:
    if not run.top_ids or not run.top_logprobs:
        return None
    return [{i: math.exp(lp) for i, lp in zip(a, b, strict=False)}
            for a, b in zip(run.top_ids, run.top_logprobs, strict=False)]


def divergences(record: SessionRecord) -> list[Comparison]:
    """Where each side's generation parts from the baseline's (side 0), per prompt and repeat.

    Token ids do not depend on the schedule, so every run pairs, whatever its schedule.
    """
    out = []
    sides = record.sides
    for other in range(1, len(sides)):
        for a, b in pair_runs(sides[0].runs, sides[other].runs):
            if not a.ids or not b.ids:
                continue
            if (-1 in a.ids or -1 in b.ids) and min(len(a.pieces), len(b.pieces)) <= 1:
                basis = "words"  # an unstreamed reply is one piece (kvtui mirror): compare the texts' words
                d = compare_runs(*word_keys(a.text, b.text))
            elif -1 in a.ids or -1 in b.ids:  # no token ids (a chat stream): compare the streamed pieces instead
                basis = "pieces"
                d = compare_runs([piece_key(p) or 0 for p in a.pieces], [piece_key(p) or 0 for p in b.pieces])
            else:
                basis = "ids"
                d = compare_runs(a.ids, b.ids, _tops(a), _tops(b))
            out.append(Comparison(
                base=sides[0].name, other=sides[other].name, prompt=a.prompt, repeat=a.repeat,
                identical=d.first is None, first_divergence=d.first, prefix_agreement=round(d.prefix_agreement, 4),
                alignment=round(d.alignment, 4),
                top1_agreement=None if d.top1_agreement is None else round(d.top1_agreement, 4),
                kl_mean=None if d.kl_mean is None else round(d.kl_mean, 6), kl_top_n=d.kl_top_n,
                kl_positions=d.kl_positions, basis=basis))
    return out


def verdicts(record: SessionRecord) -> list[tuple[str, str, PairedVerdict]]:
    """Paired comparisons of each side against the baseline: tg, pp (sign test) and answers (McNemar).

    Pairs are runs of the same prompt and repeat, of the same kind of schedule, neither of which failed.
    """
    out = []
    sides = record.sides
    for other in range(1, len(sides)):
        pairs = [(a, b) for a, b in speed_pairs(record, 0, other)
                 if a.stop != StopReason.ERROR and b.stop != StopReason.ERROR]
        if not pairs:
            continue
        names = (sides[0].name, sides[other].name)
        own = summarize_side(sides[0]).tg_own, summarize_side(sides[other]).tg_own
        if own[0] == own[1]:
            tg = _tg_of(own[0])
            out.append((*names, paired_speed([tg(a) for a, _ in pairs], [tg(b) for _, b in pairs], "tg")))
        out.append((*names, paired_speed([a.prompt_per_second for a, _ in pairs],
                                         [b.prompt_per_second for _, b in pairs], "pp")))
        checked = [(a.check.answer_ok, b.check.answer_ok) for a, b in pairs
                   if a.check is not None and b.check is not None and a.check.answer_ok is not None
                   and b.check.answer_ok is not None]
        if checked:
            out.append((*names, paired_pass([a for a, _ in checked], [b for _, b in checked], "answers")))
    return out


def verdict_records(record: SessionRecord) -> list[Verdict]:
    """``verdicts`` as the record stores them."""
    return [Verdict(base=base, other=other, measure=v.measure, pairs=v.pairs, wins=v.wins, losses=v.losses,
                    p=round(v.p, 6),
                    median_change_pct=None if v.median_change_pct is None else round(v.median_change_pct, 2),
                    significant=v.significant, test="sign test" if v.measure != "answers" else "McNemar exact",
                    not_comparable=_flag(record, base, other))
            for base, other, v in verdicts(record)]


def _flag(record: SessionRecord, base: str, other: str) -> str | None:
    found = unfair_pair(record, base, other)
    return found.line if found is not None else None
