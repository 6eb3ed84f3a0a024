"""ComparisonStrip: the deltas between sides once their runs end, and who finished cleanly."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ...core.summary import SideSummary, clean_finish, compare


class ComparisonStrip(Static):
    """E.g. ``q4_0 vs q8_0: tg +6%  pp +9%  KV -47%  ·  clean finish: q4_0``."""

    def show(self, summaries: list[SideSummary], contended: bool, verdicts: list | None = None) -> None:
        """Redraw from per-side summaries (sides without runs are left out)."""
        verdicts = verdicts or []
        done = [s for s in summaries if s.runs]
        if len(done) < 2:
            self.update(Text("comparison appears when two sides have finished a run", style="dim"))
            return
        base = done[0]
        t = Text()
        for other in done[1:]:
            t.append(f"{other.name} vs {base.name}: ", style="bold")
            d = compare(base, other)
            for key, label, better_low in (("tg", "tg", False), ("pp", "pp", False), ("kv", "KV", True),
                                           ("ttft", "TTFT", True)):
                v = d[key]
                if v is None:
                    continue
                good = (v < 0) if better_low else (v > 0)
                t.append(f"{label} ")
                t.append(f"{v:+.0f}%", style="green" if good else "red" if abs(v) >= 1 else "")
                t.append("  ")
            t.append(" ")
        if any(s.answers_checked for s in done):
            t.append("· answers ", style="dim")
            t.append("  ".join(f"{s.name} {s.answers_right}/{s.answers_checked}" for s in done), style="bold")
            t.append("  ")
        clean = [s.name for s in done if clean_finish(s)]
        t.append("· clean finish: ", style="dim")
        t.append(", ".join(clean) if clean else "none", style="bold")
        if contended:
            t.append("  · simultaneous: the servers shared the hardware", style="yellow")
        for base, other, v in verdicts:
            if v.pairs > 1:
                t.append(f"\n{other} vs {base}: ", style="bold")
                t.append(str(v), style="green" if v.significant else "dim")
        self.update(t)
