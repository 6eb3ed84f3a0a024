"""Turns of a conversation: what each turn asks (``TurnRequest``) and where turns come from (``TurnSource``).

The runner's conversation engine (:mod:`kvtui.core.run.converse`) asks a ``TurnSource`` for turn after turn
and sends each to every live side. A profile's scripted or transcript conversation is one source
(:class:`ProfileTurns`); ``kvtui mirror``'s HTTP handler is another (it puts the requests of a real agent
on a queue). A source ends the conversation by ending its iteration.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from kvtui.core.conversation import Conversation, content_text
from kvtui.core.profiles import Sampling

CHAT_PATH = "/v1/chat/completions"
COMPLETION_PATH = "/completion"  # llama-server's own endpoint: an agent of ``kvtui mirror`` may use it
Message = dict[str, Any]


@dataclass(frozen=True)
class TurnRequest:
    """One turn: the same request for every side (or, with ``own_history``, what it adds to each side's own).

    Attributes:
        turn: the turn's number, 1-based.
        messages: OpenAI chat messages exactly as to be sent (tool calls untouched); with ``own_history``
            only the messages this turn adds to every side's own history (the engine keeps the histories,
            each side's replies in its own).
        params: the request's other fields (tools, tool_choice, max_tokens, stream, ...); they win over the
            profile's sampling. ``"stream": False`` sends the request unstreamed.
        reply: resolved with the primary side's ``Run`` once it has answered this turn, or with None when the
            primary side is not answering (it failed, was aborted or stopped earlier).
        primary_raw: gets the primary side's raw response bytes (SSE or the JSON body) as the server sent
            them, chunk by chunk, while they arrive.
        own_history: free conversations: each side's history is its own (see ``messages``).
    """

    turn: int
    messages: tuple[Message, ...]
    params: dict[str, Any] = field(default_factory=dict)
    reply: asyncio.Future[Any] | None = None
    primary_raw: Callable[[bytes], Awaitable[None]] | None = None
    own_history: bool = False

    def user_text(self) -> str:
        """The turn's last user message, as text (a ``/completion`` turn's prompt)."""
        for m in reversed(self.messages):
            if m.get("role") == "user":
                return content_text(m)
        prompt = self.params.get("prompt")  # a /completion request (kvtui mirror): its prompt
        return prompt if isinstance(prompt, str) else ""


class TurnSource(Protocol):
    """Where a conversation's turns come from: an async iterable of ``TurnRequest``.

    ``mode`` names the conversation in the record: "free", "forced" or "mirror". In sequential mode (one
    server at a time) the runner iterates the source once per side, so such a source must start over on
    each ``__aiter__``; a source that cannot (a live agent) needs the sides in parallel.
    """

    mode: str

    def __aiter__(self) -> AsyncIterator[TurnRequest]:
        """Turn after turn; the runner sends a turn to every side before it asks for the next."""


class ProfileTurns:
    """A profile's conversation as a ``TurnSource``; iterable again (sequential mode, reruns).

    In a forced conversation a step without a reply of its own takes the primary side's: the source waits
    for it (``TurnRequest.reply``) before the next turn, and keeps it for the next iteration.
    """

    def __init__(self, conversation: Conversation) -> None:
        self.conversation = conversation
        self.mode = conversation.mode
        self._primary: dict[int, str] = {}  # turn -> the primary side's reply, where the history takes it

    def expected(self, turn: int) -> tuple[str, str]:
        """The turn's expected answer and pattern ("" where none)."""
        step = self.conversation.steps[turn - 1]
        return step.expected, step.expected_regex

    def __aiter__(self) -> AsyncIterator[TurnRequest]:
        return self._free() if self.mode == "free" else self._forced()

    async def _free(self) -> AsyncIterator[TurnRequest]:
        for k, step in enumerate(self.conversation.steps, 1):
            yield TurnRequest(k, step.before, own_history=True)

    async def _forced(self) -> AsyncIterator[TurnRequest]:
        history: list[Message] = []
        steps = self.conversation.steps
        for k, step in enumerate(steps, 1):
            history += step.before
            reply: asyncio.Future[Any] | None = None
            if step.reply is None and k < len(steps) and k not in self._primary:
                reply = asyncio.get_running_loop().create_future()
            yield TurnRequest(k, tuple(history), reply=reply)
            if k == len(steps):
                return
            if step.reply is not None:
                history.append(step.reply)
                continue
            if reply is not None:
                run = await reply
                if run is None:  # the primary side gave no reply to carry on with
                    return
                self._primary[k] = run.text
            history.append({"role": "assistant", "content": self._primary[k]})


def chat_body(sampling: Sampling, messages: list[Message] | tuple[Message, ...],
              params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON body of one turn's chat request: the profile's sampling, then the request's own fields.

    ``cache_prompt`` is on, as agents' servers have it: a turn reuses the cached prefix of its context.
    """
    body: dict[str, Any] = {"temperature": sampling.temperature, "seed": sampling.seed, "top_k": sampling.top_k,
                            "top_p": sampling.top_p, "max_tokens": sampling.n_predict, "stream": True}
    if sampling.n_probs:
        body.update(logprobs=True, top_logprobs=sampling.n_probs)
    body.update(params or {})
    body.update(messages=list(messages), cache_prompt=True, timings_per_token=True)
    return body


def turn_request(sampling: Sampling, messages: list[Message] | tuple[Message, ...],
                 params: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """The endpoint and JSON body of one turn: the chat request, or, where ``params["endpoint"]`` says so
    (``kvtui mirror``: an agent that uses llama-server's ``/completion``), a prompt request with the same
    sampling defaults (the agent's ``prompt`` and other fields in ``params``)."""
    params = dict(params or {})
    if params.pop("endpoint", CHAT_PATH) != COMPLETION_PATH:
        return CHAT_PATH, chat_body(sampling, messages, params)
    body: dict[str, Any] = {"temperature": sampling.temperature, "seed": sampling.seed, "top_k": sampling.top_k,
                            "top_p": sampling.top_p, "n_predict": sampling.n_predict, "stream": True}
    body.update(params)
    body["cache_prompt"] = True
    return COMPLETION_PATH, body
