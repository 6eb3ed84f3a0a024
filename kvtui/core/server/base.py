"""The interface every kind of server offers the runner, and what a ready server reports.

``LlamaServer`` (kvtui.core.server.process) is a process kvtui starts and owns;
``AttachedServer`` (kvtui.core.server.attached) one that was already running.
The runner talks to this interface only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import httpx

from kvtui.core.errors import ServerError
from kvtui.core.logs.failure import LogFacts
from kvtui.core.logs.provenance import RanWith


@dataclass(frozen=True, slots=True)
class Ready:
    """What a started server reports about itself."""

    pid: int
    load_s: float
    n_ctx: int | None
    build: str
    facts: LogFacts
    ran_with: RanWith | None = None


class Server(ABC):
    """What the runner needs from a side's llama-server, however it came to be.

    ``LlamaServer`` (below) is a process kvtui starts and owns. A server
    attached by URL, or one placed on a given GPU, is another subclass: the
    runner only ever talks to this interface.
    """

    base_url: str
    api_key: str
    log_path: Path | None
    _exit_reported: bool = False

    @property
    def headers(self) -> dict[str, str]:
        """The HTTP headers every request to this server carries."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @property
    @abstractmethod
    def argv(self) -> list[str]:
        """The command line as recorded (secrets masked); empty when kvtui did not start it."""

    @property
    @abstractmethod
    def pid(self) -> int | None:
        """The local process id, when there is a local process kvtui knows."""

    @property
    @abstractmethod
    def started(self) -> bool:
        """Whether it got as far as a running process (False: it could not even be spawned)."""

    @property
    @abstractmethod
    def exit_code(self) -> int | None:
        """The exit status once it has ended, else None."""

    @property
    def exited(self) -> bool:
        """It was running and has ended."""
        return self.exit_code is not None

    @property
    def alive(self) -> bool:
        return self.started and not self.exited

    @abstractmethod
    async def start(self) -> None:
        """Bring it up (spawn a process, or nothing for a server that is already running)."""

    @abstractmethod
    async def wait_ready(self, http: httpx.AsyncClient, timeout_s: float = 600.0) -> Ready:
        """Wait until it serves; raise ServerError with cause and fix if it never will."""

    @abstractmethod
    async def wait_exit(self, timeout_s: float) -> bool:
        """Give a dying server up to ``timeout_s`` to end; returns whether it has ended."""

    @abstractmethod
    async def stop(self, grace_s: float = 5.0) -> int | None:
        """End it if kvtui owns it; returns the exit code where there is one."""

    @abstractmethod
    def failure(self) -> ServerError:
        """Why it ended, with cause, fix and log tail (call once it has ended)."""

    @abstractmethod
    def log_text(self) -> str:
        """Its log so far ("" where kvtui cannot see one)."""

    @abstractmethod
    def kill_now(self) -> None:
        """Synchronous last resort (signal handlers, atexit)."""

    def claim_exit_report(self) -> bool:
        """True the first time an unexpected exit is to be reported, so it is reported once."""
        if self._exit_reported or self.stopping:
            return False
        self._exit_reported = True
        return True

    @property
    def stopping(self) -> bool:
        """kvtui asked it to stop: its exit is expected."""
        return False
