"""How the app ends: q, Ctrl-C (twice: at once), signals, a dead terminal; servers stopped, record saved.

A mixin of :class:`kvtui.ui.app.KvtuiApp`: it reads the app's ``session``,
``state`` and its ``_quitting``/``_interrupted``/``_killed``/``_session_running``
flags, which the app sets up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from typing import TYPE_CHECKING

from kvtui.core.errors import EXIT_OK, EXIT_RUN_FAILED
from kvtui.core.vocab import FAILED, SessionStatus

if TYPE_CHECKING:
    from kvtui.core.source import EventSource
    from kvtui.core.view import SessionState


class QuitControl:
    """The app's ways of ending, each leaving no server behind and the record saved."""

    session: EventSource
    state: SessionState
    _quitting: bool
    _interrupted: bool
    _killed: bool
    _session_running: bool

    handle_signals = False  # run_app sets it: SIGTERM and SIGINT quit like `q`; SIGHUP (terminal closed) at once
    LAST_RESORT_S = 10.0  # after a signal, the longest the app may take to close before kvtui ends anyway

    def _install_signal_handlers(self) -> None:
        """Plain signal handlers, not the event loop's: they run even when the loop is stuck.

        SIGTERM and SIGINT ask the loop to quit like `q` (runs end as aborted, servers stopped, record
        saved, exit code 1) and start a last-resort timer. SIGHUP means the terminal is gone, and then
        Textual's output blocks the loop (its writer thread dies on EIO and its queue fills up), so the
        handler ends kvtui itself, in the main thread: servers killed, record finalized, exit code 1.
        """
        loop = asyncio.get_running_loop()
        started: list[int] = []

        def handler(signum: int, frame: object) -> None:
            if signum == signal.SIGHUP:
                self._end_now()
            if not started:
                started.append(signum)
                threading.Thread(target=self._last_resort, name="kvtui-last-resort", daemon=True).start()
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(self._on_signal)

        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, handler)

    def _last_resort(self) -> None:
        time.sleep(self.LAST_RESORT_S)
        self._end_now()

    def _end_now(self) -> None:
        """Kill the servers, finalize the record, exit 1: when the app cannot close by itself."""
        with contextlib.suppress(Exception):
            self.session.kill_now()
        with contextlib.suppress(Exception):
            self._finalize()
        os._exit(EXIT_RUN_FAILED)

    def _on_signal(self) -> None:
        """A signal quits like `q` (servers stopped, record saved); a second one does not wait for that."""
        if self._interrupted:
            self._quit_now()
            return
        self._interrupted = True
        self.call_later(self.action_quit)

    def _finalize(self) -> None:
        self.session.finalize(SessionStatus.ABORTED)

    def action_quit(self) -> None:  # type: ignore[override]
        """Stop the servers, save the record, leave; in a worker, so keys (a second ctrl+c) still work meanwhile."""
        if self._quitting:
            return
        self._quitting = True
        if self._session_running:
            self.notify("stopping the servers and saving the record (ctrl+c again: quit now)")
        self.run_worker(self._stop_and_exit(), group="quit", exclusive=True, exit_on_error=False)

    def action_interrupt(self) -> None:
        """Ctrl-C: quit like `q`; pressed again while the servers stop, quit at once."""
        if self._quitting:
            self._quit_now()
        else:
            self.action_quit()

    async def _stop_and_exit(self) -> None:
        self.session.abort(None)
        self.workers.cancel_group(self, "session")
        await self.session.aclose()
        self._finalize()
        self.exit(self._exit_code())

    def _quit_now(self) -> None:
        """Kill the servers (SIGKILL), finalize the record, exit: no waiting for anything."""
        self._killed = True
        self.session.kill_now()
        self._finalize()
        self.exit(self._exit_code())

    def _exit_code(self) -> int:
        # sides you aborted yourself are not failures; a crashed or erroring side, or a signal, is
        return EXIT_RUN_FAILED if self._failed() or self._interrupted else EXIT_OK

    def _failed(self) -> bool:
        return any(s.status in FAILED for s in self.state.sides)

    async def on_unmount(self) -> None:
        if not self._killed:  # after a second ctrl+c (or signal) nothing is waited for
            await self.session.aclose()

