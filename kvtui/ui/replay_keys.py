"""Keys that only a replay has (pause, speed, restart, to end), and the live keys a replay hides.

A mixin of :class:`kvtui.ui.app.KvtuiApp`: the session is a replay when it offers
:class:`kvtui.core.source.ReplayControls`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvtui.core.source import ReplayControls

if TYPE_CHECKING:
    from kvtui.core.source import EventSource


class ReplayKeys:
    """Replay controls for the app, and which actions each kind of session shows."""

    session: EventSource
    _session_running: bool

    REPLAY_ACTIONS = frozenset({"pause", "faster", "slower", "restart", "jump_to_end"})
    LIVE_ACTIONS = frozenset({"abort_focused", "abort", "abort_first", "abort_last", "abort_all", "rerun_focused",
                              "rerun_all", "save"})
    RERUN_ACTIONS = frozenset({"rerun_focused", "rerun_all"})

    @property
    def replaying(self) -> bool:
        return isinstance(self.session, ReplayControls)

    def _controls(self) -> ReplayControls:
        assert isinstance(self.session, ReplayControls)  # replay actions are enabled only for a replay
        return self.session

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in self.REPLAY_ACTIONS:
            return self.replaying
        if action in self.RERUN_ACTIONS:
            return self.session.reruns  # not in a replay, nor a mirror (its turns come from the agent)
        if action in self.LIVE_ACTIONS:
            return not self.replaying
        return True

    def action_pause(self) -> None:
        paused = self._controls().toggle_pause()
        self.notify("paused" if paused else "playing")

    def action_faster(self) -> None:
        controls = self._controls()
        controls.set_speed(controls.speed * 2)
        self.notify(f"speed x{controls.speed:g}")

    def action_slower(self) -> None:
        controls = self._controls()
        controls.set_speed(controls.speed / 2)
        self.notify(f"speed x{controls.speed:g}")

    def action_restart(self) -> None:
        if not self._session_running:
            self.start_session()
        else:
            self._controls().restart()

    def action_jump_to_end(self) -> None:
        self._controls().jump_to_end()

