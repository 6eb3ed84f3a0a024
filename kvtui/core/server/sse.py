"""A small Server-Sent Events decoder for llama-server's streams.

llama-server sends ``data: <json>`` events separated by blank lines, keep-alive
comments (``:``) while it is silent, and, on the OpenAI endpoints, ``data: [DONE]``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from kvtui.core.errors import KvtuiError

DONE = object()  # the OpenAI end-of-stream marker


class SSEError(KvtuiError):
    """The server sent something that is not a valid event."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "the server sent malformed data; check its log", exit_code=1)


class SSEDecoder:
    """Turns lines of an event stream into parsed JSON payloads.

    Feed it lines (without their line ending); it returns a payload when an
    event is complete. Multi-line ``data:`` fields are joined with newlines, as
    the SSE spec says.
    """

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> Any | None:
        """Take one line; return a dict, ``DONE``, or None while an event is incomplete."""
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None  # keep-alive comment
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name not in ("event", "id", "retry"):
            # llama-server errors mid-stream may come as a bare JSON line
            if line.lstrip().startswith("{"):
                self._data.append(line)
                return self._dispatch()
        return None

    def close(self) -> Any | None:
        """End of stream: an event without its trailing blank line still counts."""
        return self._dispatch()

    def _dispatch(self) -> Any | None:
        if not self._data:
            return None
        raw = "\n".join(self._data)
        self._data = []
        if raw.strip() == "[DONE]":
            return DONE
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            shown = raw if len(raw) < 80 else raw[:77] + "..."
            raise SSEError(f"malformed JSON in the event stream ({exc.msg}): {shown!r}") from None


def decode_lines(lines: Iterable[str]) -> Iterator[Any]:
    """Decode a whole stream of lines (for tests and replays of captures)."""
    dec = SSEDecoder()
    for line in lines:
        item = dec.feed(line.rstrip("\r\n"))
        if item is not None:
            yield item
    last = dec.close()
    if last is not None:
        yield last
