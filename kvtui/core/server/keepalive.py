"""A small HTTP/1.1 client for teacher forcing: one kept-alive connection, one JSON request at a time.

Scoring sends thousands of small requests to each server, one after another. Through httpx each cost
about 2.5 ms of kvtui's CPU on the 2-core machine (anyio, httpcore and httpx's models), a third of all
kvtui did per position, on cores the servers need. This client writes the request and reads the response
straight off an asyncio stream: a status line, headers, a ``Content-Length`` or chunked body.

llama-server (cpp-httplib) closes a connection after 5 s idle and after 100 requests (the 100th answer
says ``Connection: close``). A connection idle longer than ``idle_s`` is replaced before it is used, one
that says close is closed after its answer, and a request that meets a closed socket anyway fails with
:class:`TransportError`, which the caller may retry on a fresh connection. Requests are never pipelined:
the b10434 server answers a second request already in the socket buffer with 400 Bad Request.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from urllib.parse import urlsplit

IDLE_S = 2.0  # reopen a connection idle this long: the server closes it at 5 s
HEAD_LIMIT = 64 * 1024


class TransportError(Exception):
    """The connection failed before a whole answer came (refused, reset, closed early)."""


class KeepAliveConnection:
    """POSTs JSON to one server over one kept-alive connection.

    Args:
        base_url: ``http://host:port`` (or https, or with a path prefix).
        headers: sent with every request (e.g. the API key).
        idle_s: a connection unused this long is reopened before the next request.
        connect_timeout_s: for opening a connection.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, base_url: str, headers: dict[str, str] | None = None, *, idle_s: float = IDLE_S,
                 connect_timeout_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.tls = parts.scheme == "https"
        self.prefix = parts.path.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._head = f"Host: {host}:{self.port}\r\nContent-Type: application/json\r\n{extra}"
        self.idle_s = idle_s
        self.connect_timeout_s = connect_timeout_s
        self.clock = clock
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._last = 0.0
        self.opened = 0  # connections opened so far

    async def post(self, path: str, body: bytes, timeout_s: float = 600.0) -> tuple[int, bytes]:
        """Send one POST and return (status, body).

        Raises:
            TransportError: the connection failed before the whole answer came.
            TimeoutError: no whole answer within ``timeout_s``.
        """
        if self._writer is None or self._writer.is_closing() or self.clock() - self._last > self.idle_s:
            await self.aclose()
            await self._open()
        assert self._reader is not None and self._writer is not None
        request = f"POST {self.prefix}{path} HTTP/1.1\r\n{self._head}Content-Length: {len(body)}\r\n\r\n"
        ok = False
        try:
            self._writer.write(request.encode("latin-1") + body)
            status, data, close = await asyncio.wait_for(self._answer(self._reader, self._writer), timeout_s)
            ok = True
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError) as exc:
            raise TransportError(type(exc).__name__) from None
        finally:
            if not ok:  # cancelled, timed out or broken: what is left on this connection is unknown
                self._drop()
        self._last = self.clock()
        if close:
            await self.aclose()
        return status, data

    async def _open(self) -> None:
        context = ssl.create_default_context() if self.tls else None
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=context, limit=HEAD_LIMIT),
                self.connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            raise TransportError(type(exc).__name__) from None
        self.opened += 1

    @staticmethod
    async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, bytes, bool]:
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            raise ConnectionError(f"not an HTTP answer: {lines[0][:60]!r}") from None
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip().lower()
        close = headers.get("connection") == "close"
        if "chunked" in headers.get("transfer-encoding", ""):
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(chunk[:-2])
            return status, b"".join(parts), close
        if "content-length" in headers:
            return status, await reader.readexactly(int(headers["content-length"])), close
        return status, await reader.read(), True  # delimited by the server closing the connection

    def _drop(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()

    async def aclose(self) -> None:
        """Close the connection (a later request opens a new one)."""
        writer = self._writer
        self._drop()
        if writer is not None:
            with contextlib.suppress(Exception):
                await writer.wait_closed()
