"""``kvtui score PROFILE --text FILE``: every side teacher-forced on a text, as a table or JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvtui.core.errors import EXIT_OK, EXIT_RUN_FAILED, KvtuiError
from kvtui.core.quality import DEFAULT_CTX, DEFAULT_TOP_K

if TYPE_CHECKING:
    from kvtui.core.quality.kld import SideScore
    from kvtui.core.run.scoring import ScoreReport

DESCRIPTION = """\
Score every side of PROFILE on the same text the way llama-perplexity --kl-divergence does: each side's
llama-server is teacher-forced through the text (chunks of --ctx tokens, the second half of each scored), and
its next-token distributions are compared with the base side's (f16 by default): KL divergence, same top
token, delta-p and the perplexity ratio. A second server of the base's configuration gives the noise floor.
"""


def add_parser(sub: Any) -> None:
    """The ``score`` subcommand's arguments."""
    sc = sub.add_parser("score", help="teacher-forced KL divergence of every side on a text",
                        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sc.add_argument("profile", help="profile TOML: its sides are scored")
    sc.add_argument("--text", required=True, metavar="FILE", help="UTF-8 text to score (a few thousand tokens)")
    sc.add_argument("--ctx", type=int, default=DEFAULT_CTX, metavar="N",
                    help=f"chunk length in tokens, llama-perplexity's -c (default {DEFAULT_CTX})")
    sc.add_argument("--chunks", type=int, metavar="M", help="score at most M chunks (default: all)")
    sc.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, metavar="K",
                    help=f"n_probs per position (default {DEFAULT_TOP_K}); KLD is a lower bound beyond the top-K")
    sc.add_argument("--base", metavar="SIDE", help="the side to compare with (default: the f16 side, else the first)")
    sc.add_argument("--no-noise-floor", action="store_true", help="skip the second server of the base's configuration")
    sc.add_argument("--concurrency", type=int, metavar="N",
                    help="servers scored at once (default: all, each with its share of the cores; 1 in a "
                         "sequential plan)")
    sc.add_argument("--model", help="GGUF model path (overrides the profile)")
    sc.add_argument("--server-bin", help="llama-server binary (overrides the profile and $KVTUI_LLAMA_SERVER)")
    sc.add_argument("--json", action="store_true", help="print the figures as JSON")


def read_text(path: str) -> str:
    """The text to score.

    Raises:
        KvtuiError: missing, unreadable, not UTF-8 or empty.
    """
    p = Path(path)
    if p.exists() and not p.is_file():
        raise KvtuiError(f"--text {p} is not a regular file", "point at a UTF-8 text file")
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KvtuiError(f"--text {p}: no such file", "check the path") from None
    except UnicodeDecodeError:
        raise KvtuiError(f"--text {p} is not UTF-8 text", "convert it to UTF-8") from None
    except OSError as exc:
        raise KvtuiError(f"--text {p}: cannot read: {exc.strerror}", "check the path and permissions") from None
    if not text.strip():
        raise KvtuiError(f"--text {p} is empty", "give a text of a few thousand tokens")
    return text


def score(args: argparse.Namespace) -> int:
    """Run ``kvtui score``; returns the exit code."""
    for flag, value, low in (("--ctx", args.ctx, 4), ("--chunks", args.chunks, 1), ("--top-k", args.top_k, 1),
                             ("--concurrency", args.concurrency, 1)):
        if value is not None and value < low:
            raise KvtuiError(f"{flag} {value} is too small", f"use {low} or more")
    from kvtui.core.run.scoring import ScoreSettings, prepare_scoring, score_text

    text = read_text(args.text)
    settings = ScoreSettings(ctx=args.ctx, chunks=args.chunks, top_k=args.top_k, base=args.base,
                             noise_floor=not args.no_noise_floor, concurrency=args.concurrency)
    prepared = prepare_scoring(args.profile, settings, model=args.model, server_bin=args.server_bin)
    from rich.console import Console

    err = Console(stderr=True, highlight=False)
    progress = _progress(err)

    async def main_task() -> ScoreReport:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, task.cancel)
        return await score_text(prepared, text, settings, progress=progress.update if progress else None)

    try:
        if progress is not None:
            progress.start()
        report = asyncio.run(main_task())
    except (asyncio.CancelledError, KeyboardInterrupt):
        err.print("[red]interrupted: servers stopped[/]")
        return EXIT_RUN_FAILED
    finally:
        if progress is not None:
            progress.stop()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        from .cli import wide_console

        print_report(wide_console(), report)
    return EXIT_OK


class _Bars:
    """A progress bar per server on a terminal (stderr), nothing in a pipe."""

    def __init__(self, console: Any) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=console, transient=True)
        self.tasks: dict[str, Any] = {}

    def start(self) -> None:
        self.progress.start()

    def stop(self) -> None:
        self.progress.stop()

    def update(self, name: str, done: int, total: int) -> None:
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=total)
        self.progress.update(self.tasks[name], completed=done)


def _progress(console: Any) -> _Bars | None:
    return _Bars(console) if console.is_terminal else None


def score_rows(report: ScoreReport) -> list[tuple[str, str, SideScore]]:
    """(label, KV types, score) per row: the noise floor first, then the sides."""
    rows = []
    if report.noise_floor is not None:
        rows.append((f"{report.base} (2nd server)", "noise floor", report.noise_floor))
    rows += [(s.side, report.kv_types.get(s.side, ""), s) for s in report.sides]
    return rows


def print_report(console: Any, report: ScoreReport) -> None:
    """The headless table, laid out like llama-perplexity's summary: a row per figure, a column per side."""
    from .score_table import score_table

    title = f"kvtui score: every side against {report.base} ({report.kv_types.get(report.base, '')})"
    console.print(score_table(score_rows(report), report.top_k, title))
    console.print(f"{report.positions:,} positions ({report.chunks} chunks of {report.ctx} tokens, the second half "
                  f"of each), top-{report.top_k} per position, {report.seconds:.0f} s. KL divergence in nats: a lower "
                  "bound, exact on the tokens both sides listed; the base's probability beyond them (the last row) "
                  "is counted as buckets.")
