"""``kvtui mirror`` driven by the official ``openai`` client, in front of real llama-servers (SmolLM2, q8_0 / q4_0).

One mirror session (a subprocess, ended with SIGINT as a user's Ctrl-C) serves an agent's turns: unstreamed,
streamed, a streamed raw request, tool calls, a request too long for the context, unstreamed and streamed (the
server's 400 reaches the agent), a malformed one, a wrong key; then its record is checked turn by turn and run again with
``kvtui run --from`` as a forced conversation. A second session loses its non-primary server mid-way.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

openai = pytest.importorskip("openai", reason="the e2e mirror tests need the openai client (pip install '.[test]')")

from kvtui.core.record.recorder import read_record  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "tests" / "data" / "chat" / "smol-tools.jinja"  # SmolLM2's chat format plus tool calls
KEY = "mirror-test-key"
pytestmark = pytest.mark.server

WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "Get the weather for a city",
                                             "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                            "required": ["city"]}}}]


def _tool_history(city: str) -> list[dict[str, Any]]:
    """An agent's history of tool use (three calls and results), then a new question: the model calls the tool."""
    msgs: list[dict[str, Any]] = [{"role": "system", "content": "You answer every question by calling the "
                                                                "get_weather tool."}]
    for i, c in enumerate(["Rome", "Berlin", "Madrid"]):
        msgs += [{"role": "user", "content": f"Weather in {c}?"},
                 {"role": "assistant", "content": None, "tool_calls": [
                     {"id": f"call_{i}", "type": "function",
                      "function": {"name": "get_weather", "arguments": json.dumps({"city": c})}}]},
                 {"role": "tool", "tool_call_id": f"call_{i}", "content": "sunny"}]
    return msgs + [{"role": "user", "content": f"Weather in {city}?"}]


def _profile(tmp: Path, model: Path, schedule: str) -> Path:
    path = tmp / "mirror.toml"
    path.write_text(f"""
name = "mirror-test"
[model]
path = "{model}"
[server]
ctx_size = 2048
threads = 1
extra_args = ["--jinja", "--chat-template-file", "{TEMPLATE}"]
[[sides]]
name = "q8_0"
cache_type_k = "q8_0"
cache_type_v = "q8_0"
[[sides]]
name = "q4_0"
cache_type_k = "q4_0"
cache_type_v = "q4_0"
[sampling]
temperature = 0.0
n_predict = 24
[run]
schedule = "{schedule}"
""")
    return path


class Mirror:
    """A ``kvtui mirror --headless`` subprocess and its output, read as it comes."""

    def __init__(self, profile: Path, record: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kvtui", "mirror", str(profile), "--headless", "--port", "0", "--record",
             str(record)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=profile.parent,
            env={**os.environ, **env})
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.url = ""
        self.wait_for(lambda line: "every side is up" in line, 300)
        self.url = next(re.search(r"listening on (http://\S+)", x).group(1)  # type: ignore[union-attr]
                        for x in self.lines if "listening on" in x)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def wait_for(self, pred: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._q.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                raise AssertionError("the mirror ended early:\n" + "\n".join(self.lines))
            self.lines.append(line)
            if pred(line):
                return
        raise AssertionError("timed out; the mirror said:\n" + "\n".join(self.lines))

    def stop(self) -> int:
        """Ctrl-C, as a user ends it; returns the exit code."""
        self.proc.send_signal(signal.SIGINT)
        rc = self.proc.wait(120)
        while (line := self._q.get(timeout=10)) is not None:
            self.lines.append(line)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def session(tmp_path_factory, chat_model, server_binary) -> dict[str, Any]:
    """One agent session through the mirror; what the agent saw, the mirror's output and its record."""
    tmp = tmp_path_factory.mktemp("mirror")
    record = tmp / "agent.toml"
    m = Mirror(_profile(tmp, chat_model, "alternate"), record,
               {"KVTUI_MIRROR_API_KEY": KEY, "KVTUI_LLAMA_SERVER": str(server_binary.path)})
    seen: dict[str, Any] = {"record": record, "url": m.url}
    try:
        agent = openai.OpenAI(base_url=m.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
        seen["models"] = [x.id for x in agent.models.list().data]
        ask = [{"role": "user", "content": "Write a Python function that reverses a string."}]
        r1 = agent.chat.completions.create(model="any", messages=ask, max_tokens=24)  # turn 1
        seen["unstreamed"] = r1
        ask2 = [*ask, {"role": "assistant", "content": r1.choices[0].message.content},
                {"role": "user", "content": "Add a docstring."}]
        chunks = list(agent.chat.completions.create(model="any", messages=ask2, max_tokens=24, stream=True))  # 2
        seen["streamed"] = chunks
        body = {"model": "any", "messages": _tool_history("Paris"), "tools": WEATHER, "stream": True, "max_tokens": 48}
        with httpx.stream("POST", m.url + "/v1/chat/completions", json=body, timeout=120,  # turn 3, raw
                          headers={"Authorization": f"Bearer {KEY}"}) as resp:
            seen["raw_status"], seen["raw_type"] = resp.status_code, resp.headers["content-type"]
            seen["raw"] = b"".join(resp.iter_raw())
        seen["tool"] = agent.chat.completions.create(model="any", messages=_tool_history("Oslo"),  # turn 4
                                                     tools=WEATHER, max_tokens=48)
        too_long = [{"role": "user", "content": "word " * 3000}]
        with pytest.raises(openai.BadRequestError) as refused:  # turn 5: every side's server refuses it
            agent.chat.completions.create(model="any", messages=too_long)
        seen["refused"] = refused.value
        with pytest.raises(openai.BadRequestError) as refused_stream:  # the same, streamed: still a 400, no SSE
            agent.chat.completions.create(model="any", messages=too_long, stream=True)
        seen["refused_stream"] = refused_stream.value
        seen["after"] = agent.chat.completions.create(model="any", messages=ask, max_tokens=8)  # turn 7
        with pytest.raises(openai.AuthenticationError) as wrong:
            openai.OpenAI(base_url=m.url + "/v1", api_key="wrong", max_retries=0).models.list()
        seen["wrong_key"] = wrong.value
        seen["malformed"] = httpx.post(m.url + "/v1/chat/completions", content=b'{"messages": "hi"}',
                                       headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
        seen["rc"] = m.stop()
    finally:
        m.kill()
        seen["lines"] = m.lines
    return seen


def test_unstreamed_and_streamed_answers_are_the_primary_sides(session) -> None:
    r1 = session["unstreamed"]
    assert r1.object == "chat.completion" and r1.choices[0].message.content
    assert r1.usage.completion_tokens == 24 and r1.choices[0].finish_reason == "length"  # max_tokens went through
    chunks = session["streamed"]
    assert chunks[0].object == "chat.completion.chunk"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].choices == [] or chunks[-1].choices[0].finish_reason == "length"
    rec = read_record(session["record"])
    q8 = rec.sides[0]
    assert next(r for r in q8.runs if r.turn == 1).text == r1.choices[0].message.content
    assert next(r for r in q8.runs if r.turn == 2).text == text
    assert session["models"] == [Path(rec.model.path).name]


def test_a_streamed_answer_passes_through_byte_for_byte_with_its_tool_calls(session) -> None:
    assert session["raw_status"] == 200 and session["raw_type"].startswith("text/event-stream")
    raw: bytes = session["raw"]
    assert raw.endswith(b"data: [DONE]\n\n")
    events = raw.split(b"\n\n")[:-1]
    assert all(e.startswith(b"data: ") for e in events)  # llama-server's own framing, kept
    payloads = [json.loads(e[6:]) for e in events[:-1]]
    assert {p["system_fingerprint"] for p in payloads} == {payloads[0]["system_fingerprint"]}
    assert payloads[0]["system_fingerprint"].startswith("b")  # the server's build: the server wrote these bytes
    calls = [tc for p in payloads if p["choices"] for tc in p["choices"][0]["delta"].get("tool_calls") or []]
    assert calls and calls[0]["function"]["name"] == "get_weather" and calls[0]["id"]
    args = "".join(tc["function"].get("arguments") or "" for tc in calls)
    assert json.loads(args) == {"city": "Paris"}
    assert any(p["choices"] and p["choices"][0]["finish_reason"] == "tool_calls" for p in payloads)


def test_a_tool_call_reaches_the_agent_as_the_server_made_it(session) -> None:
    msg = session["tool"].choices[0].message
    assert session["tool"].choices[0].finish_reason == "tool_calls"
    (call,) = msg.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    args = json.loads(call.function.arguments)  # what the model chose: "Oslo" on b10434, "Norway" on b11434
    assert list(args) == ["city"] and isinstance(args["city"], str) and args["city"]
    rec = read_record(session["record"])
    turn4 = rec.turns[3]
    assert json.loads(turn4.params)["tools"] == WEATHER  # recorded untouched, and sent to every side
    assert all(any(r.turn == 4 and r.stop == "eos" for r in s.runs) for s in rec.sides)


def test_errors_keep_their_status_and_a_refused_turn_does_not_end_the_mirror(session) -> None:
    refused = session["refused"]
    assert refused.status_code == 400
    assert refused.body["type"] == "exceed_context_size_error"  # llama-server's own error body
    assert session["refused_stream"].status_code == 400
    assert session["refused_stream"].body["type"] == "exceed_context_size_error"
    assert session["after"].choices[0].message.content  # the sides took the next turn
    wrong = session["wrong_key"]
    assert wrong.status_code == 401 and wrong.body["code"] == "invalid_api_key"
    bad = session["malformed"]
    assert bad.status_code == 400 and "'messages' must be a non-empty array" in bad.json()["error"]["message"]


def test_the_record_holds_every_turn_of_every_side(session) -> None:
    assert session["rc"] == 0, "\n".join(session["lines"])
    rec = read_record(session["record"])
    assert rec.status == "done" and rec.conversation is not None and rec.conversation.mode == "mirror"
    assert [t.turn for t in rec.turns] == [1, 2, 3, 4, 5, 6, 7]
    assert rec.turns[1].keep == 1 and len(json.loads(rec.turns[1].messages)) == 2  # what turn 2 added
    for side in rec.sides:
        assert side.status == "done"
        assert [r.turn for r in side.runs] == [1, 2, 3, 4, 5, 6, 7]
        assert [r.prompt for r in side.runs] == [f"turn {k}" for k in range(1, 8)]
        for refused in side.runs[4:6]:
            assert refused.stop == "error" and "does not fit" in refused.error
        assert all(r.context_n for k, r in enumerate(side.runs) if k not in (4, 5))
    out = "\n".join(session["lines"])
    assert "turn 2: Add a docstring." in out and re.search(r"q4_0:\s+turn 1 vs q8_0: (identical|parts at)", out)
    for side in rec.sides:
        assert not psutil.pid_exists(side.pid) or psutil.Process(side.pid).status() == psutil.STATUS_ZOMBIE


def test_the_record_runs_again_as_a_forced_conversation(session, tmp_path, server_binary,
                                                        no_leftover_servers) -> None:
    again = tmp_path / "again.toml"
    proc = subprocess.run([sys.executable, "-m", "kvtui", "run", "--from", str(session["record"]), "--headless",
                           "--record", str(again), "--server-bin", str(server_binary.path)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # turns 5 and 6 are refused again: error runs, not failures
    first, rec = read_record(session["record"]), read_record(again)
    assert rec.conversation is not None and rec.conversation.mode == "forced"
    assert [(t.turn, t.keep, t.messages, t.params) for t in rec.turns] == \
        [(t.turn, t.keep, t.messages, t.params) for t in first.turns]  # identical requests, turn by turn
    for side in rec.sides:
        assert [r.turn for r in side.runs] == [1, 2, 3, 4, 5, 6, 7]
    # the same requests at temperature 0: the primary answers as it did for the agent
    assert [r.text for r in rec.sides[0].runs] == [r.text for r in first.sides[0].runs]


def test_a_failing_other_side_never_breaks_the_agents_request(tmp_path, chat_model, server_binary) -> None:
    record = tmp_path / "crash.toml"
    m = Mirror(_profile(tmp_path, chat_model, "simultaneous"), record,
               {"KVTUI_LLAMA_SERVER": str(server_binary.path), "KVTUI_MIRROR_API_KEY": ""})
    try:
        agent = openai.OpenAI(base_url=m.url + "/v1", api_key="none", max_retries=0, timeout=120)
        ask = [{"role": "user", "content": "Say hi."}]
        agent.chat.completions.create(model="any", messages=ask, max_tokens=4)
        time.sleep(3.5)  # an autosave of the record names each server's pid
        q4_pid = read_record(record).sides[1].pid
        os.kill(q4_pid, signal.SIGKILL)
        got = agent.chat.completions.create(model="any", messages=ask, max_tokens=8)
        later = agent.chat.completions.create(model="any", messages=ask, max_tokens=8)
        rc = m.stop()
    finally:
        m.kill()
    assert got.choices[0].message.content and later.choices[0].message.content
    assert rc == 1  # a server crashed: the session failed, the agent did not notice
    rec = read_record(record)
    assert rec.sides[0].status == "done" and [r.turn for r in rec.sides[0].runs] == [1, 2, 3]
    assert rec.sides[1].status == "crashed" and rec.sides[1].exit_code is not None
