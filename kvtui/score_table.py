"""The score table, laid out like llama-perplexity's KL-divergence summary: a row per figure, a column per side.

``kvtui score``, the headless run and ``kvtui show`` print the same table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kvtui.core.quality.kld import SideScore
from kvtui.core.record.model import Scoring, SessionRecord


def _pm(value: float | None, unc: float | None, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f} ± {unc:.{digits}f}" if unc is not None else f"{value:.{digits}f}"


def figures(top_k: int) -> list[tuple[str, Callable[[SideScore], str]]]:
    """(row label, cell) for every figure, in llama-perplexity's order."""
    return [
        ("mean KLD", lambda s: _pm(s.kld_mean, s.kld_mean_unc, 5)),
        ("median KLD", lambda s: f"{s.kld_median:.5f}"),
        ("90% KLD", lambda s: f"{s.kld_p90:.5f}"),
        ("99% KLD", lambda s: f"{s.kld_p99:.5f}"),
        ("99.9% KLD", lambda s: f"{s.kld_p999:.5f}"),
        ("maximum KLD", lambda s: f"{s.kld_max:.5f}"),
        ("same top %", lambda s: _pm(s.same_top_pct, s.same_top_pct_unc, 2)),
        ("RMS Δp %", lambda s: _pm(s.rms_dp_pct, s.rms_dp_pct_unc, 3)),
        ("mean Δp %", lambda s: _pm(s.mean_dp_pct, s.mean_dp_pct_unc, 3)),
        ("ln(PPL/PPL base)", lambda s: _pm(s.ln_ppl_ratio, s.ln_ppl_ratio_unc, 5)),
        ("PPL/PPL base", lambda s: _pm(s.ppl_ratio, s.ppl_ratio_unc, 4)),
        ("PPL", lambda s: "-" if s.ppl is None else f"{s.ppl:.3f} (base {s.ppl_base:.3f})"),
        (f"beyond both top-{top_k}", lambda s: f"{s.unresolved_mean:.1%}"),
    ]


def score_table(columns: Sequence[tuple[str, str, SideScore]], top_k: int, title: str = "",
                positions: bool = False) -> Table:
    """The table of these columns: (label, KV types, score) each.

    Args:
        columns: one per side (the noise floor first, where there is one).
        top_k: ``n_probs`` per position (the last figure's label).
        title: shown above the table, left-aligned.
        positions: add a row with each column's positions (they differ when scoring was cut short).
    """
    table = Table(title=title or None, title_justify="left")
    table.add_column("")
    for label, kv, _ in columns:
        table.add_column(f"{label}\n{kv}" if kv else label, justify="right")
    rows = figures(top_k) + ([("positions", lambda s: f"{s.positions:,}")] if positions else [])
    for name, cell in rows:
        table.add_row(name, *(cell(s) for _, _, s in columns))
    return table


def print_scores(console: Console, record: SessionRecord, indent: str = "") -> None:
    """A record's scores: the table, what was scored, and why anything was not (nothing without ``[scoring]``)."""
    scoring = record.scoring
    if scoring is None:
        return
    kv = {s.name: s.cache for s in record.sides}
    if record.scores:
        console.print(f"{indent}[bold]quality[/]: every side against {escape(scoring.base)} "
                      f"({kv.get(scoring.base, '')}), teacher-forced on the base's generations", soft_wrap=True)
        console.print(score_table([(s.side, kv.get(s.side, ""), s) for s in record.scores], scoring.top_k,
                                  positions=True))
    for line in scoring_notes(scoring):
        console.print(f"{indent}[dim]{escape(line)}[/]" if scoring.status == "done" else f"{indent}{escape(line)}",
                      soft_wrap=True)


def scoring_notes(scoring: Scoring) -> list[str]:
    """What was scored and how it ended, in lines for a person."""
    out = []
    what = f"{scoring.base}'s generation{'s' if len(scoring.prompts) > 1 else ''}"
    if scoring.prompts:
        cap = f", capped at {scoring.positions_cap} (score_positions)" if scoring.positions_cap else ""
        out.append(f"scored: {what} of {', '.join(scoring.prompts)}, {scoring.positions:,} positions per side{cap}, "
                   f"top-{scoring.top_k}; KL divergence in nats, a lower bound (kvtui score measures a text the same "
                   "way)")
    if scoring.status != "done":
        out.append(f"scoring {scoring.status}" + (f": {scoring.error}" if scoring.error else ""))
    out += [f"not scored: {why}" for why in scoring.not_scored]
    if scoring.seconds is not None:
        out.append(f"scoring took {scoring.seconds:.0f} s")
    return out


def headline(s: SideScore) -> str:
    """``KLD 0.0067 ± 0.0001, same top 94.1%`` (what the app's strip shows per side)."""
    return f"KLD {s.kld_mean:.4f} ± {s.kld_mean_unc:.4f}, same top {s.same_top_pct:.1f}%"
