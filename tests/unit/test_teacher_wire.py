"""The scoring requests' wire: the fast reading of a ``/completion`` answer, and the keep-alive connection.

``completion-n_probs8.json`` is a real answer of the bundled llama-server (b10434): n_probs 8, the actual
token (" said", id 1176) forced by logit_bias and outside the top 8. The connection tests use a small
asyncio server, because a real llama-server cannot be made to answer chunked, or to close at a chosen
request, on demand.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from kvtui.core.quality.kld import Position
from kvtui.core.server.keepalive import KeepAliveConnection, TransportError
from kvtui.core.server.teacher import Endpoint, Teacher, _read_positions_json, read_position, read_positions

ANSWER = (Path(__file__).resolve().parents[1] / "data" / "teacher" / "completion-n_probs8.json").read_bytes()


def _read_position_json(raw: bytes):
    found = _read_positions_json(raw, 1)
    return found[0] if found else None


def test_a_real_answer_reads_the_same_as_json_loads() -> None:
    found = read_position(ANSWER)
    assert found == _read_position_json(ANSWER)
    ids, logprobs, got, lp = found  # type: ignore[misc]
    assert got == 1176 and lp == pytest.approx(-8.98228, abs=1e-5)
    assert ids[:3] == [529, 563, 236789] and len(ids) == len(logprobs) == 8
    assert logprobs == sorted(logprobs, reverse=True)


def _edited(edit) -> bytes:
    data = json.loads(ANSWER)
    edit(data)
    return json.dumps(data, separators=(",", ":")).encode()


def test_a_token_whose_text_looks_like_a_key_is_still_read_right() -> None:
    def tricky(d):
        d["completion_probabilities"][0]["top_logprobs"][1]["token"] = '"id":7,"logprob":-0.5,"token":'
    raw = _edited(tricky)
    assert read_position(raw) == _read_position_json(raw)
    assert read_position(raw)[0][1] == 563  # type: ignore[index]


def test_layouts_the_fast_path_does_not_know_fall_back_to_json() -> None:
    def top_first(d):  # the entry's own id and logprob after its list
        e = d["completion_probabilities"][0]
        d["completion_probabilities"][0] = {"top_logprobs": e["top_logprobs"], "id": e["id"], "logprob": e["logprob"]}
    raw = _edited(top_first)
    assert read_position(raw) == _read_position_json(raw) and read_position(raw)[2] == 1176  # type: ignore[index]

    def two_entries(d):
        d["completion_probabilities"].append(d["completion_probabilities"][0])
    raw = _edited(two_entries)
    assert read_position(raw) == _read_position_json(raw)


def test_the_answers_to_several_prompts_read_in_order() -> None:
    one = json.loads(ANSWER)
    answers = []
    for k in range(3):
        a = json.loads(ANSWER)
        a["index"] = k
        a["completion_probabilities"][0]["top_logprobs"][0]["logprob"] = -0.5 - k
        answers.append(a)
    raw = json.dumps(answers, separators=(",", ":")).encode()
    found = read_positions(raw, 3)
    assert found == _read_positions_json(raw, 3)
    assert [f[1][0] for f in found] == [-0.5, -1.5, -2.5] and found[0][0] == [t["id"] for t in  # type: ignore[index]
                                                                          one["completion_probabilities"][0]["top_logprobs"]]
    shuffled = json.dumps([answers[1], answers[0], answers[2]], separators=(",", ":")).encode()
    assert read_positions(shuffled, 3) == found  # out of order: read by json.loads, sorted by index
    assert read_positions(raw, 2) is None  # not the answers asked for


def test_a_null_log_probability_or_no_list_is_none() -> None:
    def null(d):
        d["completion_probabilities"][0]["top_logprobs"][2]["logprob"] = None
    assert read_position(_edited(null)) is None
    assert read_position(_edited(lambda d: d.pop("completion_probabilities"))) is None
    assert read_position(b"not json") is None


class FakeServer:
    """Answers every POST with its body echoed; ``chunked`` answers chunked; ``close_every`` says close."""

    def __init__(self, chunked: bool = False, close_every: int = 0) -> None:
        self.chunked, self.close_every = chunked, close_every
        self.connections = 0
        self.requests: list[tuple[str, bytes]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = head.decode().split("\r\n")
            length = next(int(x.split(":")[1]) for x in lines if x.lower().startswith("content-length"))
            body = await reader.readexactly(length)
            self.requests.append((lines[0], body))
            close = self.close_every and len(self.requests) % self.close_every == 0
            extra = b"Connection: close\r\n" if close else b""
            if self.chunked:
                half = len(body) // 2
                payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:half], body[half:]) if p)
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" + extra + b"\r\n" + payload
                             + b"0\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % len(body) + extra + b"\r\n" + body)
            await writer.drain()
            if close:
                writer.close()
                return


async def _serve(fake: FakeServer):
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@pytest.mark.parametrize("chunked", [False, True])
async def test_requests_share_one_connection_and_bodies_arrive_whole(chunked: bool) -> None:
    fake = FakeServer(chunked=chunked)
    server, url = await _serve(fake)
    async with server:
        conn = KeepAliveConnection(url, {"Authorization": "Bearer k"})
        for n in range(5):
            body = json.dumps({"n": n, "pad": "x" * 3000}).encode()
            assert await conn.post("/completion", body) == (200, body)
        await conn.aclose()
    assert fake.connections == 1 and conn.opened == 1
    assert fake.requests[0][0] == "POST /completion HTTP/1.1"


async def test_a_connection_the_server_closes_or_that_sat_idle_is_reopened() -> None:
    fake = FakeServer(close_every=2)
    server, url = await _serve(fake)
    now = [0.0]
    async with server:
        conn = KeepAliveConnection(url, idle_s=2.0, clock=lambda: now[0])
        for _ in range(4):  # the 2nd and 4th answers say Connection: close
            await conn.post("/x", b"{}")
        assert conn.opened == 2
        await conn.post("/x", b"{}")
        now[0] = 2.5  # idle longer than the server allows
        await conn.post("/x", b"{}")
        await conn.aclose()
    assert conn.opened == 4 and fake.connections == 4


async def test_nothing_listening_is_a_transport_error() -> None:
    fake = FakeServer()
    server, url = await _serve(fake)
    server.close()
    await server.wait_closed()
    with pytest.raises(TransportError):
        await KeepAliveConnection(url).post("/x", b"{}")


class ListedTeacher(Teacher):
    """A teacher whose server is a table: each context's top list, so the batching and asking again can be
    followed without HTTP (the real server does the same in tests/e2e/test_score_server.py)."""

    def __init__(self, tops: dict[int, list[int]]) -> None:
        super().__init__(None, Endpoint("q8_0", "http://127.0.0.1:1"), 3)  # type: ignore[arg-type]
        self.tops = tops  # context length -> its top ids (log-probabilities -1, -2, -3, ...)
        self.requests: list[tuple[str, list[int]]] = []

    def _answer(self, context) -> tuple[list[int], list[float], int, float]:
        ids = self.tops[len(context)]
        return ids, [-1.0 - k for k in range(len(ids))], ids[0], -1.0

    async def positions(self, prompts):  # type: ignore[override]
        self.requests.append(("batch", [len(p) for p in prompts]))
        return [self._answer(p) for p in prompts]

    async def position(self, context, actual):  # type: ignore[override]
        self.requests.append(("forced", [len(context)]))
        ids, lps, _, _ = self._answer(context)
        return Position(ids, lps, actual, -9.0)


async def test_a_segment_goes_in_batches_and_asks_again_where_the_actual_token_is_not_listed() -> None:
    tokens = [2, 10, 11, 12, 13, 14, 15, 16]  # positions 1..6 scored (first = 1)
    tops = {n: [tokens[n], 99, 98] for n in range(2, 8)}
    tops[5] = [97, 99, 98]  # after 5 tokens the actual (14) is not in the top list
    tops[6] = [98, tokens[6], 99]  # listed, not the most likely one
    teacher = ListedTeacher(tops | {2: [tokens[2], 99, 98]})
    got: dict[int, Position] = {}
    await teacher.segment(tokens, 1, lambda i, p: got.__setitem__(i, p), batch=2)
    assert teacher.requests == [("forced", [2]), ("batch", [3, 4]), ("batch", [5, 6]), ("batch", [7]),
                                ("forced", [5])]
    assert sorted(got) == [1, 2, 3, 4, 5, 6] and all(got[i].actual == tokens[i + 1] for i in got)
    assert got[4].actual_logprob == -9.0  # asked again, forced
    assert got[5].actual_logprob == -2.0 and got[2].actual_logprob == -1.0  # read from the list
