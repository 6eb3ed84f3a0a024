"""The answer to one agent request: the primary side's response, passed through as the server sent it.

The conversation engine hands over the primary's status and bytes (SSE lines with their framing, or the
JSON body) as they arrive; an event stream goes on to the agent at once, chunk by chunk, a JSON body in
one piece with its length. An agent that hangs up does not break the turn: later bytes are dropped, and
the other sides run the turn all the same.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from kvtui.core.mirror.http import ChunkedWriter, send_body

SSE = "text/event-stream"
JSON = "application/json; charset=utf-8"


class PrimaryResponse:
    """Writes the primary's answer to the agent's connection.

    Args:
        writer: the agent's connection.
        stream: the agent asked for a stream (the content type when the engine does not say).
        keep_alive: whether the connection stays open after this answer.
    """

    def __init__(self, writer: asyncio.StreamWriter, stream: bool, keep_alive: bool = True) -> None:
        self.writer = writer
        self.stream = stream
        self.keep_alive = keep_alive
        self.status: int | None = None
        self.content_type = ""
        self.gone = False  # the agent hung up; nothing more is written
        self.done = asyncio.Event()
        self._chunked: ChunkedWriter | None = None
        self._buffer = bytearray()
        self.sent_bytes = 0

    @property
    def started(self) -> bool:
        return self.status is not None

    async def start(self, status: int, content_type: str | None = None) -> None:
        """The primary answered with this status and content type (an event stream goes out chunked)."""
        if self.started:
            return
        self.status = status
        self.content_type = content_type or (SSE if self.stream and status == 200 else JSON)
        if self.content_type.split(";")[0].strip().lower() == SSE:
            self._chunked = ChunkedWriter(self.writer)
            await self._guard(self._chunked.start(status, self.content_type, self._connection()))

    async def raw(self, data: bytes) -> None:
        """More of the primary's bytes, exactly as it sent them (a 200 of the asked kind when not started)."""
        if not self.started:
            await self.start(200)
        if self._chunked is not None:
            self.sent_bytes += len(data)
            await self._guard(self._chunked.write(data))
        else:
            self._buffer += data

    async def finish(self) -> None:
        """The primary's answer is complete: end the stream, or send the JSON body with its length."""
        if self.done.is_set():
            return
        if not self.started:
            await self.start(200)
        if self._chunked is not None:
            await self._guard(self._chunked.end())
        else:
            assert self.status is not None
            self.sent_bytes = len(self._buffer)
            await self._guard(send_body(self.writer, self.status, bytes(self._buffer), self.content_type,
                                        self.keep_alive))
        self.done.set()

    async def fail(self, status: int, body: dict[str, Any]) -> None:
        """No answer from the primary: an error of the mirror's own (e.g. 502 when it cannot be reached).

        After a stream has begun a status cannot change: the stream gets an error event, as llama-server
        sends one, and ends.
        """
        if self.done.is_set():
            return
        if self._chunked is not None:
            await self._guard(self._chunked.write(b"data: " + json.dumps(body).encode() + b"\n\n"))
            await self._guard(self._chunked.end())
        elif self.started and self._buffer:
            await self.finish()  # the body came whole; what failed came after it
            return
        else:
            self.status = status
            self.content_type = JSON
            await self._guard(send_body(self.writer, status, json.dumps(body).encode("utf-8"), JSON,
                                        self.keep_alive))
        self.done.set()

    # the engine's raw sink (TurnRequest.primary_raw): called with the bytes, told the status and type first
    __call__ = raw
    head = start

    def _connection(self) -> list[tuple[str, str]]:
        return [("Connection", "keep-alive" if self.keep_alive else "close")]

    async def _guard(self, write: Any) -> None:
        """Write unless the agent has gone; a hang-up marks it gone instead of failing the turn."""
        if self.gone or self.writer.is_closing():
            self.gone = True
            write.close()
            return
        try:
            await write
        except (ConnectionError, RuntimeError, OSError):
            self.gone = True
            self.keep_alive = False
