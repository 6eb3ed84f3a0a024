"""Requests that follow each other at once: reruns, and a warm-up followed by the measured request.

A rerun used to fail about 1 time in 10 with "Server disconnected without sending a response": llama-server
closes the connection right after a streamed response although its headers promise keep-alive, and a pooled
HTTP client handed that dying connection to the next request. These tests pin down the server's behaviour and
show that kvtui's requests no longer depend on it.
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from kvtui.core.errors import ServerError
from kvtui.core.events import ErrorRaised
from kvtui.core.logs.failure import explain_failure
from kvtui.core.profiles import Prompt, Sampling, load_profile
from kvtui.core.run.live import LiveSession
from kvtui.core.run.prepare import prepare
from kvtui.core.server import client
from kvtui.core.server.process import LlamaServer, port_in_use, server_args

REPO = Path(__file__).resolve().parents[2]
server = pytest.mark.server


def _read_stream(sock: socket.socket) -> bytes:
    """One whole chunked HTTP response from a raw socket."""
    buf = b""
    while not (b"\r\n\r\n" in buf and buf.endswith(b"\r\n0\r\n\r\n")):
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection mid-response: {buf[-200:]!r}"
        buf += chunk
    return buf


@server
async def test_llama_server_closes_the_connection_after_a_stream(tmp_path: Path, server_binary, model_path,
                                                                 no_leftover_servers) -> None:
    """The cause of the failed reruns, measured: every streamed response ends with the server closing the
    connection, though its headers say ``Keep-Alive``; then 40 back-to-back streams through kvtui's client
    (warm-up then measured request, as a rerun sends them) all succeed."""
    profile = load_profile(REPO / "profiles" / "demo.toml")
    side = profile.sides[0]
    srv = LlamaServer(server_binary, server_args(profile, side, model_path), tmp_path / "s.log")
    await srv.start()
    try:
        async with client.http_client() as http:
            await srv.wait_ready(http)
            body = json.dumps({"prompt": "Hello", "n_predict": 2, "stream": True, "cache_prompt": False}).encode()
            closed = 0
            for _ in range(5):
                with socket.create_connection(("127.0.0.1", srv.port)) as sock:
                    sock.sendall(b"POST /completion HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                 b"Authorization: Bearer " + srv.api_key.encode() +
                                 b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                    response = _read_stream(sock)
                    assert b"Keep-Alive: timeout=" in response
                    sock.settimeout(2.0)
                    closed += sock.recv(1) == b""
            assert closed == 5, "llama-server kept a connection open after a stream: the workaround may be moot"

            path, req = client.build_request(Prompt(text="def fib(n):\n"), Sampling(n_predict=2))
            failures = []
            for _ in range(40):
                try:
                    pieces = [p async for p in client.stream(http, srv.base_url, path, req, api_key=srv.api_key)]
                    assert pieces
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
            assert not failures, failures
    finally:
        await srv.stop()


@server
async def test_a_side_reruns_30_times_in_a_row(tmp_path: Path, server_binary, no_leftover_servers) -> None:
    """`r` on a finished side: a new server, its warm-up, the measured request at once; 30 times, no failure."""
    profile = load_profile(REPO / "profiles" / "demo.toml")
    profile = replace(profile, sampling=replace(profile.sampling, n_predict=4))
    prepared = prepare(profile, server_bin=str(server_binary.path), record=str(tmp_path / "r.toml"))
    session = LiveSession(prepared)
    errors: list[str] = []
    session.sinks.append(lambda e: errors.append(e.message) if isinstance(e, ErrorRaised) else None)
    assert await session.run() == "done"
    statuses = []
    for _ in range(30):
        statuses.append(await session.rerun(0))
    assert statuses == ["done"] * 30, errors
    assert not errors
    runs = session.recorder.record.sides[0].runs
    assert len(runs) == 31 and all(r.predicted_n == 4 for r in runs)
    logs = sorted(p.name for p in prepared.log_dir.iterdir())
    assert "side0-q8_0.log" in logs and "side0-q8_0.31.log" in logs, "a rerun keeps the earlier server logs"


def test_an_empty_log_with_the_port_held_is_explained_as_a_busy_port() -> None:
    """llama-server logs from a background thread and may exit before writing (b10434 under CPU load left an
    empty log for 2 of 40 refused ports), so the cause comes from checking the port itself."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert port_in_use(port)
        assert explain_failure("", 1, port_busy=port_in_use(port))[0] == "the port is already in use"
    assert not port_in_use(port)
    cause, fix = explain_failure("", 1, port_busy=False)
    assert cause == "llama-server exited with code 1 before writing anything to its log"
    assert "by hand" in fix
    # a log that does say why wins over the port check
    assert explain_failure("E gguf_init_from_file: failed to open GGUF file", 1, port_busy=True)[0].startswith(
        "the model file could not be opened")


async def test_a_server_that_exits_without_a_log_on_a_held_port(tmp_path: Path, model_path) -> None:
    """The whole path, with a stand-in for the one thing a real llama-server does only by chance (exit 1 before its
    log thread writes): ``sh -c 'exit 1'`` as the binary, started on a port another socket holds."""
    from kvtui.core.server.locate import ServerBinary

    script = tmp_path / "llama-server"
    script.write_text("#!/bin/sh\nexit 1\n")
    script.chmod(0o755)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        srv = LlamaServer(ServerBinary(script, "test", {}), ["-m", str(model_path)], tmp_path / "s.log")
        srv.port = held.getsockname()[1]
        await srv.start()
        async with client.http_client() as http:
            with pytest.raises(ServerError) as info:
                await asyncio.wait_for(srv.wait_ready(http), 30)
    assert info.value.message == "the port is already in use"
