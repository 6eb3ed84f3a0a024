"""The real app in a conversation on the real bundled server and SmolLM2-135M-Instruct: every turn in the pane,
the turn in the header, the loop of replies flagged on the pane as it happens, and stop_on_loop ending it."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_app_live import wait_for

from kvtui.core.record.recorder import read_record
from kvtui.core.run.live import LiveSession
from kvtui.core.run.prepare import prepare
from kvtui.core.view import TURN_MARK
from kvtui.ui.app import KvtuiApp
from kvtui.ui.widgets.generation_pane import GenerationPane
from kvtui.ui.widgets.session_header import SessionHeader

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "tests" / "data" / "conversations" / "reply-loop.toml"
pytestmark = pytest.mark.server


async def test_conversation_in_the_app(tmp_path: Path, server_binary, chat_model, no_leftover_servers) -> None:
    record = tmp_path / "conv.toml"
    prepared = prepare(PROFILE, server_bin=str(server_binary.path), record=str(record))
    app = KvtuiApp(LiveSession(prepared))
    async with app.run_test(size=(150, 42)) as pilot:
        state = app.state
        panes = list(app.query(GenerationPane))
        header = app.query_one(SessionHeader)
        # the turn in the header (the app draws a frame: wait for it, not a fixed pause, on a loaded machine)
        await wait_for(pilot, lambda: "turn 2" in str(header.render()), timeout=240)
        assert "Add a test." in str(header.render())
        # the first turn stays in the pane, with its figures, above the second
        await wait_for(pilot, lambda: f"{TURN_MARK}turn 2" in panes[0].view.text)
        text = panes[0].view.text
        assert f"{TURN_MARK}turn 1 · Write a function that reverses a string." in text
        assert "context " in text.split(f"{TURN_MARK}turn 2")[0]
        # a loop of replies is flagged on its pane while the conversation goes on
        await wait_for(pilot, lambda: any(s.reply_loop for s in state.sides), timeout=400)
        i = next(k for k, s in enumerate(state.sides) if s.reply_loop)
        first, count = state.sides[i].reply_loop
        assert count == 3
        await wait_for(pilot, lambda: f"REPLY LOOP turns {first}-{first + 2}" in str(panes[i].border_subtitle))
        assert panes[i].has_class("-looping")
        assert f"the same reply in turns {first}-{first + 2}" in str(panes[i].alert.render())
        await wait_for(pilot, lambda: state.finished is not None, timeout=400)
        assert state.sides[i].stop == "loop" and state.sides[i].status == "done"
        await wait_for(pilot, lambda: "(stopped)" in str(panes[i].alert.render()))
        shown = panes[i].view.text
        assert all(f"{TURN_MARK}turn {k} · " in shown for k in range(1, first + 3))
        assert f"{TURN_MARK}turn {first + 3} · " not in shown  # its conversation ended at the loop
        await pilot.press("q")
        await wait_for(pilot, lambda: app.return_code is not None, timeout=30)
    data = read_record(record)
    assert data.sides[i].reply_loop is not None and data.sides[i].runs[-1].stop == "loop"
