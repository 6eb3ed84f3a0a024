"""Checking a parsed TOML table against a schema: the key, the value, what was expected and what to write.

Generic (no knowledge of profiles): ``kvtui.core.profiles`` declares its
tables' schemas and uses this to raise one-line ``ProfileError``s.
"""

from __future__ import annotations

import contextlib
import difflib
import math
from typing import Any

from kvtui.core.errors import ProfileError

_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "a list",
               dict: "a table", (int, float): "a number"}


class Checker:
    """Walks one table against its schema, raising ProfileError with file and key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, message: str, hint: str = "") -> ProfileError:
        return ProfileError(one_line(f"{self.source}: {key}: {message}"), one_line(hint))

    def table(self, data: Any, schema: dict[str, tuple[Any, Any]], where: str) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise self.fail(where or "(top level)", f"expected a table, got {show_value(data)}")
        for key, value in data.items():
            full = f"{where}.{key}" if where else key
            if key not in schema:
                close = difflib.get_close_matches(key, list(schema), n=1, cutoff=0.6)
                hint = f'did you mean "{close[0]}"?' if close else f"known keys: {', '.join(schema)}"
                raise self.fail(full, "unknown key", hint)
            kind, allowed = schema[key]
            if not _is(value, kind):
                raise self.fail(full, f"expected {_TYPE_NAMES.get(kind, kind)}, got {show_value(value)}",
                                type_hint(key, value, kind))
            if isinstance(value, float) and not math.isfinite(value):
                raise self.fail(full, f"{value} is not a finite number")
            if isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**63:
                raise self.fail(full, f"{show_value(value)} is out of range", "TOML integers are 64-bit")
            if allowed is not None and value not in allowed:
                raise self.fail(full, f"{show_value(value)} is not allowed", f"allowed: {', '.join(allowed)}")
        return data

    def strings(self, value: list[Any], where: str) -> tuple[str, ...]:
        for item in value:
            if not isinstance(item, str):
                raise self.fail(where, f"expected a list of strings, got an item {show_value(item)}")
        return tuple(value)

    def positive(self, value: int | float, where: str, minimum: float = 1) -> None:
        if value < minimum:
            raise self.fail(where, f"{value} is too small", f"use {minimum:g} or more")


def type_hint(key: str, value: Any, kind: Any) -> str:
    """What to write instead: ``n_predict = "160"`` -> ``write n_predict = 160 (no quotes)``."""
    if isinstance(value, str) and kind in (int, (int, float)):
        with contextlib.suppress(ValueError):
            return f"write {key} = {int(value) if kind is int else float(value):g} (no quotes)"
    if isinstance(value, str) and kind is bool and value.lower() in ("true", "false"):
        return f"write {key} = {value.lower()} (no quotes)"
    if kind is str and not isinstance(value, dict | list):
        return f'write {key} = "{value}" (in quotes)'
    return f"give {_TYPE_NAMES.get(kind, kind)} here"


def _is(value: Any, kind: Any) -> bool:
    if isinstance(value, bool):  # bool is an int in Python; TOML keeps them apart
        return kind is bool
    return isinstance(value, kind)


def one_line(text: str) -> str:
    """Keys and values from the file may hold newlines or other control characters: show them escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def show_value(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else f'"{value}"'
    return text if len(text) <= 60 else text[:57] + "..."
