"""RateGauge: the live tokens/s of one side, with its run average and a sparkline.

One line-API widget rather than two Statics and a Sparkline: it redraws at most twice a second while a side
streams, and Textual's Sparkline bucketed its data with Fractions on every redraw (the costliest part of a
figures frame). Bars here start at zero, so a steady rate looks steady.
"""

from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip
from textual.widget import Widget

BARS = " ▁▂▃▄▅▆▇█"


def spark_rows(history: list[float], width: int, height: int) -> list[str]:
    """Bar rows (top first) for ``history`` in ``width`` columns, scaled from zero to its maximum.

    Longer histories are folded into ``width`` buckets by their maximum; shorter ones take a column a point.
    """
    if width <= 0 or height <= 0:
        return [""] * max(height, 0)
    if len(history) > width:
        n = len(history)
        cols = [max(history[k * n // width:max((k + 1) * n // width, k * n // width + 1)]) for k in range(width)]
    else:
        cols = list(history)
    top = max(cols, default=0.0)
    levels = [round(v / top * 8 * height) if top > 0 else 0 for v in cols]
    rows = []
    for r in range(height - 1, -1, -1):  # r = 0 is the bottom row
        rows.append("".join(BARS[max(0, min(8, lv - 8 * r))] for lv in levels).ljust(width))
    return rows


class RateGauge(Widget):
    """Current tok/s (large), run average, and the run's rate history (one row in a narrow pane: kvtui.tcss)."""

    COMPONENT_CLASSES = {"rate-gauge--now", "rate-gauge--avg", "rate-gauge--spark"}
    DEFAULT_CSS = """
    RateGauge { height: 2; }
    RateGauge > .rate-gauge--now { text-style: bold; color: $success; }
    RateGauge > .rate-gauge--avg { color: $text-muted; }
    RateGauge > .rate-gauge--spark { color: $success 70%; }
    """
    WIDE = (16, 18)  # columns of the rate and of the average
    NARROW = (13, 11)

    def __init__(self) -> None:
        super().__init__()
        self.now_text, self.avg_text = "– tok/s", "avg –"
        self.history: list[float] = []
        self._styles: tuple[Style, Style, Style, Style] | None = None
        self._rows: dict[int, Strip] = {}

    def show(self, current: float | None, average: float | None, history: list[float], final: float | None,
             own: bool = False) -> None:
        """Redraw: ``final`` (the run's figure) replaces the live rate once a run ends; nothing when unchanged.

        ``own``: ``final`` is kvtui's own rate (the server sent no timings for a run cut short): marked
        ``~`` and ``kvtui``, never shown as the server's figure.
        """
        if final is not None:
            now, avg = (f"~{final:,.1f} tok/s", "run (kvtui)") if own else (f"{final:,.1f} tok/s", "run")
        else:
            now = f"{current:,.1f} tok/s" if current is not None else "– tok/s"
            avg = f"avg {average:,.1f}" if average is not None else "avg –"
        if (now, avg, history) != (self.now_text, self.avg_text, self.history):
            self.now_text, self.avg_text, self.history = now, avg, list(history)
            self._rows.clear()
            self.refresh()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._styles = None
        self._rows.clear()

    def on_resize(self) -> None:
        self._rows.clear()

    def render_line(self, y: int) -> Strip:
        strip = self._rows.get(y)
        if strip is None:
            strip = self._rows[y] = self._render_row(y)
        return strip

    def _render_row(self, y: int) -> Strip:
        if self._styles is None:
            base = self.rich_style
            self._styles = (base, *(base + self.get_component_rich_style(f"rate-gauge--{part}", partial=True)
                                    for part in ("now", "avg", "spark")))
        base, now_style, avg_style, spark_style = self._styles
        width, height = self.size
        w_now, w_avg = self.NARROW if height == 1 else self.WIDE
        w_spark = max(0, width - w_now - w_avg)
        spark = spark_rows(self.history, w_spark, height)[y] if y < height else ""
        if y == 0:
            segments = [Segment(self.now_text[:w_now].ljust(w_now), now_style),
                        Segment(self.avg_text[:w_avg].ljust(w_avg), avg_style)]
        else:
            segments = [Segment(" " * (w_now + w_avg), base)]
        segments.append(Segment(spark, spark_style))
        return Strip(segments).crop_extend(0, width, base)
