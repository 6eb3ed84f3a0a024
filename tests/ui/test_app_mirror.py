"""The app on a live ``kvtui mirror`` (real llama-servers, SmolLM2): an agent's turns appear in every pane as
they happen, each other side's reply set against the primary's; quitting stops the HTTP server and the servers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from kvtui.core.mirror.session import MirrorSession, MirrorSettings
from kvtui.core.record.recorder import read_record
from kvtui.core.run.prepare import prepare
from kvtui.mirror_cli import mirror_profile
from kvtui.ui.app import KvtuiApp
from kvtui.ui.widgets.generation_pane import GenerationPane

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.server


async def wait_for(pilot, condition, timeout: float = 180.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"timed out; sides: {[(s.name, s.status, s.turn) for s in pilot.app.state.sides]}"
        await pilot.pause(0.1)


async def test_the_app_shows_each_agent_turn_on_every_side(tmp_path: Path, server_binary, chat_model,
                                                          no_leftover_servers) -> None:
    profile = tmp_path / "mirror.toml"
    profile.write_text((REPO / "profiles" / "mirror.toml").read_text().replace(
        'path = "smollm2"', f'path = "{chat_model}"'))
    record = tmp_path / "app-mirror.toml"
    prepared = prepare(mirror_profile(str(profile)), server_bin=str(server_binary.path), mode="parallel",
                       record=str(record))
    urls: list[str] = []
    session = MirrorSession(prepared, MirrorSettings(port=0), on_listening=urls.append)
    app = KvtuiApp(session)
    async with app.run_test(size=(150, 42)) as pilot:
        await wait_for(pilot, lambda: session.ready)
        async with httpx.AsyncClient(base_url=urls[0], timeout=120) as agent:
            ask = {"messages": [{"role": "user", "content": "Write a Python function that reverses a string."}],
                   "max_tokens": 24}
            first = await agent.post("/v1/chat/completions", json=ask)
            ask["messages"] += [first.json()["choices"][0]["message"], {"role": "user", "content": "Add a test."}]
            second = await agent.post("/v1/chat/completions", json={**ask, "stream": True})
        await wait_for(pilot, lambda: all(s.turn == 2 and s.stop is not None for s in app.state.sides))
        app.draw_now()  # the panes as the state is now, not after a wait for the next frame
        await pilot.pause()
        texts = [p.view.text for p in app.query(GenerationPane)]
        assert first.status_code == 200 and second.status_code == 200
        for text in texts:
            assert "turn 1 · Write a Python function that reverses a string." in text
            assert "turn 2 · Add a test." in text
        assert texts[1].count("vs q8_0: ") == 2  # each turn's reply against the primary's
        notes = len(app._notifications)
        for key in ("r", "R"):  # an agent's turns cannot be asked again: the keys do nothing, and say nothing
            await pilot.press(key)
        assert not any("rerunning" in n.message for n in list(app._notifications)[notes:])
        assert not app.check_action("rerun_focused", ()) and not app.check_action("rerun_all", ())
        await pilot.press("q")
        await wait_for(pilot, lambda: app.return_code is not None, timeout=60)
    with pytest.raises(httpx.ConnectError):
        httpx.get(urls[0] + "/health", timeout=5)  # the mirror stopped listening
    rec = read_record(record)
    assert rec.conversation is not None and rec.conversation.mode == "mirror" and len(rec.turns) == 2
    assert all([r.turn for r in side.runs] == [1, 2] for side in rec.sides)
