"""ServerLogScreen: a side's llama-server log, read from its file and followed while it grows."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Log, Static

from kvtui.ui.logfollow import LogFollower

MAX_LINES = 5000
FOLLOW_S = 0.5  # how often the open screen looks for new lines (only while it is open)


class ServerLogScreen(ModalScreen[None]):
    """Shows the last lines of a server log and appends new ones as the server writes them; escape closes it.

    Args:
        title: the side's name.
        path: the log file.
    """

    BINDINGS = [Binding("escape,q,l", "dismiss", "close")]

    def __init__(self, title: str, path: str, details: list[str] | None = None) -> None:
        super().__init__()
        self.title_text = title
        self.path = path
        self.details = details or []  # what the server ran with (kvtui.core.logs.provenance), above the log
        self._follower: LogFollower | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="log-box"):
            yield Static(f"[b]{escape(self.title_text)}[/b]  {escape(self.path)}  (follows the file; escape closes)",
                         id="log-title")
            if self.details:
                yield Static(Text("\n".join(self.details)), id="log-ran-with")
            yield Log(max_lines=MAX_LINES, auto_scroll=True)

    def on_mount(self) -> None:
        try:
            data = Path(self.path).read_bytes()
        except OSError as exc:
            data = f"cannot read the log: {exc.strerror}\n".encode()
        cut = data.rfind(b"\n") + 1  # a line still being written comes with the next look
        lines = data[:cut].decode("utf-8", errors="replace").splitlines()
        self._follower = LogFollower(self.path)
        self._follower.offset = cut
        log = self.query_one(Log)
        log.write_lines(lines[-MAX_LINES:] or ["(the log is empty)"])
        self.call_after_refresh(log.scroll_end, animate=False)  # the newest lines are what matter
        self.set_interval(FOLLOW_S, self._follow)

    def _follow(self) -> None:
        assert self._follower is not None
        new = self._follower.read_new()
        log = self.query_one(Log)
        if self._follower.restarted:
            log.write_line("(the log was rewritten: following the new one)")
        if new:
            log.write_lines(new.splitlines())
