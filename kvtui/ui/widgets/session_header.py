"""SessionHeader: what is being compared, on what, and how it is scheduled, fitted to the terminal's width."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.widgets import Static

from kvtui.core.events import SessionStarted
from kvtui.core.vocab import Schedule, SessionStatus

SEP = "  "
MIN_TRUNCATED = 12  # a shortened field must keep at least this many characters to be worth showing


@dataclass(frozen=True, slots=True)
class Field:
    """One item of a header line: an optional dim label and a value.

    ``drop`` orders what goes first when the line is too wide (higher goes first; 0 never goes); the label goes
    at ``label_drop``. A ``truncatable`` value that had to go comes back shortened if there is room for it.
    """

    value: str
    style: str = ""
    drop: int = 0
    label: str = ""
    label_drop: int = 3
    truncatable: bool = False


def fit_line(fields: list[Field], width: int) -> Text:
    """Lay out fields on one line of at most ``width`` cells: fields and labels are left out by priority."""
    keep_value = [True] * len(fields)
    keep_label = [bool(f.label) for f in fields]

    def length() -> int:
        n = 0
        for f, v, lab in zip(fields, keep_value, keep_label, strict=True):
            if v:
                n += (len(SEP) if n else 0) + len(f.value) + (len(f.label) + 1 if lab else 0)
        return n

    order = sorted([(f.drop, i, "value") for i, f in enumerate(fields) if f.drop]
                   + [(f.label_drop, i, "label") for i, f in enumerate(fields) if f.label],
                   key=lambda x: (-x[0], -x[1]))
    for _, i, kind in order:
        if length() <= width:
            break
        if kind == "value":
            keep_value[i] = keep_label[i] = False
        else:
            keep_label[i] = False
    shown = list(fields)
    for i, f in enumerate(fields):
        room = width - length() - len(SEP)
        if f.truncatable and not keep_value[i] and room >= MIN_TRUNCATED:
            shown[i] = Field(f.value[: room - 1] + "…", f.style, f.drop)
            keep_value[i] = True
    t = Text(no_wrap=True, overflow="ellipsis")
    for f, v, lab in zip(shown, keep_value, keep_label, strict=True):
        if not v:
            continue
        if t:
            t.append(SEP)
        if lab:
            t.append(f.label + " ", style="dim")
        t.append(f.value, style=f.style)
    t.truncate(width, overflow="ellipsis")
    return t


class SessionHeader(Static):
    """Profile, model, llama-server build, mode with its reason, schedule, the session's end, kvtui's own CPU."""

    DEFAULT_CSS = """
    SessionHeader { text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self, id: str | None = None) -> None:
        super().__init__(id=id)
        self._args: tuple = (None, None, "", None, None)
        self._width = 0

    def show(self, e: SessionStarted | None, finished: str | None, replay_label: str = "",
             cpu: str | None = None, turn: tuple[int, str] | None = None) -> None:
        """Redraw from the session's first event, its end, kvtui's CPU use (text, or None to leave it out) and a
        conversation's latest turn (its number and user message)."""
        args = (e, finished, replay_label, cpu, turn)
        if args != self._args or self.size.width != self._width:
            self._args = args
            self._draw()

    def on_resize(self) -> None:
        if self.size.width != self._width:
            self._draw()

    def _draw(self) -> None:
        self._width = width = self.size.width or self.app.size.width  # before its first layout: the terminal's
        e, finished, replay_label, cpu, turn = self._args
        if e is None:
            self.update(Text("kvtui: preparing…", style="bold"), layout=False)
            return
        line1 = [Field(" kvtui ", "bold reverse")]
        if replay_label:
            line1.append(Field(f" {replay_label} ", "bold black on yellow"))
        line1 += [
            Field(e.profile_name, "bold"),
            Field(e.model_name, "bold", drop=1, label="model"),
            Field(f"({e.model_arch}, {e.model_size_mib:,.0f} MiB)", drop=4),
            Field(e.server_version, drop=2, label="llama-server"),
        ]
        contended = e.schedule == Schedule.SIMULTANEOUS and len(e.sides) > 1
        line2 = [
            Field(e.mode, "bold", label="mode", label_drop=3),
            Field(f"({e.mode_reason})", drop=5, truncatable=True),
            Field(e.schedule, "bold yellow" if contended else "bold", label="schedule", label_drop=3),
        ]
        if contended:
            line2.append(Field("figures are contended", "yellow", drop=6))
        if turn is not None:  # a conversation: which turn, and what the user said (shortened to fit)
            line2.insert(0, Field(f"turn {turn[0]}", "bold reverse"))
            line2.insert(1, Field(" ".join(turn[1].split()), "italic", drop=7, truncatable=True))
        elif e.conversation:
            line2.insert(0, Field(f"{e.conversation} conversation", "bold"))
        if finished:
            style = "bold green" if finished == SessionStatus.DONE else "bold red"
            line2.append(Field(finished, style, label="session"))
        if cpu:
            line2.append(Field(cpu, "bold"))
        text = fit_line(line1, width)
        text.append("\n")
        text.append_text(fit_line(line2, width))
        self.update(text, layout=False)
