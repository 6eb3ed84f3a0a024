"""The app on the real bundled server: each pane's badge says what its server ran with, `l` shows the details,
and the comparison strip says "not comparable:" where a side ran with rotation off."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kvtui.core.run.live import LiveSession
from kvtui.core.run.prepare import prepare
from kvtui.ui.app import KvtuiApp
from kvtui.ui.screens.server_log import ServerLogScreen
from kvtui.ui.widgets.comparison_strip import ComparisonStrip

pytestmark = pytest.mark.server


async def wait_for(pilot, condition, timeout: float = 90.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, [(s.name, s.status) for s in pilot.app.state.sides]
        await pilot.pause(0.1)

PROFILE = ('name = "fair"\n[model]\npath = "bundled"\n[server]\nctx_size = 1024\nthreads = 1\n'
           '[[sides]]\nname = "rot"\ncache_type_k = "q8_0"\ncache_type_v = "q8_0"\n'
           '[[sides]]\nname = "norot"\ncache_type_k = "q8_0"\ncache_type_v = "q8_0"\nattn_rotation = "off"\n'
           '[prompt]\ntext = "The capital of France is"\n[sampling]\nn_predict = 8\n[run]\nwarmup = false\n')


async def test_badge_details_and_flag(tmp_path: Path, server_binary, no_leftover_servers) -> None:
    prof = tmp_path / "p.toml"
    prof.write_text(PROFILE)
    app = KvtuiApp(LiveSession(prepare(prof, server_bin=str(server_binary.path), record=str(tmp_path / "r.toml"))))
    async with app.run_test(size=(150, 42)) as pilot:
        await wait_for(pilot, lambda: not app._session_running and len(app.state.sides) == 2, timeout=180)
        assert [s.ran_with.rotation for s in app.state.sides] == ["K+V", "off"]
        # the strip redraws on the app's next figures frame after the last run ended (a few per second)
        await wait_for(pilot, lambda: "not comparable: rotation differs" in str(app.query_one(ComparisonStrip).render()),
                       timeout=10)
        await pilot.press("l")
        await wait_for(pilot, lambda: isinstance(app.screen, ServerLogScreen), timeout=10)
        screen = app.screen
        assert isinstance(screen, ServerLogScreen)
        text = str(screen.query_one("#log-ran-with").render())
        rw = app.state.sides[0].ran_with
        assert f"build: {rw.build_label}" in text and "rotation: K+V" in text
        assert f"graph splits: {rw.graph_splits}" in text and rw.graph_splits is not None
        await pilot.press("escape")
        await pilot.press("q")
