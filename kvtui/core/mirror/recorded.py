"""A mirror session run again: the recorded requests as a forced conversation (``kvtui run --from RECORD``).

A record keeps each turn's request compactly (``[[turns]]``: ``keep`` leading messages shared with the
previous turn's request, then the turn's own ``messages``, and its other fields as ``params``); this
module expands them back into the exact requests, and serves them as a TurnSource, so that every side
answers each recorded request with identical messages, whatever any side answered before.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kvtui.core.errors import RecordError


class TurnRow(Protocol):
    """A recorded turn (``kvtui.core.record.model.TurnRecord``)."""

    turn: int
    keep: int | None
    messages: str
    params: str


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One recorded request, whole again."""

    turn: int
    messages: tuple[dict[str, Any], ...]
    params: dict[str, Any]


def expand_turns(turns: Sequence[TurnRow], source: str = "<record>") -> list[RecordedRequest]:
    """The whole request of every turn, from the record's ``keep`` + ``messages`` + ``params``.

    Raises:
        RecordError: a turn whose JSON is broken or whose ``keep`` reaches past the previous request.
    """
    out: list[RecordedRequest] = []
    previous: tuple[dict[str, Any], ...] = ()
    for k, row in enumerate(turns):
        where = f"{source}: turns[{k}] (turn {row.turn})"
        new = _json(row.messages, f"{where}.messages", list)
        params = _json(row.params, f"{where}.params", dict)
        keep = row.keep or 0
        if keep > len(previous):
            raise RecordError(f"{where}.keep = {keep}, but the turn before sent {len(previous)} messages",
                              "the record was edited or cut: run it from an unedited copy")
        messages = previous[:keep] + tuple(new)
        out.append(RecordedRequest(row.turn, messages, params))
        previous = messages
    return out


def _json(text: str, where: str, kind: type) -> Any:
    try:
        value = json.loads(text)
    except ValueError:
        raise RecordError(f"{where} is not valid JSON", "the record was edited badly: run an unedited copy") \
            from None
    if not isinstance(value, kind):
        raise RecordError(f"{where} should be a JSON {'array' if kind is list else 'object'}",
                          "the record was edited badly: run an unedited copy")
    return value


class RecordedSource:
    """The recorded requests as a TurnSource, one after the other; iterable again (sequential mode, reruns).

    Args:
        requests: from :func:`expand_turns`.
        make_turn: builds the engine's TurnRequest from ``turn``, ``messages`` and ``params``.
    """

    mode = "forced"  # every side gets the recorded messages, whatever it answered before

    def __init__(self, requests: Sequence[RecordedRequest], make_turn: Callable[..., Any]) -> None:
        self.requests = list(requests)
        self.make_turn = make_turn

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._turns()

    async def _turns(self) -> AsyncIterator[Any]:
        for r in self.requests:
            yield self.make_turn(turn=r.turn, messages=r.messages, params=dict(r.params))
