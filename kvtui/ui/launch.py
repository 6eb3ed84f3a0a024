"""``kvtui run`` in the app: open it on a live session, and on exit say where the record went."""

from __future__ import annotations

import os
import shlex
from typing import Any

from kvtui.core.errors import EXIT_OK
from kvtui.core.vocab import SessionStatus


def run_app(prepared: Any, force: bool = False, *, auto_pilot: Any = None, session: Any = None) -> int:
    """Open the app on a prepared live session; on exit print where the record went. Returns the exit code.

    Args:
        prepared: from :func:`kvtui.core.run.prepare.prepare`.
        force: start a parallel run that will not fit without asking.
        auto_pilot: for tests: drive the app headless with this Pilot coroutine.
        session: a live session of another kind on ``prepared`` (a mirror record's requests run again).
    """
    from kvtui.core.run.live import LiveSession
    from kvtui.ui.app import KvtuiApp

    session = session if session is not None else LiveSession(prepared)
    records = [prepared.record_path]
    app = KvtuiApp(session, force=force)
    app.handle_signals = auto_pilot is None
    try:
        code = app.run(headless=auto_pilot is not None, auto_pilot=auto_pilot)
    finally:  # however the app ended (an exception too): no server left, the record finalized
        session.kill_now()
        session.recorder.finalize_partial(SessionStatus.ABORTED)
        records.append(session.prepared.record_path)  # R (rerun all) starts a new record
        for line in exit_lines(records):
            print(line)
    return code if isinstance(code, int) else EXIT_OK


def exit_lines(records: list[Any]) -> list[str]:
    """``record: PATH`` and the command that replays it, for each record file the app wrote."""
    out = []
    for path in dict.fromkeys(p for p in records if p is not None):
        if os.path.exists(path):
            out += [f"record: {path}", f"replay: kvtui replay {shlex.quote(str(path))}"]
    return out
