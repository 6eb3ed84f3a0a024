"""The core never imports Textual or rich: checked in a fresh interpreter."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import kvtui.core


def test_core_imports_neither_textual_nor_rich() -> None:
    modules = [f"kvtui.core.{m.name}" for m in pkgutil.iter_modules(kvtui.core.__path__)]
    assert "kvtui.core.runner" in modules
    code = (
        "import sys, importlib\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"kvtui.core pulled in: {out.stdout.strip()}"
