"""RateGauge: the live tokens/s of one side, with its run average and a sparkline."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Sparkline, Static


class RateGauge(Horizontal):
    """Current tok/s (large), run average, and the run's rate history."""

    DEFAULT_CSS = """
    RateGauge { height: 2; }
    RateGauge > #rate-now { width: 16; text-style: bold; color: $success; }
    RateGauge > #rate-avg { width: 18; color: $text-muted; }
    RateGauge > Sparkline { width: 1fr; height: 2; }
    """

    def compose(self) -> ComposeResult:
        yield Static("– tok/s", id="rate-now")
        yield Static("avg –", id="rate-avg")
        yield Sparkline([], summary_function=max)

    def show(self, current: float | None, average: float | None, history: list[float], final: float | None,
             own: bool = False) -> None:
        """Redraw: ``final`` (the run's figure) replaces the live rate once a run ends.

        ``own``: ``final`` is kvtui's own rate (the server sent no timings for a run cut short): marked
        ``~`` and ``kvtui``, never shown as the server's figure.
        """
        now = self.query_one("#rate-now", Static)
        avg = self.query_one("#rate-avg", Static)
        if final is not None:
            now.update(f"~{final:,.1f} tok/s" if own else f"{final:,.1f} tok/s")
            avg.update("run (kvtui's rate)" if own else "run")
        else:
            now.update(f"{current:,.1f} tok/s" if current is not None else "– tok/s")
            avg.update(f"avg {average:,.1f}" if average is not None else "avg –")
        spark = self.query_one(Sparkline)
        if len(history) != len(spark.data or []) or (history and spark.data and history[-1] != spark.data[-1]):
            spark.data = list(history)
