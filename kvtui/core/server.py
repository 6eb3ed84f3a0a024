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
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import httpx

from .errors import ServerError
from .locate import ServerBinary
from .profiles import QUANTIZED_TYPES, Profile, Side
from .provenance import RanWith, parse_ran_with
from .serverlog import LogFacts, explain_failure, parse_log, tail

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
    """SIGTERM this child when kvtui dies, even by SIGKILL (Linux ``PR_SET_PDEATHSIG``).

    The signal follows the *thread* that forked: asyncio spawns from the event
    loop's thread, which lives as long as kvtui. ``parent`` closes the race
    where kvtui dies between fork and prctl: then the child is already orphaned
    and must not go on to exec.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass
    if parent is not None and os.getppid() != parent:
        os._exit(1)


@dataclass(frozen=True, slots=True)
class Ready:
    """What a started server reports about itself."""

    pid: int
    load_s: float
    n_ctx: int | None
    build: str
    facts: LogFacts
    ran_with: RanWith | None = None


class Server(ABC):
    """What the runner needs from a side's llama-server, however it came to be.

    ``LlamaServer`` (below) is a process kvtui starts and owns. A server
    attached by URL, or one placed on a given GPU, is another subclass: the
    runner only ever talks to this interface.
    """

    base_url: str
    api_key: str
    log_path: Path | None
    _exit_reported: bool = False

    @property
    def headers(self) -> dict[str, str]:
        """The HTTP headers every request to this server carries."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @property
    @abstractmethod
    def argv(self) -> list[str]:
        """The command line as recorded (secrets masked); empty when kvtui did not start it."""

    @property
    @abstractmethod
    def pid(self) -> int | None:
        """The local process id, when there is a local process kvtui knows."""

    @property
    @abstractmethod
    def started(self) -> bool:
        """Whether it got as far as a running process (False: it could not even be spawned)."""

    @property
    @abstractmethod
    def exit_code(self) -> int | None:
        """The exit status once it has ended, else None."""

    @property
    def exited(self) -> bool:
        """It was running and has ended."""
        return self.exit_code is not None

    @property
    def alive(self) -> bool:
        return self.started and not self.exited

    @abstractmethod
    async def start(self) -> None:
        """Bring it up (spawn a process, or nothing for a server that is already running)."""

    @abstractmethod
    async def wait_ready(self, http: httpx.AsyncClient, timeout_s: float = 600.0) -> Ready:
        """Wait until it serves; raise ServerError with cause and fix if it never will."""

    @abstractmethod
    async def wait_exit(self, timeout_s: float) -> bool:
        """Give a dying server up to ``timeout_s`` to end; returns whether it has ended."""

    @abstractmethod
    async def stop(self, grace_s: float = 5.0) -> int | None:
        """End it if kvtui owns it; returns the exit code where there is one."""

    @abstractmethod
    def failure(self) -> ServerError:
        """Why it ended, with cause, fix and log tail (call once it has ended)."""

    @abstractmethod
    def log_text(self) -> str:
        """Its log so far ("" where kvtui cannot see one)."""

    @abstractmethod
    def kill_now(self) -> None:
        """Synchronous last resort (signal handlers, atexit)."""

    def claim_exit_report(self) -> bool:
        """True the first time an unexpected exit is to be reported, so it is reported once."""
        if self._exit_reported or self.stopping:
            return False
        self._exit_reported = True
        return True

    @property
    def stopping(self) -> bool:
        """kvtui asked it to stop: its exit is expected."""
        return False


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


@dataclass(frozen=True, slots=True)
class Props:
    """What a running server says about itself in ``/props``."""

    model_path: str
    n_ctx: int | None
    build: str
    total_slots: int | None

    @staticmethod
    def parse(props: dict) -> Props:
        settings = props.get("default_generation_settings") or {}
        n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
        slots = props.get("total_slots")
        return Props(str(props.get("model_path") or props.get("model_alias") or ""),
                     n_ctx if isinstance(n_ctx, int) else None, str(props.get("build_info") or ""),
                     slots if isinstance(slots, int) else None)


def _own_addresses() -> set[str]:
    """This machine's IP addresses (a URL with one of them is a local server, though not on loopback)."""
    import psutil

    try:
        return {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs}
    except OSError:
        return set()


def local_pid(url: str) -> int | None:
    """The process listening on ``url``'s port, when the URL is this machine's loopback and we may see it."""
    from urllib.parse import urlsplit

    import psutil

    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    if host not in ("127.0.0.1", "localhost", "::1") and host not in _own_addresses():
        return None  # another machine: its memory cannot be sampled from here
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            return int(c.pid)
    return None


class AttachedServer(Server):
    """A llama-server that was already running: kvtui talks to it by URL and never stops it.

    Its cache types cannot be read back (``/props`` does not report them): they
    are taken as the profile declares them. Memory is sampled only where its
    process is on this machine (found by the listening port).
    """

    def __init__(self, url: str, api_key: str = "") -> None:
        self.base_url = url.rstrip("/")
        self.api_key = api_key
        self.log_path = None
        self._pid = local_pid(self.base_url)
        self.props: Props | None = None
        self._gone = False

    @property
    def argv(self) -> list[str]:
        return []

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def started(self) -> bool:
        return True

    @property
    def exit_code(self) -> int | None:
        return None  # not ours: kvtui never learns an exit status

    @property
    def alive(self) -> bool:
        return not self._gone

    async def start(self) -> None:
        return None

    async def wait_ready(self, http: httpx.AsyncClient, timeout_s: float = 600.0) -> Ready:
        """Read /health and /props once (a server still loading is waited for)."""
        t0 = time.monotonic()
        while True:
            try:
                r = await http.get(self.base_url + "/health", headers=self.headers, timeout=5.0)
            except httpx.HTTPError as exc:
                raise ServerError(f"cannot reach the server at {self.base_url}: {exc.__class__.__name__}",
                                  "start llama-server there first, or fix the side's url") from None
            if r.status_code == 200:
                break
            if r.status_code != 503 or time.monotonic() - t0 > timeout_s:
                raise ServerError(f"{self.base_url}/health answered HTTP {r.status_code}",
                                  "check that the url is a llama-server and that it is healthy")
            await asyncio.sleep(0.5)
        try:
            r = await http.get(self.base_url + "/props", headers=self.headers, timeout=5.0)
        except httpx.HTTPError as exc:
            raise ServerError(f"cannot read {self.base_url}/props: {exc.__class__.__name__}",
                              "check the server is a llama-server") from None
        if r.status_code == 401:
            raise ServerError(f"{self.base_url} refused the API key (HTTP 401)",
                              "set the side's api_key to the server's --api-key")
        if r.status_code != 200:
            raise ServerError(f"{self.base_url}/props answered HTTP {r.status_code}",
                              "check that the url is a llama-server")
        try:
            self.props = Props.parse(r.json())
        except ValueError:
            raise ServerError(f"{self.base_url}/props is not JSON", "check that the url is a llama-server") from None
        if self._pid is None:
            self._pid = local_pid(self.base_url)
        return Ready(self._pid or 0, time.monotonic() - t0, self.props.n_ctx, self.props.build, LogFacts((), None, ()))

    async def wait_exit(self, timeout_s: float) -> bool:
        return False

    async def stop(self, grace_s: float = 5.0) -> int | None:
        """Let go of it: it is no longer sampled or used, and it goes on running (kvtui did not start it)."""
        self._gone = True
        return None

    def failure(self) -> ServerError:
        return ServerError(f"the server at {self.base_url} stopped answering",
                           "check that server (kvtui did not start it and cannot read its log)")

    def log_text(self) -> str:
        return ""

    def kill_now(self) -> None:
        return None
