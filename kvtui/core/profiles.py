"""Profiles: what to compare, read from TOML and validated with readable errors.

Keys follow llama.cpp's own long flag names (``ctx_size`` is ``--ctx-size``,
``n_gpu_layers`` is ``--n-gpu-layers``, ``cache_type_k`` is ``--cache-type-k``).
A bad value names the file, the key, the value and what is allowed; an unknown
key gets a "did you mean" hint.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvtui.core.conversation import Conversation, parse_conversation
from kvtui.core.errors import ProfileError
from kvtui.core.tablecheck import Checker, show_value
from kvtui.core.vocab import CACHE_TYPES as _CACHE_BLOCKS
from kvtui.core.vocab import QUANTIZED_TYPES, Schedule

CACHE_TYPES = tuple(_CACHE_BLOCKS)
FLASH_ATTN = ("on", "off", "auto")
ATTN_ROTATION = ("default", "off")  # "off": LLAMA_ATTN_ROT_DISABLE=1 in that side's server environment
ENDPOINTS = ("completion", "chat")
MODES = ("auto", "parallel", "sequential")
SCHEDULES = ("auto", Schedule.SIMULTANEOUS.value, Schedule.ALTERNATE.value)  # solo is what sequential mode gives
BUNDLED = "bundled"


@dataclass(frozen=True, slots=True)
class Side:
    """One configuration under test."""

    name: str
    cache_type_k: str
    cache_type_v: str
    extra_args: tuple[str, ...] = ()
    attn_rotation: str = "default"  # "off": LLAMA_ATTN_ROT_DISABLE=1 for this side's server only
    url: str = ""  # attach to a llama-server already running there instead of starting one
    api_key: str = ""  # the attached server's API key (never recorded)
    device: str = ""  # llama-server --device, e.g. "CUDA1" or "Vulkan1"
    gpus: str = ""  # CUDA_VISIBLE_DEVICES for this side's server, e.g. "1"

    @property
    def attached(self) -> bool:
        """kvtui attaches to a running server instead of starting one."""
        return bool(self.url)

    @property
    def placement(self) -> str:
        """Where the side's server runs, as said in the profile ("" = wherever llama-server puts it)."""
        if self.url:
            return self.url
        return self.device or (f"GPU {self.gpus}" if self.gpus else "")


@dataclass(frozen=True, slots=True)
class Prompt:
    """What every side is asked; ``text`` is already read from ``file``."""

    text: str
    endpoint: str = "completion"
    system: str = ""
    name: str = "prompt"
    expected: str = ""  # an exact answer the reply must contain
    expected_regex: str = ""  # or a pattern it must match


@dataclass(frozen=True, slots=True)
class Sampling:
    """The sampler, identical for every side."""

    temperature: float = 0.0
    seed: int = 42
    top_k: int = 40
    top_p: float = 1.0
    n_predict: int = 256
    n_probs: int = 0  # >0: ask for each token's top-N probabilities (divergence and KL between sides)


@dataclass(frozen=True, slots=True)
class RunSettings:
    """How the comparison is run."""

    warmup: bool = True
    repeats: int = 1
    mode: str = "auto"
    schedule: str = "auto"
    stop_on_loop: bool = False
    stall_timeout_s: float = 120.0
    score: bool = True  # once generation ends, teacher-force the base side's generations on every side's server
    score_positions: int = 256  # at most this many positions per side, shared among the prompts (0: no cap)


@dataclass(frozen=True, slots=True)
class Profile:
    """A validated profile; ``source`` is the file it came from."""

    name: str
    model: str  # a path, "bundled", or "" (the model must come from --model)
    sides: tuple[Side, ...]
    prompts: tuple[Prompt, ...]
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
    conversation: Conversation | None = None  # turns instead of prompts; ``prompts`` then holds its first turn

    @property
    def prompt(self) -> Prompt:
        """The first prompt (most profiles have one; a conversation's is its first user message, on chat)."""
        return self.prompts[0]

    def to_dict(self) -> dict[str, Any]:
        """The profile as TOML-ready data, in the same layout as the file."""
        d = self._dict()
        if self.conversation is not None:
            del d["prompts"]
            d["conversation"] = self.conversation.to_dict()
            if self.conversation.turns:
                d["turns"] = self.conversation.turns_list()
        return d

    def _dict(self) -> dict[str, Any]:
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
                _side_dict(s)
                for s in self.sides
            ],
            "prompts": [_prompt_dict(p) for p in self.prompts],
            "sampling": {"temperature": self.sampling.temperature, "seed": self.sampling.seed,
                         "top_k": self.sampling.top_k, "top_p": self.sampling.top_p,
                         "n_predict": self.sampling.n_predict, "n_probs": self.sampling.n_probs},
            "run": {"warmup": self.run.warmup, "repeats": self.run.repeats, "mode": self.run.mode,
                    "schedule": self.run.schedule, "stop_on_loop": self.run.stop_on_loop,
                    "stall_timeout_s": self.run.stall_timeout_s, "score": self.run.score,
                    "score_positions": self.run.score_positions},
        }


def _side_dict(s: Side) -> dict[str, Any]:
    d: dict[str, Any] = {"name": s.name, "cache_type_k": s.cache_type_k, "cache_type_v": s.cache_type_v,
                         "extra_args": list(s.extra_args)}
    for key in ("url", "device", "gpus"):
        if getattr(s, key):
            d[key] = getattr(s, key)
    if s.attn_rotation != "default":
        d["attn_rotation"] = s.attn_rotation
    if s.api_key:
        d["api_key"] = "***"  # a secret: a record must not carry it
    return d


def _prompt_dict(p: Prompt) -> dict[str, Any]:
    d = {"name": p.name, "text": p.text, "endpoint": p.endpoint, "system": p.system}
    if p.expected:
        d["expected"] = p.expected
    if p.expected_regex:
        d["expected_regex"] = p.expected_regex
    return d


# --- validation -------------------------------------------------------------------------------

# key -> (expected python type(s), allowed values or None)
_TOP = {"name": (str, None), "description": (str, None), "model": (dict, None), "server": (dict, None),
        "sides": (list, None), "prompt": (dict, None), "prompts": (list, None), "sampling": (dict, None),
        "run": (dict, None), "conversation": (dict, None), "turns": (list, None)}
_MODEL = {"path": (str, None)}
_SERVER = {"bin": (str, None), "ctx_size": (int, None), "n_gpu_layers": (int, None),
           "flash_attn": (str, FLASH_ATTN), "threads": (int, None), "extra_args": (list, None)}
_SIDE = {"name": (str, None), "cache_type_k": (str, CACHE_TYPES), "cache_type_v": (str, CACHE_TYPES),
         "extra_args": (list, None), "attn_rotation": (str, ATTN_ROTATION), "url": (str, None),
         "api_key": (str, None), "device": (str, None), "gpus": (str, None)}
_PROMPT = {"text": (str, None), "file": (str, None), "endpoint": (str, ENDPOINTS), "system": (str, None),
           "name": (str, None), "expected": (str, None), "expected_regex": (str, None)}
_SAMPLING = {"temperature": ((int, float), None), "seed": (int, None), "top_k": (int, None),
             "top_p": ((int, float), None), "n_predict": (int, None), "n_probs": (int, None)}
_RUN = {"warmup": (bool, None), "repeats": (int, None), "mode": (str, MODES), "schedule": (str, SCHEDULES),
        "stop_on_loop": (bool, None), "stall_timeout_s": ((int, float), None), "score": (bool, None),
        "score_positions": (int, None)}

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
    c = Checker(source)
    c.table(data, _TOP, "")
    model = _section(c, data, "model", _MODEL)
    server = _section(c, data, "server", _SERVER)
    # the dataclasses hold the defaults: a key the file leaves out takes the field's default
    sampling = Sampling(**_floats(_section(c, data, "sampling", _SAMPLING), "temperature", "top_p"))
    run = RunSettings(**_floats(_section(c, data, "run", _RUN), "stall_timeout_s"))

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
        if raw.get("url"):
            _check_url(c, raw["url"], f"{where}.url")
            for key in ("extra_args", "device", "gpus"):
                if raw.get(key):
                    raise c.fail(f"{where}.{key}", "has no effect on an attached server (url is set)",
                                 f"remove {key}, or remove url to let kvtui start this side's server")
        if raw.get("gpus") and not all(p.strip().isdigit() or p.strip().startswith("GPU-")
                                       for p in raw["gpus"].split(",")):
            raise c.fail(f"{where}.gpus", f"{show_value(raw['gpus'])} is not a list of GPU indices",
                         'write gpus = "1" (or "0,1"), as CUDA_VISIBLE_DEVICES takes it')
        sides.append(Side(name, raw["cache_type_k"], raw["cache_type_v"],
                          c.strings(raw["extra_args"], f"{where}.extra_args") if "extra_args" in raw else (),
                          raw.get("attn_rotation", "default"),
                          url=raw.get("url", "").rstrip("/"), api_key=raw.get("api_key", ""),
                          device=raw.get("device", ""), gpus=raw.get("gpus", "").replace(" ", "")))
    if len(sides) < 2:
        raise c.fail("sides", "a comparison needs at least two [[sides]]", "add another [[sides]] table")
    names = [s.name for s in sides]
    if len(set(names)) != len(names):
        raise c.fail("sides", f"side names must differ, got {names}", "give each [[sides]] its own name")

    if "prompt" in data and "prompts" in data:
        raise c.fail("prompts", "give either [prompt] or [[prompts]], not both", "use [[prompts]] for a suite")
    conversation = parse_conversation(c, data, base_dir)
    if conversation is not None:
        given = next(k for k in ("prompt", "prompts", "conversation", "turns") if k in data)
        if "prompt" in data or "prompts" in data:
            raise c.fail(given, "give either a prompt ([prompt] or [[prompts]]) or a conversation "
                                "([conversation] and [[turns]]), not both",
                         "a conversation's user messages go in [[turns]] user = \"...\"")
        if run.repeats != 1:
            raise c.fail("run.repeats", f"{run.repeats}: a conversation runs once", "leave run.repeats out")
        prompts: tuple[Prompt, ...] = (Prompt(text=conversation.first_user(), endpoint="chat",
                                              system=conversation.system, name="turn 1"),)
    else:
        raw_prompts = data["prompts"] if "prompts" in data else [data.get("prompt", {})]
        if not raw_prompts:
            raise c.fail("prompts", "the list is empty", "add at least one [[prompts]] table")
        prompts = tuple(_parse_prompt(c, raw, "prompt" if "prompts" not in data else f"prompts[{k}]", base_dir, k)
                        for k, raw in enumerate(raw_prompts))
    names = [pr.name for pr in prompts]
    if len(set(names)) != len(names):
        raise c.fail("prompts", f"prompt names must differ, got {names}", "give each [[prompts]] its own name")

    server_keys = {("server_bin" if k == "bin" else k): v for k, v in server.items() if k != "extra_args"}
    if "extra_args" in server:
        server_keys["extra_args"] = c.strings(server["extra_args"], "server.extra_args")
    named = {"name": Path(source).stem if source else "profile"}  # an empty name counts as none
    named.update((k, v) for k, v in data.items() if k in ("name", "description") and v)
    profile = Profile(**named, model=model["path"] if "path" in model else "", sides=tuple(sides),  # type: ignore[arg-type]
                      prompts=prompts, sampling=sampling, run=run, source=source, conversation=conversation,
                      **server_keys)
    c.positive(profile.ctx_size, "server.ctx_size", 256)
    c.positive(run.repeats, "run.repeats")
    c.positive(sampling.n_predict, "sampling.n_predict")
    if not 0 <= sampling.n_probs <= 100:
        raise c.fail("sampling.n_probs", f"{sampling.n_probs} is out of range", "use 0 (off) to 100; 5 is plenty")
    c.positive(run.stall_timeout_s, "run.stall_timeout_s")
    if run.score_positions < 0:
        raise c.fail("run.score_positions", f"{run.score_positions} is negative", "use 0 (no cap) or more, e.g. 512")
    if sampling.temperature < 0:
        raise c.fail("sampling.temperature", "must be 0 or more")
    for s in sides:
        if s.cache_type_v in QUANTIZED_TYPES and profile.flash_attn == "off":
            raise c.fail("server.flash_attn", f'"off" with a quantized V cache ({s.name}: V {s.cache_type_v})',
                         'llama-server needs flash attention for a quantized V cache: set flash_attn = "on"')
    return profile


def _check_url(c: Checker, url: str, where: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise c.fail(where, f"{show_value(url)} is not an http URL", 'write url = "http://127.0.0.1:8081"')
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise c.fail(where, f"{show_value(url)} has a bad port", 'write url = "http://127.0.0.1:8081"') from None


def _section(c: Checker, data: dict[str, Any], key: str, schema: dict[str, tuple[Any, Any]]) -> dict[str, Any]:
    """A checked table of the profile (empty when the file leaves it out)."""
    return c.table(data[key] if key in data else {}, schema, key)


def _floats(table: dict[str, Any], *keys: str) -> dict[str, Any]:
    """The table with these number keys as floats (TOML lets ``1`` stand for ``1.0``)."""
    return {k: float(v) if k in keys else v for k, v in table.items()}


def _parse_prompt(c: Checker, raw: Any, where: str, base_dir: Path | None, k: int) -> Prompt:
    prompt = c.table(raw, _PROMPT, where)
    if "text" in prompt and "file" in prompt:
        raise c.fail(where, "give either text or file, not both")
    if "file" in prompt:
        path = Path(prompt["file"])
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if path.exists() and not path.is_file():  # a folder, a FIFO or /dev/stdin: never block on it
            raise c.fail(f"{where}.file", f'"{path}" is not a regular file', "point at a text file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, ValueError) as exc:  # ValueError: a NUL in the path; UnicodeDecodeError: not UTF-8
            why = getattr(exc, "strerror", None) or (
                "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else "not a valid path")
            raise c.fail(f"{where}.file", f'cannot read "{path}": {why}', "check the path") from None
    elif "text" in prompt:
        text = prompt["text"]
    else:
        raise c.fail(where, "missing text or file", f'add text = "..." or file = "prompt.txt" under [{where}]')
    if not text.strip():
        raise c.fail(f"{where}.text", "the prompt is empty")
    if "expected_regex" in prompt:
        import re

        try:
            re.compile(prompt["expected_regex"])
        except (re.error, RecursionError, OverflowError) as exc:
            raise c.fail(f"{where}.expected_regex", f"not a valid regular expression: {exc}") from None
    default_name = "prompt" if k == 0 else f"prompt{k + 1}"
    given = {key: prompt[key] for key in ("name", "endpoint", "system", "expected", "expected_regex") if key in prompt}
    return Prompt(text=text, **{"name": default_name, **given})


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
    except IsADirectoryError:
        inside = sorted(p.glob("*.toml"), key=lambda f: (f.name != "demo.toml", f.name))
        hint = f"give a profile file, e.g. {inside[0]}" if inside else "give a profile .toml file"
        raise ProfileError(f"{p} is a folder, not a profile", hint) from None
    except OSError as exc:
        raise ProfileError(f"{p}: cannot read: {exc.strerror}", "check the file's permissions") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ProfileError(f"{p}: not a text file", "a profile is a UTF-8 TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{p}: not valid TOML: {exc}", "fix the syntax at that line") from None
    except RecursionError:  # tomllib recurses into nested arrays and tables
        raise ProfileError(f"{p}: not valid TOML: nested too deeply",
                           "a profile nests tables two levels at most") from None
    schema = data.get("schema")
    if isinstance(schema, str) and schema.startswith("kvtui.session/"):
        raise ProfileError(f"{p} is a session record, not a profile",
                           f"run the same comparison again with `kvtui run --from {p}`, or watch it with "
                           f"`kvtui replay {p}`")
    return parse_profile(data, source=str(p), base_dir=p.parent)


def default_profile_path() -> Path:
    """The demo profile: in the checkout, or inside the installed package."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "profiles" / "demo.toml", here / "_profiles" / "demo.toml"):
        if candidate.is_file():
            return candidate
    return here.parent / "profiles" / "demo.toml"
