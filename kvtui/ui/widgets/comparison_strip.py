"""ComparisonStrip: the deltas between sides once their runs end, who finished cleanly, and the quality scores."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from kvtui.core.quality.paired import PairedVerdict
from kvtui.core.quality.summary import SideComparison, SideSummary, clean_finish
from kvtui.core.view import SessionState
from kvtui.score_table import headline

BAR = 24  # cells of the scoring progress bar


class ComparisonStrip(Static):
    """E.g. ``q4_0 vs q8_0: tg +6%  pp +9%  KV -47%  ·  clean finish: q4_0``, then the teacher-forced quality
    against the base (a progress bar while it is scored)."""

    def show(self, summaries: list[SideSummary], comparisons: list[SideComparison],
             verdicts: list[tuple[str, str, PairedVerdict]] | None = None, state: SessionState | None = None) -> None:
        """Redraw from per-side summaries, the comparisons of the sides that have runs, and the scoring in ``state``."""
        verdicts = verdicts or []
        done = [s for s in summaries if s.runs]
        if len(done) < 2:
            self.update(Text("comparison appears when two sides have finished a run", style="dim"))
            return
        t = Text()
        for c in comparisons:
            t.append(f"{c.title}: ", style="bold")
            if c.unfair is not None:  # the flag goes where the numbers are
                t.append(c.unfair.line + "  ", style="bold yellow")
            for change in c.changes:
                t.append(f"{change.label} ")
                t.append(f"{change.pct:+.0f}%", style="green" if change.good else "red" if abs(change.pct) >= 1 else "")
                if change.note:
                    t.append(f" ({change.note})", style="dim")
                t.append("  ")
            if c.skipped:
                t.append(c.skipped + "  ", style="yellow")
            t.append(" ")
        if any(s.answers_checked for s in done):
            t.append("· answers ", style="dim")
            t.append("  ".join(f"{s.name} {s.answers_right}/{s.answers_checked}" for s in done), style="bold")
            t.append("  ")
        clean = [s.name for s in done if clean_finish(s)]
        t.append("· clean finish: ", style="dim")
        t.append(", ".join(clean) if clean else "none", style="bold")
        if any(s.contended for s in done):
            t.append("  · simultaneous: the servers shared the hardware", style="yellow")
        for base, other, v in verdicts:
            if v.pairs > 1:
                t.append(f"\n{other} vs {base}: ", style="bold")
                t.append(str(v), style="green" if v.significant else "dim")
        if state is not None and state.scoring is not None:
            t.append("\n")
            t.append_text(scoring_line(state))
        self.update(t)


def scoring_line(state: SessionState) -> Text:
    """``quality vs q8_0 (160 positions, teacher-forced): q4_0 KLD 0.0622 ± 0.0089, same top 97.5%``, or the
    progress bar while it is scored."""
    sc = state.scoring
    assert sc is not None
    t = Text()
    if sc.status == "running":
        frac = state.score_done / state.score_total if state.score_total else 0.0
        full = int(frac * BAR)
        t.append(f"scoring {sc.base}'s generation on {', '.join(sc.sides)} ", style="bold")
        t.append("█" * full, style="green")
        t.append("░" * (BAR - full), style="dim")
        t.append(f" {state.score_done:,}/{state.score_total:,} positions ({frac:.0%})  x: stop", style="dim")
        return t
    if sc.status == "skipped":
        t.append(f"not scored: {sc.error or 'nothing to score'}", style="dim")
        return t
    t.append(f"quality vs {sc.base} ", style="bold")
    t.append(f"(teacher-forced, top-{sc.top_k}): ", style="dim")
    for s in state.scores:
        t.append(f"{s.side} ", style="bold")
        t.append(headline(s) + (f" over {s.positions}" if sc.status != "done" else "") + "  ")
    if sc.status != "done":
        t.append(f"scoring {sc.status}" + (f": {sc.error}" if sc.error else ""), style="yellow")
    elif not state.scores:
        t.append("no side scored", style="yellow")
    for why in sc.not_scored:
        t.append(f"  not scored: {why}", style="dim")
    return t
