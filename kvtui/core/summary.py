"""Per-side summaries and the A/B comparison, computed from a session record.

The headless table, the app's comparison strip and ``kvtui show`` all read
these, so a figure means the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .metrics import Spread, pct_change, spread


@dataclass(frozen=True, slots=True)
class SideSummary:
    """One side's medians over its measured runs."""

    name: str
    cache: str  # "K q8_0 / V q8_0"
    status: str
    runs: int
    pp: Spread | None  # server prompt_per_second
    tg: Spread | None  # server predicted_per_second (client-side rate for runs cut short)
    client_tg: Spread | None
    ttft_ms: Spread | None
    tokens: Spread | None
    kv_mib: float | None  # from the server's log
    kv_estimate_mib: float | None
    mem_peak_mib: float | None
    mem_kind: str  # "VRAM" | "RAM"
    stops: tuple[str, ...]
    loops: int
    error: str | None


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
            client_tg=spread(r.get("client_tokens_per_second") for r in measured),
            ttft_ms=spread(r.get("ttft_ms") for r in measured),
            tokens=spread(r.get("predicted_n") for r in measured),
            kv_mib=s.get("kv_cache_mib"),
            kv_estimate_mib=s.get("kv_estimate_mib"),
            mem_peak_mib=vram if vram is not None else s.get("rss_peak_mib"),
            mem_kind="VRAM" if vram is not None else "RAM",
            stops=tuple(r.get("stop", "?") for r in runs),
            loops=sum(1 for r in runs if "loop" in r),
            error=s.get("error"),
        ))
    return out


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
