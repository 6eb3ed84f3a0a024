"""Command line: ``kvtui``, ``kvtui run``, ``kvtui replay``, ``kvtui show``, ``kvtui score``, ``kvtui mirror``,
``kvtui doctor``.

Exit codes: 0 done, 1 a run failed (a server crashed, ...), 2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from kvtui.core.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_RUN_FAILED, KvtuiError
from kvtui.core.profiles import default_profile_path

EPILOG = """\
examples:
  kvtui                                   the app on the demo profile (bundled server and model)
  kvtui run profiles/demo.toml --headless
  kvtui run profiles/coding-circuit-breaker.toml --model ~/models/Qwen3-Coder-30B-Q4_K_M.gguf
  kvtui run profiles/coding-conversation.toml   a six-turn conversation (model "smollm2": fetched once)
  kvtui run --from sessions/examples/gpu-parallel.toml --server-bin ~/llama.cpp/build/bin/llama-server
  kvtui replay sessions/examples/gpu-parallel.toml --speed 4
  kvtui show sessions/*.toml --format md
  kvtui doctor                            what kvtui found: server, model, GPUs
  kvtui doctor --server-bin PATH          ... and which K/V pairs run flash attention on the GPU with that build
  kvtui score profiles/quality.toml --text benchmarks/data/lighthouse.txt   KL divergence vs f16
  kvtui mirror profiles/mirror.toml       an OpenAI-compatible API for a coding agent, mirrored to every side
exit codes: 0 done, 1 a run failed, 2 bad input
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvtui", description="Compare llama-server KV-cache types side by side.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from kvtui import __version__

    p.add_argument("--version", action="version", version=f"kvtui {__version__}")
    sub = p.add_subparsers(dest="command")

    run = sub.add_parser("run", help="run a profile (the app, or --headless)",
                         description="Start one llama-server per side of PROFILE and compare them.")
    run.add_argument("profile", nargs="?", help="profile TOML (default: the demo profile)")
    run.add_argument("--from", dest="from_record", metavar="RECORD",
                     help="repeat the comparison of a session record (same profile, flags, prompt, seed); a "
                          "kvtui mirror record: the agent's requests, as a forced conversation")
    run.add_argument("--model", help="GGUF model path, or \"smollm2\" (overrides the profile)")
    run.add_argument("--server-bin", help="llama-server binary (overrides the profile and $KVTUI_LLAMA_SERVER)")
    run.add_argument("--mode", choices=("auto", "parallel", "sequential"),
                     help="both servers at once, or one after the other (default: the profile's, auto)")
    run.add_argument("--vram-budget", type=float, metavar="MIB", help="plan against this much free memory")
    run.add_argument("--record", metavar="PATH", help="session record path (default: sessions/<profile>-<time>.toml)")
    run.add_argument("--no-record", action="store_true", help="do not write a session record")
    run.add_argument("--headless", action="store_true", help="no app: print progress and a result table")
    run.add_argument("--no-score", action="store_true",
                     help="skip scoring the base side's generations teacher-forced on every side once generation "
                          "ends (the profile's run.score)")
    run.add_argument("--force", action="store_true",
                     help="run in parallel even where the memory plan says it will not fit, and attach to "
                          "servers that serve different models or contexts")
    run.add_argument("--allow-remote", action="store_true",
                     help="accept extra_args that make a server listen beyond 127.0.0.1 (--host 0.0.0.0), "
                          "and sides attached (url) to servers on other machines")

    rep = sub.add_parser("replay", help="watch a saved session again, with its recorded timing",
                         description="Replay a session record in the app (or --headless).")
    rep.add_argument("record", help="a session record (.toml)")
    rep.add_argument("--speed", type=float, default=1.0, help="playback speed (default 1.0 = as recorded)")
    rep.add_argument("--headless", action="store_true", help="no app: print the replay as the headless run did")

    sh = sub.add_parser("show", help="summarize one or more session records",
                        description="Print each record's side-by-side table; with several, a comparison.")
    sh.add_argument("records", nargs="+", help="session records (.toml)")
    sh.add_argument("--format", choices=("table", "md", "csv", "json"), default="table", help="output format")

    from .score_cli import add_parser as add_score_parser

    add_score_parser(sub)

    from .mirror_cli import add_parser as add_mirror_parser

    add_mirror_parser(sub)

    doc = sub.add_parser("doctor", help="show what kvtui found and whether a run can start")
    doc.add_argument("--model", help="GGUF model path to check (default: the demo profile's)")
    doc.add_argument("--server-bin", help="llama-server binary to check; also measures it: one short probe server "
                     "per K/V pair says which pairs run flash attention on the GPU, and whether rotation is on")
    doc.add_argument("--no-probe", action="store_true", help="with --server-bin: only check, do not probe")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kvtui`` command; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "doctor":
            from kvtui.doctor import doctor

            return doctor(model=args.model, server_bin=args.server_bin, probe=False if args.no_probe else None)
        if args.command == "show":
            from kvtui.show import show

            return show(args.records, args.format)
        if args.command == "score":
            from .score_cli import score

            return score(args)
        if args.command == "mirror":
            from .mirror_cli import mirror

            return mirror(args)
        if args.command == "replay":
            return replay(args.record, args.speed, args.headless)
        if args.command in (None, "run"):
            profile: object = getattr(args, "profile", None) or str(default_profile_path())
            server_bin = getattr(args, "server_bin", None)
            requests = None  # a mirror record's requests, run again as a forced conversation
            if getattr(args, "from_record", None):
                if getattr(args, "profile", None):
                    raise KvtuiError("give a PROFILE or --from RECORD, not both", "drop one of them")
                from kvtui.core.mirror.rerun import recorded_requests
                from kvtui.core.record.recorder import profile_from_record

                profile, recorded_bin = profile_from_record(args.from_record)
                server_bin = server_bin or recorded_bin
                requests = recorded_requests(args.from_record)
            headless = getattr(args, "headless", False)
            from kvtui.core.run.prepare import prepare

            prepared = prepare(profile, model=getattr(args, "model", None),  # type: ignore[arg-type]
                               server_bin=server_bin, mode=getattr(args, "mode", None),
                               vram_budget_mib=getattr(args, "vram_budget", None),
                               record=getattr(args, "record", None), no_record=getattr(args, "no_record", False),
                               allow_remote=getattr(args, "allow_remote", False),
                               force=getattr(args, "force", False), no_score=getattr(args, "no_score", False))
            force = getattr(args, "force", False)
            session = None
            if requests is not None:
                from kvtui.core.mirror.rerun import RecordedSession

                session = RecordedSession(prepared, requests)
            if headless:
                from kvtui.core.run.plan import overcommit

                refusal = None if force else overcommit(prepared.plan)
                if refusal is not None:
                    print(f"kvtui: error: {refusal}", file=sys.stderr)
                    return EXIT_BAD_INPUT
                return run_headless(prepared, session)
            from kvtui.ui.app import run_app

            return run_app(prepared, force=force, session=session)
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


def wide_console() -> Any:
    """A rich console that does not squeeze tables to 80 columns when writing to a file or pipe."""
    from rich.console import Console

    probe = Console()
    return Console(highlight=False, width=None if probe.is_terminal else 140)


def replay(path: str, speed: float, headless: bool) -> int:
    """Replay a record in the app or through the headless console."""
    from kvtui.core.errors import KvtuiError as _Err
    from kvtui.core.record.recorder import read_record
    from kvtui.core.record.replay import Replayer

    if speed <= 0:
        raise _Err(f"--speed {speed:g} must be positive", "e.g. --speed 2 for twice as fast")
    record = read_record(path)
    replayer = Replayer(record, speed=speed)
    if headless:
        from kvtui.headless import HeadlessConsole

        console = HeadlessConsole(wide_console(), live=False)
        replayer.sinks.append(console.handle)
        asyncio.run(replayer.run())
        console.print_summary(replayer.recorder.record, None)
        return EXIT_OK
    from kvtui.ui.app import KvtuiApp

    label = "replay " + record.created[:10]
    code = KvtuiApp(replayer, replay_label=label).run()
    return code if isinstance(code, int) else EXIT_OK


def run_headless(prepared: object, session: object = None) -> int:
    """Run a prepared session with the headless console; returns the exit code.

    The same ``LiveSession`` as the app drives the runner and the recorder (``session``: one of its kind,
    e.g. a mirror record's requests run again); the console is one more sink of its events.
    """
    from kvtui.core.run.live import LiveSession
    from kvtui.core.run.prepare import Prepared
    from kvtui.core.vocab import SessionStatus
    from kvtui.headless import HeadlessConsole

    assert isinstance(prepared, Prepared)
    console = HeadlessConsole(wide_console())
    if session is None:
        session = LiveSession(prepared)
    assert isinstance(session, LiveSession)
    session.sinks.append(console.handle)

    async def main_task() -> str:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, task.cancel)
        return await session.run()

    try:
        status = asyncio.run(main_task())
    except (asyncio.CancelledError, KeyboardInterrupt):
        status = SessionStatus.ABORTED
        session.kill_now()
        session.finalize(SessionStatus.ABORTED)
        console.close()
        console.console.print("[red]interrupted: servers stopped, partial record saved[/]")
    except Exception:  # kvtui itself failed: servers stopped (finally), and the record says how far it got
        session.kill_now()
        session.finalize(SessionStatus.ABORTED)
        console.close()
        raise
    finally:
        session.kill_now()
    console.print_summary(session.recorder.record, str(prepared.record_path) if prepared.record_path else None)
    return EXIT_OK if status == SessionStatus.DONE else EXIT_RUN_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
