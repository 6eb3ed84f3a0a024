"""TOML documents as typed dataclasses: one declaration per key gives its default, its meaning and its check.

A key is a dataclass field declared with :func:`key` (its meaning goes into the
field's metadata). :func:`dump` writes an object as TOML-ready data (``None`` is
left out: TOML has no null), :func:`load` reads it back and checks every value
against the field's declared type, raising a one-line :class:`RecordError` that
names the key; :func:`describe` lists the keys for the README. Nothing else
spells a key out.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from enum import Enum
from typing import Any, TypeVar

from kvtui.core.errors import RecordError

T = TypeVar("T")
EDITED = "the record was edited by hand or is damaged"
DAMAGED = "the record is damaged"


def key(doc: str, default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING,
        recorded: bool = True) -> Any:
    """A field that is a key of the document.

    Args:
        doc: what the key means (the README's key table is made from these).
        default: its value when the file leaves it out; none: the key is required.
        factory: makes the default (for lists).
        recorded: False for a field that lives only in memory (never written, never read).
    """
    meta = {"doc": doc, "recorded": recorded}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta, compare=recorded, repr=recorded)
    return dataclasses.field(default=default, metadata=meta, compare=recorded, repr=recorded)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _keys(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if f.metadata["recorded"]]  # every field is declared with key()


# -- writing ------------------------------------------------------------------------------------


def dump(obj: Any) -> dict[str, Any]:
    """The object as TOML-ready data: nested tables as dicts, tuples as lists, enums as strings, None left out."""
    out: dict[str, Any] = {}
    for f in _keys(type(obj)):
        value = _dump_value(getattr(obj, f.name))
        if value is not None:
            out[f.name] = value
    return out


def _dump_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, str):
        return str(value)
    if dataclasses.is_dataclass(value):
        return dump(value)
    if isinstance(value, list | tuple):
        return [v for v in map(_dump_value, value) if v is not None]
    if isinstance(value, dict):
        return {k: v for k, v in ((k, _dump_value(v)) for k, v in value.items()) if v is not None}
    return value


# -- reading ------------------------------------------------------------------------------------


def load(cls: type[T], data: Any, where: str, source: str) -> T:
    """Build ``cls`` from parsed TOML, checking every key against its declared type.

    Args:
        cls: a dataclass whose fields are keys.
        data: the parsed table.
        where: the key path so far, for messages (``"sides[0]."``; ``""`` at the top).
        source: the file name, for messages.

    Raises:
        RecordError: one line naming the first key that is missing, of the wrong type or not allowed.
    """
    if not isinstance(data, dict):
        raise RecordError(f"{source}: {where[:-1] or '(top level)'} is not a table", DAMAGED)
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for f in _keys(cls):
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecordError(f"{source}: {where}{f.name} is missing", DAMAGED)
            continue
        values[f.name] = _value(hints[f.name], data[f.name], f"{where}{f.name}", source)
    obj = cls(**values)
    problem = getattr(obj, "problem", None)
    found = problem() if problem is not None else None
    if found:
        raise RecordError(f"{source}: {where}{found}", DAMAGED)
    return obj


def _wrong(path: str, value: Any, source: str) -> RecordError:
    return RecordError(f"{source}: {path} has the wrong type ({type(value).__name__})", EDITED)


def _value(tp: Any, value: Any, path: str, source: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):  # X | None: a missing key is None, a present one is an X
        inner = [a for a in args if a is not type(None)]
        return _value(inner[0], value, path, source)
    if tp is Any:
        return value
    if origin is typing.Literal:
        if isinstance(value, bool) or value not in args:
            if not isinstance(value, type(args[0])):
                raise _wrong(path, value, source)
            raise RecordError(f"{source}: {path} = {value!r} is not one of {', '.join(map(str, args))}", EDITED)
        return value
    if isinstance(tp, type) and issubclass(tp, Enum):
        if not isinstance(value, str):
            raise _wrong(path, value, source)
        try:
            return tp(value)
        except ValueError:
            allowed = ", ".join(str(m.value) for m in tp)  # type: ignore[attr-defined]
            raise RecordError(f"{source}: {path} = {value!r} is not one of {allowed}", EDITED) from None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _wrong(path, value, source)
        return float(value)
    if tp in (int, str, bool):
        if isinstance(value, bool) is not (tp is bool) or not isinstance(value, tp):
            raise _wrong(path, value, source)
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise _wrong(path, value, source)
        item = args[0]
        items = [_value(item, v, f"{path}[{k}]", source) for k, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise _wrong(path, value, source)
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):  # an item of an array of tables, or a key that should be a table
            raise RecordError(f"{source}: {path} is not a table", DAMAGED) if path.endswith("]") else _wrong(
                path, value, source)
        return load(tp, value, f"{path}.", source)  # type: ignore[arg-type]
    raise TypeError(f"{path}: no TOML reading for {tp!r}")  # a declaration kvtui itself got wrong


# -- documenting --------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        return _type_name(next(a for a in args if a is not type(None)))
    if isinstance(tp, type) and issubclass(tp, Enum):
        return "one of " + ", ".join(f"`{m.value}`" for m in tp)  # type: ignore[attr-defined]
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (list, tuple):
        item = args[0]
        if dataclasses.is_dataclass(item):
            return "array of tables"
        return "list of " + {"string": "strings", "integer": "integers", "number": "numbers"}.get(
            _type_name(item), _type_name(item).replace("list of", "lists of"))
    if origin is dict or dataclasses.is_dataclass(tp):
        return "table"
    return {str: "string", int: "integer", float: "number", bool: "true / false"}.get(tp, str(tp))


def markdown_table(cls: type) -> str:
    """``describe(cls)`` as a Markdown table: key, type, meaning."""
    rows = ["| key | type | meaning |", "|---|---|---|"]
    rows += [f"| `{name}` | {kind} | {doc} |" for name, kind, doc in describe(cls)]
    return "\n".join(rows) + "\n"


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """Every key of ``cls`` and of the tables in it: (key path, type, meaning), in declaration order."""
    rows = []
    hints = _hints(cls)
    for f in _keys(cls):
        tp = hints[f.name]
        rows.append((prefix + f.name, _type_name(tp), f.metadata["doc"]))
        inner = tp
        if typing.get_origin(tp) in (types.UnionType, typing.Union):
            inner = next(a for a in typing.get_args(tp) if a is not type(None))
        if typing.get_origin(inner) in (list, tuple):
            inner = typing.get_args(inner)[0]
        if dataclasses.is_dataclass(inner):
            rows += describe(inner, f"{prefix}{f.name}.")  # type: ignore[arg-type]
    return rows
