"""ComparisonStrip: the deltas between sides once their runs end, and who finished cleanly."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from kvtui.core.quality.paired import PairedVerdict
from kvtui.core.quality.summary import SideComparison, SideSummary, clean_finish


class ComparisonStrip(Static):
    """E.g. ``q4_0 vs q8_0: tg +6%  pp +9%  KV -47%  ·  clean finish: q4_0``."""

    def show(self, summaries: list[SideSummary], comparisons: list[SideComparison],
             verdicts: list[tuple[str, str, PairedVerdict]] | None = None) -> None:
        """Redraw from per-side summaries and the comparisons of the sides that have runs."""
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
        self.update(t)
