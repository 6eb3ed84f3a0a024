"""The KV-cache estimate against what a real llama-server allocates, for all nine cache types.

Starts llama-server once per (type, ctx) the way kvtui does (-np 1, -fa on,
--fit off) at -lv 4 so it logs its ``llama_kv_cache: size`` lines, waits for
/health, reads the log, stops it by PID, and compares.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from kvtui.core.logs.failure import parse_log
from kvtui.core.model.kvsize import CACHE_TYPES, estimate_kv_mib

pytestmark = pytest.mark.server

READY_TIMEOUT_S = 180.0  # a slow CPU and a loaded machine: loading 250 MB can take a while


@pytest.fixture(scope="module")
def binary(request: pytest.FixtureRequest) -> Any:
    """The lead's ``server_binary`` fixture from tests/conftest.py, or a skip saying it is missing."""
    try:
        return request.getfixturevalue("server_binary")
    except pytest.FixtureLookupError:
        pytest.skip("no `server_binary` fixture (tests/conftest.py) to give a llama-server to run")


@pytest.fixture(scope="module")
def model(request: pytest.FixtureRequest) -> Path:
    """The bundled Gemma 3 270M."""
    try:
        return Path(request.getfixturevalue("model_path"))
    except pytest.FixtureLookupError:
        from kvtui.core.server.locate import bundled_model

        return bundled_model()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):  # 503 while loading, refused before binding
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM by PID (the server cleans up and exits 0), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def run_server_log(binary: Any, model: Path, ctx: int, cache_type: str, log_path: Path) -> str:
    """Start llama-server, wait for /health 200, stop it, and return its log (stderr)."""
    port = _free_port()
    argv = [str(binary.path), "-m", str(model), "-c", str(ctx), "-np", "1", "-fa", "on",
            "-ctk", cache_type, "-ctv", cache_type, "--host", "127.0.0.1", "--port", str(port),
            "-lv", "4", "--fit", "off", "--no-webui"]
    with open(log_path, "wb") as log:  # a file, not a pipe: the server must never block on a full pipe
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=binary.launch_env(), start_new_session=True)
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not _healthy(port):
                if proc.poll() is not None:
                    text = log_path.read_text(errors="replace")
                    tail = "\n".join(text.splitlines()[-15:])
                    if proc.returncode in (-signal.SIGILL, 128 + signal.SIGILL):
                        pytest.skip(f"llama-server died with SIGILL: built for CPU features this CPU lacks "
                                    f"({binary.path})")
                    pytest.fail(f"llama-server exited with {proc.returncode} before /health turned 200:\n{tail}")
                if time.monotonic() > deadline:
                    pytest.fail(f"llama-server not healthy after {READY_TIMEOUT_S:.0f} s")
                time.sleep(0.2)
        finally:
            _stop(proc)
    return log_path.read_text(errors="replace")


@pytest.mark.parametrize("ctx", [4096, 32768])
@pytest.mark.parametrize("cache_type", list(CACHE_TYPES))
def test_estimate_matches_server_log(binary: Any, model: Path, tmp_path: Path, cache_type: str, ctx: int) -> None:
    text = run_server_log(binary, model, ctx, cache_type, tmp_path / "server.log")
    facts = parse_log(text)
    assert facts.kv, f"no `llama_kv_cache: size` lines at -lv 4:\n{text[-2000:]}"
    measured = facts.kv_cache_mib
    est = estimate_kv_mib(model, ctx=ctx, cache_type_k=cache_type, cache_type_v=cache_type, n_parallel=1)
    assert est.known, est.reason
    # the claim is "to 0.01 MiB": the server prints each K and V size rounded to 0.01 MiB, so each printed
    # figure is within 0.005 MiB of the exact size, and the total (one or two caches) within 0.01 MiB
    assert abs(est.attention_mib - measured) <= 0.01 + 1e-9, (est.attention_mib, measured)
    # the layout too: the same caches with the same cells and layers, and the same types
    assert sorted((k.cells, k.layers) for k in facts.kv) == sorted((p.cells, p.layers) for p in est.parts)
    for line in facts.kv:
        (part,) = [p for p in est.parts if (p.cells, p.layers) == (line.cells, line.layers)]
        assert abs(part.k_mib - line.k_mib) <= 0.005 + 1e-9 and abs(part.v_mib - line.v_mib) <= 0.005 + 1e-9, (
            part, line)
    assert {(k.type_k, k.type_v) for k in facts.kv} == {(cache_type, cache_type)}
