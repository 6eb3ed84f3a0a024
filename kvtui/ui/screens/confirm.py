"""ConfirmScreen: a yes/no question before something costly starts (y / n)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static


class ConfirmScreen(ModalScreen[bool]):
    """Ask ``question``; dismisses with True for y, False for n or escape.

    Args:
        question: what to ask (Rich markup is escaped).
    """

    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > #confirm-box {
        width: 80; height: auto; padding: 1 2; border: thick $warning; background: $surface;
    }
    ConfirmScreen #confirm-keys { margin-top: 1; color: $text-muted; }
    """
    BINDINGS = [
        Binding("y", "answer(True)", "yes"),
        Binding("n,escape", "answer(False)", "no"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box"):
            yield Static(self.question, markup=False, id="confirm-question")
            yield Static("y: yes, start    n: no, quit", id="confirm-keys", markup=False)

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
