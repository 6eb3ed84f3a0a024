"""One streamed POST over a plain asyncio connection: the measured requests' transport.

A generating server sends a small chunk for every token. Through httpx (its
connection pool, httpcore, anyio and three layers of async iterators) each chunk
cost kvtui about 0.7 ms of CPU on the 2-core machine; read straight from an
asyncio stream it costs about 0.3 ms (``benchmarks/stream_cost.py``). On a CPU
run kvtui shares the cores with the servers it measures, so the difference is
taken from their tokens/s. Everything else (health, props, tokenize,
teacher forcing) stays on httpx.

What it speaks is the little of HTTP/1.1 that llama-server (or an HTTPS proxy
in front of one) needs: one request per connection (``Connection: close``; see
``client.http_client`` for why kvtui keeps none alive), a body sent with its
length, a response body that is chunked, has a length, or runs to the close.
Failures raise httpx's own exception types, so callers handle one family.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx

CONNECT_TIMEOUT_S = 10.0
READ_SIZE = 65536
MAX_HEAD = 65536  # bytes of status line and headers


class StreamResponse:
    """The response of :func:`open_stream`: status, headers, then the body as it arrives.

    Offers the part of ``httpx.Response`` that kvtui's stream readers use:
    ``status_code``, ``headers.get``, ``aread``, ``aiter_bytes`` and ``aiter_lines``.
    """

    def __init__(self, reader: asyncio.StreamReader, status_code: int, headers: dict[str, str]) -> None:
        self._reader = reader
        self.status_code = status_code
        self.headers = headers  # names in lower case
        te = headers.get("transfer-encoding", "").lower()
        self._chunked = "chunked" in te
        length = headers.get("content-length")
        self._left = int(length) if length is not None and length.strip().isdigit() and not self._chunked else None

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body's bytes, as they come (chunk framing removed)."""
        r = self._reader
        try:
            if self._chunked:
                while True:
                    size_line = await r.readuntil(b"\n")
                    size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                            await r.readuntil(b"\n")  # the empty trailer
                        return
                    data = await r.readexactly(size + 2)  # the chunk and its CRLF
                    yield data[:-2]
            elif self._left is not None:
                while self._left > 0:
                    data = await r.read(min(READ_SIZE, self._left))
                    if not data:
                        raise httpx.RemoteProtocolError("the server closed the connection before the body's end")
                    self._left -= len(data)
                    yield data
            else:
                while data := await r.read(READ_SIZE):
                    yield data
        except asyncio.IncompleteReadError:
            raise httpx.RemoteProtocolError("the server closed the connection in the middle of a chunk") from None
        except ValueError:  # a chunk size that is not hexadecimal
            raise httpx.RemoteProtocolError("the server sent a malformed chunk") from None
        except ConnectionError as exc:
            raise httpx.ReadError(f"the connection broke: {exc}") from None

    async def aread(self) -> bytes:
        """The whole body."""
        return b"".join([chunk async for chunk in self.aiter_bytes()])

    async def aiter_lines(self) -> AsyncIterator[str]:
        """The body's lines (UTF-8, without their line ending; a last line without one too)."""
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        buf = ""
        async for chunk in self.aiter_bytes():
            buf += decoder.decode(chunk)
            if "\n" in buf:
                *lines, buf = buf.split("\n")
                for line in lines:
                    yield line
        buf += decoder.decode(b"", final=True)
        if buf:
            yield buf


@contextlib.asynccontextmanager
async def open_stream(url: str, body: dict[str, Any], headers: dict[str, str] | None = None,
                      connect_timeout_s: float = CONNECT_TIMEOUT_S) -> AsyncIterator[StreamResponse]:
    """POST ``body`` as JSON to ``url`` and hand over the response once its head has come.

    Leaving the block closes the connection; llama-server then stops generating.
    There is no timeout on the response: a long prompt may take minutes before
    the first byte, and the caller times out the stream itself.

    Raises:
        httpx.ConnectError: the server cannot be reached.
        httpx.RemoteProtocolError: the server closed the connection or answered with something that is not HTTP.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise httpx.UnsupportedProtocol(f"not an http(s) URL: {url}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
    host = parts.netloc.rpartition("@")[2]  # as written in the URL: [v6] brackets and port kept, no user info
    head = [f"POST {target} HTTP/1.1", f"Host: {host}", "Content-Type: application/json",
            f"Content-Length: {len(payload)}", "Accept: text/event-stream, application/json", "Connection: close"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(parts.hostname, port, ssl=ssl.create_default_context() if tls else None,
                                    limit=MAX_HEAD), connect_timeout_s)
    except TimeoutError:
        raise httpx.ConnectTimeout(f"no connection to {parts.hostname}:{port} within {connect_timeout_s:g} s") from None
    except OSError as exc:
        raise httpx.ConnectError(f"cannot connect to {parts.hostname}:{port}: {exc.strerror or exc}") from None
    try:
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
        await writer.drain()
        response = await _read_head(reader)
        yield response
    except ConnectionError as exc:
        raise httpx.ReadError(f"the connection broke: {exc}") from None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _read_head(reader: asyncio.StreamReader) -> StreamResponse:
    """The status line and headers (a ``100 Continue`` before them is skipped)."""
    while True:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.") from None
        except asyncio.LimitOverrunError:
            raise httpx.RemoteProtocolError(f"the response's headers are longer than {MAX_HEAD} bytes") from None
        lines = raw.decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)
        if len(status) < 2 or not status[0].startswith("HTTP/1.") or not status[1].isdigit():
            raise httpx.RemoteProtocolError(f"not an HTTP response: {lines[0][:80]!r}")
        code = int(status[1])
        if code == 100:
            continue
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return StreamResponse(reader, code, headers)
