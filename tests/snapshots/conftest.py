"""UI test settings: no cursor blink, deterministic animations."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def no_blink(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEXTUAL_ANIMATIONS", "none")
