"""``kvtui mirror PROFILE``: an OpenAI-compatible API for a coding agent, every request mirrored to every side."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import tomllib
from pathlib import Path
from typing import Any

from kvtui.core.errors import EXIT_OK, EXIT_RUN_FAILED, KvtuiError
from kvtui.core.mirror.guard import API_KEY_ENV, check_bind, is_loopback
from kvtui.core.profiles import Profile, load_profile, parse_profile

DESCRIPTION = """\
Serve an OpenAI-compatible API (/v1/chat/completions, streaming or not, /v1/models, llama-server's
/completion, /health) for a coding agent. Each request goes to the primary side (the profile's first), whose
answer goes back to the agent exactly as its server sent it (tool calls untouched); the same request goes to
every other side, at once or right after (the profile's run.schedule). Every turn of every side is shown
and recorded; `kvtui run --from RECORD` runs the recorded requests again as a forced conversation.
"""
EPILOG = """\
example:
  kvtui mirror profiles/mirror.toml --headless
  OPENAI_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_API_KEY=none your-agent ...
"""
WARMUP_PROMPT = {"text": "Say hello.", "endpoint": "chat", "name": "warm-up"}
_TURN_KEYS = ("prompt", "prompts", "conversation", "turns")


def add_parser(sub: Any) -> None:
    """The ``mirror`` subcommand's arguments."""
    m = sub.add_parser("mirror", help="an OpenAI-compatible API for a coding agent, mirrored to every side",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("profile", help="profile TOML: its sides (the first is the primary), server and sampling; "
                                   "its prompts or conversation are not used")
    m.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080; 0: any free port)")
    m.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; another "
                                                       "needs --allow-remote)")
    m.add_argument("--api-key", metavar="KEY", help=f"require 'Authorization: Bearer KEY' from agents (default: "
                                                    f"${API_KEY_ENV}, else no key)")
    m.add_argument("--allow-remote", action="store_true",
                   help="listen beyond loopback and accept other machines, Host names and web origins")
    m.add_argument("--record", metavar="PATH", help="session record path (default: sessions/<profile>-<time>.toml)")
    m.add_argument("--no-record", action="store_true", help="do not write a session record")
    m.add_argument("--headless", action="store_true", help="no app: print one line per turn per side")
    m.add_argument("--model", help="GGUF model path (overrides the profile)")
    m.add_argument("--server-bin", help="llama-server binary (overrides the profile and $KVTUI_LLAMA_SERVER)")
    m.add_argument("--force", action="store_true", help="start every side even where the memory plan says they "
                                                        "will not fit at once")


def mirror_profile(path: str) -> Profile:
    """The profile for a mirror: its sides, server, sampling and run settings; the agent brings the turns.

    Its prompts or conversation are dropped (a short chat prompt warms the servers up).

    Raises:
        ProfileError: as ``kvtui run`` would say it.
    """
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return load_profile(p)  # it says what is wrong, as for `kvtui run`
    if "schema" in data or not isinstance(data.get("sides"), list):
        return load_profile(p)
    for key in _TURN_KEYS:
        data.pop(key, None)
    data["prompt"] = dict(WARMUP_PROMPT)
    run = data.get("run")
    if isinstance(run, dict):
        run.pop("repeats", None)
    return parse_profile(data, source=str(p), base_dir=p.parent)


def mirror(args: argparse.Namespace) -> int:
    """Run ``kvtui mirror``; returns the exit code."""
    if not 0 <= args.port <= 65535:
        raise KvtuiError(f"--port {args.port} is not a port", "use 1-65535, or 0 for any free port")
    check_bind(args.host, args.allow_remote)
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV, "")
    from kvtui.core.mirror.session import MirrorSession, MirrorSettings
    from kvtui.core.run.plan import overcommit
    from kvtui.core.run.prepare import prepare

    prepared = prepare(mirror_profile(args.profile), model=args.model, server_bin=args.server_bin, mode="parallel",
                       record=args.record, no_record=args.no_record, allow_remote=args.allow_remote,
                       force=args.force)
    refusal = None if args.force else overcommit(prepared.plan)
    if refusal is not None:
        raise KvtuiError(f"the mirror needs every side's server at once: {refusal.split(';')[0]}",
                         "lower server.ctx_size or use fewer sides; --force starts them anyway")
    settings = MirrorSettings(args.host, args.port, api_key, args.allow_remote)
    if args.headless:
        return _headless(MirrorSession, prepared, settings)
    return _app(MirrorSession, prepared, settings)


def banner(url: str, settings: Any, primary: str, others: list[str]) -> list[str]:
    """What to tell the user once the mirror listens: where, which sides, how to point an agent at it."""
    key = "the --api-key" if settings.api_key else "none (any value)"
    lines = [f"mirror: listening on {url} (primary: {primary}; mirrored to: {', '.join(others) or 'none'})",
             f"mirror: point your agent at it: OPENAI_BASE_URL={url}/v1 OPENAI_API_KEY=<{key}>"]
    if settings.allow_remote and not is_loopback(settings.host) and not settings.api_key:
        lines.append(f"mirror: warning: other machines can reach it without a key: set --api-key or ${API_KEY_ENV}")
    return lines


def _headless(session_cls: Any, prepared: Any, settings: Any) -> int:
    from kvtui.cli import wide_console
    from kvtui.core.vocab import SessionStatus
    from kvtui.headless import HeadlessConsole

    console = HeadlessConsole(wide_console(), live=False)
    names = [s.name for s in prepared.plan.sides]

    def listening(url: str) -> None:
        for line in banner(url, settings, names[0], names[1:]):
            console.console.print(line, soft_wrap=True, highlight=False, markup=False)

    def ready() -> None:
        console.console.print("mirror: every side is up; waiting for the agent's requests (Ctrl-C ends the mirror)",
                              highlight=False, markup=False)

    session = session_cls(prepared, settings, on_listening=listening, on_ready=ready)
    session.sinks.append(console.handle)

    async def main_task() -> str:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        presses: list[int] = []

        def on_signal() -> None:  # the first ends the mirror cleanly, a second at once
            presses.append(1)
            if len(presses) == 1:
                console.console.print("mirror: ending once the turn now running is done (Ctrl-C again: at "
                                      "once)", highlight=False, markup=False)
                session.stop()
            else:
                task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        loop.add_signal_handler(signal.SIGHUP, task.cancel)
        try:
            return await session.run()
        finally:
            await session.aclose()

    try:
        status = asyncio.run(main_task())
    except (asyncio.CancelledError, KeyboardInterrupt):
        status = SessionStatus.ABORTED
        session.kill_now()
        session.recorder.finalize_partial(SessionStatus.ABORTED)
        console.close()
        console.console.print("[red]interrupted: servers stopped, partial record saved[/]")
    finally:
        session.kill_now()
    record = str(prepared.record_path) if prepared.record_path else None
    console.print_summary(session.recorder.record, record)
    if record:
        console.console.print(f"run it again as a forced conversation: kvtui run --from {record}", highlight=False,
                              markup=False)
    return EXIT_OK if status in (SessionStatus.DONE, SessionStatus.ABORTED) and not _failed(session) \
        else EXIT_RUN_FAILED


def _failed(session: Any) -> bool:
    from kvtui.core.vocab import FAILED

    return any(s.status in FAILED for s in session.recorder.record.sides)


def _app(session_cls: Any, prepared: Any, settings: Any) -> int:
    from kvtui.core.vocab import SessionStatus
    from kvtui.ui.app import KvtuiApp
    from kvtui.ui.launch import exit_lines

    app: Any = None
    names = [s.name for s in prepared.plan.sides]

    def listening(url: str) -> None:
        if app is not None:
            app.replay_label = f"mirror {url}/v1"  # the header's badge: where to point the agent, all along
            app.notify("\n".join(banner(url, settings, names[0], names[1:])), timeout=30)

    session = session_cls(prepared, settings, on_listening=listening)
    app = KvtuiApp(session)
    app.handle_signals = True
    try:
        code = app.run()
    finally:
        session.kill_now()
        session.recorder.finalize_partial(SessionStatus.ABORTED)
        for line in exit_lines([prepared.record_path]):
            print(line)
        if session.server is not None:
            print(f"mirror: served {session.server.requests} requests on {session.server.url}")
    return code if isinstance(code, int) else EXIT_OK
