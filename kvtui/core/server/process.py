"""One llama-server process: argv, start, readiness, log, stop.

The process is started from an argument list (never a shell) in its own
session, with the parent-death signal set on Linux so that it cannot outlive
kvtui. Readiness is ``/health`` answering 200 while the process is watched: a
load failure is reported with its log tail as soon as the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import secrets
import signal
import socket
import time
from pathlib import Path

import httpx

from kvtui.core.errors import ServerError
from kvtui.core.logs.failure import explain_failure, parse_log, tail
from kvtui.core.logs.provenance import parse_ran_with
from kvtui.core.profiles import QUANTIZED_TYPES, Profile, Side
from kvtui.core.server.base import Ready, Server
from kvtui.core.server.locate import ServerBinary

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int) -> bool:
    """Whether another socket is bound to 127.0.0.1:``port`` right now.

    SO_REUSEADDR makes connections in TIME_WAIT (left by a server that served
    and then died) not count: only a live socket holding the port does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def server_args(profile: Profile, side: Side, model: Path, known: frozenset[str] = frozenset()) -> list[str]:
    """The fair, pinned llama-server arguments for one side (without binary, port and key).

    Everything the server could otherwise choose differently for A and B is
    pinned: context, offload, one slot, flash attention, fit off, loopback.

    Args:
        profile: the profile being run.
        side: this side's cache types and extra arguments.
        model: the GGUF file.
        known: flags this llama-server build accepts (from ``--help``); newer
            flags such as ``--fit`` are passed only when the build knows them.
    """
    fa = profile.flash_attn
    if side.cache_type_v in QUANTIZED_TYPES:
        fa = "on"  # a quantized V cache needs flash attention
    args = [
        "-m", str(model),
        "-c", str(profile.ctx_size),
        "-ngl", str(profile.n_gpu_layers),
        "-np", "1",
        "-fa", fa,
        "-ctk", side.cache_type_k,
        "-ctv", side.cache_type_v,
        "--host", "127.0.0.1",
        "-lv", "4",  # the KV cache size lines print only at verbosity 4+
    ]
    if "--fit" in known:
        args += ["--fit", "off"]  # --fit would shrink unset values differently for A and B
    if "--no-webui" in known:
        args.append("--no-webui")
    if profile.threads > 0:
        args += ["-t", str(profile.threads)]
    if side.device:
        args += ["--device", side.device]  # e.g. CUDA1 or Vulkan1: this side's GPU
    return args + list(profile.extra_args) + list(side.extra_args)


ROT_DISABLE = "LLAMA_ATTN_ROT_DISABLE"


def side_env(side: Side) -> tuple[tuple[str, str], ...]:
    """Environment for this side's server only: ``gpus`` -> CUDA_VISIBLE_DEVICES, ``attn_rotation = "off"`` ->
    LLAMA_ATTN_ROT_DISABLE=1."""
    env = [("CUDA_VISIBLE_DEVICES", side.gpus)] if side.gpus else []
    if side.attn_rotation == "off":
        env.append((ROT_DISABLE, "1"))
    return tuple(env)


def _set_pdeathsig(parent: int | None = None) -> None:  # runs in the child between fork and exec
    """SIGKILL this child when kvtui dies, even by SIGKILL (Linux ``PR_SET_PDEATHSIG``).

    SIGKILL, not SIGTERM: with its client gone mid-stream, llama-server's graceful shutdown can hang for
    good (b10434: `stop: cancel task`, then nothing for 8 minutes, until a second signal), and with kvtui
    dead nobody sends the SIGKILL that ``stop()`` sends after its grace period. A server has nothing to
    save; the kernel and the GPU driver free what it held. The signal follows the *thread* that forked:
    asyncio spawns from the event loop's thread, which lives as long as kvtui. ``parent`` closes the race
    where kvtui dies between fork and prctl: then the child is already orphaned and must not go on to exec.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass
    if parent is not None and os.getppid() != parent:
        os._exit(1)


class LlamaServer(Server):
    """A llama-server child process owned by kvtui.

    Args:
        binary: which llama-server and its environment.
        args: arguments from :func:`server_args`.
        log_path: where stdout and stderr go.
        env: extra environment for this server only (e.g. LLAMA_ATTN_ROT_DISABLE=1).
    """

    def __init__(self, binary: ServerBinary, args: list[str], log_path: Path,
                 env: tuple[tuple[str, str], ...] = ()) -> None:
        self.binary = binary
        self.env = dict(env)
        self.port = free_port()
        self.api_key = secrets.token_urlsafe(24)
        self.args = list(args)
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self._stopping = False

    @property
    def argv(self) -> list[str]:
        """The full command line, with the API key masked (it is what the record stores)."""
        return [str(self.binary.path), *self.args, "--port", str(self.port), "--api-key", "***"]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def started(self) -> bool:
        return self.proc is not None

    @property
    def exit_code(self) -> int | None:
        return self.proc.returncode if self.proc else None

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def wait_exit(self, timeout_s: float) -> bool:
        if self.proc is None:
            return False
        if self.proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.proc.wait()), timeout_s)
        return self.proc.returncode is not None

    async def start(self) -> None:
        """Spawn the process; its output goes to ``log_path``."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = [str(self.binary.path), *self.args, "--port", str(self.port), "--api-key", self.api_key]
        with open(self.log_path, "wb") as log:
            try:
                self.proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                    env=self.launch_env(), start_new_session=True,
                    preexec_fn=functools.partial(_set_pdeathsig, os.getpid()),
                )
            except OSError as exc:
                raise ServerError(f"cannot start {self.binary.path}: {exc.strerror}",
                                  "check --server-bin points at an executable llama-server") from None

    def launch_env(self) -> dict[str, str]:
        """The binary's environment plus this side's own; a rotation switch inherited from the shell is dropped
        unless this side asks for it, so every side starts from the build's default."""
        env = self.binary.launch_env()
        env.pop(ROT_DISABLE, None)
        env.update(self.env)
        return env

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    async def wait_ready(self, http: httpx.AsyncClient, timeout_s: float = 600.0) -> Ready:
        """Poll /health until 200, failing fast if the process exits.

        Raises:
            ServerError: the process exited (with the cause read from its log) or the timeout passed.
        """
        assert self.proc is not None
        t0 = time.monotonic()
        wait_exit = asyncio.ensure_future(self.proc.wait())
        try:
            while True:
                if wait_exit.done():
                    raise self.failure()
                try:
                    r = await http.get(self.base_url + "/health", timeout=2.0)
                    if r.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() - t0 > timeout_s:
                    raise ServerError(f"llama-server did not become ready in {timeout_s:.0f} s",
                                      "see its log; a large model on a slow disk may need longer",
                                      tail(self.log_text()))
                await asyncio.wait({wait_exit}, timeout=0.1)
        finally:
            if not wait_exit.done():
                wait_exit.cancel()
        load_s = time.monotonic() - t0
        n_ctx, build = None, ""
        with contextlib.suppress(httpx.HTTPError, ValueError):
            r = await http.get(self.base_url + "/props", headers=self.headers, timeout=5.0)
            props = r.json()
            n_ctx = props.get("default_generation_settings", {}).get("n_ctx")
            build = str(props.get("build_info", ""))
        text = self.log_text()
        return Ready(self.proc.pid, load_s, n_ctx, build, parse_log(text),
                     parse_ran_with(text, build, rotation_disabled=self.env.get(ROT_DISABLE) == "1"))

    def failure(self) -> ServerError:
        """A ServerError describing why the process ended, read from its complete log.

        Call it only once the process has exited (and been reaped): then nothing
        more can reach the log. llama-server logs from a background thread and
        can exit before that thread writes its last lines (b10434, under CPU
        load: 2 of 40 refused ports left an empty log), so what the log cannot
        say is checked directly: whether another program holds the port.
        """
        rc = self.proc.returncode if self.proc else None
        text = self.log_text()
        cause, fix = explain_failure(text, rc, port_busy=None if text.strip() else port_in_use(self.port))
        return ServerError(cause, fix, tail(text))

    async def stop(self, grace_s: float = 5.0) -> int | None:
        """SIGTERM, wait up to ``grace_s``, then SIGKILL; returns the exit code.

        A stopped process (SIGSTOP, a hung server) acts on SIGTERM only once it
        runs again, so SIGCONT follows it.
        """
        self._stopping = True
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return proc.returncode if proc else None
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
            proc.send_signal(signal.SIGCONT)
        try:
            return await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            return await proc.wait()

    def kill_now(self) -> None:
        """Synchronous last resort (atexit, signal handlers): SIGKILL if still alive."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(proc.pid, signal.SIGKILL)
