"""llama-server's JSON, typed: each object kvtui reads declared once, read once, wrong types dropped.

The server is another program: any field may be missing or of another type in
another build. ``read_json`` builds a frozen dataclass from a JSON object by
its declared fields, keeping a value only when its type matches the field's
(``None`` or the default otherwise), so the rest of kvtui reads attributes.
Formats: llama-server-facts §1-2 (b10434).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

T = TypeVar("T")


def read_json(cls: type[T], raw: Any) -> T | None:
    """``cls`` from a JSON object (None when ``raw`` is not an object)."""
    if not isinstance(raw, dict):
        return None
    values = {}
    for name, kinds, is_float in _kinds(cls):
        value = raw.get(name)
        if value is not None and isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds):
            values[name] = float(value) if is_float else value
    return cls(**values)


@cache
def _kinds(cls: type) -> tuple[tuple[str, tuple[type, ...], bool], ...]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) else (hint,)
        kinds = tuple(typing.get_origin(a) or a for a in args if a is not type(None))
        out.append((f.name, kinds + ((int,) if float in kinds else ()), float in kinds))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Timings:
    """The server's own timings of a request (``timings``); the per-second figures divide by n-1 (facts §1)."""

    prompt_n: int | None = None
    prompt_ms: float | None = None
    prompt_per_second: float | None = None
    predicted_n: int | None = None
    predicted_ms: float | None = None
    predicted_per_second: float | None = None
    cache_n: int | None = None


@dataclass(frozen=True, slots=True)
class CompletionChunk:
    """One ``/completion`` stream event."""

    content: str = ""
    tokens: list | None = None
    tokens_predicted: int | None = None
    stop: bool = False
    stop_type: str = ""
    truncated: bool = False
    timings: dict | None = None
    prompt_progress: dict | None = None
    completion_probabilities: list | None = None


@dataclass(frozen=True, slots=True)
class ChatChunk:
    """One ``/v1/chat/completions`` stream event (the usage event has no choices)."""

    choices: list | None = None
    timings: dict | None = None


@dataclass(frozen=True, slots=True)
class ChatChoice:
    finish_reason: str | None = None
    delta: dict | None = None
    logprobs: dict | None = None


@dataclass(frozen=True, slots=True)
class TokenProb:
    """One entry of ``completion_probabilities`` / chat ``logprobs.content``, or of its ``top_logprobs``."""

    id: int | None = None
    logprob: float | None = None
    top_logprobs: list | None = None


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """``{"error": {...}}``: what a refused request says (e.g. ``exceed_context_size_error``)."""

    message: str = ""
    type: str = ""
    n_prompt_tokens: int | None = None
    n_ctx: int | None = None


@dataclass(frozen=True, slots=True)
class PropsBody:
    """``/props``: what a running server says about itself."""

    model_path: str = ""
    model_alias: str = ""
    build_info: str = ""
    total_slots: int | None = None
    default_generation_settings: dict | None = None
