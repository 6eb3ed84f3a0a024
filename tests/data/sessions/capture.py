"""Re-capture the real session records that the snapshot tests and screenshots replay.

Runs the bundled llama-server and model for real:
- demo.toml:  profiles/demo.toml, both sides to the end;
- loop.toml:  tests/data/sessions/loop-profile.toml (the model loops; stop_on_loop stops each side);
- crash.toml: profiles/demo.toml with side q4_0's server killed (SIGKILL) mid-stream;
- conversation.toml: profiles/coding-conversation.toml (SmolLM2-135M-Instruct, six turns, free).

Usage: python tests/data/sessions/capture.py [NAME...]   (all of them: about two minutes on 2 cores)
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO))

from kvtui.core.events import TokenReceived  # noqa: E402
from kvtui.core.run.live import LiveSession  # noqa: E402
from kvtui.core.run.prepare import prepare  # noqa: E402


async def capture(profile: Path, out: Path, kill_side: int | None = None, kill_after: int = 30) -> str:
    prepared = prepare(profile, record=str(out))
    session = LiveSession(prepared)

    def killer(e: object) -> None:
        if kill_side is not None and isinstance(e, TokenReceived) and e.side == kill_side and e.n == kill_after:
            pid = session.runner.servers[kill_side].pid  # type: ignore[union-attr]
            os.kill(pid, signal.SIGKILL)

    session.sinks.append(killer)
    status = await session.run()
    print(f"{out.name}: {status}")
    return status


CAPTURES = {
    "demo": dict(profile=REPO / "profiles" / "demo.toml"),
    "loop": dict(profile=HERE / "loop-profile.toml"),
    "crash": dict(profile=REPO / "profiles" / "demo.toml", kill_side=1),
    "conversation": dict(profile=REPO / "profiles" / "coding-conversation.toml"),
}


def main() -> None:
    for name in sys.argv[1:] or list(CAPTURES):
        spec = dict(CAPTURES[name])
        asyncio.run(capture(spec.pop("profile"), HERE / f"{name}.toml", **spec))
    for p in HERE.glob("*.logs"):
        for f in p.iterdir():
            f.unlink()
        p.rmdir()


if __name__ == "__main__":
    main()
