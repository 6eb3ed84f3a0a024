"""The fault matrix: each fault provoked for real, with its one-line cause and fix, the exit code, no server
left behind, and the saved record where there is one.

Tests marked ``server`` run the real llama-server and Gemma 3 270M. Two kinds of fault cannot be provoked
with a real server, and only those use stand-ins, each said so where it is used: malformed SSE or JSON (a
tiny fake llama-server written below, asyncio on 127.0.0.1), and faults found before any server starts (a
dummy executable that is never run). The README's "Reliability" table lists every case with its test.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import re
import signal
import socket
import stat
import struct
import subprocess
import sys
import termios
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import tomli_w

from kvtui.cli import main
from kvtui.core.errors import KvtuiError, ProfileError
from kvtui.core.events import TokenReceived
from kvtui.core.profiles import load_profile
from kvtui.core.record.model import SessionRecord, Side
from kvtui.core.record.recorder import default_record_path, read_record, write_record
from kvtui.core.remote import check_remote
from kvtui.core.run.prepare import check_writable, prepare
from kvtui.core.run.runner import Runner
from kvtui.core.server.locate import help_flags
from kvtui.core.server.process import LlamaServer, server_args

REPO = Path(__file__).resolve().parents[2]
server = pytest.mark.server

TWO_SIDES = [{"name": "q8_0", "cache_type_k": "q8_0", "cache_type_v": "q8_0"},
             {"name": "q4_0", "cache_type_k": "q4_0", "cache_type_v": "q4_0"}]


# -- helpers ------------------------------------------------------------------------------------


def write_profile(tmp_path: Path, *, sides: list[dict[str, Any]] | None = None, server: dict[str, Any] | None = None,
                  sampling: dict[str, Any] | None = None, run: dict[str, Any] | None = None,
                  name: str = "profile.toml") -> Path:
    """A small, fast profile: ctx 1024, one thread per server, 8 tokens, no warm-up, 2 s stall timeout."""
    data = {
        "name": "fault",
        "model": {"path": "bundled"},
        "server": {"ctx_size": 1024, "threads": 1, **(server or {})},
        "sides": sides or TWO_SIDES,
        "prompt": {"text": "def fib(n):\n"},
        "sampling": {"n_predict": 8, **(sampling or {})},
        "run": {"warmup": False, "stall_timeout_s": 2, **(run or {})},
    }
    path = tmp_path / name
    path.write_text(tomli_w.dumps(data))
    return path


def run_kvtui(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``kvtui ARGS`` in this process: (exit code, stdout, stderr)."""
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def headless(profile: Path, record: Path, server_bin: Path | str, *more: str) -> list[str]:
    return ["run", str(profile), "--headless", "--record", str(record), "--server-bin", str(server_bin), *more]


def assert_fault(text: str, cause: str, fix: str) -> None:
    """The cause is on one line after ``error:``, what to do on one line after ``fix:``."""
    lines = text.splitlines()
    assert any("error: " in ln and cause in ln for ln in lines), f"no `error: ...{cause}` line in:\n{text}"
    assert any("fix: " in ln and fix in ln for ln in lines), f"no `fix: ...{fix}` line in:\n{text}"


def assert_recorded_error(side: Side, cause: str) -> None:
    assert side.error is not None and cause in side.error and "\n" not in side.error, side.error


def dummy_binary(tmp_path: Path) -> Path:
    """An executable that stands in for llama-server where the fault is found before any server starts
    (it is never run: these cases fail earlier)."""
    path = tmp_path / "bin" / "llama-server"
    path.parent.mkdir(exist_ok=True)
    path.write_text("#!/bin/sh\nexit 1\n")
    path.chmod(0o755)
    return path


def on_tokens(monkeypatch: pytest.MonkeyPatch, side: int, n: int, action: Callable[[Runner], None]) -> list[Any]:
    """Call ``action(runner)`` once, as soon as ``side`` has streamed ``n`` tokens."""
    original = Runner.emit
    fired: list[Any] = []

    def emit(self: Runner, event: Any) -> None:
        original(self, event)
        if not fired and isinstance(event, TokenReceived) and event.side == side and event.n >= n:
            fired.append(event)
            action(self)

    monkeypatch.setattr(Runner, "emit", emit)
    return fired


def gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# -- bad input: found before any server starts (exit 2) -------------------------------------------


@pytest.mark.parametrize("mode", ["headless", "app"])
@pytest.mark.parametrize("case", ["unknown key", "wrong type", "bad cache type", "quantized V without flash attention",
                                  "not TOML", "no such file"])
def test_bad_profile_is_refused_with_key_and_fix(tmp_path: Path, capsys, case: str, mode: str) -> None:
    """A bad profile: exit 2 and one line naming the file and key, one line with the fix; the app too
    (the profile is checked before the app opens)."""
    bad = {
        "unknown key": ({"server": {"ctx_szie": 2048}}, "server.ctx_szie: unknown key", 'did you mean "ctx_size"?'),
        "wrong type": ({"server": {"ctx_size": "big"}}, 'server.ctx_size: expected an integer, got "big"', ""),
        "bad cache type": ({"sides": [{"name": "a", "cache_type_k": "q3_k", "cache_type_v": "q8_0"}, TWO_SIDES[1]]},
                           'sides[0].cache_type_k: "q3_k" is not allowed', "allowed: f32, f16, bf16, q8_0"),
        "quantized V without flash attention": ({"server": {"flash_attn": "off"}},
                                                "server.flash_attn: \"off\" with a quantized V cache",
                                                "needs flash attention for a quantized V cache"),
        "not TOML": (None, "not valid TOML", "fix the syntax at that line"),
        "no such file": (None, "no such profile file", "check the path"),
    }
    overrides, cause, fix = bad[case]
    if case == "not TOML":
        profile = tmp_path / "broken.toml"
        profile.write_text('name = "x"\n[server\nctx_size = 1024\n')
    elif case == "no such file":
        profile = tmp_path / "missing.toml"
    else:
        profile = write_profile(tmp_path)
        data = tomllib.loads(profile.read_text())
        for key, value in overrides.items():
            if isinstance(value, dict):
                data[key].update(value)
            else:
                data[key] = value
        profile.write_text(tomli_w.dumps(data))
    args = ["run", str(profile), "--record", str(tmp_path / "r.toml")] + (["--headless"] if mode == "headless" else [])
    code, _, err = run_kvtui(args, capsys)
    assert code == 2
    assert f"kvtui: error: {profile}: " in err and cause in err, err
    if fix:
        assert_fault(err, cause, fix)
    assert not (tmp_path / "r.toml").exists() and not (tmp_path / "r.logs").exists()


def test_missing_model_file(tmp_path: Path, capsys, no_leftover_servers) -> None:
    missing = tmp_path / "nope.gguf"
    code, _, err = run_kvtui(headless(write_profile(tmp_path), tmp_path / "r.toml", dummy_binary(tmp_path),
                                      "--model", str(missing)), capsys)
    assert code == 2
    assert_fault(err, f"model not found: {missing}", "pass --model PATH to a .gguf file")


def test_model_file_that_is_not_gguf(tmp_path: Path, capsys, no_leftover_servers) -> None:
    model = tmp_path / "model.gguf"
    model.write_text("these are not the weights you are looking for\n")
    code, _, err = run_kvtui(headless(write_profile(tmp_path), tmp_path / "r.toml", dummy_binary(tmp_path),
                                      "--model", str(model)), capsys)
    assert code == 2
    assert_fault(err, f"not a GGUF file: {model}", "llama-server needs a .gguf model")


def test_missing_server_binary(tmp_path: Path, capsys, no_leftover_servers) -> None:
    missing = tmp_path / "llama.cpp" / "llama-server"
    code, _, err = run_kvtui(headless(write_profile(tmp_path), tmp_path / "r.toml", missing), capsys)
    assert code == 2
    assert_fault(err, f"llama-server not found at {missing} (from --server-bin)", "check the path")


def test_server_binary_not_executable(tmp_path: Path, capsys, no_leftover_servers) -> None:
    binary = dummy_binary(tmp_path)
    binary.chmod(0o644)
    code, _, err = run_kvtui(headless(write_profile(tmp_path), tmp_path / "r.toml", binary), capsys)
    assert code == 2
    assert_fault(err, f"{binary} (from --server-bin) is not executable", f"chmod +x {binary}")


def test_unwritable_record_location_is_reported_before_any_server_starts(tmp_path: Path, capsys, monkeypatch,
                                                                         no_leftover_servers) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a server was started")

    monkeypatch.setattr(LlamaServer, "start", never)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the record folder should be")
    code, _, err = run_kvtui(headless(write_profile(tmp_path), blocker / "sub" / "r.toml", dummy_binary(tmp_path)),
                             capsys)
    assert code == 2
    assert_fault(err, f"cannot create the record folder {blocker}/sub: Not a directory",
                 "pass --record PATH somewhere writable")
    folder = tmp_path / "records"
    folder.mkdir()
    code, _, err = run_kvtui(headless(write_profile(tmp_path), folder, dummy_binary(tmp_path)), capsys)
    assert code == 2
    assert_fault(err, f"--record {folder} is a folder", "give a file name")


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder this user cannot write: a mode-0500 one, or for root (whom modes do not stop) /proc/sys."""
    folder = tmp_path / "read-only"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o500)
    if os.access(folder, os.W_OK):
        folder = Path("/proc/sys")
        if os.access(folder, os.W_OK):
            pytest.skip("no folder here that this user cannot write")
    return folder


def test_read_only_record_folder_is_reported_before_any_server_starts(tmp_path: Path, capsys, monkeypatch,
                                                                      no_leftover_servers) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a server was started")

    monkeypatch.setattr(LlamaServer, "start", never)
    folder = unwritable_folder(tmp_path)
    with pytest.raises(KvtuiError) as info:
        check_writable(folder / "r.toml")
    assert str(info.value) == f"cannot write the record in {folder}: permission denied (pass --record PATH somewhere writable)"
    code, _, err = run_kvtui(headless(write_profile(tmp_path), folder / "r.toml", dummy_binary(tmp_path)), capsys)
    assert code == 2
    assert_fault(err, f"cannot write the record in {folder}: permission denied", "pass --record PATH somewhere writable")


# -- security -----------------------------------------------------------------------------------


@pytest.mark.parametrize("where,args", [
    ("server.extra_args", ["--host", "0.0.0.0"]),
    ("sides[1].extra_args", ["--host=192.168.1.7"]),
    ("server.extra_args", ["-t", "1", "--host", "::"]),
], ids=["host-0.0.0.0", "host=lan-address", "host-ipv6-any"])
def test_extra_args_that_expose_a_server_are_refused(tmp_path: Path, capsys, monkeypatch, where: str, args: list[str],
                                                     no_leftover_servers) -> None:
    sides = [dict(s) for s in TWO_SIDES]
    server_extra: dict[str, Any] = {}
    if where.startswith("sides"):
        sides[1]["extra_args"] = args
    else:
        server_extra["extra_args"] = args
    profile = write_profile(tmp_path, sides=sides, server=server_extra)
    host = args[-1].partition("=")[2] if "=" in args[-1] else args[-1]
    code, _, err = run_kvtui(headless(profile, tmp_path / "r.toml", dummy_binary(tmp_path)), capsys)
    assert code == 2
    assert_fault(err, f"{where}: --host {host} would let other machines reach llama-server", "--allow-remote")
    # --allow-remote lets it through: the run gets as far as the next check (the model, missing here)
    code, _, err = run_kvtui(headless(profile, tmp_path / "r.toml", dummy_binary(tmp_path), "--allow-remote",
                                      "--model", str(tmp_path / "absent.gguf")), capsys)
    assert code == 2 and "model not found" in err and "--host" not in err


def test_loopback_hosts_need_no_flag(tmp_path: Path) -> None:
    for host_args in (["--host", "127.0.0.1"], ["--host=localhost"], ["--host", "::1"], ["--host", "127.0.0.2"]):
        profile = load_profile(write_profile(tmp_path, server={"extra_args": host_args}))
        check_remote(profile)
    exposed = load_profile(write_profile(tmp_path, server={"extra_args": ["--host", "0.0.0.0"]}))
    check_remote(exposed, allow_remote=True)
    with pytest.raises(ProfileError):
        check_remote(exposed)


def test_no_shell_anywhere() -> None:
    """Every process kvtui starts is an argument list: no shell, no os.system."""
    pattern = re.compile(r"shell\s*=\s*True|os\.system\(|os\.popen\(|create_subprocess_shell|getoutput\(|getstatusoutput\(")
    hits = [f"{p.relative_to(REPO)}:{n}: {line.strip()}" for p in sorted((REPO / "kvtui").rglob("*.py"))
            for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, hits


def test_records_are_written_0600(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    old = os.umask(0)
    try:
        write_record(path, SessionRecord())
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(tmp_path.glob(".*.tmp")), "the temp file is gone"


def test_record_name_from_a_profile_stays_in_the_sessions_folder() -> None:
    for name in ("../../etc/evil", "a/b", "x\x00y", "..", ""):
        path = default_record_path(name)
        assert path.parent == Path("sessions") and "/" not in path.name and "\x00" not in path.name, path


@server
async def test_server_listens_on_loopback_only_and_wants_the_api_key(tmp_path: Path, server_binary, model_path,
                                                                      no_leftover_servers) -> None:
    profile = load_profile(write_profile(tmp_path))
    args = server_args(profile, profile.sides[0], model_path, help_flags(server_binary))
    srv = LlamaServer(server_binary, args, tmp_path / "server.log")
    assert srv.api_key not in " ".join(srv.argv), "the key is masked where it is recorded"
    await srv.start()
    try:
        async with httpx.AsyncClient() as http:
            await srv.wait_ready(http, timeout_s=120)
            body = {"prompt": "hi", "n_predict": 1}
            url = srv.base_url + "/completion"
            assert (await http.post(url, json=body, timeout=30)).status_code == 401
            assert (await http.post(url, json=body, headers={"Authorization": "Bearer wrong"}, timeout=30)).status_code == 401
            assert (await http.post(url, json=body, headers=srv.headers, timeout=60)).status_code == 200
        proc = psutil.Process(srv.pid)
        conns = proc.net_connections(kind="inet") if hasattr(proc, "net_connections") else proc.connections(kind="inet")
        listening = [c.laddr for c in conns if c.status == psutil.CONN_LISTEN]
        assert listening and all(a.ip == "127.0.0.1" for a in listening), listening
    finally:
        await srv.stop()


# -- faults in a running server (exit 1) -----------------------------------------------------------


@server
def test_truncated_model_fails_at_load(tmp_path: Path, capsys, server_binary, model_path, no_leftover_servers) -> None:
    """A GGUF whose header is whole but whose tensor data is cut: the server exits while loading."""
    model = tmp_path / "half.gguf"
    with open(model_path, "rb") as src, open(model, "wb") as dst:
        dst.write(src.read(model_path.stat().st_size // 2))
    record = tmp_path / "r.toml"
    code, out, _ = run_kvtui(headless(write_profile(tmp_path), record, server_binary.path, "--model", str(model)), capsys)
    assert code == 1
    assert_fault(out, "the model file is truncated or corrupted", "re-download or re-convert the .gguf file")
    data = read_record(record)
    assert data.status == "failed"
    for side in data.sides:
        assert side.status == "crashed" and side.exit_code != 0 and side.log_tail
        assert_recorded_error(side, "the model file is truncated or corrupted")


@server
def test_model_too_big_for_memory(tmp_path: Path, capsys, server_binary, model_path, no_leftover_servers) -> None:
    """A context whose f32 KV cache is twice this machine's RAM and swap: the allocation fails at load."""
    if Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "1":
        pytest.skip("vm.overcommit_memory=1: the allocation would succeed and the OOM killer act instead")
    from kvtui.core.model.kvsize import estimate_kv_mib

    per_m = estimate_kv_mib(model_path, ctx=2**20, cache_type_k="f32", cache_type_v="f32", n_parallel=1).total_mib
    total_mib = (psutil.virtual_memory().total + psutil.swap_memory().total) / 2**20
    ctx = int(2 * total_mib / per_m * 2**20) // 256 * 256
    sides = [{"name": "f32", "cache_type_k": "f32", "cache_type_v": "f32"},
             {"name": "f32-again", "cache_type_k": "f32", "cache_type_v": "f32"}]
    record = tmp_path / "r.toml"
    code, out, _ = run_kvtui(headless(write_profile(tmp_path, sides=sides, server={"ctx_size": ctx}), record,
                                      server_binary.path), capsys)
    assert code == 1
    assert_fault(out, "not enough memory to load the model with this context", "lower server.ctx_size")
    data = read_record(record)
    assert data.status == "failed" and data.mode == "sequential"  # the plan saw it would not fit
    for side in data.sides:
        assert side.status == "crashed"
        assert_recorded_error(side, "not enough memory to load the model with this context")


@server
def test_busy_port(tmp_path: Path, capsys, monkeypatch, server_binary, no_leftover_servers) -> None:
    """The port kvtui picked is taken before the server binds it (a race with another program)."""
    import kvtui.core.server.process as server_module

    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    held.bind(("127.0.0.1", 0))
    held.listen()
    calls: list[int] = []
    real_free_port = server_module.free_port

    def free_port() -> int:  # the second server (side 1) gets the port this test holds
        calls.append(1)
        return held.getsockname()[1] if len(calls) == 2 else real_free_port()

    monkeypatch.setattr(server_module, "free_port", free_port)
    record = tmp_path / "r.toml"
    try:
        code, out, _ = run_kvtui(headless(write_profile(tmp_path), record, server_binary.path), capsys)
    finally:
        held.close()
    assert code == 1
    assert_fault(out, "the port is already in use", "kvtui picks free ports, so retry")
    ok, busy = read_record(record).sides
    assert ok.status == "done" and ok.runs[0].predicted_n == 8
    assert busy.status == "crashed"
    assert_recorded_error(busy, "the port is already in use")


@server
@pytest.mark.parametrize("extra,cause,fix", [
    (["-ctk", "q3_k"], "llama-server does not support cache type q3_k", "use one of f32, f16, bf16, q8_0"),
    (["-fa", "off"], "a quantized V cache needs flash attention, which is off", 'set flash_attn = "on"'),
], ids=["cache-type-q3_k", "flash-attn-off"])
def test_extra_args_the_server_refuses(tmp_path: Path, capsys, server_binary, extra: list[str], cause: str, fix: str,
                                       no_leftover_servers) -> None:
    """What the profile cannot check reaches the server; its refusal is explained, the other side runs."""
    sides = [dict(TWO_SIDES[0]), {**TWO_SIDES[1], "extra_args": extra}]
    record = tmp_path / "r.toml"
    code, out, _ = run_kvtui(headless(write_profile(tmp_path, sides=sides), record, server_binary.path), capsys)
    assert code == 1
    assert_fault(out, cause, fix)
    data = read_record(record)
    ok, refused = data.sides
    assert data.status == "failed" and ok.status == "done" and ok.runs[0].stop == "length"
    assert refused.status == "crashed" and refused.exit_code != 0
    assert_recorded_error(refused, cause)


@server
def test_prompt_longer_than_the_context(tmp_path: Path, capsys, server_binary, no_leftover_servers) -> None:
    """The real server refuses a 600-token prompt with -c 256 (HTTP 400 exceed_context_size_error): the pane and
    the console say how long the prompt is, how big the context, and what to change."""
    profile = write_profile(tmp_path, server={"ctx_size": 256})
    data = tomllib.loads(profile.read_text())
    data["prompt"] = {"text": "def f(x):\n    return x + 1\n\n" * 60}
    profile.write_text(tomli_w.dumps(data))
    record = tmp_path / "r.toml"
    code, out, _ = run_kvtui(headless(profile, record, server_binary.path), capsys)
    assert code == 1
    found = re.search(r"the prompt \((\d+) tokens\) does not fit the server's context \((\d+) tokens\)", out)
    assert found and int(found[1]) > 256 and found[2] == "256", out
    assert_fault(out, found[0], "raise server.ctx_size in the profile, or shorten the prompt")
    for side in read_record(record).sides:
        assert side.status == "error"
        assert_recorded_error(side, found[0])
        assert [r.stop for r in side.runs] == ["error"]


@server
def test_server_crash_mid_stream_other_side_continues(tmp_path: Path, capsys, monkeypatch, server_binary,
                                                      no_leftover_servers) -> None:
    record = tmp_path / "r.toml"
    fired = on_tokens(monkeypatch, 1, 5, lambda r: os.kill(r.servers[1].pid, signal.SIGKILL))  # type: ignore[arg-type]
    code, out, _ = run_kvtui(headless(write_profile(tmp_path, sampling={"n_predict": 24}), record,
                                      server_binary.path), capsys)
    assert fired and code == 1
    assert_fault(out, "llama-server was killed by signal 9", "see its log")
    data = read_record(record)
    assert data.status == "failed"
    ok, crashed = data.sides
    assert ok.status == "done" and ok.runs[0].stop == "length" and ok.runs[0].predicted_n == 24
    assert crashed.status == "crashed" and crashed.exit_code == -9 and crashed.log_tail
    assert_recorded_error(crashed, "llama-server was killed by signal 9")
    (run,) = crashed.runs
    assert run.stop == "error" and run.predicted_n >= 5 and "".join(run.pieces) == run.text != ""
    assert stat.S_IMODE(record.stat().st_mode) == 0o600


@server
def test_server_that_stops_answering_is_cut_off_and_killed(tmp_path: Path, capsys, monkeypatch, server_binary,
                                                            no_leftover_servers) -> None:
    """SIGSTOP one server mid-stream: after run.stall_timeout_s without a token that side ends with the cause,
    its stopped process is ended (SIGTERM does nothing to a stopped process until SIGCONT), the other goes on."""
    stopped: list[psutil.Process] = []

    def freeze(runner: Runner) -> None:
        pid = runner.servers[1].pid
        assert pid is not None
        stopped.append(psutil.Process(pid))
        os.kill(pid, signal.SIGSTOP)

    on_tokens(monkeypatch, 1, 3, freeze)
    record = tmp_path / "r.toml"
    code, out, _ = run_kvtui(headless(write_profile(tmp_path, sampling={"n_predict": 24}, run={"stall_timeout_s": 2}),
                                      record, server_binary.path), capsys)
    assert stopped and code == 1
    assert_fault(out, "no data from the server for 2 s", "raise run.stall_timeout_s if it is just slow")
    assert gone(stopped[0])
    data = read_record(record)
    ok, hung = data.sides
    assert ok.status == "done" and ok.runs[0].predicted_n == 24
    assert hung.status == "error" and hung.exit_code is not None
    assert_recorded_error(hung, "no data from the server for 2 s")
    (run,) = hung.runs
    assert run.stop == "error" and run.predicted_n >= 3 and run.pieces


@server
async def test_stop_ends_a_stopped_server_without_waiting_for_sigkill(tmp_path: Path, server_binary, model_path,
                                                                      no_leftover_servers) -> None:
    srv = LlamaServer(server_binary, ["-m", str(model_path), "-c", "1024", "-np", "1", "-t", "1",
                                      "--host", "127.0.0.1"], tmp_path / "server.log")
    await srv.start()
    try:
        async with httpx.AsyncClient() as http:
            await srv.wait_ready(http, timeout_s=120)
        assert srv.pid is not None
        os.kill(srv.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        rc = await srv.stop(grace_s=5.0)
        assert time.monotonic() - t0 < 4.0, "SIGCONT let SIGTERM act; the 5 s SIGKILL fallback was not needed"
        assert rc != -signal.SIGKILL
    finally:
        srv.kill_now()


# -- malformed data from a server: a fake llama-server, since a real one cannot be made to send it ---------

FAKE_SERVER = r'''#!{python}
"""A fake llama-server for kvtui's malformed-stream tests: asyncio HTTP on 127.0.0.1 only.

A real llama-server cannot be made to send malformed SSE or JSON, so this one does, on purpose. The side
whose -ctk is f16 gets a well-formed stream; every other side gets $KVTUI_FAKE_MODE.
"""
import asyncio, json, os, sys

args = sys.argv[1:]
if "--version" in args:
    print("version: 4242 (fake)", file=sys.stderr)
    sys.exit(0)
if "--help" in args:
    sys.exit(0)
port = int(args[args.index("--port") + 1])
key = args[args.index("--api-key") + 1]
ctk = args[args.index("-ctk") + 1]
mode = "good" if ctk == "f16" else os.environ["KVTUI_FAKE_MODE"]
with open(os.environ["KVTUI_FAKE_PIDS"], "a") as f:
    f.write(f"{os.getpid()}\n")


def event(obj):
    return ("data: " + json.dumps(obj) + "\n\n").encode()


WORDS = ["one", " two", " three"]
GOOD = [event({"content": w, "tokens_predicted": i + 1, "tokens": [100 + i], "stop": False})
        for i, w in enumerate(WORDS)]
GOOD.append(event({"content": "", "stop": True, "stop_type": "limit", "tokens_predicted": 3,
                   "timings": {"prompt_n": 4, "prompt_per_second": 100.0, "predicted_n": 3,
                               "predicted_per_second": 30.0}}))
STREAMS = {
    "good": GOOD,
    "bad-json": GOOD[:1] + [b'data: {"content": oops, "stop": false}\n\n'],
    "not-an-object": GOOD[:1] + [b"data: [1, 2, 3]\n\n"],
    "cut-short": GOOD[:2],
}


async def handle(reader, writer):
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    method, path, _ = head[0].split(" ", 2)
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
    if int(headers.get("content-length", 0)):
        await reader.readexactly(int(headers["content-length"]))

    def reply(status, body):
        writer.write(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                     f"Connection: close\r\n\r\n".encode() + body)

    if path == "/health":
        reply("200 OK", b'{"status": "ok"}')
    elif headers.get("authorization") != f"Bearer {key}":
        reply("401 Unauthorized", b'{"error": {"code": 401, "message": "Invalid API Key"}}')
    elif path == "/props":
        reply("200 OK", json.dumps({"default_generation_settings": {"n_ctx": 1024}, "build_info": "fake"}).encode())
    elif path == "/completion":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
        for chunk in STREAMS[mode]:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.05)
    else:
        reply("404 Not Found", b"{}")
    await writer.drain()
    writer.close()


async def serve():
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


asyncio.run(serve())
'''


@pytest.mark.parametrize("mode,cause,fix,pieces", [
    ("bad-json", "malformed JSON in the event stream (Expecting value)", "the server sent malformed data", ["one"]),
    ("not-an-object", "unexpected event payload: [1, 2, 3]", "the server sent malformed data", ["one"]),
    ("cut-short", "the stream ended before the server said it was done", "the server sent malformed data",
     ["one", " two"]),
], ids=["bad-json", "not-an-object", "cut-short"])
def test_malformed_data_from_the_server(tmp_path: Path, capsys, monkeypatch, mode: str, cause: str, fix: str,
                                        pieces: list[str]) -> None:
    """A fake llama-server (see FAKE_SERVER: asyncio on 127.0.0.1) sends malformed SSE or JSON to one side;
    that side ends with the cause, what it had streamed is kept, the other side finishes."""
    fake = tmp_path / "fake" / "llama-server"
    fake.parent.mkdir()
    fake.write_text(FAKE_SERVER.replace("{python}", sys.executable, 1))
    fake.chmod(0o755)
    pids = tmp_path / "fake-pids"
    monkeypatch.setenv("KVTUI_FAKE_MODE", mode)
    monkeypatch.setenv("KVTUI_FAKE_PIDS", str(pids))
    model = tmp_path / "empty.gguf"  # a GGUF header with no tensors: the fake never loads it
    model.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + bytes(16))
    sides = [{"name": "f16", "cache_type_k": "f16", "cache_type_v": "f16"}, TWO_SIDES[0]]
    record = tmp_path / "r.toml"
    code, out, _ = run_kvtui(headless(write_profile(tmp_path, sides=sides), record, fake, "--model", str(model)), capsys)
    assert code == 1
    assert_fault(out, cause, fix)
    data = read_record(record)
    ok, bad = data.sides
    assert ok.status == "done" and ok.runs[0].text == "one two three" and ok.runs[0].stop == "length"
    assert bad.status == "error"
    assert_recorded_error(bad, cause)
    (run,) = bad.runs
    assert run.stop == "error" and run.pieces == tuple(pieces)
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 2
    for pid in started:  # the fake servers were stopped too
        assert not psutil.pid_exists(pid) or gone(psutil.Process(pid))


# -- however kvtui ends: no server left, the record finalized ------------------------------------------


def kvtui_cmd(profile: Path, record: Path, server_bin: Path, *more: str) -> list[str]:
    return [sys.executable, "-m", "kvtui", "run", str(profile), "--record", str(record),
            "--server-bin", str(server_bin), *more]


def wait_streaming(record: Path, proc: subprocess.Popen[Any], timeout_s: float = 120.0) -> dict[str, Any]:
    """Until the autosaved record shows every side streaming (tokens already saved), return it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "kvtui ended before the servers streamed"
        with contextlib.suppress(OSError, tomllib.TOMLDecodeError):
            data = tomllib.loads(record.read_text())
            sides = data.get("sides") or []
            if sides and all(s.get("runs") and s["runs"][-1].get("pieces") for s in sides):
                return data
        time.sleep(0.2)
    pytest.fail("the servers did not stream in time")


def servers_of(pid: int) -> list[psutil.Process]:
    return [c for c in psutil.Process(pid).children(recursive=True) if "llama-server" in c.name()]


def assert_gone_within(procs: list[psutil.Process], seconds: float) -> None:
    _, alive = psutil.wait_procs(procs, timeout=seconds)
    alive = [p for p in alive if not gone(p)]
    assert not alive, f"llama-server still running {seconds:g} s later: {[p.pid for p in alive]}"


def assert_finalized_aborted(record: Path) -> None:
    data = read_record(record)
    assert data.status == "aborted"
    for side in data.sides:
        assert side.status == "aborted"
        run = side.runs[-1]
        assert run.stop == "aborted" and run.predicted_n > 0 and run.pieces, "the streamed tokens are kept"


@server
def test_sigkill_of_kvtui_leaves_no_server(tmp_path: Path, server_binary, no_leftover_servers) -> None:
    """PR_SET_PDEATHSIG: the servers get SIGKILL when kvtui dies, even by SIGKILL; the last autosave
    (every 3 s) already holds the tokens streamed so far."""
    record = tmp_path / "r.toml"
    profile = write_profile(tmp_path, sampling={"n_predict": 400})
    proc = subprocess.Popen(kvtui_cmd(profile, record, server_binary.path, "--headless"), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_streaming(record, proc)
        servers = servers_of(proc.pid)
        assert len(servers) == 2
        proc.kill()
        proc.wait(timeout=10)
        assert_gone_within(servers, 5.0)
    finally:
        if proc.poll() is None:
            proc.kill()
    data = read_record(record)
    assert data.status == "running"  # what kvtui could not finalize: it was killed
    assert all(s.runs[-1].stop == "aborted" and s.runs[-1].pieces for s in data.sides)


@server
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=["SIGTERM", "SIGHUP", "Ctrl-C"])
def test_signal_to_headless_kvtui(tmp_path: Path, server_binary, sig: signal.Signals, no_leftover_servers) -> None:
    record = tmp_path / "r.toml"
    profile = write_profile(tmp_path, sampling={"n_predict": 400})
    proc = subprocess.Popen(kvtui_cmd(profile, record, server_binary.path, "--headless"), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_streaming(record, proc)
        servers = servers_of(proc.pid)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out
    assert "interrupted: servers stopped, partial record saved" in out
    assert_gone_within(servers, 5.0)
    assert_finalized_aborted(record)


def spawn_in_terminal(cmd: list[str], cwd: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Run ``cmd`` on a new pseudo-terminal that is its controlling terminal; returns (process, master fd)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 42, 150, 0, 0))

    def take_terminal() -> None:  # in the child, after setsid: the pty becomes its controlling terminal
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(cmd, cwd=cwd, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            preexec_fn=take_terminal,  # noqa: PLW1509 (an ioctl only: nothing to deadlock on)
                            env={**os.environ, "TERM": "xterm-256color"})
    os.close(slave)

    def drain() -> None:  # a terminal that nobody reads would block the app
        with contextlib.suppress(OSError):
            while os.read(master, 65536):
                pass

    threading.Thread(target=drain, daemon=True).start()
    return proc, master


@server
@pytest.mark.parametrize("how", ["SIGTERM", "terminal closed", "SIGKILL"])
def test_signal_to_the_app(tmp_path: Path, server_binary, how: str, no_leftover_servers) -> None:
    """The app (not --headless) on a real pseudo-terminal: SIGTERM quits like `q`; closing the terminal
    (the kernel sends SIGHUP) ends it at once. Either way: servers stopped, record finalized, exit code 1.
    SIGKILL: the servers, spawned from the app's event-loop thread (the main thread), still get the
    parent-death signal."""
    record = tmp_path / "r.toml"
    profile = write_profile(tmp_path, sampling={"n_predict": 400})
    proc, master = spawn_in_terminal(kvtui_cmd(profile, record, server_binary.path), tmp_path)
    try:
        wait_streaming(record, proc)
        servers = servers_of(proc.pid)
        assert len(servers) == 2
        if how == "terminal closed":
            os.close(master)
            master = -1
        else:
            proc.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        if master >= 0:
            os.close(master)
    assert_gone_within(servers, 5.0)
    if how == "SIGKILL":
        assert proc.returncode == -signal.SIGKILL
        data = read_record(record)  # the last autosave, with the tokens streamed by then
        assert data.status == "running" and all(s.runs[-1].pieces for s in data.sides)
        return
    assert proc.returncode == 1
    assert_finalized_aborted(record)


@server
def test_an_exception_inside_kvtui_still_stops_servers_and_saves(tmp_path: Path, monkeypatch, server_binary,
                                                                  no_leftover_servers) -> None:
    original = Runner._measure_all

    async def measure_then_fail(self: Runner, up: list[int]) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(original(self, up), 3.0)  # cancelled mid-stream after 3 s
        raise RuntimeError("an injected bug")

    monkeypatch.setattr(Runner, "_measure_all", measure_then_fail)
    record = tmp_path / "r.toml"
    profile = write_profile(tmp_path, sampling={"n_predict": 400})
    with pytest.raises(RuntimeError, match="an injected bug"):
        main(headless(profile, record, server_binary.path))
    assert_finalized_aborted(record)


# -- the app shows a fault in the side's pane ----------------------------------------------------------


@server
async def test_app_shows_the_cause_and_fix_in_the_pane(tmp_path: Path, server_binary, no_leftover_servers) -> None:
    from textual.widgets import Static

    from kvtui.core.run.live import LiveSession
    from kvtui.ui.app import KvtuiApp
    from kvtui.ui.widgets.generation_pane import GenerationPane

    sides = [dict(TWO_SIDES[0]), {**TWO_SIDES[1], "extra_args": ["-ctk", "q3_k"]}]
    prepared = prepare(write_profile(tmp_path, sides=sides), server_bin=str(server_binary.path),
                       record=str(tmp_path / "r.toml"))
    app = KvtuiApp(LiveSession(prepared))
    async with app.run_test(size=(150, 42)) as pilot:
        state = app.state
        deadline = asyncio.get_running_loop().time() + 120
        while not (len(state.sides) == 2 and state.sides[0].status == "done" and state.sides[1].status == "crashed"):
            assert asyncio.get_running_loop().time() < deadline, "timed out"
            await pilot.pause(0.1)
        app.draw_now()  # the figures as they are now, not after a wait for the next frame
        await pilot.pause()
        alert = list(app.query(GenerationPane))[1].query_one(".pane-alert", Static)
        text = str(getattr(alert.content, "plain", alert.content))
        lines = text.splitlines()
        assert "llama-server does not support cache type q3_k" in lines[0]
        assert lines[1].startswith("fix: use one of f32, f16, bf16, q8_0")
        await pilot.press("q")
        while app.return_value is None:  # quitting stops the servers first
            assert asyncio.get_running_loop().time() < deadline, "timed out"
            await pilot.pause(0.1)
    assert app.return_value == 1  # what run_app returns as kvtui's exit code
    assert read_record(tmp_path / "r.toml").status == "failed"

