"""The quiet PATTERN signal in a pane: a muted badge and a line saying the skeleton, never the red LOOP."""

from __future__ import annotations

import asyncio

from scripted import ScriptedSession

from kvtui.core.events import LoopDetected, PatternDetected, RequestSent, TokenReceived
from kvtui.ui.app import KvtuiApp
from kvtui.ui.widgets.generation_pane import GenerationPane


async def until(pilot, condition, timeout: float = 15.0) -> None:
    """The app redraws on its own frames (a few a second, later on a loaded machine): wait for one."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline
        await pilot.pause(0.1)


async def test_a_pattern_shows_muted_and_a_loop_takes_over() -> None:
    session = ScriptedSession(("a", "b"))
    app = KvtuiApp(session)
    async with app.run_test(size=(120, 40)) as pilot:
        session.emit(session.started_event())
        session.emit(RequestSent(0.1, 0, 0), TokenReceived(0.2, 0, 0, 1, "7 x 10 = 10\n", 1))
        session.emit(PatternDetected(0.3, 0, 0, "7 x # = 10\n", 12, 0))
        left = app.query(GenerationPane).first()
        await until(pilot, lambda: "PATTERN ×12" in str(left.border_subtitle))
        assert "LOOP" not in str(left.border_subtitle) and "red" not in str(left.border_subtitle)
        session.emit(LoopDetected(0.4, 0, 0, 4, 0, 3, "7 x "))
        await until(pilot, lambda: "LOOP 4-token cycle ×3" in str(left.border_subtitle))
        assert "PATTERN" not in str(left.border_subtitle)
        session.finish()
        await pilot.press("q")
