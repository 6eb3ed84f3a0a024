"""A llama-server that was already running, attached by URL: kvtui reads it and never stops it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx

from kvtui.core.errors import ServerError
from kvtui.core.logs.failure import LogFacts
from kvtui.core.server.base import Ready, Server
from kvtui.core.server.wire import PropsBody, read_json


@dataclass(frozen=True, slots=True)
class Props:
    """What a running server says about itself in ``/props``."""

    model_path: str
    n_ctx: int | None
    build: str
    total_slots: int | None

    @staticmethod
    def parse(props: dict) -> Props:
        body = read_json(PropsBody, props) or PropsBody()
        n_ctx = (body.default_generation_settings or {}).get("n_ctx")
        return Props(body.model_path or body.model_alias, n_ctx if isinstance(n_ctx, int) else None,
                     body.build_info, body.total_slots)


def _own_addresses() -> set[str]:
    """This machine's IP addresses (a URL with one of them is a local server, though not on loopback)."""
    import psutil

    try:
        return {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs}
    except OSError:
        return set()


def local_pid(url: str) -> int | None:
    """The process listening on ``url``'s port, when the URL is this machine's loopback and we may see it."""
    from urllib.parse import urlsplit

    import psutil

    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    if host not in ("127.0.0.1", "localhost", "::1") and host not in _own_addresses():
        return None  # another machine: its memory cannot be sampled from here
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            return int(c.pid)
    return None


class AttachedServer(Server):
    """A llama-server that was already running: kvtui talks to it by URL and never stops it.

    Its cache types cannot be read back (``/props`` does not report them): they
    are taken as the profile declares them. Memory is sampled only where its
    process is on this machine (found by the listening port).
    """

    def __init__(self, url: str, api_key: str = "") -> None:
        self.base_url = url.rstrip("/")
        self.api_key = api_key
        self.log_path = None
        self._pid = local_pid(self.base_url)
        self.props: Props | None = None
        self._gone = False

    @property
    def argv(self) -> list[str]:
        return []

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def started(self) -> bool:
        return True

    @property
    def exit_code(self) -> int | None:
        return None  # not ours: kvtui never learns an exit status

    @property
    def alive(self) -> bool:
        return not self._gone

    async def start(self) -> None:
        return None

    async def wait_ready(self, http: httpx.AsyncClient, timeout_s: float = 600.0) -> Ready:
        """Read /health and /props once (a server still loading is waited for)."""
        t0 = time.monotonic()
        while True:
            try:
                r = await http.get(self.base_url + "/health", headers=self.headers, timeout=5.0)
            except httpx.HTTPError as exc:
                raise ServerError(f"cannot reach the server at {self.base_url}: {exc.__class__.__name__}",
                                  "start llama-server there first, or fix the side's url") from None
            if r.status_code == 200:
                break
            if r.status_code != 503 or time.monotonic() - t0 > timeout_s:
                raise ServerError(f"{self.base_url}/health answered HTTP {r.status_code}",
                                  "check that the url is a llama-server and that it is healthy")
            await asyncio.sleep(0.5)
        try:
            r = await http.get(self.base_url + "/props", headers=self.headers, timeout=5.0)
        except httpx.HTTPError as exc:
            raise ServerError(f"cannot read {self.base_url}/props: {exc.__class__.__name__}",
                              "check the server is a llama-server") from None
        if r.status_code == 401:
            raise ServerError(f"{self.base_url} refused the API key (HTTP 401)",
                              "set the side's api_key to the server's --api-key")
        if r.status_code != 200:
            raise ServerError(f"{self.base_url}/props answered HTTP {r.status_code}",
                              "check that the url is a llama-server")
        try:
            self.props = Props.parse(r.json())
        except ValueError:
            raise ServerError(f"{self.base_url}/props is not JSON", "check that the url is a llama-server") from None
        if self._pid is None:
            self._pid = local_pid(self.base_url)
        return Ready(self._pid or 0, time.monotonic() - t0, self.props.n_ctx, self.props.build, LogFacts((), None, ()))

    async def wait_exit(self, timeout_s: float) -> bool:
        return False

    async def stop(self, grace_s: float = 5.0) -> int | None:
        """Let go of it: it is no longer sampled or used, and it goes on running (kvtui did not start it)."""
        self._gone = True
        return None

    def failure(self) -> ServerError:
        return ServerError(f"the server at {self.base_url} stopped answering",
                           "check that server (kvtui did not start it and cannot read its log)")

    def log_text(self) -> str:
        return ""

    def kill_now(self) -> None:
        return None
