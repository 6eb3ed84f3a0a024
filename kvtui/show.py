"""``kvtui show RECORD...``: read records and print their side-by-side tables, or export them."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kvtui.core.quality.summary import SideSummary, clean_finish, comparisons, summarize
from kvtui.core.record.model import SessionRecord, read_record
from kvtui.core.view import one_line
from kvtui.headless import legend_lines
from kvtui.score_table import print_scores

COLUMNS = ("record", "created", "model", "server", "side", "cache", "status", "runs", "schedule", "pp_tps", "tg_tps",
           "tg_source", "ttft_ms", "tokens", "kv_mib", "kv_estimate_mib", "mem_peak_mib", "mem_kind", "stops", "loops")


def rows(path: str, record: SessionRecord) -> list[dict[str, Any]]:
    """One flat row per side: the figures ``show`` prints and exports (tg_source: "server" or "kvtui")."""
    out = []
    for s in summarize(record):
        out.append({
            "record": path, "created": record.created, "model": record.model.name or "",
            "server": record.server.version or "", "side": s.name, "cache": s.cache, "status": s.status,
            "runs": s.runs, "schedule": s.schedule, "pp_tps": _m(s.pp), "tg_tps": _m(s.tg),
            "tg_source": ("kvtui" if s.tg_own else "server") if s.tg is not None else "", "ttft_ms": _m(s.ttft_ms),
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
        from kvtui.cli import wide_console

        console = wide_console()
    out = console
    if fmt == "json":
        text = json.dumps(all_rows, indent=2, default=str)
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
            r = {**r, "tg_tps": _tg(r)}
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
                      _tg(r), _fmt(r["kv_mib"]), r["stops"])
        out.print(t)
    return 0


def _tg(row: dict[str, Any]) -> str:
    """tg as a cell: kvtui's own rate is marked, never shown as if it were the server's."""
    return f"~{_fmt(row['tg_tps'])} (kvtui)" if row["tg_source"] == "kvtui" else _fmt(row["tg_tps"])


def _print_record(out: Console, path: str, rec: SessionRecord) -> None:
    model, server, host = rec.model, rec.server, rec.host
    out.print(f"[bold]{escape(path)}[/]  {rec.created}  status [bold]{rec.status}[/]")
    out.print(f"  model {escape(model.name or '?')} ({model.arch or '?'}, {model.size_mib or 0:,.0f} MiB)"
              f"  llama-server {escape(server.version or '?')}")
    gpu = f", GPU {host.gpu_name}" if host.gpu_name else ", no NVIDIA GPU"
    out.print(f"  host {escape(host.cpu or '?')}, {host.cores or '?'} cores{escape(gpu)}")
    out.print(f"  mode {rec.mode or '?'} ({escape(rec.mode_reason)}), schedule {rec.schedule or '?'}")
    summaries = summarize(rec)
    t = Table(box=None, pad_edge=False)
    for col in ("side", "KV types", "pp t/s", "tg t/s", "TTFT ms", "tokens", "KV MiB", "peak mem", "stop", "loop"):
        t.add_column(col)
    for s, side in zip(summaries, rec.sides, strict=False):
        loops = [r.loop for r in side.runs if r.loop is not None]
        loop = ", ".join(f"{x.period}-tok from {x.start} x{x.repeats}" for x in loops) or "-"
        t.add_row(s.name, s.cache, str(s.pp or "-"), s.tg_text, str(s.ttft_ms or "-"), str(s.tokens or "-"),
                  _fmt(s.kv_mib), f"{_fmt(s.mem_peak_mib)} {s.mem_kind}" if s.mem_peak_mib else "-",
                  ", ".join(s.stops) or s.status, loop)
    out.print(t)
    for line in legend_lines(summaries, loops_column=False):
        out.print(f"  [dim]{escape(line)}[/]")
    for side in rec.sides:
        if side.ran_with is not None:
            out.print(f"  [dim]{escape(side.name)} ran with: {escape(side.ran_with.badge())}[/]")
    if rec.conversation is not None:
        _print_turns(out, rec)
    _print_verdict(out, rec, summaries)
    print_scores(out, rec, indent="  ")
    out.print()


def _print_turns(out: Console, rec: SessionRecord) -> None:
    """A conversation: every turn of every side, with its figures and flags."""
    assert rec.conversation is not None
    out.print(f"  conversation: {rec.conversation.mode}, {len(rec.turns)} turns")
    for side in rec.sides:
        t = Table(box=None, pad_edge=False, title=f"{side.name} ({side.cache})", title_justify="left")
        for col in ("turn", "tokens", "tg t/s", "pp t/s", "context", "cached", "check", "stop", "flags", "reply"):
            t.add_column(col, justify="right" if col in ("turn", "tokens", "tg t/s", "pp t/s", "context", "cached")
                         else "left", no_wrap=True, overflow="ellipsis", max_width=36 if col == "reply" else None,
                         min_width=None if col in ("reply", "check") else len(col))
        loop = side.reply_loop
        in_loop = set(range(loop.first_run, loop.first_run + loop.runs)) if loop is not None else set()
        for k, r in enumerate(side.runs):
            flags = []
            if r.loop is not None:
                flags.append(f"loop {r.loop.period}x{r.loop.repeats}")
            if k in in_loop:
                flags.append("REPLY LOOP")
            tg = _fmt(r.predicted_per_second) if r.predicted_per_second is not None else (
                f"~{_fmt(r.client_tokens_per_second)} (kvtui)" if r.client_tokens_per_second else "-")
            t.add_row(str(r.turn if r.turn is not None else "-"), _fmt(r.predicted_n), tg, _fmt(r.prompt_per_second),
                      _fmt(r.context_n), _fmt(r.cache_n), r.check.brief() if r.check else "", str(r.stop),
                      ", ".join(flags), escape(one_line(r.text, 48)))
        out.print(t)
        if loop is not None and loop.first_run < len(side.runs):
            first = side.runs[loop.first_run].turn
            out.print(f"  [bold red]{escape(side.name)}: a loop of replies[/]: turns {first}-"
                      f"{(first or 0) + loop.runs - 1} gave the same or a near-same reply")


def _print_verdict(out: Console, rec: SessionRecord, summaries: list[SideSummary]) -> None:
    if len(summaries) >= 2:
        for c in comparisons(rec):
            out.print("  " + escape(c.line()))
        clean = [s.name for s in summaries if clean_finish(s)]
        out.print(f"  clean finish: {', '.join(clean) if clean else 'none'}")
