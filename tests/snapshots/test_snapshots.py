"""Snapshots of the app's main states, fed by replays of real recorded sessions (deterministic)."""

from __future__ import annotations

from pathlib import Path

from kvtui.core.record.recorder import read_record
from kvtui.core.record.replay import Replayer
from kvtui.ui.app import KvtuiApp

SESSIONS = Path(__file__).resolve().parents[1] / "data" / "sessions"
SIZE = (150, 42)


def frozen_app(name: str, at: float | None = None, label: str = "") -> KvtuiApp:
    """The app showing the session ``name`` as it was at record time ``at`` (None: the end)."""
    record = read_record(SESSIONS / name)
    when = (record.duration_s or 0.0) + 1 if at is None else at
    return KvtuiApp(Replayer(record, stop_at=when), replay_label=label)


def midpoint(name: str) -> float:
    record = read_record(SESSIONS / name)
    runs = [s.runs[0] for s in record.sides]
    start, end = max(r.t_sent for r in runs), min(r.t_end for r in runs)
    return start + (end - start) * 0.45


async def settle(pilot) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause(0.8)  # a text frame (8 Hz) and a figures frame (2 Hz)


def test_running(snap_compare) -> None:
    assert snap_compare(frozen_app("demo.toml", midpoint("demo.toml")), terminal_size=SIZE, run_before=settle)


def test_finished(snap_compare) -> None:
    assert snap_compare(frozen_app("demo.toml"), terminal_size=SIZE, run_before=settle)


def test_loop_flagged(snap_compare) -> None:
    assert snap_compare(frozen_app("loop.toml"), terminal_size=SIZE, run_before=settle)


def test_crashed_side(snap_compare) -> None:
    assert snap_compare(frozen_app("crash.toml"), terminal_size=SIZE, run_before=settle)


def test_replay_header(snap_compare) -> None:
    app = frozen_app("demo.toml", label="replay 2026-11-29")
    assert snap_compare(app, terminal_size=SIZE, run_before=settle)


def test_help_screen(snap_compare) -> None:
    async def open_help(pilot) -> None:
        await settle(pilot)
        await pilot.press("question_mark")
        await pilot.pause(0.2)

    assert snap_compare(frozen_app("demo.toml"), terminal_size=SIZE, run_before=open_help)


# the smallest supported terminal, a common one, and a large one (tests/ui/test_sizes.py checks what stays visible)


def test_running_80x24(snap_compare) -> None:
    assert snap_compare(frozen_app("demo.toml", midpoint("demo.toml")), terminal_size=(80, 24), run_before=settle)


def test_finished_80x24(snap_compare) -> None:
    assert snap_compare(frozen_app("demo.toml"), terminal_size=(80, 24), run_before=settle)


def test_loop_flagged_80x24(snap_compare) -> None:
    assert snap_compare(frozen_app("loop.toml"), terminal_size=(80, 24), run_before=settle)


def test_running_120x40(snap_compare) -> None:
    assert snap_compare(frozen_app("demo.toml", midpoint("demo.toml")), terminal_size=(120, 40), run_before=settle)


def test_finished_200x50(snap_compare) -> None:
    assert snap_compare(frozen_app("demo.toml"), terminal_size=(200, 50), run_before=settle)


# a conversation (tests/data/sessions/conversation.toml: SmolLM2, six turns, free) in its sixth turn: earlier
# turns scrolled up with their figures, the turn in the header, q4_0's loop of replies flagged
CONVERSATION_AT = 90.0


def test_conversation(snap_compare) -> None:
    assert snap_compare(frozen_app("conversation.toml", CONVERSATION_AT), terminal_size=SIZE, run_before=settle)


def test_conversation_80x24(snap_compare) -> None:
    assert snap_compare(frozen_app("conversation.toml", CONVERSATION_AT), terminal_size=(80, 24), run_before=settle)
