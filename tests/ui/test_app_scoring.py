"""The app on the real bundled server, once generation ends: the comparison strip shows a progress bar while the
base's generation is scored, then each side's KLD and same-top against the base; x stops the scoring and q quits
during it, both keeping the figures of the positions scored so far."""

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
from kvtui.ui.widgets.comparison_strip import ComparisonStrip

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.server


async def wait_for(pilot, condition, timeout: float = 180.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        state = pilot.app.state
        assert loop.time() < deadline, ([(s.name, s.status) for s in state.sides], state.scoring, state.score_done)
        await pilot.pause(0.1)


def _app(tmp_path: Path, server_binary, n_predict: int) -> tuple[KvtuiApp, Path]:
    profile = load_profile(REPO / "profiles" / "demo.toml")
    profile = replace(profile, sampling=replace(profile.sampling, n_predict=n_predict))
    record = tmp_path / "app.toml"
    return KvtuiApp(LiveSession(prepare(profile, server_bin=str(server_binary.path), record=str(record)))), record


def strip_text(app: KvtuiApp) -> str:
    return str(app.query_one(ComparisonStrip).render())


async def test_the_strip_shows_the_scores_after_a_run(tmp_path: Path, server_binary, no_leftover_servers) -> None:
    app, record = _app(tmp_path, server_binary, 16)
    async with app.run_test(size=(150, 42)) as pilot:
        await wait_for(pilot, lambda: app.state.finished is not None and app.state.scores)
        (score,) = app.state.scores
        expected = f"q4_0 KLD {score.kld_mean:.4f} ± {score.kld_mean_unc:.4f}, same top {score.same_top_pct:.1f}%"
        await wait_for(pilot, lambda: expected in strip_text(app), timeout=10)
        assert "quality vs q8_0 (teacher-forced, top-1000)" in strip_text(app)
        await pilot.press("q")
        await wait_for(pilot, lambda: app.return_code is not None, timeout=30)
    assert read_record(record).scores == [score]


async def _scoring_under_way(pilot, app: KvtuiApp) -> None:
    await wait_for(pilot, lambda: app.state.scoring_now and app.state.score_done >= 6)
    await wait_for(pilot, lambda: "scoring q8_0's generation on q4_0 █" in strip_text(app), timeout=10)
    assert "positions" in strip_text(app) and "x: stop" in strip_text(app)


async def test_x_stops_the_scoring_and_keeps_its_figures(tmp_path: Path, server_binary, no_leftover_servers) -> None:
    app, record = _app(tmp_path, server_binary, 64)
    async with app.run_test(size=(150, 42)) as pilot:
        await _scoring_under_way(pilot, app)
        await pilot.press("x")  # the focused pane's side has finished: x stops the scoring
        await wait_for(pilot, lambda: app.state.finished is not None, timeout=60)
        assert app.state.scoring.status == "aborted"  # type: ignore[union-attr]
        await wait_for(pilot, lambda: "scoring aborted: stopped before it finished" in strip_text(app), timeout=10)
        await pilot.press("q")
        await wait_for(pilot, lambda: app.return_code is not None, timeout=30)
    data = read_record(record)
    assert data.status == "done" and [s.status for s in data.sides] == ["done", "done"]  # generation was whole
    (score,) = data.scores
    assert data.scoring.status == "aborted" and 0 < score.positions < data.scoring.positions  # type: ignore[union-attr]


async def test_a_quit_while_scoring_keeps_the_figures_so_far(tmp_path: Path, server_binary,
                                                             no_leftover_servers) -> None:
    app, record = _app(tmp_path, server_binary, 64)
    async with app.run_test(size=(150, 42)) as pilot:
        await _scoring_under_way(pilot, app)
        await pilot.press("q")
        await wait_for(pilot, lambda: app.return_code is not None, timeout=30)
    data = read_record(record)
    (score,) = data.scores
    assert data.scoring.status == "aborted" and 0 < score.positions < data.scoring.positions  # type: ignore[union-attr]
    assert [len(s.runs) for s in data.sides] == [1, 1] and all(s.runs[0].predicted_n == 64 for s in data.sides)
