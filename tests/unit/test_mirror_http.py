"""The mirror's HTTP side without servers: parsing, malformed requests, auth, loopback, routes.

``submit`` here answers each turn itself (no llama-server): these tests are about what the mirror
does before and after a turn, which the e2e tests (tests/e2e/test_mirror_server.py) run on real servers.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from kvtui.core.errors import KvtuiError
from kvtui.core.mirror.api import AgentRequest, ApiError, parse_agent_request
from kvtui.core.mirror.guard import Guard, check_bind, is_loopback
from kvtui.core.mirror.http import HttpError, HttpRequest, parse_head
from kvtui.core.mirror.response import PrimaryResponse
from kvtui.core.mirror.server import MirrorServer

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


class Echo:
    """Answers each turn with the request it got (JSON), or as two SSE events when it asked to stream."""

    def __init__(self) -> None:
        self.got: list[AgentRequest] = []

    async def __call__(self, agent: AgentRequest, response: PrimaryResponse) -> None:
        self.got.append(agent)
        if agent.stream:
            await response.start(200, "text/event-stream")
            await response.raw(b'data: {"n": 1}\n\n')
            await response.raw(b"data: [DONE]\n\n")
        else:
            await response.raw(json.dumps({"echo": agent.body()}).encode())
        await response.finish()


async def _server(**kw) -> tuple[MirrorServer, Echo]:
    echo = Echo()
    srv = MirrorServer(echo, guard=kw.pop("guard", Guard()), model_id="smol", port=0, **kw)
    await srv.start()
    return srv, echo


async def _raw(srv: MirrorServer, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are; read one response (Content-Length or chunked)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(data)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            body += (await reader.readexactly(size + 2))[:-2]
    writer.close()
    return status, headers, body


def _post(path: str, body: bytes, headers: str = "") -> bytes:
    host = "" if headers.startswith("Host:") else "Host: 127.0.0.1\r\n"
    return (f"POST {path} HTTP/1.1\r\n{host}Content-Type: application/json\r\n{headers}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


@pytest.mark.parametrize("body, expect", [
    (b"", "empty"),
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object, not an array"),
    (b'{"messages": []}', "'messages' must be a non-empty array"),
    (b'{"model": "m"}', "'messages' is missing"),
    (b'{"messages": [{"content": "x"}]}', "'messages[0].role' is missing"),
    (b'{"messages": [{"role": "robot", "content": "x"}]}', "'messages[0].role' is 'robot'"),
    (b'{"messages": [{"role": "user", "content": 5}]}', "'messages[0].content' must be a string"),
    (b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "'stream' must be true or false"),
    (b'{"messages": [{"role": "user", "content": "x"}], "tools": {}}', "'tools' must be an array"),
    (b'{"messages": [{"role": "user", "content": NaN}]}', "NaN is not JSON"),
])
async def test_malformed_chat_requests_get_400_with_the_reason(body, expect):
    srv, echo = await _server()
    try:
        status, headers, raw = await _raw(srv, _post("/v1/chat/completions", body))
    finally:
        await srv.close()
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    err = json.loads(raw)["error"]
    assert expect in err["message"] and err["type"] == "invalid_request_error"
    assert echo.got == []


@pytest.mark.parametrize("data, status, expect", [
    (b"GARBAGE\r\n\r\n", 400, "malformed request line"),
    (b"POST /v1/chat/completions HTTP/2.0\r\n\r\n", 505, "HTTP/2.0 is not supported"),
    (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 411, "without Content-Length"),
    (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400,
     "bad Content-Length"),
    (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "bad Content-Length"),
    (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", 400,
     "both Transfer-Encoding and Content-Length"),
    (b"POST /v1/chat/completions HTTP/1.1\r\nBad Header\r\n\r\n", 400, "malformed header line"),
    (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n", 400, "more than one Host"),
    (b"POST /v1/chat/completions HTTP/1.1\r\nX: 1\r\n folded\r\n\r\n", 400, "folded header"),
    (b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "bad chunk size"),
    (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n", 413, "over the mirror's limit"),
])
async def test_malformed_http_gets_a_clear_error_and_the_connection_closes(data, status, expect):
    srv, _ = await _server()
    try:
        got, headers, raw = await _raw(srv, data)
    finally:
        await srv.close()
    assert got == status
    assert expect in json.loads(raw)["error"]["message"]
    assert headers["connection"] == "close"


async def test_chunked_body_and_expect_continue_are_read():
    body = json.dumps({**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}).encode()
    chunked = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in (body[:10], body[10:])) + b"0\r\n\r\n"
    srv, echo = await _server()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100 Continue")
        writer.write(chunked)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        writer.close()
    finally:
        await srv.close()
    assert echo.got[0].params["tools"] == [{"type": "function", "function": {"name": "f"}}]


async def test_keep_alive_serves_several_requests_and_a_stream_keeps_its_framing():
    srv, echo = await _server()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        for stream in (False, True, False):
            body = json.dumps({**CHAT, "stream": stream}).encode()
            writer.write(_post("/v1/chat/completions", body))
            await writer.drain()
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            assert head.startswith("HTTP/1.1 200")
            if stream:
                assert "text/event-stream" in head and "Transfer-Encoding: chunked" in head
                data = b""
                while not data.endswith(b"0\r\n\r\n"):
                    data += await reader.read(4096)
                assert data == b'10\r\ndata: {"n": 1}\n\n\r\ne\r\ndata: [DONE]\n\n\r\n0\r\n\r\n'
            else:
                n = int(next(line.split(":")[1] for line in head.split("\r\n") if line.startswith("Content-Length")))
                assert json.loads(await reader.readexactly(n))["echo"]["messages"] == CHAT["messages"]
        writer.close()
    finally:
        await srv.close()
    assert [a.stream for a in echo.got] == [False, True, False]


async def test_api_key_is_required_except_on_health():
    srv, echo = await _server(guard=Guard(api_key="s3cret"))
    body = json.dumps(CHAT).encode()
    try:
        no_key = await _raw(srv, _post("/v1/chat/completions", body))
        wrong = await _raw(srv, _post("/v1/chat/completions", body, "Authorization: Bearer nope\r\n"))
        models = await _raw(srv, b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        health = await _raw(srv, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        right = await _raw(srv, _post("/v1/chat/completions", body, "Authorization: Bearer s3cret\r\n"))
    finally:
        await srv.close()
    for status, headers, raw in (no_key, wrong, models):
        assert status == 401 and headers["www-authenticate"] == "Bearer"
        assert json.loads(raw)["error"]["code"] == "invalid_api_key"
    assert health[0] == 200 and json.loads(health[2]) == {"status": "ok"}
    assert right[0] == 200 and len(echo.got) == 1


@pytest.mark.parametrize("header, code", [
    ("Host: evil.example:8080", "host_not_allowed"),
    ("Origin: https://evil.example", "origin_not_allowed"),
])
async def test_browser_requests_from_other_sites_are_refused(header, code):
    srv, echo = await _server()
    try:
        status, _, raw = await _raw(srv, _post("/v1/chat/completions", json.dumps(CHAT).encode(), header + "\r\n"))
        allowed = MirrorServer(echo, guard=Guard(allow_remote=True), model_id="m", port=0)
        await allowed.start()
        ok = await _raw(allowed, _post("/v1/chat/completions", json.dumps(CHAT).encode(), header + "\r\n"))
        await allowed.close()
    finally:
        await srv.close()
    assert status == 403 and json.loads(raw)["error"]["code"] == code
    assert ok[0] == 200


def test_guard_refuses_remote_peers_unless_allowed():
    req = HttpRequest("GET", "/v1/models", "HTTP/1.1", (("host", "10.0.0.5:8080"),))
    assert Guard().check(req, "10.0.0.9").code == "remote_not_allowed"  # type: ignore[union-attr]
    assert Guard(allow_remote=True).check(req, "10.0.0.9") is None
    assert Guard().check(HttpRequest("GET", "/v1/models", "HTTP/1.1", (("host", "[::1]:8080"),)), "::1") is None


def test_loopback_names():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost", "::ffff:127.0.0.1"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.0.0.1", "example.com", "", "::"))


def test_listening_beyond_loopback_needs_allow_remote():
    with pytest.raises(KvtuiError) as exc:
        check_bind("0.0.0.0", allow_remote=False)
    assert "--allow-remote" in exc.value.hint
    check_bind("0.0.0.0", allow_remote=True)
    check_bind("127.0.0.1", allow_remote=False)


async def test_routes_models_unknown_paths_and_methods():
    srv, _ = await _server(ready=lambda: False)
    try:
        models = await _raw(srv, b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        health = await _raw(srv, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        missing = await _raw(srv, b"GET /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        wrong = await _raw(srv, b"GET /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    finally:
        await srv.close()
    assert models[0] == 200 and json.loads(models[2])["data"][0]["id"] == "smol"
    assert health[0] == 503  # the sides are not up yet, as llama-server says while it loads
    assert missing[0] == 404 and "Invalid URL" in json.loads(missing[2])["error"]["message"]
    assert wrong[0] == 405 and wrong[1]["allow"] == "POST"


async def test_port_in_use_is_a_one_line_error():
    srv, _ = await _server()
    try:
        other = MirrorServer(Echo(), guard=Guard(), model_id="m", port=srv.port)
        with pytest.raises(KvtuiError) as exc:
            await other.start()
    finally:
        await srv.close()
    assert "already in use" in exc.value.message and "--port" in exc.value.hint


def test_completion_requests_need_a_prompt():
    with pytest.raises(ApiError, match="'prompt' is missing"):
        parse_agent_request("/completion", b'{"n_predict": 4}')
    got = parse_agent_request("/completion", b'{"prompt": "Hi", "stream": true}')
    assert got.endpoint == "completion" and got.stream and got.messages == ()


def test_parse_head_lowercases_names_and_keeps_values():
    method, target, version, headers = parse_head(b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nX-Api-Key:  k ")
    assert (method, target, version) == ("POST", "/v1/chat/completions?x=1", "HTTP/1.1")
    assert headers == (("x-api-key", "k"),)
    with pytest.raises(HttpError):
        parse_head(b"POST http://x/ HTTP/1.1")


async def test_an_agent_that_hangs_up_mid_stream_does_not_break_the_turn_or_the_server():
    """The turn's answer goes on being handed over after the agent has gone; the next agent is served."""
    done: list[bool] = []
    gone = asyncio.Event()

    async def slow(agent: AgentRequest, response: PrimaryResponse) -> None:
        await response.start(200, "text/event-stream")
        await response.raw(b'data: {"n": 1}\n\n')
        await gone.wait()  # the agent has closed its connection
        for _ in range(50):  # what the primary still sends for this turn
            await response.raw(b'data: {"n": 2}\n\n')
        await response.finish()
        done.append(response.gone)

    srv = MirrorServer(slow, guard=Guard(), model_id="m", port=0)
    await srv.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(_post("/v1/chat/completions", json.dumps({**CHAT, "stream": True}).encode()))
        await writer.drain()
        await reader.readuntil(b"data: ")
        writer.close()
        await writer.wait_closed()
        gone.set()
        for _ in range(50):
            if done:
                break
            await asyncio.sleep(0.05)
        health = await _raw(srv, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    finally:
        await srv.close()
    assert done == [True] and health[0] == 200
