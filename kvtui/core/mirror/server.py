"""The mirror's HTTP server: routes, the security checks, and one turn per completion request.

``/v1/chat/completions`` and llama-server's ``/completion`` (streaming or not) become turns handed to
``submit`` together with the :class:`PrimaryResponse` that carries the primary's answer back; the
connection waits until that answer is complete (keep-alive connections then read the next request).
``/v1/models`` and ``/health`` are answered here.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time
from collections.abc import Awaitable, Callable

from kvtui.core.errors import KvtuiError
from kvtui.core.mirror.api import ENDPOINTS, AgentRequest, ApiError, error_body, models_body, parse_agent_request
from kvtui.core.mirror.guard import Guard
from kvtui.core.mirror.http import MAX_HEAD, HttpError, HttpRequest, read_request, send_json
from kvtui.core.mirror.response import PrimaryResponse

Submit = Callable[[AgentRequest, PrimaryResponse], Awaitable[None]]
IDLE_S = 300.0  # a connection that sends no whole request for this long is closed
_GET = {"/health": "health", "/v1/health": "health", "/v1/models": "models", "/models": "models"}


class MirrorServer:
    """Serves the mirror's API on ``host:port``.

    Args:
        submit: runs one agent request as a turn; it must end with ``response.finish()`` or ``fail()``.
        guard: the security checks (loopback, API key).
        model_id: the name ``/v1/models`` gives the model every side serves.
        host: where to listen (loopback unless the guard allows remote peers).
        port: 0 picks a free port (see ``port`` once started).
        ready: whether the sides are up (``/health`` says 503 until then).
    """

    def __init__(self, submit: Submit, *, guard: Guard, model_id: str, host: str = "127.0.0.1", port: int = 8080,
                 ready: Callable[[], bool] = lambda: True) -> None:
        self.submit = submit
        self.guard = guard
        self.model_id = model_id
        self.host = host
        self.port = port
        self.ready = ready
        self.created = int(time.time())
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.requests = 0  # completion requests taken

    async def start(self) -> None:
        """Listen; raises KvtuiError (exit 2) when the port is taken or the address is not this machine's."""
        try:
            self._server = await asyncio.start_server(self._connection, self.host, self.port, limit=MAX_HEAD)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise KvtuiError(f"port {self.port} on {self.host} is already in use",
                                 "pick another with --port N (0: any free port)") from None
            raise KvtuiError(f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}",
                             "check --host and --port") from None
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        """Stop listening and drop open connections (idempotent)."""
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = writer.get_extra_info("peername")
        peer_host = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        try:
            while True:
                try:
                    async with asyncio.timeout(IDLE_S):  # waiting for a next request, and reading it
                        req = await read_request(reader, writer)
                except TimeoutError:
                    break
                except HttpError as exc:
                    await send_json(writer, exc.status, error_body(exc.message, code=exc.status), keep_alive=False)
                    break
                if req is None or not await self._handle(req, writer, peer_host) or not req.keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:  # close(): end quietly (asyncio logs a connection task that ends cancelled)
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle(self, req: HttpRequest, writer: asyncio.StreamWriter, peer: str) -> bool:
        """Answer one request; returns whether the connection may be reused."""
        keep = req.keep_alive
        refusal = self.guard.check(req, peer)
        if refusal is not None:
            extra = [("WWW-Authenticate", "Bearer")] if refusal.status == 401 else None
            await send_json(writer, refusal.status, error_body(refusal.message, code=refusal.code), keep, extra)
            return keep
        path = req.path.rstrip("/") or "/"
        if path in _GET:
            if req.method not in ("GET", "HEAD"):
                return await self._not_allowed(req, writer, "GET")
            if _GET[path] == "models":
                await send_json(writer, 200, models_body(self.model_id, self.created), keep)
            elif self.ready():
                await send_json(writer, 200, {"status": "ok"}, keep)
            else:
                await send_json(writer, 503, error_body("Loading model", type_="unavailable_error", code=503), keep)
            return keep
        if path not in ENDPOINTS:
            await send_json(writer, 404, error_body(f"Invalid URL ({req.method} {req.path}): the mirror serves "
                                                    "/v1/chat/completions, /completion, /v1/models and /health",
                                                    code="unknown_url"), keep)
            return keep
        if req.method != "POST":
            return await self._not_allowed(req, writer, "POST")
        try:
            agent = parse_agent_request(path, req.body)
        except ApiError as exc:
            await send_json(writer, exc.status, error_body(exc.message, param=exc.param, code=exc.status), keep)
            return keep
        self.requests += 1
        response = PrimaryResponse(writer, agent.stream, keep)
        await self.submit(agent, response)
        await response.done.wait()
        return response.keep_alive and not response.gone

    async def _not_allowed(self, req: HttpRequest, writer: asyncio.StreamWriter, allow: str) -> bool:
        await send_json(writer, 405, error_body(f"{req.method} is not allowed on {req.path}: use {allow}",
                                                code=405), req.keep_alive, [("Allow", allow)])
        return req.keep_alive
