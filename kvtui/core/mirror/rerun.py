"""``kvtui run --from RECORD`` for a mirror record: the agent's recorded requests, again, on every side.

A mirror record's profile has no conversation (the agent brought the turns); its ``[[turns]]`` hold every
request. Run again, they are a forced conversation: each side answers each recorded request, with the
messages exactly as recorded, whatever it answered before. The new record says ``forced`` and keeps
the same turns, so it can be run again the same way.
"""

from __future__ import annotations

from pathlib import Path

from kvtui.core.errors import RecordError
from kvtui.core.mirror.recorded import RecordedRequest, RecordedSource, expand_turns
from kvtui.core.record.model import read_record
from kvtui.core.run.live import LiveSession
from kvtui.core.run.prepare import Prepared
from kvtui.core.run.runner import Runner
from kvtui.core.run.turns import TurnRequest


def recorded_requests(path: str | Path) -> list[RecordedRequest] | None:
    """The recorded requests of a record whose turns came from outside its profile (``kvtui mirror``).

    Returns:
        None for a record of prompts or of a profile's own conversation (its profile runs it again).

    Raises:
        RecordError: unreadable, or a mirror record without a single turn.
    """
    record = read_record(path)
    mode = record.conversation.mode if record.conversation is not None else None
    if mode is None or "conversation" in record.profile or "turns" in record.profile:
        return None
    if not record.turns:
        raise RecordError(f"{path}: the mirror session recorded no turns: there is nothing to run again",
                          "point an agent at `kvtui mirror` and let it send a request first")
    return expand_turns(record.turns, str(path))


class RecordedSession(LiveSession):
    """A live session whose turns are a record's requests (a forced conversation)."""

    def __init__(self, prepared: Prepared, requests: list[RecordedRequest]) -> None:
        super().__init__(prepared)
        self.requests = requests

    async def run(self) -> str:
        p = self.prepared
        source = RecordedSource(self.requests, TurnRequest)
        self.runner = Runner(p.plan, self.emit, log_dir=p.log_dir, probe=p.probe, source=source)
        self.status = await self.runner.run()
        return self.status
