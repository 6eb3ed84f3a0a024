"""The conversation engine: every turn of a ``TurnSource`` on every live side, and the loop of replies.

For each turn the engine emits ``TurnStarted``, then sends the turn to every side that is still in the
conversation, as the plan's schedule says: ``simultaneous``, all at once; otherwise the primary side (the
first) first, then the others one by one. Each answer is a run (``RequestSent`` ... ``RunFinished``) with
``turn`` set. In a free conversation (``TurnRequest.own_history``) the engine keeps each side's history: the
turn's messages are appended to it, and so is the side's own reply.

After each reply the side's replies so far are checked for a loop of replies: the same or a near-same reply
(:class:`kvtui.core.quality.loops.ReplyLoopWatch`) in 3 or more consecutive turns. It is reported live
(``ReplyLoopDetected``, before that turn's ``RunFinished``); with ``run.stop_on_loop`` that run's stop is
``loop`` and the side's conversation ends there (its status: done). A run stopped on a token-level loop
ends the side's conversation too.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from kvtui.core.events import ReplyLoopDetected, RequestSent, TurnStarted
from kvtui.core.quality.loops import ReplyLoopWatch
from kvtui.core.record.model import Run
from kvtui.core.run.turns import Message, TurnRequest, turn_request
from kvtui.core.vocab import Schedule, StopReason

if TYPE_CHECKING:
    from kvtui.core.run.runner import Runner

PRIMARY = 0  # the side whose reply answers an agent (kvtui mirror) and stands in for missing forced replies
ENDED = ("done", "crashed", "error", "aborted")


class _Sides:
    """Per side: its own history (free), its reply-loop watch, and whether its conversation is over."""

    def __init__(self, runner: Runner, sides: list[int]) -> None:
        self.runner = runner
        self.sides = sides
        self.history: dict[int, list[Message]] = {i: [] for i in sides}
        self.watch = {i: ReplyLoopWatch() for i in sides}
        self.turns: dict[int, list[int]] = {i: [] for i in sides}  # the turn of each reply fed to the watch
        self.reported: dict[int, tuple[int, int]] = {}
        self.over: set[int] = set()

    def live(self) -> list[int]:
        return [i for i in self.sides if i not in self.over and self.runner.status[i] not in ENDED]

    def reply_loop(self, i: int, run: Run) -> Run:
        """Feed the finished run's reply to the side's watch; report a loop of replies (and stop on it)."""
        found = self.watch[i].feed(run.text)
        self.turns[i].append(run.turn or 0)
        if found is None:
            return run
        first_turn, count = self.turns[i][found[0]], found[1]
        if self.reported.get(i) != (first_turn, count):
            self.reported[i] = (first_turn, count)
            self.runner.emit(ReplyLoopDetected(self.runner.now(), i, first_turn, count))
        if self.runner.plan.profile.run.stop_on_loop and run.stop != StopReason.ERROR:
            return replace(run, stop=StopReason.LOOP)
        return run


async def converse(runner: Runner, sides: list[int]) -> None:
    """Run the runner's ``source`` on these sides (their servers are up) until the source ends."""
    source = runner.source
    assert source is not None
    state = _Sides(runner, sides)
    previous: tuple[Message, ...] = ()
    req: TurnRequest | None = None
    try:
        async for req in source:
            live = state.live()
            if not live:  # no side answers any more: the source may still have turns (an agent's)
                _resolve(req, None)
                continue
            if req.own_history:
                keep, new = None, req.messages
            else:
                keep = _common_prefix(previous, req.messages)
                new, previous = req.messages[keep:], req.messages
            runner.emit(TurnStarted(runner.now(), req.turn, req.user_text(), len(new), keep, tuple(new),
                                    dict(req.params) if req.params else None))
            schedule = Schedule(runner.plan.schedule) if len(live) > 1 else Schedule.SOLO
            if PRIMARY not in live:
                _resolve(req, None)
            if schedule in (Schedule.SIMULTANEOUS, Schedule.SEPARATE):
                await asyncio.gather(*(_answer(state, req, i, schedule) for i in live))
            else:  # one request at a time: the primary side first (an agent waits for its answer)
                for i in sorted(live, key=lambda i: i != PRIMARY):
                    await _answer(state, req, i, schedule)
            _resolve(req, None)  # a primary that sent nothing (aborted just before its turn)
    finally:
        if req is not None:
            _resolve(req, None)
    for i in sides:
        if runner.status[i] not in ENDED:
            runner.finish_side(i)


async def _answer(state: _Sides, req: TurnRequest, i: int, schedule: Schedule) -> None:
    """Side ``i`` answers the turn; its history (free) takes its reply; a loop or a failure ends its part."""
    runner = state.runner
    messages = [*state.history[i], *req.messages] if req.own_history else list(req.messages)
    path, body = turn_request(runner.plan.profile.sampling, messages, req.params)
    expected = getattr(runner.source, "expected", None)
    want, regex = expected(req.turn) if expected is not None else ("", "")
    sent = RequestSent(runner.now(), i, runner.run_index(i), f"turn {req.turn}", 0, body.get("seed"), schedule,
                       turn=req.turn)
    run = await runner.request(i, sent, path, body, expected=want, regex=regex,
                               raw=req.primary_raw if i == PRIMARY else None,
                               adjust=lambda r: state.reply_loop(i, r))
    if i == PRIMARY:
        _resolve(req, run)
    if run is None:
        state.over.add(i)
        return
    if req.own_history:
        state.history[i] = [*messages, {"role": "assistant", "content": run.text}]
    if run.stop == StopReason.LOOP:  # a loop (of tokens or of replies) with stop_on_loop: its conversation ends
        state.over.add(i)
        if runner.status[i] not in ENDED:
            runner.finish_side(i)


def _resolve(req: TurnRequest, run: Any) -> None:
    if req.reply is not None and not req.reply.done():
        req.reply.set_result(run)


def _common_prefix(a: tuple[Message, ...], b: tuple[Message, ...]) -> int:
    """How many leading messages two requests share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
