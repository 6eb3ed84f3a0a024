"""Attaching to a llama-server that was already running, on the real server and model.

Each test starts a llama-server by hand (as a user would, outside kvtui), then
runs kvtui against it; the server must still be serving afterwards.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from kvtui.cli import main
from kvtui.core.profiles import Prompt, Sampling
from kvtui.core.record.recorder import read_record
from kvtui.core.server import client
from kvtui.core.server.process import free_port

pytestmark = pytest.mark.server
CTX = 4096


class HandStarted:
    """A llama-server started outside kvtui (q4_0 KV cache), stopped by the test itself."""

    def __init__(self, binary, model: Path, log: Path, ctx: int = CTX) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [str(binary.path), "-m", str(model), "-c", str(ctx), "-np", "1", "-fa", "on", "-t", "1",
                "-ctk", "q4_0", "-ctv", "q4_0", "--host", "127.0.0.1", "--port", str(self.port)]
        self.log = log.open("wb")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=self.log, env=binary.launch_env(),
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"hand-started server died, see {log}"
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("hand-started server did not become ready")

    def healthy(self) -> bool:
        return self.proc.poll() is None and httpx.get(self.url + "/health", timeout=5).status_code == 200

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def running(server_binary, model_path, tmp_path):
    srv = HandStarted(server_binary, model_path, tmp_path / "hand.log")
    yield srv
    srv.stop()


def profile(tmp_path: Path, url: str, *, ctx: int = CTX, model: str = "bundled", n_predict: int = 24) -> Path:
    text = f"""
name = "attach"
[model]
path = "{model}"
[server]
ctx_size = {ctx}
threads = 1
[[sides]]
name = "q8_0 started"
cache_type_k = "q8_0"
cache_type_v = "q8_0"
[[sides]]
name = "q4_0 attached"
cache_type_k = "q4_0"
cache_type_v = "q4_0"
url = "{url}"
[prompt]
text = "The capital of France is"
[sampling]
n_predict = {n_predict}
[run]
mode = "sequential"
"""
    path = tmp_path / "attach.toml"
    path.write_text(text)
    return path


def test_one_started_one_attached(running, tmp_path, capsys, no_leftover_servers):
    record = tmp_path / "rec.toml"
    rc = main(["run", str(profile(tmp_path, running.url)), "--headless", "--record", str(record)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"attaching to the llama-server at {running.url}" in out
    rec = read_record(record)
    started, attached = rec.sides
    assert started.argv and started.url is None and started.cache_types == "set"
    assert attached.argv == () and attached.url == running.url and attached.cache_types == "declared"
    assert attached.pid == running.proc.pid  # found by its listening port: a local process
    assert attached.served_model and Path(attached.served_model).name == Path(rec.model.path).name
    assert attached.n_ctx == CTX
    assert attached.memory_source in ("rss", "nvml") and attached.memory_mib  # sampled: it is local
    assert [r.predicted_n for r in attached.runs] == [24] and attached.status == "done"
    assert running.healthy()  # never stopped by kvtui


def test_attached_context_differs_is_refused(running, tmp_path, capsys):
    rc = main(["run", str(profile(tmp_path, running.url, ctx=2048)), "--headless", "--no-record"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"has a {CTX}-token context, the started sides get 2048" in err and "kvtui: fix:" in err
    assert running.healthy()


def test_attached_other_model_is_refused_unless_forced(server_binary, model_path, tmp_path, capsys):
    other = tmp_path / "other-model.gguf"  # another file: a different model as far as kvtui can tell
    shutil.copyfile(model_path, other)
    srv = HandStarted(server_binary, other, tmp_path / "other.log")
    try:
        rc = main(["run", str(profile(tmp_path, srv.url)), "--headless", "--no-record"])
        err = capsys.readouterr().err
        assert rc == 2, err
        assert f"serves {other}" in err and "--force" in err
        rc = main(["run", str(profile(tmp_path, srv.url, n_predict=4)), "--headless", "--no-record", "--force"])
        assert rc == 0, capsys.readouterr()
        assert srv.healthy()
    finally:
        srv.stop()


def test_remote_host_needs_allow_remote(tmp_path, capsys):
    rc = main(["run", str(profile(tmp_path, "http://192.0.2.7:8080")), "--headless", "--no-record"])
    err = capsys.readouterr().err
    assert rc == 2 and "192.0.2.7 is another machine" in err and "--allow-remote" in err


def test_unreachable_url_is_refused(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    rc = main(["run", str(profile(tmp_path, url)), "--headless", "--no-record"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot reach the server" in err and "start llama-server there first" in err


def test_prompt_progress_from_the_real_server(running):
    """The bundled build sends prompt_progress for a long prompt; the parser turns it into Progress."""
    words = " ".join(f"item{i} is number {i}." for i in range(300))  # about 3,200 tokens
    path, body = client.build_request(Prompt(text=words), Sampling(n_predict=2), cache_prompt=False)
    assert body["return_progress"] is True
    seen: list[client.Progress] = []

    async def go() -> list[client.Piece]:
        async with client.http_client() as http:
            return [p async for p in client.stream(http, running.url, path, body, on_progress=seen.append)]

    pieces = asyncio.run(go())
    assert pieces and all(p.n >= 1 for p in pieces)  # no progress chunk came through as a token
    assert seen, "no prompt_progress from this build"
    total = seen[-1].total
    assert 3000 < total < CTX
    assert [p.processed for p in seen] == sorted(p.processed for p in seen)
    assert seen[-1].processed == total
    assert all(p.total == total for p in seen)
    assert seen[-1].tokens_per_second and seen[-1].tokens_per_second > 0


def test_a_sides_device_reaches_llama_server(tmp_path, capsys, no_leftover_servers):
    """device = "Vulkan1" is passed as --device: this machine has no Vulkan device, so the real server says so."""
    path = tmp_path / "dev.toml"
    path.write_text(profile(tmp_path, "http://127.0.0.1:1").read_text()
                    .replace('url = "http://127.0.0.1:1"', 'device = "Vulkan1"'))
    record = tmp_path / "rec.toml"
    rc = main(["run", str(path), "--headless", "--record", str(record)])
    out = capsys.readouterr().out
    assert rc == 1, out
    assert "llama-server has no device Vulkan1" in out and "llama-server --list-devices" in out
    side = read_record(record).sides[1]
    assert side.argv[side.argv.index("--device") + 1] == "Vulkan1" and side.placement == "Vulkan1"
    assert side.status == "crashed"


def test_every_side_attached_takes_the_model_the_servers_serve(running, tmp_path, capsys, no_leftover_servers):
    """No model in the profile: it is the file /props names. Both sides on the one server (it queues them)."""
    text = profile(tmp_path, running.url, model="", n_predict=8).read_text()
    text = text.replace('name = "q8_0 started"', f'name = "first"\nurl = "{running.url}"')
    path = tmp_path / "both.toml"
    path.write_text(text)
    record = tmp_path / "rec.toml"
    rc = main(["run", str(path), "--headless", "--record", str(record)])
    out = capsys.readouterr().out
    assert rc == 0, out
    rec = read_record(record)
    assert all(s.url == running.url and s.cache_types == "declared" and s.pid == running.proc.pid for s in rec.sides)
    assert Path(rec.model.path).name == Path(rec.sides[0].served_model).name
    assert [len(s.runs) for s in rec.sides] == [1, 1]
    assert running.healthy()
