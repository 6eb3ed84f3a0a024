"""What the app shows while things happen: load phases with their seconds, a server log that follows its file,
kvtui's own CPU when the servers run on the CPU, and no CPU spent once everything has finished."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import psutil
from scripted import ScriptedSession
from textual.app import App
from textual.widgets import Log

from kvtui.core.events import (
    RequestSent,
    RunFinished,
    ServerReady,
    ServerStarting,
    SessionFinished,
    TokenReceived,
    WarmupDone,
)
from kvtui.core.record.model import Run
from kvtui.core.record.recorder import read_record
from kvtui.core.record.replay import Replayer
from kvtui.ui.app import PACE, PACE_SHARED, KvtuiApp
from kvtui.ui.screens.server_log import ServerLogScreen

SESSIONS = Path(__file__).resolve().parents[1] / "data" / "sessions"
# lines of a real llama-server b11434 log
LOADING = "0.00.054.686 I srv    load_model: loading model '/root/.cache/gemma-3-270m-q4_k_m.gguf'\n"
WARMING = "0.01.804.209 I slot launch_slot_: id  0 | task -1 | sampler chain: logits -> top-k\n"


async def wait_until(pilot, condition, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await pilot.pause(0.05)


async def test_a_loading_pane_shows_its_phase_and_seconds(tmp_path: Path) -> None:
    log = tmp_path / "side0.log"
    log.write_text("0.00.047.420 I cmn  common_param: build 1 (7e4c0a9)\n")
    session = ScriptedSession(("a", "b"))
    app = KvtuiApp(session)
    async with app.run_test(size=(120, 40)) as pilot:
        pane = app.panes()[0]
        session.emit(session.started_event(), ServerStarting(0.0, 0, 1, (), str(log)))
        await wait_until(pilot, lambda: "starting 0 s" in str(pane.border_subtitle))
        with log.open("a") as f:
            f.write(LOADING)
        session.t = 2.2  # two seconds into the session
        await wait_until(pilot, lambda: "loading 2 s" in str(pane.border_subtitle))
        session.emit(ServerReady(3.0, 0, 1, 3.0, 4096, "b1", 7.6, "enabled"))
        await wait_until(pilot, lambda: "ready 0 s" in str(pane.border_subtitle))
        with log.open("a") as f:
            f.write(WARMING)  # 1.8 s after the server started: the warm-up began at 1.8 s
        session.t = 4.9
        await wait_until(pilot, lambda: "warming 3 s" in str(pane.border_subtitle))
        session.emit(WarmupDone(5.0, 0, 3200.0))
        await wait_until(pilot, lambda: "waiting" in str(pane.border_subtitle))


async def test_the_server_log_screen_follows_the_file(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("first line\n")

    class Host(App):
        def on_mount(self) -> None:
            self.push_screen(ServerLogScreen("q8_0", str(log)))

    app = Host()
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ServerLogScreen) and app.screen.query(Log)
                         and list(app.screen.query_one(Log).lines))
        view = app.screen.query_one(Log)
        assert list(view.lines) == ["first line"]
        with log.open("a") as f:
            f.write("loading the model\nhalf a li")
        await wait_until(pilot, lambda: "loading the model" in view.lines)
        assert "half a li" not in "".join(view.lines)  # a line being written waits for its end
        with log.open("a") as f:
            f.write("ne\n")
        await wait_until(pilot, lambda: "half a line" in view.lines)


async def test_the_header_shows_kvtuis_own_cpu_when_servers_run_on_the_cpu() -> None:
    session = ScriptedSession(memory_source="rss")
    app = KvtuiApp(session)
    async with app.run_test(size=(120, 40)) as pilot:
        session.emit(session.started_event(), RequestSent(0.1, 0, 0), TokenReceived(0.2, 0, 0, 1, "x", 1))
        await wait_until(pilot, lambda: re.search(r"\n.*kvtui \d+\.\d% CPU$", app._header.render().plain))
        assert app._pace == PACE_SHARED  # the servers share kvtui's CPU: fewer frames
        session.emit(RunFinished(0.9, 0, Run(0, "eos", text="x")), SessionFinished(1.0, "done"))
        session.finish()
        # the average covers the generation (first request to last run), not the servers' start-up
        await wait_until(pilot, lambda: "% CPU while generating" in app._header.render().plain)


async def test_no_cpu_figure_on_a_gpu_or_in_a_replay() -> None:
    for session in (ScriptedSession(memory_source="nvml"), Replayer(read_record(SESSIONS / "demo.toml"))):
        app = KvtuiApp(session)
        async with app.run_test(size=(120, 40)) as pilot:
            if isinstance(session, ScriptedSession):
                session.emit(session.started_event())
            await pilot.pause(1.5)
            assert "% CPU" not in app._header.render().plain
            assert app._pace == PACE


def process_cpu() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system


async def test_finished_panes_cost_next_to_no_cpu() -> None:
    """The idle cost: once a replayed record has finished, the app's timers sleep and nothing is redrawn."""
    app = KvtuiApp(Replayer(read_record(SESSIONS / "demo.toml"), speed=50))
    async with app.run_test(size=(150, 42)) as pilot:
        await app.workers.wait_for_complete()
        assert app.state.finished == "done"
        await pilot.pause(1.0)  # the last frames land
        cpu0, wall0 = process_cpu(), time.monotonic()
        await asyncio.sleep(3.0)
        share = (process_cpu() - cpu0) / (time.monotonic() - wall0)
    assert share < 0.005, f"the finished app used {share:.1%} of a core"


async def test_a_status_change_repaints_the_border_row_only() -> None:
    """A loop's count rises with every cycle: the status line (the pane's bottom border) must not repaint the
    pane's text each time, as it did when it cost more than all the streaming text."""
    app = KvtuiApp(Replayer(read_record(SESSIONS / "demo.toml"), speed=50))
    async with app.run_test(size=(150, 42)) as pilot:
        await app.workers.wait_for_complete()
        app.draw_now()
        await pilot.pause(0.5)
        pane = app.panes()[1]
        painted: list[object] = []  # what the compositor asks the text (and the gauge) to paint
        for widget in (pane.view, pane.gauge):
            paint = widget.render_lines
            widget.render_lines = lambda crop, paint=paint: painted.append(crop) or paint(crop)  # type: ignore
        updates: list = []  # what goes to the terminal (Textual's ChopsUpdate: spans of (y, x1, x2) and text)
        display = app._display
        app._display = lambda screen, update: updates.append(update) or display(screen, update)  # type: ignore
        pane._set_status(" LOOP 11-token cycle ×99 ")
        await pilot.pause(0.3)
        assert painted == []
        assert {span[0] for u in updates for span in u.spans} == {pane.region.bottom - 1}  # the border row only
        assert "×99" in "".join(u.render_segments(app.console) for u in updates)
