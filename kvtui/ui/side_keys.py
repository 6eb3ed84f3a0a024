"""The keys that abort and rerun sides (x, X, [, ], r, R), and stop a scoring in progress.

A mixin of :class:`kvtui.ui.app.KvtuiApp`: it reads the app's ``session``, ``state`` and
``_session_running``, and calls its ``focused_side``, ``notify`` and ``start_session``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvtui.core.source import EventSource
    from kvtui.core.view import SessionState

FINISHED = ("done", "aborted", "crashed", "error")


class SideKeys:
    """Abort and rerun, per side or for all of them."""

    session: EventSource
    state: SessionState
    _session_running: bool
    focused_side: Any
    notify: Any
    start_session: Any

    def action_abort_focused(self) -> None:
        self.action_abort(self.focused_side())

    def action_abort_first(self) -> None:
        self.action_abort(0)

    def action_abort_last(self) -> None:
        self.action_abort(len(self.state.sides) - 1)

    def _abortable(self, side: int) -> bool:
        return self._session_running and self.state.sides[side].status not in FINISHED

    def _stop_scoring(self, side: int | None) -> bool:
        """x on a finished side, or X, while the base's generations are scored: stop the scoring (its figures so
        far are kept)."""
        if not (self._session_running and self.state.scoring_now):
            return False
        self.session.abort(side)
        self.notify("stopping the scoring: the figures so far are kept")
        return True

    def action_abort(self, side: int) -> None:
        if not 0 <= side < len(self.state.sides):
            return
        s = self.state.sides[side]
        if not self._abortable(side):
            if not self._stop_scoring(side):
                self.notify(f"nothing to abort: {s.name} is {s.status if s.status in FINISHED else 'not running'}")
            return
        self.session.abort(side)
        self.notify(f"aborting {s.name}")

    def action_abort_all(self) -> None:
        running = [s.name for i, s in enumerate(self.state.sides) if self._abortable(i)]
        if not running:
            if not self._stop_scoring(None):
                self.notify("nothing to abort: no side is running")
            return
        self.session.abort(None)
        self.notify("aborting " + ", ".join(running))

    def action_rerun_focused(self) -> None:
        self._rerun(self.focused_side())

    def action_rerun_all(self) -> None:
        self._rerun(None)

    def _rerun(self, side: int | None) -> None:
        if self._session_running:
            self.notify("a run is still going: abort it first (x or X)", severity="warning")
            return
        if side is not None and side >= len(self.state.sides):
            return
        self.start_session(side, rerun=True)
        self.notify("rerunning " + ("all sides" if side is None else self.state.sides[side].name))
