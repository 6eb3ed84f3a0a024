"""Per-side summaries and the A/B comparison, computed from a session record.

The headless table, the app's comparison strip and ``kvtui show`` all read
these, so a figure means the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .divergence import compare as compare_runs
from .metrics import Spread, pct_change, spread
from .stats import PairedVerdict, paired_pass, paired_speed


@dataclass(frozen=True, slots=True)
class SideSummary:
    """One side's medians over its measured runs."""

    name: str
    cache: str  # "K q8_0 / V q8_0"
    status: str
    runs: int
    pp: Spread | None  # server prompt_per_second
    tg: Spread | None  # server predicted_per_second (client-side rate for runs cut short)
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

    @property
    def loops_per_100(self) -> float | None:
        return 100.0 * self.loops / self.runs if self.runs else None


def summarize(record: dict[str, Any]) -> list[SideSummary]:
    """Summaries for every side of a record (live or read from disk)."""
    out = []
    for s in record.get("sides", []):
        runs = s.get("runs", [])
        measured = [r for r in runs if r.get("stop") != "error" or r.get("predicted_n")]
        vram = s.get("vram_peak_mib")
        out.append(SideSummary(
            name=s.get("name", "?"),
            cache=f"K {s.get('cache_type_k', '?')} / V {s.get('cache_type_v', '?')}",
            status=s.get("status", "?"),
            runs=len(runs),
            pp=spread(r.get("prompt_per_second") for r in measured),
            # the server sends no timings for a request cut short (abort, loop): kvtui's own rate stands in
            tg=spread(r.get("predicted_per_second") or r.get("client_tokens_per_second") for r in measured),
            ttft_ms=spread(r.get("ttft_ms") for r in measured),
            tokens=spread(r.get("predicted_n") for r in measured),
            kv_mib=s.get("kv_cache_mib"),
            kv_estimate_mib=s.get("kv_estimate_mib"),
            mem_peak_mib=vram if vram is not None else s.get("rss_peak_mib"),
            mem_kind="VRAM" if vram is not None else "RAM",
            stops=tuple(r.get("stop", "?") for r in runs),
            loops=sum(1 for r in runs if r.get("loop")),
            error=s.get("error"),
            answers_right=sum(1 for r in runs if (r.get("check") or {}).get("answer_ok") is True),
            answers_checked=sum(1 for r in runs if "answer_ok" in (r.get("check") or {})),
            reply_loop=reply_loop(runs),
        ))
    return out


def reply_loop(runs: list[dict[str, Any]], min_run: int = 3) -> tuple[int, int] | None:
    """Three or more consecutive runs whose replies are near-identical although their prompts differ.

    The turn-level loop of a stuck model (the same short reply whatever it is asked). Repeats of one
    prompt are expected to agree, so a window must span at least two different prompts to count.
    """
    from .loops import replies_loop

    start = 0
    while start < len(runs):
        found = replies_loop([r.get("text", "") for r in runs[start:]], min_run=min_run)
        if found is None:
            return None
        first, count = found[0] + start, found[1]
        if len({r.get("prompt", "") for r in runs[first:first + count]}) >= 2:
            return first, count
        start = first + count
    return None


def _med(x: Spread | None) -> float | None:
    return x.median if x is not None else None


def compare(base: SideSummary, other: SideSummary) -> dict[str, float | None]:
    """Relative differences of ``other`` against ``base`` in percent (tg, pp, kv, ttft, mem)."""
    return {
        "tg": pct_change(_med(other.tg), _med(base.tg)),
        "pp": pct_change(_med(other.pp), _med(base.pp)),
        "kv": pct_change(other.kv_mib, base.kv_mib),
        "ttft": pct_change(_med(other.ttft_ms), _med(base.ttft_ms)),
        "mem": pct_change(other.mem_peak_mib, base.mem_peak_mib),
    }


def comparison_line(base: SideSummary, other: SideSummary) -> str:
    """E.g. ``q4_0 vs q8_0: tg +6%, pp +9%, KV -47%``."""
    d = compare(base, other)
    parts = [f"{label} {d[key]:+.0f}%" for key, label in (("tg", "tg"), ("pp", "pp"), ("kv", "KV"), ("ttft", "TTFT"))
             if d[key] is not None]
    return f"{other.name} vs {base.name}: " + (", ".join(parts) if parts else "no figures to compare")


def clean_finish(s: SideSummary) -> bool:
    """Every run ended on its own (end of text or the token limit), none looped or failed."""
    return bool(s.stops) and all(stop in ("eos", "length", "word") for stop in s.stops) and s.loops == 0


def run_pairs(record: dict[str, Any], base: int, other: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Runs of two sides that share a prompt and a repeat (so the same seed), in order."""
    sides = record.get("sides", [])
    if max(base, other) >= len(sides):
        return []
    by_key = {(r.get("prompt", ""), r.get("repeat", 0)): r for r in sides[other].get("runs", [])}
    return [(r, by_key[k]) for r in sides[base].get("runs", [])
            if (k := (r.get("prompt", ""), r.get("repeat", 0))) in by_key]


def _tops(run: dict[str, Any]) -> list[dict[int, float]] | None:
    import math

    ids, lps = run.get("top_ids"), run.get("top_logprobs")
    if not ids or not lps:
        return None
    return [{i: math.exp(lp) for i, lp in zip(a, b, strict=False)} for a, b in zip(ids, lps, strict=False)]


def divergences(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Where each side's generation parts from the baseline's (side 0), per prompt and repeat."""
    out = []
    sides = record.get("sides", [])
    for other in range(1, len(sides)):
        for a, b in run_pairs(record, 0, other):
            if not a.get("ids") or not b.get("ids"):
                continue
            d = compare_runs(a["ids"], b["ids"], _tops(a), _tops(b))
            out.append({"base": sides[0]["name"], "other": sides[other]["name"], "prompt": a.get("prompt", ""),
                        "repeat": a.get("repeat", 0), **d.to_dict()})
    return out


def verdicts(record: dict[str, Any]) -> list[tuple[str, str, PairedVerdict]]:
    """Paired comparisons of each side against the baseline: tg, pp (sign test) and answers (McNemar)."""
    out = []
    sides = record.get("sides", [])
    for other in range(1, len(sides)):
        pairs = [(a, b) for a, b in run_pairs(record, 0, other)
                 if a.get("stop") != "error" and b.get("stop") != "error"]
        if not pairs:
            continue
        names = (sides[0]["name"], sides[other]["name"])
        out.append((*names, paired_speed([a.get("predicted_per_second") for a, _ in pairs],
                                         [b.get("predicted_per_second") for _, b in pairs], "tg")))
        out.append((*names, paired_speed([a.get("prompt_per_second") for a, _ in pairs],
                                         [b.get("prompt_per_second") for _, b in pairs], "pp")))
        checked = [(a, b) for a, b in pairs if "answer_ok" in (a.get("check") or {})]
        if checked:
            out.append((*names, paired_pass([a["check"]["answer_ok"] for a, _ in checked],
                                            [b["check"]["answer_ok"] for _, b in checked], "answers")))
    return out


def verdict_dicts(record: dict[str, Any]) -> list[dict[str, Any]]:
    """``verdicts`` as the record stores them."""
    return [{"base": base, "other": other, "measure": v.measure, "pairs": v.pairs, "wins": v.wins, "losses": v.losses,
             "p": round(v.p, 6),
             "median_change_pct": None if v.median_change_pct is None else round(v.median_change_pct, 2),
             "significant": v.significant, "test": "sign test" if v.measure != "answers" else "McNemar exact"}
            for base, other, v in verdicts(record)]
