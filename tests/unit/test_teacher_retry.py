"""The teacher-forcing client sends a scoring request again when the server drops the connection.

A fake server, because a real llama-server cannot be made to hit its keep-alive race on demand: it closes
an idle connection after 5 s, and a request sent at that instant fails with httpx's "Server disconnected
without sending a response". This one drops the first N requests that way, then answers like llama-server.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from kvtui.core.errors import KvtuiError
from kvtui.core.server.teacher import RETRIES, Endpoint, Teacher, new_client


class DroppingServer:
    """Reads each request, closes the connection without a response the first ``drops`` times, then answers."""

    def __init__(self, drops: int) -> None:
        self.drops = drops
        self.requests: list[dict] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return  # the client closed its keep-alive connection
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length"))
            body = json.loads(await reader.readexactly(length))
            self.requests.append(body)
            if self.drops > 0:
                self.drops -= 1
                writer.close()
                return
            actual = body["logit_bias"][0][0]
            top = [{"id": 7, "token": "a", "bytes": [97], "logprob": -0.1},
                   {"id": actual, "token": "b", "bytes": [98], "logprob": -2.5}]
            data = json.dumps({"completion_probabilities": [{"id": actual, "token": "b", "bytes": [98],
                                                             "logprob": -2.5, "top_logprobs": top}],
                               "timings": {"prompt_n": 1}}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(data)).encode() + b"\r\n\r\n" + data)
            await writer.drain()


async def _serve(drops: int):
    fake = DroppingServer(drops)
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return fake, server, Endpoint("q8_0", f"http://127.0.0.1:{port}")


async def test_a_dropped_connection_is_retried_with_the_same_request() -> None:
    fake, server, endpoint = await _serve(drops=2)
    async with server, new_client() as http:
        teacher = Teacher(http, endpoint, top_k=2)
        pos = await teacher.position([2, 5, 6], actual=9)
    assert pos.actual == 9 and pos.actual_logprob == pytest.approx(-2.5) and list(pos.ids) == [7, 9]
    assert teacher.retried == 2 and len(fake.requests) == 3
    assert all(r == fake.requests[0] for r in fake.requests)  # the same idempotent request each time
    assert fake.requests[0]["cache_prompt"] is True and fake.requests[0]["n_predict"] == 1


async def test_a_server_that_keeps_dropping_is_an_error_a_person_can_read() -> None:
    fake, server, endpoint = await _serve(drops=RETRIES + 1)
    async with server, new_client() as http:
        with pytest.raises(KvtuiError, match="q8_0: llama-server stopped answering"):
            await Teacher(http, endpoint, top_k=2).position([2, 5], actual=9)
    assert len(fake.requests) == RETRIES + 1
