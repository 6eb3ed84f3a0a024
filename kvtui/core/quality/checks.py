"""Task checks: what a generation contains, measured rather than judged by eye.

Fenced code blocks (count, lines, languages, file names when given), whether
Python blocks parse, how many tests they define, and whether an expected
answer is there. The blog that started kvtui counted "files generated" and
"tests created" by hand; these are those counts, done the same way every time.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any

from kvtui.core.record.tomlmodel import dump, key

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)$", re.M)
_EXTENSIONS = "py|js|ts|go|rs|java|c|cc|cpp|h|hpp|rb|sh|toml|ya?ml|json|md|txt|cfg|ini"
_FILE_HINT = re.compile(rf"(?:^|[\s`*#:(])(?P<name>[\w./-]+\.(?:{_EXTENSIONS}))\b")
_PY_LANGS = {"python", "py", "python3", "pytest"}


@dataclass(frozen=True, slots=True)
class CodeBlock:
    """One fenced block of a generation."""

    language: str
    lines: int
    filename: str | None
    parses: bool | None  # Python only: does ast.parse accept it
    tests: int  # test functions (def test_...)
    asserts: int


@dataclass(frozen=True, slots=True)
class TaskCheck:
    """The measured content of one generation (a run's ``check`` in the session record)."""

    code_blocks: int = key("fenced code blocks in the reply (an unfenced Python file counts as one)", 0)
    code_lines: int = key("lines inside them", 0)
    languages: tuple[str, ...] = key("their languages, sorted", ())
    files: tuple[str, ...] = key("file names the reply gives them", ())
    python_blocks: int = key("Python blocks", 0)
    python_parse_ok: int = key("Python blocks that `ast.parse` accepts", 0)
    tests: int = key("test functions (`def test_...`)", 0)
    asserts: int = key("`assert` statements and `self.assert...()` calls", 0)
    answer_ok: bool | None = key("whether the reply holds the prompt's expected answer (only when it has one)", None)
    blocks: tuple[CodeBlock, ...] = key("the blocks themselves (live runs only)", (), recorded=False)

    @classmethod
    def of(cls, blocks: tuple[CodeBlock, ...], answer_ok: bool | None) -> TaskCheck:
        """The counts over ``blocks``."""
        return cls(code_blocks=len(blocks), code_lines=sum(b.lines for b in blocks),
                   languages=tuple(sorted({b.language for b in blocks if b.language})),
                   files=tuple(b.filename for b in blocks if b.filename),
                   python_blocks=sum(1 for b in blocks if b.parses is not None),
                   python_parse_ok=sum(1 for b in blocks if b.parses), tests=sum(b.tests for b in blocks),
                   asserts=sum(b.asserts for b in blocks), answer_ok=answer_ok, blocks=blocks)

    def to_dict(self) -> dict[str, Any]:
        """The figures as the session record stores them."""
        return dump(self)

    def brief(self) -> str:
        """A few words: ``2 code blocks, py 1/2 parse, 3 tests, answer right`` ("" when there is nothing)."""
        parts = []
        if self.code_blocks:
            parts.append(f"{self.code_blocks} code block{'s' if self.code_blocks > 1 else ''}")
        if self.python_blocks:
            parts.append(f"py {self.python_parse_ok}/{self.python_blocks} parse")
        if self.tests:
            parts.append(f"{self.tests} test{'s' if self.tests > 1 else ''}")
        if self.answer_ok is not None:
            parts.append("answer right" if self.answer_ok else "answer wrong")
        return ", ".join(parts)


def code_blocks(text: str) -> list[tuple[str, str, str]]:
    """Fenced blocks as (info string, body, the text just before the fence); an unclosed last block counts."""
    out = []
    pos = 0
    while True:
        m = _FENCE.search(text, pos)
        if m is None:
            return out
        fence = m.group("fence")
        close = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", re.M)
        end = close.search(text, m.end())
        body = text[m.end() + 1: end.start()] if end else text[m.end() + 1:]
        before = text[max(0, m.start() - 200): m.start()]
        out.append((m.group("info").strip(), body, before))
        if end is None:
            return out
        pos = end.end()


def _block(info: str, body: str, before: str) -> CodeBlock:
    lang = info.split()[0].lower() if info.split() else ""
    name = None
    m = _FILE_HINT.search(info) or _FILE_HINT.search(before.splitlines()[-1] if before.strip() else "")
    if m:
        name = m.group("name")
    first = body.splitlines()[0] if body.strip() else ""
    m2 = re.match(r"\s*(?:#|//)\s*(?:file(?:name)?:\s*)?(?P<name>[\w./-]+\.\w+)\s*$", first)
    if name is None and m2:
        name = m2.group("name")
    if not lang and name and name.endswith(".py"):
        lang = "python"
    parses: bool | None = None
    tests = len(re.findall(r"^\s*(?:async\s+)?def test_\w*", body, re.M))
    asserts = len(re.findall(r"^\s*assert\b|\bself\.assert\w+\(", body, re.M))
    if lang in _PY_LANGS:
        try:
            ast.parse(body)
            parses = True
        except (SyntaxError, ValueError):
            parses = False
    return CodeBlock(lang, len(body.splitlines()), name, parses, tests, asserts)


def answer_matches(text: str, expected: str | None, regex: str | None) -> bool | None:
    """Whether the text holds the expected answer (exact substring, or a regex search)."""
    if regex:
        return re.search(regex, text) is not None
    if expected:
        return expected in text
    return None


def check_text(text: str, *, expected: str | None = None, regex: str | None = None) -> TaskCheck:
    """Measure a generation.

    Args:
        text: the generated text.
        expected: an exact answer that must appear in it.
        regex: a pattern that must match somewhere in it (wins over ``expected``).

    Returns:
        The code blocks found and whether the answer is right (None without an expected answer).
    """
    blocks = tuple(_block(info, body, before) for info, body, before in code_blocks(text))
    if not blocks and re.search(r"^\s*(?:def |class |import |from \w+ import )", text, re.M):
        # a base model completing a .py file writes code without fences: treat the whole text as one block
        blocks = (_block("python", text, ""),)
    return TaskCheck.of(blocks, answer_matches(text, expected, regex))
