"""A profile's conversation: scripted ``[[turns]]`` or an OpenAI messages transcript, read into steps.

A conversation is a list of *steps*. Step k holds the messages that come before the k-th reply (since the
previous reply) and the transcript's reply there, if it has one. Turn k asks every side for that reply:

- ``free``: each side keeps its own history; turn k sends the side's history plus step k's messages, and the
  side's own reply goes into its history. A transcript's assistant messages are ignored, except those that
  call tools: the tool results after them answer those calls, so they stay as the transcript has them (as
  context of the next step, not turns of their own).
- ``forced``: every side gets the same history before turn k: the transcript's, every step's messages and
  replies; where a step has no reply (a scripted turn without ``assistant``, the end of a transcript), the
  primary side's reply (the first side's) stands in for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvtui.core.tablecheck import Checker, show_value

MODES = ("free", "forced")
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_CONVERSATION = {"mode": (str, MODES), "file": (str, None), "system": (str, None)}
_TURN = {"user": (str, None), "assistant": (str, None), "expected": (str, None), "expected_regex": (str, None)}


@dataclass(frozen=True, slots=True)
class Step:
    """The messages before one reply, and the transcript's reply there (None where it gives none)."""

    before: tuple[dict[str, Any], ...]
    reply: dict[str, Any] | None = None
    expected: str = ""  # scripted turns: an exact answer the reply must contain
    expected_regex: str = ""  # or a pattern it must match


@dataclass(frozen=True, slots=True)
class Turn:
    """One scripted ``[[turns]]`` table."""

    user: str
    assistant: str = ""  # forced: the reply put into the shared history ("": the primary side's)
    expected: str = ""
    expected_regex: str = ""


@dataclass(frozen=True, slots=True)
class Conversation:
    """A validated conversation: its mode and its steps (one per turn)."""

    mode: str
    steps: tuple[Step, ...]
    system: str = ""
    turns: tuple[Turn, ...] = ()  # as scripted (empty for a transcript)
    file: str = ""  # the transcript's resolved path ("" for scripted turns)

    def first_user(self) -> str:
        """The first user message, as text (the warm-up's prompt)."""
        for step in self.steps:
            for m in step.before:
                if m.get("role") == "user":
                    return content_text(m)
        return "Hello"

    def to_dict(self) -> dict[str, Any]:
        """``[conversation]`` as the profile writes it (``turns`` go in a top-level ``[[turns]]``)."""
        d: dict[str, Any] = {"mode": self.mode}
        if self.file:
            d["file"] = self.file
        if self.system:
            d["system"] = self.system
        return d

    def turns_list(self) -> list[dict[str, Any]]:
        """``[[turns]]`` as the profile writes them."""
        out = []
        for t in self.turns:
            d = {"user": t.user}
            d.update((k, getattr(t, k)) for k in ("assistant", "expected", "expected_regex") if getattr(t, k))
            out.append(d)
        return out


def content_text(message: dict[str, Any]) -> str:
    """A message's content as text (the text parts of a list content; "" for none)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def parse_conversation(c: Checker, data: dict[str, Any], base_dir: Path | None) -> Conversation | None:
    """The profile's ``[conversation]`` and ``[[turns]]`` (None when it has neither).

    Raises:
        ProfileError: naming the key, what is wrong and the fix.
    """
    if "conversation" not in data and "turns" not in data:
        return None
    conv = c.table(data.get("conversation", {}), _CONVERSATION, "conversation")
    mode = conv.get("mode", "free")
    raw_turns = data.get("turns")
    if "file" in conv and raw_turns is not None:
        raise c.fail("turns", "give either conversation.file or [[turns]], not both",
                     "remove the [[turns]] tables, or the file")
    if "file" in conv:
        if "system" in conv:
            raise c.fail("conversation.system", "a transcript brings its own system message",
                         "remove conversation.system, or put the system message in the file")
        path = Path(conv["file"]).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        messages = read_transcript(c, path)
        steps = steps_of(c, messages, mode)
        return Conversation(mode, steps, file=str(path.resolve()))
    if not raw_turns:
        raise c.fail("turns", "a conversation needs [[turns]] or conversation.file",
                     'add [[turns]] user = "write a function that reverses a string" (one table per turn)')
    turns = []
    for k, raw in enumerate(raw_turns):
        where = f"turns[{k}]"
        t = c.table(raw, _TURN, where)
        if "user" not in t:
            raise c.fail(where, "missing user", f'add user = "..." under [[turns]] number {k + 1}')
        if not t["user"].strip():
            raise c.fail(f"{where}.user", "the user message is empty", "write what the user says in this turn")
        if "assistant" in t and mode == "free":
            raise c.fail(f"{where}.assistant", "only a forced conversation puts given replies into the history",
                         'set conversation.mode = "forced", or remove assistant (free: each side\'s own reply '
                         "is its history)")
        if "expected_regex" in t:
            import re

            try:
                re.compile(t["expected_regex"])
            except (re.error, RecursionError, OverflowError) as exc:
                raise c.fail(f"{where}.expected_regex", f"not a valid regular expression: {exc}",
                             "fix the pattern (Python re syntax), or use expected for plain text") from None
        turns.append(Turn(t["user"], t.get("assistant", ""), t.get("expected", ""), t.get("expected_regex", "")))
    system = conv.get("system", "")
    steps = []
    for k, t in enumerate(turns):
        before: list[dict[str, Any]] = [{"role": "system", "content": system}] if system and k == 0 else []
        before.append({"role": "user", "content": t.user})
        reply = {"role": "assistant", "content": t.assistant} if t.assistant else None
        steps.append(Step(tuple(before), reply, t.expected, t.expected_regex))
    return Conversation(mode, tuple(steps), system=system, turns=tuple(turns))


def read_transcript(c: Checker, path: Path) -> list[dict[str, Any]]:
    """An OpenAI messages transcript: a JSON list of messages, or an object with ``messages``."""
    where = "conversation.file"
    if path.exists() and not path.is_file():
        raise c.fail(where, f'"{path}" is not a regular file', "point at a JSON file of chat messages")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise c.fail(where, f'cannot read "{path}": {exc.strerror}', "check the path (relative to the profile)") \
            from None
    except UnicodeDecodeError:
        raise c.fail(where, f'"{path}" is not UTF-8 text', "give a JSON file of chat messages") from None
    except json.JSONDecodeError as exc:
        raise c.fail(where, f'"{path}" is not valid JSON: {exc.msg} at line {exc.lineno}',
                     "fix the JSON at that line") from None
    except RecursionError:
        raise c.fail(where, f'"{path}" is nested too deeply', "give a JSON list of chat messages") from None
    if isinstance(data, dict) and "messages" in data:
        data = data["messages"]
    if not isinstance(data, list) or not data:
        raise c.fail(where, f'"{path}" holds no list of messages',
                     'give a JSON list of {"role": ..., "content": ...} objects, or {"messages": [...]}')
    for k, m in enumerate(data):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise c.fail(where, f"message {k + 1} has no role", 'each message needs "role" and "content"')
        if m["role"] not in ROLES:
            raise c.fail(where, f'message {k + 1}: role {show_value(m["role"])} is not a chat role',
                         f"allowed: {', '.join(ROLES)}")
        content = m.get("content")
        if content is not None and not isinstance(content, str | list):
            raise c.fail(where, f"message {k + 1}: content is {type(content).__name__}, not text",
                         "content is a string or a list of parts")
    return data


def steps_of(c: Checker, messages: list[dict[str, Any]], mode: str) -> tuple[Step, ...]:
    """A transcript's steps: a turn at every assistant message (in ``free`` mode not at those that call tools),
    and one at the end when the transcript ends with a message to answer."""
    steps: list[Step] = []
    pending: list[dict[str, Any]] = []
    for m in messages:
        answers = m["role"] == "assistant" and not (mode == "free" and m.get("tool_calls"))
        if answers:
            if not steps and not any(p["role"] == "user" for p in pending):
                raise c.fail("conversation.file", "an assistant message comes before any user message",
                             "a transcript starts with the system and user messages")
            steps.append(Step(tuple(pending), m))
            pending = []
        else:
            pending.append(m)
    if pending and pending[-1]["role"] != "assistant":
        if not steps and not any(p["role"] == "user" for p in pending):
            raise c.fail("conversation.file", "the transcript has no user message", "give it at least one")
        steps.append(Step(tuple(pending), None))
    if not steps:
        raise c.fail("conversation.file", "the transcript has no turn to answer",
                     "give it at least one user message")
    return tuple(steps)
