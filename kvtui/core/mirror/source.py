"""The mirror as a TurnSource: each agent request becomes one turn, in the order the requests arrived.

The HTTP server calls :meth:`MirrorSource.submit`; the conversation engine iterates the source and runs
each turn on every side, handing the primary's raw answer to the request's :class:`PrimaryResponse`
and resolving the turn's ``reply`` future with the primary's Run once it has answered. Closing the
source (Ctrl-C) ends the engine's loop; requests not yet taken then are refused with 503.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from kvtui.core.mirror.api import AgentRequest, error_body
from kvtui.core.mirror.response import PrimaryResponse

MakeTurn = Callable[..., Any]  # TurnRequest(turn=, messages=, params=, reply=, primary_raw=)


class MirrorSource:
    """An async iterator of turn requests fed by agents' HTTP requests.

    Args:
        make_turn: builds the engine's TurnRequest from ``turn``, ``messages``, ``params``, ``reply`` and
            ``primary_raw``.
        first_turn: the number of the first turn.
    """

    mode = "mirror"

    def __init__(self, make_turn: MakeTurn, first_turn: int = 1) -> None:
        self.make_turn = make_turn
        self.next_turn = first_turn
        self.closed = False
        self._queue: asyncio.Queue[tuple[Any, asyncio.Future[Any]] | None] = asyncio.Queue()
        self._open: set[PrimaryResponse] = set()

    async def submit(self, agent: AgentRequest, response: PrimaryResponse) -> None:
        """Queue one agent request as the next turn (the server then waits for ``response.done``)."""
        if self.closed:
            await response.fail(503, error_body("the mirror is shutting down", type_="unavailable_error", code=503))
            return
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        params = dict(agent.params)
        params["stream"] = agent.stream  # as the agent asked (absent means false), not the engine's default
        if agent.endpoint != "chat":
            params["endpoint"] = agent.path  # llama-server's /completion: no messages, the prompt in params
        turn = self.make_turn(turn=self.next_turn, messages=agent.messages, params=params, reply=reply,
                              primary_raw=response)
        self.next_turn += 1
        self._open.add(response)
        reply.add_done_callback(lambda f: asyncio.ensure_future(self._answered(f, response)))
        await self._queue.put((turn, reply))

    async def _answered(self, reply: asyncio.Future[Any], response: PrimaryResponse) -> None:
        """The primary has answered (its Run), failed, or the turn was dropped: end the agent's answer."""
        try:
            if reply.cancelled():
                await response.fail(503, error_body("the turn was cancelled: the mirror is shutting down",
                                                    type_="unavailable_error", code=503))
            elif reply.exception() is not None:
                exc = reply.exception()
                message = getattr(exc, "message", None) or str(exc) or exc.__class__.__name__
                await response.fail(502, error_body(f"the primary side failed: {message}", type_="server_error",
                                                    code=502))
            elif reply.result() is None and not response.started:
                await response.fail(502, error_body("the primary side is not answering: it failed or was stopped "
                                                    "earlier (the mirror's output says why)", type_="server_error",
                                                    code=502))
            elif not response.started and getattr(reply.result(), "error", None):
                await response.fail(502, error_body(f"the primary side failed: {reply.result().error}",
                                                    type_="server_error", code=502))
            else:
                await response.finish()
        finally:
            self._open.discard(response)

    def close(self) -> None:
        """No more turns: requests not yet taken by the engine are refused (503), and its loop ends."""
        if self.closed:
            return
        self.closed = True
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None:
                item[1].cancel()
        self._queue.put_nowait(None)

    async def refuse_pending(self) -> None:
        """Answer every request still waiting (the engine has stopped) with 503."""
        for response in list(self._open):
            with contextlib.suppress(Exception):
                await response.fail(503, error_body("the mirror stopped before this turn ran",
                                                    type_="unavailable_error", code=503))
        self._open.clear()

    def __aiter__(self) -> MirrorSource:
        return self

    async def __anext__(self) -> Any:
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # every later call ends too
            raise StopAsyncIteration
        return item[0]
