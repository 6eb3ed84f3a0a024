"""The agent's side of the mirror: which requests it takes, how they are checked, and its error bodies.

A request is checked only as far as the mirror needs to run it on every side (a JSON object; ``messages``
a list of messages for the chat endpoint, ``prompt`` for ``/completion``; ``stream`` a boolean); everything
else, tools and tool calls included, goes to the servers untouched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

CHAT = "/v1/chat/completions"
COMPLETION = "/completion"
ENDPOINTS = {CHAT: "chat", "/chat/completions": "chat", COMPLETION: "completion", "/completions": "completion"}
ROLES = ("system", "developer", "user", "assistant", "tool", "function")


class ApiError(Exception):
    """A request the mirror will not run: 400 and what to fix, as OpenAI words it."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status


@dataclass(frozen=True, slots=True)
class AgentRequest:
    """One checked request: the endpoint, the messages (chat) and every other field as sent."""

    endpoint: str  # "chat" | "completion"
    path: str  # the server path it goes to
    messages: tuple[dict[str, Any], ...]  # chat; () for /completion
    params: dict[str, Any]  # the request's other fields (tools, tool_choice, max_tokens, stream, prompt, ...)

    @property
    def stream(self) -> bool:
        return bool(self.params.get("stream", False))

    def body(self) -> dict[str, Any]:
        """The request as the agent sent it."""
        return {"messages": list(self.messages), **self.params} if self.endpoint == "chat" else dict(self.params)


def error_body(message: str, *, type_: str = "invalid_request_error", code: str | int | None = None,
               param: str | None = None) -> dict[str, Any]:
    """An OpenAI-style error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def parse_agent_request(path: str, raw: bytes) -> AgentRequest:
    """Check a POST body for ``path`` (one of ``ENDPOINTS``).

    Raises:
        ApiError: naming the field and what it should be.
    """
    endpoint = ENDPOINTS[path]
    if not raw.strip():
        raise ApiError("the request body is empty: send a JSON object")
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        why = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc) or "nested too deeply"
        raise ApiError(f"the request body is not valid JSON ({why})") from None
    if not isinstance(body, dict):
        raise ApiError(f"the request body must be a JSON object, not {_kind(body)}")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(f"'stream' must be true or false, not {_kind(stream)}", "stream")
    if endpoint == "chat":
        messages = _messages(body.get("messages"))
        if "tools" in body and not isinstance(body["tools"], list):
            raise ApiError(f"'tools' must be an array, not {_kind(body['tools'])}", "tools")
        params = {k: v for k, v in body.items() if k != "messages"}
        return AgentRequest("chat", CHAT, messages, params)
    if "prompt" not in body:
        raise ApiError("'prompt' is missing: /completion takes a prompt (text or token ids)", "prompt")
    if not isinstance(body["prompt"], str | list):
        raise ApiError(f"'prompt' must be a string or an array, not {_kind(body['prompt'])}", "prompt")
    return AgentRequest("completion", COMPLETION, (), body)


def _messages(value: Any) -> tuple[dict[str, Any], ...]:
    if value is None:
        raise ApiError("'messages' is missing: the chat endpoint takes a list of messages", "messages")
    if not isinstance(value, list) or not value:
        raise ApiError(f"'messages' must be a non-empty array, not {_kind(value)}", "messages")
    for k, m in enumerate(value):
        where = f"messages[{k}]"
        if not isinstance(m, dict):
            raise ApiError(f"'{where}' must be an object with a role, not {_kind(m)}", where)
        role = m.get("role")
        if role not in ROLES:
            shown = "missing" if role is None else f"{role!r}"
            raise ApiError(f"'{where}.role' is {shown}: use one of {', '.join(ROLES)}", f"{where}.role")
        content = m.get("content")
        if content is not None and not isinstance(content, str | list):
            raise ApiError(f"'{where}.content' must be a string or an array of parts, not {_kind(content)}",
                           f"{where}.content")
    return tuple(value)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
            dict: "an object"}.get(type(v), type(v).__name__)


def models_body(model_id: str, created: int) -> dict[str, Any]:
    """``/v1/models``: the one model every side serves."""
    return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created,
                                        "owned_by": "kvtui-mirror"}]}
