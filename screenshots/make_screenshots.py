"""Make the README's SVG screenshots from real recorded sessions (tests/data/sessions/).

Each screenshot is the real app, headless, fed by a replay of a session that
the bundled llama-server really ran (tests/data/sessions/capture.py records them):
- running.svg:  the demo, mid-generation;
- finished.svg: the demo after both runs;
- loop.svg:     the loop session, loops flagged and stopped;
- crashed.svg:  the demo with one server killed mid-stream;
- small.svg:    the demo mid-generation in 80x24, the smallest supported terminal;
- conversation.svg: the six-turn coding conversation on SmolLM2 in its sixth turn, the loop of replies flagged.

Usage: python screenshots/make_screenshots.py
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from kvtui.core.record.model import SessionRecord, read_record  # noqa: E402
from kvtui.core.record.replay import Replayer  # noqa: E402
from kvtui.ui.app import KvtuiApp  # noqa: E402

SESSIONS = REPO / "tests" / "data" / "sessions"
SIZE = (150, 42)
CONVERSATION_AT = 90.0  # s: both sides a third into turn 6 of conversation.toml (it began at 82.7 s)


def midpoint(record: SessionRecord) -> float:
    """A moment when every side is generating."""
    runs = [s.runs[0] for s in record.sides if s.runs]
    start = max(r.t_sent or 0.0 for r in runs)
    end = min(r.t_end or 0.0 for r in runs)
    return start + (end - start) * 0.45


async def shot(record_name: str, out: str, stop_at: float | None = None, size: tuple[int, int] = SIZE) -> None:
    record = read_record(SESSIONS / record_name)
    when = stop_at if stop_at is not None else (record.duration_s or 1e9) + 1
    if stop_at == -1:
        when = midpoint(record)
    app = KvtuiApp(Replayer(record, stop_at=when))
    async with app.run_test(size=size) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause(0.8)  # a text frame and a figures frame
        app.save_screenshot(out, str(HERE))
    print(HERE / out)


async def main() -> None:
    if sys.argv[1:]:  # python screenshots/make_screenshots.py conversation.toml conversation.svg [W H]
        size = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 4 else SIZE
        await shot(sys.argv[1], sys.argv[2], stop_at=float(sys.argv[5]) if len(sys.argv) > 5 else None, size=size)
        return
    await shot("demo.toml", "running.svg", stop_at=-1)
    await shot("demo.toml", "finished.svg")
    await shot("loop.toml", "loop.svg")
    await shot("crash.toml", "crashed.svg")
    await shot("demo.toml", "small.svg", stop_at=-1, size=(80, 24))
    await shot("conversation.toml", "conversation.svg", stop_at=CONVERSATION_AT)


if __name__ == "__main__":
    asyncio.run(main())
