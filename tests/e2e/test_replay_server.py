"""A real run on the bundled server, recorded, then replayed: the same events, in order, on time."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest

from kvtui.core.events import LoopDetected, RunFinished, ScoreReady, ScoringStarted, TokenReceived
from kvtui.core.profiles import load_profile
from kvtui.core.record.recorder import read_record
from kvtui.core.record.replay import Replayer
from kvtui.core.run.live import LiveSession
from kvtui.core.run.prepare import prepare

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.server


def test_replay_reproduces_the_live_events(tmp_path: Path, server_binary, no_leftover_servers) -> None:
    profile = load_profile(REPO / "profiles" / "demo.toml")
    profile = replace(profile, sampling=replace(profile.sampling, n_predict=64))
    prepared = prepare(profile, server_bin=str(server_binary.path), record=str(tmp_path / "r.toml"))
    live = LiveSession(prepared)
    live_events: list = []
    live.sinks.append(live_events.append)
    assert asyncio.run(live.run()) == "done"

    record = read_record(tmp_path / "r.toml")
    speed = 20.0
    replayer = Replayer(record, speed=speed)
    replayed: list[tuple[float, object]] = []
    replayer.sinks.append(lambda e: replayed.append((time.monotonic(), e)))
    t0 = time.monotonic()
    asyncio.run(replayer.run())

    def tokens(events):
        return [(e.side, e.run, e.n, e.text, e.token_id) for e in events if isinstance(e, TokenReceived)]

    live_tokens = [e for e in live_events if isinstance(e, TokenReceived)]
    replay_tokens = [e for _, e in replayed if isinstance(e, TokenReceived)]
    assert tokens(live_tokens) and tokens(replay_tokens) == tokens(live_tokens)  # same tokens, same order
    # the events carry the same session times (the record rounds to 0.1 ms)
    for a, b in zip(live_tokens, replay_tokens, strict=True):
        assert b.t == pytest.approx(a.t, abs=0.002)
    # and they arrive with the recorded relative timing, scaled by the speed, within 5%
    first = next(w for w, e in replayed if isinstance(e, TokenReceived))
    span = live_tokens[-1].t - live_tokens[0].t
    for (w, _), a in zip(((w, e) for w, e in replayed if isinstance(e, TokenReceived)), live_tokens, strict=True):
        expected = (a.t - live_tokens[0].t) / speed
        assert abs((w - first) - expected) <= 0.05 * span / speed + 0.02
    assert time.monotonic() - t0 < (record.duration_s or 0.0) / speed + 2
    # run results and loop reports are the same as live
    def finished(events):
        return [(e.side, e.result.stop, e.result.predicted_n, e.result.text) for e in events
                if isinstance(e, RunFinished)]

    assert finished(e for _, e in replayed) == finished(live_events)
    loops = [(e.side, e.period, e.start, e.repeats) for e in live_events if isinstance(e, LoopDetected)]
    assert [(e.side, e.period, e.start, e.repeats) for _, e in replayed if isinstance(e, LoopDetected)] == loops
    # the scoring after generation: the same start and the same figures
    def scoring(events):
        return [(type(e).__name__, e.scoring, e.scores if isinstance(e, ScoreReady) else ()) for e in events
                if isinstance(e, ScoringStarted | ScoreReady)]

    live_scoring = scoring(live_events)
    assert [k for k, _, _ in live_scoring] == ["ScoringStarted", "ScoreReady"] and live_scoring[1][2]
    assert scoring(e for _, e in replayed) == live_scoring
