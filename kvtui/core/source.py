"""The one session protocol every front end drives: a live session or a replay.

The Textual app and the headless console hold an ``EventSource`` and nothing
more specific: they add a sink, run it, abort or rerun sides, and read its
recorder's typed record. ``LiveSession`` (kvtui.core.run.live) and ``Replayer``
(kvtui.core.record.replay) are the two implementations; a replay also offers
``ReplayControls``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from kvtui.core.events import Event

if TYPE_CHECKING:
    from kvtui.core.record.recorder import SessionRecorder
    from kvtui.core.run.plan import Plan

Sink = Callable[[Event], None]


class EventSource(Protocol):
    """A producer of the event stream that a front end drives."""

    sinks: list[Sink]
    reruns: bool  # r / R can run sides again (not a replay, not a mirror, whose turns come from the agent)

    @property
    def recorder(self) -> SessionRecorder | None:
        """The record folded from the events so far (what summaries and the comparison strip read)."""

    @property
    def memory_source(self) -> str | None:
        """How the servers' memory is measured: "nvml" (GPU), "rss" (they run on the CPU), None (a replay)."""

    @property
    def plan(self) -> Plan | None:
        """The plan being run; None for a replay (its plan is history)."""

    async def run(self) -> str:
        """Run every side; returns the session status."""

    async def rerun(self, side: int | None = None) -> str:
        """Run one side again (appending to the record), or all of them."""

    def abort(self, side: int | None = None) -> None:
        """Stop one side's generation now, or every side's (a finished side, or None, stops a scoring)."""

    async def aclose(self) -> None:
        """Stop what it started (idempotent)."""

    def save(self) -> str | None:
        """Save the record now; returns where, or None when there is no file."""

    def finalize(self, status: str) -> None:
        """Mark a session cut short and save it, keeping runs still streaming (idempotent)."""

    def kill_now(self) -> None:
        """Synchronous last resort for signal handlers: end every server at once."""

    def now(self) -> float:
        """Seconds since the session started, in the stream's own time."""

    def side_count(self) -> int:
        """How many sides the session compares."""


@runtime_checkable
class ReplayControls(Protocol):
    """What a replay offers beyond an ``EventSource``: pause, speed, restart, jump to the end."""

    speed: float
    paused: bool

    def toggle_pause(self) -> bool:
        """Pause or resume; returns True when now paused."""

    def set_speed(self, speed: float) -> None:
        """Play at ``speed`` times the recorded pace."""

    def restart(self) -> None:
        """Play again from the start."""

    def jump_to_end(self) -> None:
        """Deliver every remaining event at once."""
