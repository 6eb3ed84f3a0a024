"""``kvtui show RECORD...``: read records and print their side-by-side tables, or export them."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from .core.session import read_record
from .core.summary import SideSummary, clean_finish, comparison_line, summarize

COLUMNS = ("record", "created", "model", "server", "side", "cache", "status", "runs", "pp_tps", "tg_tps",
           "ttft_ms", "tokens", "kv_mib", "kv_estimate_mib", "mem_peak_mib", "mem_kind", "stops", "loops")


def rows(path: str, record: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per side: the figures ``show`` prints and exports."""
    out = []
    for s in summarize(record):
        out.append({
            "record": path, "created": record.get("created", ""), "model": record.get("model", {}).get("name", ""),
            "server": record.get("server", {}).get("version", ""), "side": s.name, "cache": s.cache,
            "status": s.status, "runs": s.runs, "pp_tps": _m(s.pp), "tg_tps": _m(s.tg), "ttft_ms": _m(s.ttft_ms),
            "tokens": _m(s.tokens), "kv_mib": s.kv_mib, "kv_estimate_mib": s.kv_estimate_mib,
            "mem_peak_mib": s.mem_peak_mib, "mem_kind": s.mem_kind, "stops": " ".join(s.stops), "loops": s.loops,
        })
    return out


def _m(x: Any) -> float | None:
    return None if x is None else round(x.median, 2)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.1f}"
    return str(v)


def show(paths: list[str], fmt: str = "table", console: Console | None = None) -> int:
    """Print records as tables (and a cross-record table for several), or as md/csv/json.

    Returns:
        0; a bad record raises RecordError (exit 2 in the CLI).
    """
    records = [(p, read_record(p)) for p in paths]
    all_rows = [r for p, rec in records for r in rows(p, rec)]
    if console is None:
        from .cli import wide_console

        console = wide_console()
    out = console
    if fmt == "json":
        text = json.dumps(all_rows, indent=2, default=str)  # default: a hand-edited record may hold TOML dates
        out.print_json(text) if out.is_terminal else print(text)
        return 0
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(all_rows)
        print(buf.getvalue(), end="")
        return 0
    if fmt == "md":
        cols = ("record", "side", "cache", "pp_tps", "tg_tps", "ttft_ms", "tokens", "kv_mib", "mem_peak_mib", "stops")
        print("| " + " | ".join(cols) + " |")
        print("|" + "|".join("---" for _ in cols) + "|")
        for r in all_rows:
            print("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
        return 0
    for path, rec in records:
        _print_record(out, path, rec)
    if len(records) > 1:
        t = Table(title="across records", title_justify="left")
        for col in ("record", "created", "server", "side", "cache", "pp t/s", "tg t/s", "KV MiB", "stops"):
            t.add_column(col)
        for r in all_rows:
            t.add_row(r["record"], r["created"], r["server"], r["side"], r["cache"], _fmt(r["pp_tps"]),
                      _fmt(r["tg_tps"]), _fmt(r["kv_mib"]), r["stops"])
        out.print(t)
    return 0


def _print_record(out: Console, path: str, rec: dict[str, Any]) -> None:
    model, server, host = rec.get("model", {}), rec.get("server", {}), rec.get("host", {})
    out.print(f"[bold]{path}[/]  {rec.get('created', '')}  status [bold]{rec.get('status', '?')}[/]")
    out.print(f"  model {model.get('name', '?')} ({model.get('arch', '?')}, {model.get('size_mib', 0):,.0f} MiB)"
              f"  llama-server {server.get('version', '?')}")
    gpu = f", GPU {host['gpu_name']}" if "gpu_name" in host else ", no NVIDIA GPU"
    out.print(f"  host {host.get('cpu', '?')}, {host.get('cores', '?')} cores{gpu}")
    out.print(f"  mode {rec.get('mode', '?')} ({rec.get('mode_reason', '')}), schedule {rec.get('schedule', '?')}")
    summaries = summarize(rec)
    t = Table(box=None, pad_edge=False)
    for col in ("side", "KV types", "pp t/s", "tg t/s", "TTFT ms", "tokens", "KV MiB", "peak mem", "stop", "loop"):
        t.add_column(col)
    for s, side in zip(summaries, rec.get("sides", []), strict=False):
        loops = [r["loop"] for r in side.get("runs", []) if "loop" in r]
        loop = ", ".join(f"{x['period']}-tok from {x['start']} x{x['repeats']}" for x in loops) or "-"
        t.add_row(s.name, s.cache, str(s.pp or "-"), str(s.tg or "-"), str(s.ttft_ms or "-"), str(s.tokens or "-"),
                  _fmt(s.kv_mib), f"{_fmt(s.mem_peak_mib)} {s.mem_kind}" if s.mem_peak_mib else "-",
                  ", ".join(s.stops) or s.status, loop)
    out.print(t)
    _print_verdict(out, summaries)
    out.print()


def _print_verdict(out: Console, summaries: list[SideSummary]) -> None:
    if len(summaries) >= 2:
        for other in summaries[1:]:
            out.print("  " + comparison_line(summaries[0], other))
        clean = [s.name for s in summaries if clean_finish(s)]
        out.print(f"  clean finish: {', '.join(clean) if clean else 'none'}")
