"""MemoryMeter: one server's memory (VRAM per process via NVML, or RAM) and its KV cache."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

BAR = 24


def _bar(part: float, whole: float, width: int = BAR) -> str:
    filled = max(0, min(width, round(width * part / whole))) if whole > 0 else 0
    return "█" * filled + "░" * (width - filled)


class MemoryMeter(Static):
    """``VRAM 1,234 MiB of 143,771 (GPU 12% used) · KV 20.7 MiB`` with a bar, or RAM when there is no GPU."""

    DEFAULT_CSS = """
    MemoryMeter { height: 2; }
    """

    def show(self, source: str | None, used: float | None, peak: float | None, device_total: float | None,
             device_used: float | None, kv_mib: float | None, kv_estimate: float | None) -> None:
        """Redraw from the latest sample."""
        t = Text()
        if source == "nvml":
            shown = "N/A" if used is None else f"{used:,.0f} MiB"
            t.append("VRAM ", style="bold")
            if device_total:
                t.append(_bar(used or 0, device_total), style="magenta")
                t.append(f" {shown} of {device_total:,.0f}")
                if device_used is not None:
                    t.append(f" (GPU {device_used / device_total:.0%} used)", style="dim")
            else:
                t.append(shown)
        elif source == "rss":
            t.append("RAM (no NVIDIA GPU) ", style="bold")
            t.append("N/A" if used is None else f"{used:,.0f} MiB")
            if peak is not None:
                t.append(f"  peak {peak:,.0f}", style="dim")
        else:
            t.append("memory –", style="dim")
        t.append("\n")
        t.append("KV cache ", style="bold")
        if kv_mib is not None:
            t.append(f"{kv_mib:,.2f} MiB")
            t.append(" (server log)", style="dim")
        else:
            t.append("–")
        if kv_estimate is not None:
            t.append(f"  est {kv_estimate:,.2f} MiB", style="dim")
        self.update(t)
