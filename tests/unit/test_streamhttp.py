"""The streamed requests' own HTTP/1.1 transport (kvtui/core/server/streamhttp.py).

The real llama-server's streams go through it in every e2e test. Here a canned server, a few lines of asyncio
that write fixed bytes, sends what a real server cannot be made to send on demand: a chunk cut in two
mid-line, a body that ends early, an answer that is not HTTP, nothing at all.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from kvtui.core.errors import KvtuiError
from kvtui.core.server import client
from kvtui.core.server.streamhttp import open_stream


class Canned:
    """Answers every connection with ``parts`` (bytes), written one by one with a short pause between them;
    keeps what each request sent."""

    def __init__(self, *parts: bytes) -> None:
        self.parts = parts
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        self.requests.append(head + await reader.readexactly(length))
        for part in self.parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.close()


async def serve(canned: Canned) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(canned.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


def chunked(*pieces: bytes) -> list[bytes]:
    return [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces] + [b"0\r\n\r\n"]


OK_SSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


async def lines_of(url: str, body: dict | None = None) -> list[str]:
    async with open_stream(url + "/completion", body or {"prompt": "x"}) as resp:
        assert resp.status_code == 200
        return [line async for line in resp.aiter_lines()]


async def test_chunked_lines_cut_anywhere_come_out_whole() -> None:
    event = b'data: {"content":"\xe6\x97\xa5\xe6\x9c\xac","stop":false}\n\n'
    cut = [event[:7], event[7:20], event[20:]]  # inside the JSON and inside a UTF-8 character
    canned = Canned(OK_SSE, *chunked(*cut, b"data: [DONE]\n\n"))
    server, url = await serve(canned)
    async with server:
        lines = await lines_of(url, {"prompt": "日本", "n": 1})
    assert lines == ['data: {"content":"日本","stop":false}', "", "data: [DONE]", ""]
    request = canned.requests[0]
    head, _, body = request.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /completion HTTP/1.1\r\n") and b"Connection: close" in head
    assert json.loads(body) == {"prompt": "日本", "n": 1}


async def test_a_body_with_a_length_and_one_to_the_close() -> None:
    body = b'{"error":{"code":400,"message":"too long"}}'
    server, url = await serve(Canned(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n" % len(body), body))
    async with server:
        async with open_stream(url + "/completion", {}) as resp:
            assert resp.status_code == 400 and await resp.aread() == body
    server, url = await serve(Canned(b"HTTP/1.1 200 OK\r\n\r\n", b"data: 1\n", b"data: 2"))
    async with server:
        assert await lines_of(url) == ["data: 1", "data: 2"]


async def test_an_early_end_and_an_answer_that_is_not_http_are_protocol_errors() -> None:
    for parts in ([OK_SSE, b"40\r\ndata: only part of it"],  # a chunk that never ends
                  [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b"short"],
                  [b"SSH-2.0-OpenSSH_9.6\r\n\r\n"],
                  []):  # closed without a word
        server, url = await serve(Canned(*parts))
        async with server:
            with pytest.raises(httpx.RemoteProtocolError):
                await lines_of(url)


async def test_nothing_listening_is_a_connect_error() -> None:
    server, url = await serve(Canned())
    server.close()
    await server.wait_closed()
    with pytest.raises(httpx.ConnectError, match="cannot connect to 127.0.0.1"):
        await lines_of(url)


async def test_client_stream_reads_pieces_and_the_servers_error_through_it() -> None:
    events = [b'data: {"content":"a","tokens":[5],"stop":false}\n\n',
              b'data: {"content":"b","tokens":[6],"stop":true,"stop_type":"eos",'
              b'"timings":{"predicted_n":2,"predicted_per_second":10.0}}\n\n']
    server, url = await serve(Canned(OK_SSE, *chunked(*events)))
    result = client.StreamResult()
    async with server, client.http_client() as http:
        pieces = [p async for p in client.stream(http, url, "/completion", {"prompt": "x"}, result=result)]
    assert [p.text for p in pieces] == ["a", "b"] and result.stop == "eos"
    assert result.timings is not None and result.timings.predicted_per_second == 10.0
    body = b'{"error":{"code":400,"message":"the request exceeds the available context size","type":"x"}}'
    server, url = await serve(Canned(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n" % len(body), body))
    async with server, client.http_client() as http:
        with pytest.raises(KvtuiError, match="context size"):
            async for _ in client.stream(http, url, "/completion", {"prompt": "x"}):
                pass
