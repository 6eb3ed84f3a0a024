"""Command line: ``kvtui``, ``kvtui run``, ``kvtui replay``, ``kvtui show``, ``kvtui doctor``.

Exit codes: 0 done, 1 a run failed (a server crashed, ...), 2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from .core.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_RUN_FAILED, KvtuiError
from .core.profiles import default_profile_path

EPILOG = """\
examples:
  kvtui                                   the app on the demo profile (bundled server and model)
  kvtui run profiles/demo.toml --headless
  kvtui run profiles/coding-circuit-breaker.toml --model ~/models/Qwen3-Coder-30B-Q4_K_M.gguf
  kvtui doctor                            what kvtui found: server, model, GPUs
exit codes: 0 done, 1 a run failed, 2 bad input
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvtui", description="Compare llama-server KV-cache types side by side.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__

    p.add_argument("--version", action="version", version=f"kvtui {__version__}")
    sub = p.add_subparsers(dest="command")

    run = sub.add_parser("run", help="run a profile (the app, or --headless)",
                         description="Start one llama-server per side of PROFILE and compare them.")
    run.add_argument("profile", nargs="?", help="profile TOML (default: the demo profile)")
    run.add_argument("--model", help="GGUF model path (overrides the profile)")
    run.add_argument("--server-bin", help="llama-server binary (overrides the profile and $KVTUI_LLAMA_SERVER)")
    run.add_argument("--mode", choices=("auto", "parallel", "sequential"),
                     help="both servers at once, or one after the other (default: the profile's, auto)")
    run.add_argument("--vram-budget", type=float, metavar="MIB", help="plan against this much free memory")
    run.add_argument("--record", metavar="PATH", help="session record path (default: sessions/<profile>-<time>.toml)")
    run.add_argument("--no-record", action="store_true", help="do not write a session record")
    run.add_argument("--headless", action="store_true", help="no app: print progress and a result table")

    doc = sub.add_parser("doctor", help="show what kvtui found and whether a run can start")
    doc.add_argument("--model", help="GGUF model path to check (default: the demo profile's)")
    doc.add_argument("--server-bin", help="llama-server binary to check")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kvtui`` command; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "doctor":
            from .doctor import doctor

            return doctor(model=args.model, server_bin=args.server_bin)
        if args.command in (None, "run"):
            profile = getattr(args, "profile", None) or str(default_profile_path())
            headless = getattr(args, "headless", False)
            from .core.launch import prepare

            prepared = prepare(profile, model=getattr(args, "model", None),
                               server_bin=getattr(args, "server_bin", None), mode=getattr(args, "mode", None),
                               vram_budget_mib=getattr(args, "vram_budget", None),
                               record=getattr(args, "record", None), no_record=getattr(args, "no_record", False))
            if headless:
                return run_headless(prepared)
            from .ui.app import run_app

            return run_app(prepared)
    except KvtuiError as exc:
        _print_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_RUN_FAILED
    return EXIT_OK


def _print_error(exc: KvtuiError) -> None:
    print(f"kvtui: error: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"kvtui: fix: {exc.hint}", file=sys.stderr)


def run_headless(prepared: object) -> int:
    """Run a prepared session with the headless console; returns the exit code."""
    from .core.launch import Prepared
    from .core.runner import Runner
    from .headless import HeadlessConsole

    assert isinstance(prepared, Prepared)
    console = HeadlessConsole()
    recorder = prepared.recorder

    def sink(event: object) -> None:
        recorder.handle(event)  # type: ignore[arg-type]
        console.handle(event)  # type: ignore[arg-type]

    runner = Runner(prepared.plan, sink, log_dir=prepared.log_dir, probe=prepared.probe)

    async def main_task() -> str:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, task.cancel)
        return await runner.run()

    try:
        status = asyncio.run(main_task())
    except (asyncio.CancelledError, KeyboardInterrupt):
        status = "aborted"
        runner.kill_all_now()
        recorder.finalize_partial("aborted")
        console.close()
        console.console.print("[red]interrupted: servers stopped, partial record saved[/]")
    finally:
        runner.kill_all_now()
    console.print_summary(recorder.data, str(prepared.record_path) if prepared.record_path else None)
    return EXIT_OK if status == "done" else EXIT_RUN_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
