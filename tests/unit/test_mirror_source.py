"""The mirror's turn sources without servers: the HTTP-fed queue (order, shutdown) and recorded requests.

The "engine" here is a loop over the source that answers from the test: what is under test is the
hand-over (turn numbers, the reply future ending the agent's answer, 503 on shutdown), not generation.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from kvtui.core.errors import RecordError
from kvtui.core.mirror.guard import Guard
from kvtui.core.mirror.recorded import RecordedSource, expand_turns
from kvtui.core.mirror.server import MirrorServer
from kvtui.core.mirror.source import MirrorSource


@dataclass(frozen=True)
class Turn:
    turn: int
    messages: tuple
    params: dict
    reply: Any = None
    primary_raw: Any = None


@dataclass
class Row:
    turn: int
    keep: int | None
    messages: str
    params: str = "{}"


@dataclass
class Result:
    error: str | None = None
    text: str = field(default="")


async def _post(port: int, body: dict) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    raw = json.dumps(body).encode()
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                 + f"Content-Length: {len(raw)}\r\n\r\n".encode() + raw)
    await writer.drain()
    data = await reader.read()
    writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


async def test_requests_become_numbered_turns_and_the_reply_ends_the_answer():
    source = MirrorSource(Turn)
    server = MirrorServer(source.submit, guard=Guard(), model_id="m", port=0)
    await server.start()

    async def engine() -> list[Turn]:
        seen = []
        async for turn in source:
            seen.append(turn)
            await turn.primary_raw(b'{"choices": []}')
            turn.reply.set_result(Result())
        return seen

    task = asyncio.create_task(engine())
    try:
        first = await _post(server.port, {"messages": [{"role": "user", "content": "a"}], "max_tokens": 3})
        second = await _post(server.port, {"messages": [{"role": "user", "content": "b"}], "tools": []})
    finally:
        source.close()
        turns = await asyncio.wait_for(task, 5)
        await server.close()
    assert first == (200, b'{"choices": []}') and second[0] == 200
    assert [(t.turn, t.messages[0]["content"]) for t in turns] == [(1, "a"), (2, "b")]
    assert turns[0].params == {"max_tokens": 3, "stream": False} and turns[1].params == {"tools": [], "stream": False}


async def test_a_primary_that_fails_before_answering_gives_502_and_shutdown_gives_503():
    source = MirrorSource(Turn)
    server = MirrorServer(source.submit, guard=Guard(), model_id="m", port=0)
    await server.start()

    async def engine() -> None:
        async for turn in source:
            turn.reply.set_result(Result(error="HTTP 400: the prompt does not fit"))
            break  # the engine stops after one turn; the next request waits in the queue

    task = asyncio.create_task(engine())
    try:
        failed = await _post(server.port, {"messages": [{"role": "user", "content": "a"}]})
        await task
        waiting = asyncio.create_task(_post(server.port, {"messages": [{"role": "user", "content": "b"}]}))
        await asyncio.sleep(0.2)
        source.close()
        refused = await asyncio.wait_for(waiting, 5)
        late = await _post(server.port, {"messages": [{"role": "user", "content": "c"}]})
    finally:
        source.close()
        await server.close()
    assert failed[0] == 502 and "does not fit" in json.loads(failed[1])["error"]["message"]
    assert refused[0] == 503 and late[0] == 503


def test_recorded_turns_expand_to_the_exact_requests():
    sys_msg = {"role": "system", "content": "be brief"}
    u1, a1 = {"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "ls", "arguments": "{}"}}]}
    tool = {"role": "tool", "tool_call_id": "c1", "content": "a.py"}
    rows = [Row(1, 0, json.dumps([sys_msg, u1]), '{"tools": [{"type": "function"}]}'),
            Row(2, 2, json.dumps([a1, tool])),
            Row(3, 1, json.dumps([{"role": "user", "content": "summary"}]))]  # the agent compacted its history
    got = expand_turns(rows)
    assert [r.messages for r in got] == [(sys_msg, u1), (sys_msg, u1, a1, tool),
                                         (sys_msg, {"role": "user", "content": "summary"})]
    assert got[0].params == {"tools": [{"type": "function"}]} and got[2].params == {}


@pytest.mark.parametrize("rows, expect", [
    ([Row(1, 1, "[]")], "keep = 1, but the turn before sent 0 messages"),
    ([Row(1, 0, "[{")], "messages is not valid JSON"),
    ([Row(1, 0, "{}")], "messages should be a JSON array"),
    ([Row(1, 0, "[]", "[]")], "params should be a JSON object"),
])
def test_broken_recorded_turns_are_one_line_errors(rows, expect):
    with pytest.raises(RecordError) as exc:
        expand_turns(rows, "r.toml")
    assert expect in exc.value.message and exc.value.message.startswith("r.toml: turns[0]")


async def test_recorded_source_yields_every_turn_once():
    rows = [Row(1, 0, '[{"role": "user", "content": "a"}]'), Row(2, 1, '[{"role": "user", "content": "b"}]')]
    source = RecordedSource(expand_turns(rows), Turn)
    turns = [t async for t in source]
    assert [(t.turn, len(t.messages)) for t in turns] == [(1, 1), (2, 2)]
    assert [t.turn async for t in source] == [1, 2]  # again from the start (sequential mode: once per side)
    assert source.mode == "forced"
