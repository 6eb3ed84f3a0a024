"""Profiles: what to compare, read from TOML and validated with readable errors.

Keys follow llama.cpp's own long flag names (``ctx_size`` is ``--ctx-size``,
``n_gpu_layers`` is ``--n-gpu-layers``, ``cache_type_k`` is ``--cache-type-k``).
A bad value names the file, the key, the value and what is allowed; an unknown
key gets a "did you mean" hint.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import ProfileError

CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
QUANTIZED_TYPES = frozenset(CACHE_TYPES) - {"f32", "f16", "bf16"}
FLASH_ATTN = ("on", "off", "auto")
ENDPOINTS = ("completion", "chat")
MODES = ("auto", "parallel", "sequential")
SCHEDULES = ("auto", "simultaneous", "alternate")
BUNDLED = "bundled"


@dataclass(frozen=True, slots=True)
class Side:
    """One configuration under test."""

    name: str
    cache_type_k: str
    cache_type_v: str
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Prompt:
    """What every side is asked; ``text`` is already read from ``file``."""

    text: str
    endpoint: str = "completion"
    system: str = ""
    name: str = "prompt"


@dataclass(frozen=True, slots=True)
class Sampling:
    """The sampler, identical for every side."""

    temperature: float = 0.0
    seed: int = 42
    top_k: int = 40
    top_p: float = 1.0
    n_predict: int = 256


@dataclass(frozen=True, slots=True)
class RunSettings:
    """How the comparison is run."""

    warmup: bool = True
    repeats: int = 1
    mode: str = "auto"
    schedule: str = "auto"
    stop_on_loop: bool = False
    stall_timeout_s: float = 120.0


@dataclass(frozen=True, slots=True)
class Profile:
    """A validated profile; ``source`` is the file it came from."""

    name: str
    model: str  # a path, "bundled", or "" (the model must come from --model)
    sides: tuple[Side, ...]
    prompt: Prompt
    server_bin: str = ""
    ctx_size: int = 4096
    n_gpu_layers: int = 99
    flash_attn: str = "on"
    threads: int = 0
    extra_args: tuple[str, ...] = ()
    sampling: Sampling = field(default_factory=Sampling)
    run: RunSettings = field(default_factory=RunSettings)
    description: str = ""
    source: str = ""

    def with_overrides(self, **changes: Any) -> Profile:
        """Return a copy with the given fields replaced (command-line flags)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """The profile as TOML-ready data, in the same layout as the file."""
        return {
            "name": self.name,
            "description": self.description,
            "model": {"path": self.model},
            "server": {
                "bin": self.server_bin,
                "ctx_size": self.ctx_size,
                "n_gpu_layers": self.n_gpu_layers,
                "flash_attn": self.flash_attn,
                "threads": self.threads,
                "extra_args": list(self.extra_args),
            },
            "sides": [
                {"name": s.name, "cache_type_k": s.cache_type_k, "cache_type_v": s.cache_type_v,
                 "extra_args": list(s.extra_args)}
                for s in self.sides
            ],
            "prompt": {"text": self.prompt.text, "endpoint": self.prompt.endpoint,
                       "system": self.prompt.system, "name": self.prompt.name},
            "sampling": {"temperature": self.sampling.temperature, "seed": self.sampling.seed,
                         "top_k": self.sampling.top_k, "top_p": self.sampling.top_p,
                         "n_predict": self.sampling.n_predict},
            "run": {"warmup": self.run.warmup, "repeats": self.run.repeats, "mode": self.run.mode,
                    "schedule": self.run.schedule, "stop_on_loop": self.run.stop_on_loop,
                    "stall_timeout_s": self.run.stall_timeout_s},
        }


# --- validation -------------------------------------------------------------------------------

# key -> (expected python type(s), allowed values or None)
_TOP = {"name": (str, None), "description": (str, None), "model": (dict, None), "server": (dict, None),
        "sides": (list, None), "prompt": (dict, None), "sampling": (dict, None), "run": (dict, None)}
_MODEL = {"path": (str, None)}
_SERVER = {"bin": (str, None), "ctx_size": (int, None), "n_gpu_layers": (int, None),
           "flash_attn": (str, FLASH_ATTN), "threads": (int, None), "extra_args": (list, None)}
_SIDE = {"name": (str, None), "cache_type_k": (str, CACHE_TYPES), "cache_type_v": (str, CACHE_TYPES),
         "extra_args": (list, None)}
_PROMPT = {"text": (str, None), "file": (str, None), "endpoint": (str, ENDPOINTS), "system": (str, None),
           "name": (str, None)}
_SAMPLING = {"temperature": ((int, float), None), "seed": (int, None), "top_k": (int, None),
             "top_p": ((int, float), None), "n_predict": (int, None)}
_RUN = {"warmup": (bool, None), "repeats": (int, None), "mode": (str, MODES), "schedule": (str, SCHEDULES),
        "stop_on_loop": (bool, None), "stall_timeout_s": ((int, float), None)}

_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "a list",
               dict: "a table", (int, float): "a number"}


class _Checker:
    """Walks one table against its schema, raising ProfileError with file and key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, message: str, hint: str = "") -> ProfileError:
        return ProfileError(f"{self.source}: {key}: {message}", hint)

    def table(self, data: Any, schema: dict[str, tuple[Any, Any]], where: str) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise self.fail(where or "(top level)", f"expected a table, got {_show(data)}")
        for key, value in data.items():
            full = f"{where}.{key}" if where else key
            if key not in schema:
                close = difflib.get_close_matches(key, list(schema), n=1, cutoff=0.6)
                hint = f'did you mean "{close[0]}"?' if close else f"known keys: {', '.join(schema)}"
                raise self.fail(full, "unknown key", hint)
            kind, allowed = schema[key]
            if not _is(value, kind):
                raise self.fail(full, f"expected {_TYPE_NAMES.get(kind, kind)}, got {_show(value)}")
            if allowed is not None and value not in allowed:
                raise self.fail(full, f"{_show(value)} is not allowed", f"allowed: {', '.join(allowed)}")
        return data

    def strings(self, value: list[Any], where: str) -> tuple[str, ...]:
        for item in value:
            if not isinstance(item, str):
                raise self.fail(where, f"expected a list of strings, got an item {_show(item)}")
        return tuple(value)

    def positive(self, value: int | float, where: str, minimum: float = 1) -> None:
        if value < minimum:
            raise self.fail(where, f"{value} is too small", f"use {minimum:g} or more")


def _is(value: Any, kind: Any) -> bool:
    if isinstance(value, bool):  # bool is an int in Python; TOML keeps them apart
        return kind is bool
    return isinstance(value, kind)


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else f'"{value}"'
    return text if len(text) <= 60 else text[:57] + "..."


def parse_profile(data: dict[str, Any], source: str = "<profile>", base_dir: Path | None = None) -> Profile:
    """Validate parsed TOML data and build a Profile.

    Args:
        data: the parsed TOML document.
        source: the file name used in error messages.
        base_dir: where relative ``prompt.file`` paths are resolved.

    Returns:
        The validated profile.

    Raises:
        ProfileError: naming the file, the key, the bad value and what is allowed.
    """
    c = _Checker(source)
    c.table(data, _TOP, "")
    model = c.table(data.get("model", {}), _MODEL, "model")
    server = c.table(data.get("server", {}), _SERVER, "server")
    prompt = c.table(data.get("prompt", {}), _PROMPT, "prompt")
    sampling = c.table(data.get("sampling", {}), _SAMPLING, "sampling")
    run = c.table(data.get("run", {}), _RUN, "run")

    raw_sides = data.get("sides")
    if not raw_sides:
        raise c.fail("sides", "a profile needs at least two [[sides]]",
                     'add e.g. [[sides]] name = "q8_0" cache_type_k = "q8_0" cache_type_v = "q8_0"')
    sides: list[Side] = []
    for i, raw in enumerate(raw_sides):
        where = f"sides[{i}]"
        c.table(raw, _SIDE, where)
        for key in ("cache_type_k", "cache_type_v"):
            if key not in raw:
                raise c.fail(f"{where}.{key}", "missing", f"allowed: {', '.join(CACHE_TYPES)}")
        name = raw.get("name") or f"K {raw['cache_type_k']} / V {raw['cache_type_v']}"
        sides.append(Side(name, raw["cache_type_k"], raw["cache_type_v"],
                          c.strings(raw.get("extra_args", []), f"{where}.extra_args")))
    if len(sides) < 2:
        raise c.fail("sides", "a comparison needs at least two [[sides]]", "add another [[sides]] table")
    names = [s.name for s in sides]
    if len(set(names)) != len(names):
        raise c.fail("sides", f"side names must differ, got {names}", "give each [[sides]] its own name")

    if "text" in prompt and "file" in prompt:
        raise c.fail("prompt", "give either text or file, not both")
    if "file" in prompt:
        path = Path(prompt["file"])
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise c.fail("prompt.file", f'cannot read "{path}": {exc.strerror}', "check the path") from None
    elif "text" in prompt:
        text = prompt["text"]
    else:
        raise c.fail("prompt", "missing text or file", 'add text = "..." or file = "prompt.txt" under [prompt]')
    if not text.strip():
        raise c.fail("prompt.text", "the prompt is empty")

    ctx_size = server.get("ctx_size", 4096)
    c.positive(ctx_size, "server.ctx_size", 256)
    repeats = run.get("repeats", 1)
    c.positive(repeats, "run.repeats")
    n_predict = sampling.get("n_predict", 256)
    c.positive(n_predict, "sampling.n_predict")
    c.positive(run.get("stall_timeout_s", 120.0), "run.stall_timeout_s")
    if sampling.get("temperature", 0.0) < 0:
        raise c.fail("sampling.temperature", "must be 0 or more")

    fa = server.get("flash_attn", "on")
    for s in sides:
        if s.cache_type_v in QUANTIZED_TYPES and fa == "off":
            raise c.fail("server.flash_attn", f'"off" with a quantized V cache ({s.name}: V {s.cache_type_v})',
                         'llama-server needs flash attention for a quantized V cache: set flash_attn = "on"')

    return Profile(
        name=data.get("name") or (Path(source).stem if source else "profile"),
        description=data.get("description", ""),
        model=model.get("path", ""),
        server_bin=server.get("bin", ""),
        ctx_size=ctx_size,
        n_gpu_layers=server.get("n_gpu_layers", 99),
        flash_attn=fa,
        threads=server.get("threads", 0),
        extra_args=c.strings(server.get("extra_args", []), "server.extra_args"),
        sides=tuple(sides),
        prompt=Prompt(text=text, endpoint=prompt.get("endpoint", "completion"),
                      system=prompt.get("system", ""), name=prompt.get("name", "prompt")),
        sampling=Sampling(temperature=float(sampling.get("temperature", 0.0)), seed=sampling.get("seed", 42),
                          top_k=sampling.get("top_k", 40), top_p=float(sampling.get("top_p", 1.0)),
                          n_predict=n_predict),
        run=RunSettings(warmup=run.get("warmup", True), repeats=repeats, mode=run.get("mode", "auto"),
                        schedule=run.get("schedule", "auto"), stop_on_loop=run.get("stop_on_loop", False),
                        stall_timeout_s=float(run.get("stall_timeout_s", 120.0))),
        source=source,
    )


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile file.

    Raises:
        ProfileError: the file is missing, not TOML, or not a valid profile.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ProfileError(f"{p}: no such profile file", "check the path, or run `kvtui` for the demo") from None
    except OSError as exc:
        raise ProfileError(f"{p}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ProfileError(f"{p}: not a text file", "a profile is a UTF-8 TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{p}: not valid TOML: {exc}", "fix the syntax at that line") from None
    return parse_profile(data, source=str(p), base_dir=p.parent)


def default_profile_path() -> Path:
    """The demo profile: in the checkout, or inside the installed package."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "profiles" / "demo.toml", here / "_profiles" / "demo.toml"):
        if candidate.is_file():
            return candidate
    return here.parent / "profiles" / "demo.toml"
