"""The real app on the real bundled server: stream, abort one side, rerun, quit, no server left."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from kvtui.core.profiles import load_profile
from kvtui.core.record.recorder import read_record
from kvtui.core.run.live import LiveSession
from kvtui.core.run.prepare import prepare
from kvtui.ui.app import KvtuiApp
from kvtui.ui.widgets.generation_pane import GenerationPane

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.server


async def wait_for(pilot, condition, timeout: float = 90.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        sides = [(s.name, s.status, s.tokens, s.stop) for s in pilot.app.state.sides]
        assert loop.time() < deadline, f"timed out waiting for the app; sides: {sides}"
        await pilot.pause(0.1)


async def test_stream_abort_rerun_quit(tmp_path: Path, server_binary, no_leftover_servers) -> None:
    profile = load_profile(REPO / "profiles" / "demo.toml")
    profile = replace(profile, sampling=replace(profile.sampling, n_predict=400))
    record = tmp_path / "app.toml"
    prepared = prepare(profile, server_bin=str(server_binary.path), record=str(record))
    session = LiveSession(prepared)
    app = KvtuiApp(session)
    async with app.run_test(size=(150, 42)) as pilot:
        state = app.state
        # both panes stream
        await wait_for(pilot, lambda: len(state.sides) == 2 and all(s.tokens >= 5 for s in state.sides))
        app.draw_now()  # not a wait for the next text frame: a busy machine may be late
        await pilot.pause()
        texts = [p.view.text for p in app.query(GenerationPane)]
        assert all(texts), "both panes show streamed text"
        # abort the left side; the right one keeps going
        await pilot.press("left_square_bracket")
        await wait_for(pilot, lambda: state.sides[0].status == "aborted")
        assert state.sides[1].status in ("generating", "looping", "done")
        await wait_for(pilot, lambda: state.sides[1].stop is not None, timeout=120)
        await wait_for(pilot, lambda: not app._session_running)
        assert state.sides[1].stop in ("length", "eos")
        # rerun the focused (left) side
        assert app.focused_side() == 0
        await pilot.press("r")
        await wait_for(pilot, lambda: state.sides[0].run == 1 and state.sides[0].tokens >= 5)
        await pilot.press("x")
        await wait_for(pilot, lambda: state.sides[0].stop == "aborted")
        await pilot.press("q")
        await wait_for(pilot, lambda: app.return_code is not None, timeout=30)  # servers stop in a worker
    assert app.return_value == 0
    data = read_record(record)
    left, right = data.sides
    assert [r.stop for r in left.runs] == ["aborted", "aborted"]
    assert left.runs[0].predicted_n > 0 and left.runs[1].run == 1
    assert right.runs[0].stop in ("length", "eos") and right.status in ("done", "looping")


def test_quitting_prints_the_record_and_how_to_replay_it(tmp_path: Path, server_binary, capsys,
                                                         no_leftover_servers) -> None:
    """run_app, as `kvtui run` calls it: q, then the record's path and the replay command on the terminal."""
    from kvtui.ui.app import run_app

    profile = load_profile(REPO / "profiles" / "demo.toml")
    profile = replace(profile, sampling=replace(profile.sampling, n_predict=8))
    record = tmp_path / "my run.toml"
    prepared = prepare(profile, server_bin=str(server_binary.path), record=str(record))

    async def quit_when_done(pilot) -> None:
        await wait_for(pilot, lambda: pilot.app.state.finished is not None)
        await pilot.press("q")

    code = run_app(prepared, auto_pilot=quit_when_done)
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[-2:] == [f"record: {record}", f"replay: kvtui replay '{record}'"]
    assert read_record(record).status == "done"
