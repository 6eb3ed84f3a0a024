"""HelpScreen: every key, what it does, and what the figures mean."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

HELP = """\
[b]kvtui keys[/b]                                [dim]escape, q or ? closes this[/dim]

  [b]tab[/b] / [b]shift+tab[/b]   focus the next / previous side
  [b]1[/b] .. [b]9[/b]            focus side 1 .. 9, counted from the left
  [b]x[/b]                 abort the focused side (double border)
  [b]\\[[/b] / [b]][/b]             abort the first / the last side
  [b]X[/b]                 abort all sides
  [b]r[/b]                 rerun the focused side (runs added to the record)
  [b]R[/b]                 rerun all sides (a new record)
  [b]s[/b]                 save the record now
  [b]l[/b]                 the focused side's llama-server log, followed live
  [b]?[/b]                 this help
  [b]q[/b] or [b]ctrl+c[/b]       quit: servers stopped, record saved, its path
                    printed; a second ctrl+c quits without waiting
  replay:           [b]space[/b] pause, [b]+[/b] / [b]-[/b] speed, [b]home[/b] restart, [b]end[/b] end

[b]Figures[/b]
  The large figure is tok/s: while a run streams, over the last second,
  beside [b]avg[/b], the run's average so far (kvtui counts both, as the
  server does); once the run ends the label says [b]run[/b] and the figure is
  the server's own tg for the run (kvtui's when the run was cut short).
  The sparkline: tok/s per quarter second since the first token.
  tg: generation tok/s; pp: prompt tok/s; TTFT: request to first token.
  KV: the cache size in the server's log, and kvtui's estimate (est).
  Status (a pane's bottom border): starting, loading (the model), ready,
  warming (the warm-up request), each with its seconds; generating;
  waiting (its turn, or the other sides); done, aborted, crashed, error;
  or a red LOOP badge when the text repeats.
"""


class HelpScreen(ModalScreen[None]):
    """The key map and a legend; any of escape, q or ? closes it."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static(HELP)
