"""SessionHeader: what is being compared, on what, and how it is scheduled."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from kvtui.core.events import SessionStarted
from kvtui.core.vocab import Schedule, SessionStatus


class SessionHeader(Static):
    """Profile, model, llama-server build, mode with its reason, schedule."""

    def show(self, e: SessionStarted | None, finished: str | None, replay_label: str = "") -> None:
        """Redraw from the session's first event."""
        if e is None:
            self.update(Text("kvtui: preparing…", style="bold"))
            return
        t = Text()
        t.append(" kvtui ", style="bold reverse")
        if replay_label:
            t.append(f" {replay_label} ", style="bold black on yellow")
        t.append(f"  {e.profile_name}", style="bold")
        t.append("   model ", style="dim")
        t.append(f"{e.model_name}", style="bold")
        t.append(f" ({e.model_arch}, {e.model_size_mib:,.0f} MiB)")
        t.append("   llama-server ", style="dim")
        t.append(e.server_version)
        t.append("\n mode ", style="dim")
        t.append(e.mode, style="bold")
        t.append(f" ({e.mode_reason})")
        t.append("   schedule ", style="dim")
        t.append(e.schedule, style="bold yellow" if e.schedule == Schedule.SIMULTANEOUS else "bold")
        if e.schedule == Schedule.SIMULTANEOUS and len(e.sides) > 1:
            t.append(" – figures are contended", style="yellow")
        if finished:
            t.append("   session ", style="dim")
            t.append(finished, style="bold green" if finished == SessionStatus.DONE else "bold red")
        self.update(t)
