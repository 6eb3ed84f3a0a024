"""The layers, checked: the core never imports Textual or rich, and each layer imports only what it may.

kvtui/core/
  model/    the GGUF reader, model facts, the KV-cache estimate   (imports: errors, vocab)
  logs/     reading llama-server's log: failures, what it ran with (imports: errors, vocab, record.tomlmodel)
  server/   the server process, attached servers, HTTP, binaries   (no run/, no record/ but its value types)
  quality/  loops, patterns, divergence, checks, statistics, fairness, summaries: judgements on recorded
            facts; never a server, a process or HTTP                 (no server/, no run/)
  record/   the typed session record, the recorder, replay
  run/      plan, prepare, the runner, the live session, memory probes: the only layer that drives servers
kvtui/ui/   the Textual app: imports kvtui.core only (never the CLI, the headless console or show)
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import kvtui.core

KVTUI = Path(kvtui.core.__file__).resolve().parent.parent


def _modules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages(kvtui.core.__path__, "kvtui.core.")]


def test_core_imports_neither_textual_nor_rich() -> None:
    modules = _modules()
    assert "kvtui.core.run.runner" in modules and "kvtui.core.record.model" in modules
    code = (
        "import sys, importlib\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"kvtui.core pulled in: {out.stdout.strip()}"


def imports_of(path: Path) -> set[str]:
    """Every kvtui module a file imports (at any depth of the file: functions included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("kvtui")}


FORBIDDEN = {  # layer -> module prefixes it must not import
    "kvtui.core.model": ("kvtui.core.server", "kvtui.core.run", "kvtui.core.record", "kvtui.core.quality",
                         "kvtui.core.logs", "kvtui.core.events"),
    "kvtui.core.logs": ("kvtui.core.server", "kvtui.core.run", "kvtui.core.quality"),
    "kvtui.core.quality": ("kvtui.core.server", "kvtui.core.run"),
    "kvtui.core.server": ("kvtui.core.run",),
    "kvtui.core.record": ("kvtui.core.run", "kvtui.core.server"),
    "kvtui.ui": ("kvtui.cli", "kvtui.headless", "kvtui.show", "kvtui.doctor"),
}


def test_each_layer_imports_only_what_it_may() -> None:
    broken = []
    for path in sorted(KVTUI.rglob("*.py")):
        module = ".".join(path.relative_to(KVTUI.parent).with_suffix("").parts).removesuffix(".__init__")
        for layer, banned in FORBIDDEN.items():
            if module == layer or module.startswith(layer + "."):
                broken += [f"{module} imports {m}" for m in sorted(imports_of(path)) if m.startswith(banned)]
    assert not broken, "\n".join(broken)


def test_the_rules_see_real_imports() -> None:
    """The checker is not vacuous: it finds the imports a module really has."""
    runner = KVTUI / "core" / "run" / "runner.py"
    assert "kvtui.core.server.process" in imports_of(runner) or any(
        m.startswith("kvtui.core.server") for m in imports_of(runner))
