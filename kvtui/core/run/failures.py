"""How the runner reports a side that failed: the cause from its server's log, the events that say so.

A mixin of :class:`kvtui.core.run.runner.Runner`: it reads the runner's ``servers``, ``emit``, ``now``
and ``_set``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kvtui.core.errors import KvtuiError
from kvtui.core.events import ErrorRaised, Event, ServerExited, SideFinished
from kvtui.core.logs.failure import tail

if TYPE_CHECKING:
    from kvtui.core.server.base import Server


class FailureReports:
    """A side's failure explained (its server's log first) and reported as events."""

    servers: dict[int, Server]
    emit: Callable[[Event], None]
    now: Callable[[], float]
    _set: Callable[[int, str], None]

    async def _settle(self, i: int, timeout_s: float = 2.0) -> None:
        """After a failed request, give a dying server a moment to exit, so the cause comes from its log."""
        srv = self.servers.get(i)
        if srv is not None and srv.alive:
            await srv.wait_exit(timeout_s)

    def _dead(self, i: int) -> bool:
        srv = self.servers.get(i)
        return srv is not None and srv.exited

    def _explain(self, i: int, exc: Exception) -> KvtuiError:
        """A crash mid-request shows as an HTTP error; the log says why."""
        if self._dead(i):
            return self.servers[i].failure()
        if isinstance(exc, KvtuiError):
            return exc
        log = self.servers[i].log_path
        where = f"read {log}" if log is not None else f"check the server at {self.servers[i].base_url}"
        return KvtuiError(f"request failed: {exc.__class__.__name__}: {exc}".rstrip(": "),
                          f"rerun the side (r in the app); if it fails again, {where}", exit_code=1)

    def _fail(self, i: int, exc: KvtuiError, status: str) -> None:
        self._set(i, status)
        self.emit(ErrorRaised(self.now(), i, exc.message, exc.hint))
        srv = self.servers.get(i)
        if srv is not None and srv.exited and srv.claim_exit_report():
            log_tail = getattr(exc, "log_tail", ()) or tail(srv.log_text())
            self.emit(ServerExited(self.now(), i, srv.exit_code, expected=False, log_tail=log_tail))
        self.emit(SideFinished(self.now(), i, status))  # type: ignore[arg-type]
