"""One server's memory (VRAM per process via NVML, or RAM) and its KV cache, as two lines fitted to a width."""

from __future__ import annotations

from rich.text import Text

BAR = 24


def _bar(part: float, whole: float, width: int = BAR) -> str:
    filled = max(0, min(width, round(width * part / whole))) if whole > 0 else 0
    return "█" * filled + "░" * (width - filled)


def memory_text(source: str | None, used: float | None, peak: float | None, device_total: float | None,
                device_used: float | None, kv_mib: float | None, kv_estimate: float | None, width: int) -> Text:
    """Two lines: the process's memory, then the KV cache; the long forms only where they fit in ``width``."""
    t = Text(no_wrap=True, overflow="ellipsis")
    shown = "N/A" if used is None else f"{used:,.0f} MiB"
    if source == "nvml":
        t.append("VRAM ", style="bold")
        if device_total:
            rest = f" {shown} of {device_total:,.0f}"
            share = f" (GPU {device_used / device_total:.0%} used)" if device_used is not None else ""
            bar = min(BAR, width - 5 - len(rest) - len(share))
            if bar < 8:
                share = ""
                bar = min(BAR, width - 5 - len(rest))
            if bar >= 8:
                t.append(_bar(used or 0, device_total, bar), style="magenta")
                t.append(rest)
            else:
                t.append(rest.lstrip())
            t.append(share, style="dim")
        else:
            t.append(shown)
    elif source == "rss":
        label = "RAM (no NVIDIA GPU) " if width >= 40 else "RAM "
        t.append(label, style="bold")
        t.append(shown)
        if peak is not None:
            t.append(f"  peak {peak:,.0f}", style="dim")
    else:
        t.append("memory –", style="dim")
    t.append("\n")
    t.append("KV cache " if width >= 40 else "KV ", style="bold")
    if kv_mib is not None:
        t.append(f"{kv_mib:,.2f} MiB")
        if width >= 48:
            t.append(" (server log)", style="dim")
    else:
        t.append("–")
    if kv_estimate is not None:
        t.append(f"  est {kv_estimate:,.2f}" + (" MiB" if width >= 48 else ""), style="dim")
    return t
