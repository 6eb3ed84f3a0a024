"""ServerLogScreen: a side's llama-server log, read from its file."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Log, Static

MAX_LINES = 5000


class ServerLogScreen(ModalScreen[None]):
    """Shows the last lines of a server log; escape closes it.

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

    def compose(self) -> ComposeResult:
        with Vertical(id="log-box"):
            yield Static(f"[b]{self.title_text}[/b]  {self.path}  (escape closes)", id="log-title")
            if self.details:
                yield Static(Text("\n".join(self.details)), id="log-ran-with")
            yield Log(max_lines=MAX_LINES, auto_scroll=True)

    def on_mount(self) -> None:
        try:
            lines = Path(self.path).read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as exc:
            lines = [f"cannot read the log: {exc.strerror}"]
        log = self.query_one(Log)
        log.write_lines(lines[-MAX_LINES:] or ["(the log is empty)"])
        self.call_after_refresh(log.scroll_end, animate=False)  # the newest lines are what matter
