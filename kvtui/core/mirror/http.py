"""HTTP/1.1 on asyncio streams, just what the mirror needs: read a request, write JSON or a chunked stream.

Stdlib only (kvtui adds no web framework for one small API). Reading is strict where a lax reading could
be abused (two ``Content-Length`` s, ``Content-Length`` with ``Transfer-Encoding``, folded headers, a head
or a body past its limit) and says what was wrong in one line (:class:`HttpError`), which the server sends
back as a 4xx with an OpenAI-style error body.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote, urlsplit

MAX_HEAD = 64 * 1024  # request line and headers
MAX_BODY = 64 * 2**20  # an agent's whole conversation goes in one request: long, but not this long
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 token (methods, header names)


class HttpError(Exception):
    """A request that cannot be read; ``status`` is the answer (400, 411, 413, ...)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request as read: header names lower-cased, the body whole (chunked bodies joined)."""

    method: str
    target: str
    version: str  # "HTTP/1.1" | "HTTP/1.0"
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""

    @property
    def path(self) -> str:
        """The target's path, percent-decoded, without the query."""
        return unquote(urlsplit(self.target).path) or "/"

    def header(self, name: str) -> str | None:
        """The first value of a header (name case-insensitive), or None."""
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    @property
    def keep_alive(self) -> bool:
        """Whether the connection stays open after the answer (HTTP/1.1 unless ``Connection: close``)."""
        conn = {t.strip().lower() for t in (self.header("connection") or "").split(",")}
        return "keep-alive" in conn if self.version == "HTTP/1.0" else "close" not in conn


async def read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       max_body: int = MAX_BODY) -> HttpRequest | None:
    """Read one request; None when the client closed the connection before sending one.

    ``Expect: 100-continue`` (curl sends it for bodies over 1 KiB) is answered before the body is read.

    Raises:
        HttpError: the request is malformed or too large; the connection cannot be reused after it.
    """
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise HttpError(400, "the request ended inside its headers (each line ends with CRLF, then a blank line)") \
            from None
    except asyncio.LimitOverrunError:
        raise HttpError(431, f"request headers larger than {MAX_HEAD // 1024} KiB") from None
    method, target, version, headers = parse_head(head[:-4])
    req = HttpRequest(method, target, version, headers)
    te, cl = req.header("transfer-encoding"), [v for k, v in headers if k == "content-length"]
    if te is not None and cl:
        raise HttpError(400, "both Transfer-Encoding and Content-Length are set: send one of them")
    expect = (req.header("expect") or "").lower()
    if expect and expect != "100-continue":
        raise HttpError(417, f"Expect: {expect} is not supported (only 100-continue)")
    if te is not None:
        if te.strip().lower() != "chunked":
            raise HttpError(501, f"Transfer-Encoding {te!r} is not supported (only chunked)")
        await _continue(writer, expect)
        body = await _read_chunked(reader, max_body)
    elif cl:
        if len(set(cl)) > 1 or not cl[0].strip().isdigit():
            raise HttpError(400, f"bad Content-Length {', '.join(cl)!r}: one whole number of bytes")
        n = int(cl[0])
        if n > max_body:
            raise HttpError(413, f"request body of {n:,} bytes is over the mirror's limit of {max_body:,}")
        if n:
            await _continue(writer, expect)
        body = await _read_exactly(reader, n)
    elif method in ("POST", "PUT", "PATCH"):
        raise HttpError(411, f"{method} without Content-Length: send the JSON body with its length")
    else:
        body = b""
    return HttpRequest(method, target, version, headers, body)


def parse_head(head: bytes) -> tuple[str, str, str, tuple[tuple[str, str], ...]]:
    """The request line and headers of a head (without its final blank line).

    Raises:
        HttpError: 400 naming what is malformed, or 505 for another HTTP version.
    """
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes any byte
        raise HttpError(400, "undecodable request head") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or not parts[1]:
        raise HttpError(400, f"malformed request line {lines[0][:80]!r}: expected e.g. "
                             "'POST /v1/chat/completions HTTP/1.1'")
    method, target, version = parts
    if not version.startswith("HTTP/"):
        raise HttpError(400, f"malformed request line {lines[0][:80]!r}: no HTTP version")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(505, f"{version} is not supported: use HTTP/1.1")
    if not (target.startswith("/") or target == "*"):
        raise HttpError(400, f"request target {target[:80]!r} is not a path (e.g. /v1/chat/completions)")
    headers = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            raise HttpError(400, "folded header lines are not allowed (RFC 9112)")
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.match(name):
            raise HttpError(400, f"malformed header line {line[:80]!r}: expected 'Name: value'")
        headers.append((name.lower(), value.strip(" \t")))
    if len(headers) > 200:
        raise HttpError(431, "more than 200 request headers")
    if sum(1 for k, _ in headers if k == "host") > 1:
        raise HttpError(400, "more than one Host header")
    return method, target, version, tuple(headers)


async def _continue(writer: asyncio.StreamWriter, expect: str) -> None:
    if expect == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()


async def _read_exactly(reader: asyncio.StreamReader, n: int) -> bytes:
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError as exc:
        raise HttpError(400, f"the body ended after {len(exc.partial):,} of the {n:,} bytes its "
                             "Content-Length says") from None


async def _read_chunked(reader: asyncio.StreamReader, max_body: int) -> bytes:
    out = bytearray()
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            raise HttpError(400, "the chunked body ended inside a chunk header") from None
        size_text = line[:-2].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise HttpError(400, f"bad chunk size {size_text[:20]!r} in the chunked body") from None
        if size < 0 or len(out) + size > max_body:
            raise HttpError(413, f"request body over the mirror's limit of {max_body:,} bytes")
        if size == 0:
            while (await _read_line(reader)) != b"\r\n":  # trailers, ignored
                pass
            return bytes(out)
        out += await _read_exactly(reader, size)
        if await _read_exactly(reader, 2) != b"\r\n":
            raise HttpError(400, "a chunk of the chunked body is longer than its size says")


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        raise HttpError(400, "the chunked body ended inside its trailers") from None


# -- writing ---------------------------------------------------------------------------------------


def status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")


def head_bytes(status: int, headers: list[tuple[str, str]]) -> bytes:
    """Status line and headers, with the blank line that ends them."""
    return status_line(status) + b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers) + b"\r\n"


async def send_body(writer: asyncio.StreamWriter, status: int, body: bytes, content_type: str,
                    keep_alive: bool = True, extra: list[tuple[str, str]] | None = None) -> None:
    """A whole response with a known length."""
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))] + (extra or [])
    headers.append(("Connection", "keep-alive" if keep_alive else "close"))
    writer.write(head_bytes(status, headers) + body)
    await writer.drain()


async def send_json(writer: asyncio.StreamWriter, status: int, obj: Any, keep_alive: bool = True,
                    extra: list[tuple[str, str]] | None = None) -> None:
    """A JSON response."""
    await send_body(writer, status, json.dumps(obj).encode("utf-8"), "application/json; charset=utf-8",
                    keep_alive, extra)


class ChunkedWriter:
    """A response whose length is not known ahead: an event stream, written as it arrives (chunked)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.ended = False

    async def start(self, status: int, content_type: str, extra: list[tuple[str, str]] | None = None) -> None:
        headers = [("Content-Type", content_type), ("Cache-Control", "no-cache"), ("Transfer-Encoding", "chunked"),
                   ("X-Accel-Buffering", "no")] + (extra or [])
        self.writer.write(head_bytes(status, headers))
        await self.writer.drain()

    async def write(self, data: bytes) -> None:
        if data:
            self.writer.write(f"{len(data):x}\r\n".encode("ascii") + data + b"\r\n")
            await self.writer.drain()

    async def end(self) -> None:
        if not self.ended:
            self.ended = True
            self.writer.write(b"0\r\n\r\n")
            await self.writer.drain()
