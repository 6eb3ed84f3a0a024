"""LogFollower: the lines a growing file gained since the last look (a server's log, while it loads or runs)."""

from __future__ import annotations

import os

READ_LIMIT = 1 << 20  # at most this much per look: a log that floods is read over several looks


class LogFollower:
    """Reads a file from where the last call stopped, in whole lines.

    Args:
        path: the file (it may not exist yet).
        start_at_end: skip what the file holds now (the caller showed it already).
    """

    def __init__(self, path: str, *, start_at_end: bool = False) -> None:
        self.path = path
        self.offset = 0
        self.restarted = False  # the file shrank since the last look: it was rewritten
        self._partial = b""
        if start_at_end:
            try:
                self.offset = os.path.getsize(path)
            except OSError:
                self.offset = 0

    def read_new(self) -> str:
        """The complete lines added since the last call ("" when none; a line still being written waits)."""
        self.restarted = False
        try:
            size = os.path.getsize(self.path)
        except OSError:
            return ""
        if size < self.offset:
            self.offset, self._partial, self.restarted = 0, b"", True
        if size == self.offset:
            return ""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(READ_LIMIT)
        except OSError:
            return ""
        self.offset += len(data)
        data = self._partial + data
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        return data[:cut].decode("utf-8", errors="replace")
