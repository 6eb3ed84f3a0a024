"""Both producers of the event stream offer the one protocol the front ends drive."""

from __future__ import annotations

import inspect

from kvtui.core.record.replay import Replayer
from kvtui.core.run.live import LiveSession
from kvtui.core.source import EventSource, ReplayControls


def _members(proto: type) -> set[str]:
    return {n for n in vars(proto) if not n.startswith("_")} | set(getattr(proto, "__annotations__", {}))


def test_live_session_and_replayer_offer_every_member_of_the_protocol() -> None:
    from pathlib import Path

    from kvtui.core.record.recorder import read_record

    replay = Replayer(read_record(Path(__file__).resolve().parents[1] / "data" / "sessions" / "demo.toml"))
    assert replay.recorder is not None and replay.sinks == []
    for cls in (LiveSession, Replayer):
        missing = [m for m in _members(EventSource) if not hasattr(cls, m) and m not in ("sinks", "recorder")]
        assert not missing, f"{cls.__name__} lacks {missing}"
        for name in _members(EventSource) - {"sinks", "recorder", "plan"}:
            if name not in vars(EventSource):
                continue  # a data member (reruns): its presence is checked above
            ours, theirs = getattr(cls, name), getattr(EventSource, name)
            assert inspect.iscoroutinefunction(ours) == inspect.iscoroutinefunction(theirs), (cls.__name__, name)
    assert LiveSession.reruns and not Replayer.reruns  # r / R run sides again live, never in a replay


def test_only_a_replay_has_replay_controls(tmp_path) -> None:
    from pathlib import Path

    from kvtui.core.record.recorder import read_record

    record = read_record(Path(__file__).resolve().parents[1] / "data" / "sessions" / "demo.toml")
    replay = Replayer(record)
    assert isinstance(replay, ReplayControls)
    assert replay.plan is None and replay.side_count() == 2
    assert not all(hasattr(LiveSession, m) for m in ("toggle_pause", "set_speed", "jump_to_end"))
