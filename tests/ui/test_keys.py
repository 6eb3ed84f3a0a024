"""Keys: focus you can see at every status, one Tab per pane, 1-9 and [ / ], aborts that make sense, Ctrl-C."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from scripted import ScriptedSession

from kvtui.core.events import (
    LoopDetected,
    RequestSent,
    RunFinished,
    ServerExited,
    SessionFinished,
    SideFinished,
    TokenReceived,
)
from kvtui.core.record.model import Run
from kvtui.core.record.recorder import read_record
from kvtui.core.record.replay import Replayer
from kvtui.ui.app import KvtuiApp

SESSIONS = Path(__file__).resolve().parents[1] / "data" / "sessions"


def border(pane) -> str:
    return pane.styles.border_top[0]


def streaming(session: ScriptedSession, sides: range) -> None:
    session.emit(session.started_event())
    for i in sides:
        session.emit(RequestSent(0.1, i, 0), TokenReceived(0.2, i, 0, 1, "def", 1))


def finished(session: ScriptedSession, i: int, t: float = 1.0) -> None:
    session.emit(RunFinished(t, i, Run(run=0, stop="length", prompt_n=5, prompt_per_second=10.0, predicted_n=1, predicted_per_second=20.0, ttft_ms=100.0, client_tokens_per_second=20.0, text="def")), SideFinished(t, i, "done"))


def notes(app: KvtuiApp) -> list[str]:
    return [n.message for n in app._notifications]


async def test_the_focused_pane_shows_at_every_status() -> None:
    """Waiting, streaming, looping, done, crashed: the focused pane always has its own border (double)."""
    session = ScriptedSession(("a", "b"))
    app = KvtuiApp(session)
    async with app.run_test(size=(120, 40)) as pilot:
        a, b = app.panes()
        steps = [
            lambda: session.emit(session.started_event()),
            lambda: streaming(session, range(2)),
            lambda: session.emit(LoopDetected(0.5, 0, 0, 3, 0, 3, "abc"), LoopDetected(0.5, 1, 0, 3, 0, 3, "abc")),
            lambda: (finished(session, 0), finished(session, 1)),
            lambda: session.emit(ServerExited(2.0, 0, -9, expected=False), ServerExited(2.0, 1, -9, expected=False)),
        ]
        for step in steps:
            step()
            app.draw_now()  # not a wait for the next frame: a busy machine may be late
            await pilot.pause()
            for focused, other in ((a, b), (b, a)):
                focused.focus()
                await pilot.pause(0.05)
                assert border(focused) == "double" != border(other), (a.state.status, a.classes)
                assert focused.border_title != other.border_title or focused.region != other.region


async def test_one_tab_moves_one_pane_and_number_keys_pick_a_side() -> None:
    session = ScriptedSession(("a", "b", "c"))
    app = KvtuiApp(session)
    async with app.run_test(size=(150, 40)) as pilot:
        streaming(session, range(3))
        await pilot.pause(0.3)
        assert app.focused_side() == 0
        for expected in (1, 2, 0):
            await pilot.press("tab")
            assert app.focused_side() == expected
        await pilot.press("shift+tab")
        assert app.focused_side() == 2
        await pilot.press("2")
        assert app.focused_side() == 1
        await pilot.press("9")  # no ninth side: focus stays
        assert app.focused_side() == 1


async def test_brackets_abort_the_first_and_the_last_side() -> None:
    session = ScriptedSession(("a", "b", "c"))
    app = KvtuiApp(session)
    async with app.run_test(size=(150, 40)) as pilot:
        streaming(session, range(3))
        await pilot.pause(0.3)
        await pilot.press("right_square_bracket")
        await pilot.press("left_square_bracket")
        assert session.aborted == [2, 0]
        assert notes(app) == ["aborting c", "aborting a"]


async def test_nothing_to_abort_once_every_side_finished() -> None:
    session = ScriptedSession(("a", "b"))
    app = KvtuiApp(session)
    async with app.run_test(size=(120, 40)) as pilot:
        streaming(session, range(2))
        finished(session, 0)
        await pilot.pause(0.3)
        await pilot.press("x")  # the focused side (a) is done; b still runs
        await pilot.press("right_square_bracket")
        assert session.aborted == [1] and notes(app) == ["nothing to abort: a is done", "aborting b"]
        finished(session, 1)
        session.emit(SessionFinished(2.0, "done"))
        session.finish()
        await app.workers.wait_for_complete()
        for key in ("x", "left_square_bracket", "right_square_bracket", "X"):
            await pilot.press(key)
        await pilot.pause(0.1)
        assert session.aborted == [1]
        assert not any(n.startswith("aborting") for n in notes(app)[2:]), notes(app)


async def test_ctrl_c_quits_like_q() -> None:
    session = ScriptedSession()
    app = KvtuiApp(session)
    async with app.run_test(size=(120, 40)) as pilot:
        streaming(session, range(2))
        await pilot.pause(0.2)
        await pilot.press("ctrl+c")
        for _ in range(50):
            if app.return_code is not None:
                break
            await pilot.pause(0.05)
    assert app.return_code == 0 and session.aborted == [None] and session.closed >= 1 and session.killed == 0


async def test_a_second_ctrl_c_does_not_wait_for_the_servers() -> None:
    session = ScriptedSession(aclose_s=30.0)  # servers that take 30 s to stop
    app = KvtuiApp(session)
    loop = asyncio.get_running_loop()
    async with app.run_test(size=(120, 40)) as pilot:
        streaming(session, range(2))
        await pilot.pause(0.2)
        await pilot.press("ctrl+c")
        await pilot.pause(0.3)
        assert app.return_code is None and session.closed == 1  # stopping the servers
        assert any("ctrl+c again" in n for n in notes(app))
        t = loop.time()
        await pilot.press("ctrl+c")
        while app.return_code is None:
            await pilot.pause(0.05)
            assert loop.time() - t < 2, "the second ctrl+c waited"
    assert session.killed == 1 and app.return_code == 0


async def test_escape_q_and_question_mark_close_help() -> None:
    app = KvtuiApp(Replayer(read_record(SESSIONS / "demo.toml"), stop_at=1.0))
    async with app.run_test(size=(120, 40)) as pilot:
        for key in ("escape", "q", "question_mark"):
            await pilot.press("question_mark")
            help_text = str(app.screen.query_one("Static").render())
            assert "[ / ]" in help_text and "[[" not in help_text and "closes this" in help_text
            assert "avg" in help_text and "run" in help_text and "ctrl+c" in help_text
            await pilot.press(key)
            assert app.screen is app.screen_stack[0]


@pytest.mark.parametrize("key", ["x", "left_square_bracket", "X", "r"])
async def test_live_keys_do_nothing_in_a_replay(key: str) -> None:
    app = KvtuiApp(Replayer(read_record(SESSIONS / "demo.toml"), stop_at=5.0))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.2)
        await pilot.press(key)
        assert not notes(app)
