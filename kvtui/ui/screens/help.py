"""HelpScreen: every key, what it does."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

HELP = """\
[b]kvtui keys[/b]

  [b]tab / shift+tab[/b]  focus the next / previous side
  [b]x[/b]                abort the focused side
  [b][[/b] / [b]][/b]            abort the left / right side
  [b]X[/b]                abort all sides
  [b]r[/b]                rerun the focused side
  [b]R[/b]                rerun all sides (a new session record)
  [b]s[/b]                save the session record now
  [b]l[/b]                show the focused side's llama-server log
  [b]?[/b]                this help
  [b]q[/b]                quit: servers are stopped, the record is saved

Figures: tg = generation tok/s and pp = prompt tok/s, both the server's own
timings once a run ends; the live rate counts tokens as the server numbers
them. TTFT is the time from sending the request to the first token.
"""


class HelpScreen(ModalScreen[None]):
    """The key map; any of escape, q or ? closes it."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "close")]

    def compose(self) -> ComposeResult:
        with Vertical(id="help-box"):
            yield Static(HELP)
