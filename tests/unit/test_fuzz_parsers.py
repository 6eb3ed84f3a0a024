"""Property-based tests: whatever the input, the profile parser and the record reader raise nothing but
KvtuiError (ProfileError, RecordError), the one-line errors the command line prints.

The explicit @example inputs are the holes hypothesis found (or that were found while writing these):
deeply nested TOML (RecursionError in tomllib), a NUL in prompt.file (ValueError), an expected_regex that
overflows or recurses, NaN, and integers beyond 64 bits.
"""

from __future__ import annotations

import atexit
import datetime as dt
import math
import shutil
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kvtui.core.errors import KvtuiError, ProfileError, RecordError
from kvtui.core.profiles import (
    CACHE_TYPES,
    ENDPOINTS,
    FLASH_ATTN,
    MODES,
    SCHEDULES,
    load_profile,
    parse_profile,
)
from kvtui.core.record.recorder import read_record
from kvtui.core.remote import check_remote

DATA = Path(__file__).resolve().parents[1] / "data" / "sessions"
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies ---------------------------------------------------------------------------------

keys = st.text(min_size=0, max_size=12)
scalars = st.one_of(
    st.booleans(),
    st.integers(),  # beyond 64 bits too: tomllib reads them
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31)),
    st.dates(),
    st.times(),
)
toml_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(keys, inner, max_size=4)), max_leaves=12)

# values that look right, so the parser gets past the type checks and into the deeper ones
plausible = {
    "name": st.text(max_size=20), "description": st.text(max_size=20), "path": st.text(max_size=20),
    "bin": st.text(max_size=20), "ctx_size": st.integers(-10, 10**20), "n_gpu_layers": st.integers(-5, 200),
    "flash_attn": st.sampled_from(FLASH_ATTN), "threads": st.integers(-3, 64),
    "extra_args": st.lists(st.sampled_from(["--host", "0.0.0.0", "--host=::1", "-ctk", "q3_k", "-t", "1", "x"]),
                           max_size=4),
    "cache_type_k": st.sampled_from(CACHE_TYPES), "cache_type_v": st.sampled_from(CACHE_TYPES),
    "text": st.text(max_size=20), "file": st.sampled_from(["", ".", "/", "nope.txt", "a\x00b", "/dev/null",
                                                           "prompt.txt", "binary.txt", "/proc/self/fd/0"]),
    "endpoint": st.sampled_from(ENDPOINTS), "system": st.text(max_size=10),
    "expected": st.text(max_size=10), "expected_regex": st.sampled_from(["a+", "(", "(" * 5000 + ")" * 5000,
                                                                         "a{99999999999999999999}", "[", ""]),
    "temperature": st.floats(allow_nan=True), "seed": st.integers(), "top_k": st.integers(-5, 100),
    "top_p": st.floats(allow_nan=True), "n_predict": st.integers(-5, 10**20), "n_probs": st.integers(-5, 200),
    "warmup": st.booleans(), "repeats": st.integers(-2, 10), "mode": st.sampled_from(MODES),
    "schedule": st.sampled_from(SCHEDULES), "stop_on_loop": st.booleans(),
    "stall_timeout_s": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 10**20)),
}
TABLES = {
    "model": ["path"], "server": ["bin", "ctx_size", "n_gpu_layers", "flash_attn", "threads", "extra_args"],
    "prompt": ["text", "file", "endpoint", "system", "name", "expected", "expected_regex"],
    "sampling": ["temperature", "seed", "top_k", "top_p", "n_predict", "n_probs"],
    "run": ["warmup", "repeats", "mode", "schedule", "stop_on_loop", "stall_timeout_s"],
}
SIDE_KEYS = ["name", "cache_type_k", "cache_type_v", "extra_args"]


def value_for(key: str) -> st.SearchStrategy[Any]:
    """Mostly a plausible value for ``key``, sometimes anything."""
    good = plausible.get(key)
    return toml_values if good is None else st.one_of(good, good, good, toml_values)


def table_of(names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    chosen = st.lists(st.one_of(st.sampled_from(names), keys), max_size=len(names) + 1, unique=True)
    return chosen.flatmap(lambda ks: st.fixed_dictionaries({k: value_for(k) for k in ks}))


@st.composite
def profiles(draw: st.DrawFn) -> dict[str, Any]:
    """Profile-shaped data: the real tables and keys, plausible or arbitrary values, unknown keys now and then."""
    data: dict[str, Any] = {}
    for top in draw(st.lists(st.sampled_from(["name", "description", *TABLES, "sides", "prompts"]), unique=True)):
        if top in TABLES:
            data[top] = draw(st.one_of(table_of(TABLES[top]), table_of(TABLES[top]), toml_values))
        elif top == "sides":
            data[top] = draw(st.one_of(st.lists(table_of(SIDE_KEYS), max_size=4), toml_values))
        elif top == "prompts":
            data[top] = draw(st.one_of(st.lists(table_of(TABLES["prompt"]), max_size=3), toml_values))
        else:
            data[top] = draw(value_for(top))
    if draw(st.booleans()):
        data[draw(keys)] = draw(toml_values)
    return data


VALID = {
    "name": "fuzz",
    "model": {"path": "bundled"},
    "server": {"ctx_size": 1024, "extra_args": []},
    "sides": [{"name": "a", "cache_type_k": "q8_0", "cache_type_v": "q8_0"},
              {"name": "b", "cache_type_k": "q4_0", "cache_type_v": "q4_0"}],
    "prompt": {"text": "hello"},
    "sampling": {"n_predict": 8},
    "run": {"stall_timeout_s": 5},
}


@st.composite
def near_valid(draw: st.DrawFn) -> dict[str, Any]:
    """A valid profile with one to three keys changed (plausible values mostly), dropped, or sides added."""
    data = tomllib.loads(tomli_w.dumps(VALID))
    for _ in range(draw(st.integers(1, 3))):
        table = draw(st.sampled_from([*TABLES, "sides"]))
        if table == "sides":
            side = draw(st.integers(0, len(data["sides"])))
            if side == len(data["sides"]):
                data["sides"].append(draw(table_of(SIDE_KEYS)))
            else:
                key = draw(st.sampled_from(SIDE_KEYS))
                data["sides"][side][key] = draw(value_for(key))
            continue
        key = draw(st.sampled_from(TABLES[table]))
        if draw(st.integers(0, 5)) == 0:
            data.get(table, {}).pop(key, None)
        else:
            data.setdefault(table, {})[key] = draw(value_for(key))
    if "text" in data["prompt"] and "file" in data["prompt"] and draw(st.booleans()):
        del data["prompt"]["text"]
    return data


def prompt_dir() -> Path:
    """A folder with the files that ``prompt.file`` values above may name."""
    folder = Path(tempfile.mkdtemp(prefix="kvtui-fuzz-"))
    atexit.register(shutil.rmtree, folder, True)
    (folder / "prompt.txt").write_text("a prompt\n")
    (folder / "binary.txt").write_bytes(b"\xff\xfe\x00not utf-8")
    return folder


PROMPTS = prompt_dir()


def must_be_kvtui_error(call: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return call(*args, **kwargs)
    except KvtuiError as exc:
        assert exc.message and "\n" not in exc.message and "\n" not in exc.hint, repr(exc)
        return exc


# -- the profile parser -------------------------------------------------------------------------


@SETTINGS
@given(st.one_of(profiles(), near_valid(), near_valid()))
@example({**VALID, "prompt": {"file": "a\x00b"}})
@example({**VALID, "prompt": {"file": "binary.txt"}})
@example({**VALID, "prompt": {"text": "x", "expected_regex": "(" * 5000 + ")" * 5000}})
@example({**VALID, "prompt": {"text": "x", "expected_regex": "a{99999999999999999999}"}})
@example({**VALID, "sampling": {"temperature": math.nan}})
@example({**VALID, "server": {"ctx_size": 2**70}})
@example({**VALID, "server": {"extra_args": ["--host"]}})
def test_parse_profile_raises_only_profile_errors(data: dict[str, Any]) -> None:
    result = must_be_kvtui_error(parse_profile, data, source="fuzz.toml", base_dir=PROMPTS)
    if isinstance(result, KvtuiError):
        assert isinstance(result, ProfileError)
        return
    must_be_kvtui_error(check_remote, result)
    # what parses is sane, and survives the trip through the record's [profile]
    assert result.ctx_size >= 256 and len(result.sides) >= 2 and result.prompts
    assert all(math.isfinite(x) for x in (result.sampling.temperature, result.sampling.top_p,
                                          result.run.stall_timeout_s))
    again = parse_profile(tomllib.loads(tomli_w.dumps(result.to_dict())), source="fuzz.toml")
    assert again.sides == result.sides and again.prompts == result.prompts and again.sampling == result.sampling


@SETTINGS
@given(toml_values)
def test_parse_profile_on_anything(data: Any) -> None:
    result = must_be_kvtui_error(parse_profile, data if isinstance(data, dict) else {"x": data}, source="fuzz.toml")
    assert not isinstance(result, KvtuiError) or isinstance(result, ProfileError)


@SETTINGS
@given(st.binary(max_size=400))
@example(b"a = " + b"[" * 5000)
@example(b"a = " + b"{b = " * 5000)
@example(b"\xff\xfe")
@example(b"name = 'x'\n[server]\nctx_size = 99999999999999999999999\n")
@example(b"[[sides]]\n[[sides]]\n")
def test_load_profile_on_arbitrary_bytes(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "p.toml"
        path.write_bytes(raw)
        result = must_be_kvtui_error(load_profile, path)
    assert isinstance(result, ProfileError), "arbitrary bytes are not a profile"


@SETTINGS
@given(profiles())
def test_load_profile_on_profile_shaped_toml(data: dict[str, Any]) -> None:
    try:
        text = tomli_w.dumps(data)
    except (TypeError, ValueError):  # not every drawn structure is writable as TOML
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "p.toml"
        path.write_text(text)
        must_be_kvtui_error(load_profile, path)


# -- the record reader --------------------------------------------------------------------------


@SETTINGS
@given(st.binary(max_size=400))
@example(b"schema = 'kvtui.session/1'\nx = " + b"[" * 5000)
@example(b"schema = 'kvtui.session/1'\nsides = [1]\n")
@example(b"schema = 'kvtui.session/1'\n[[sides]]\nname='a'\ncache_type_k='f16'\ncache_type_v='f16'\n[[sides.runs]]\npieces=[1]\n")
def test_read_record_on_arbitrary_bytes(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "r.toml"
        path.write_bytes(raw)
        result = must_be_kvtui_error(read_record, path)
    assert isinstance(result, RecordError)


RECORDS = {p.name: tomllib.loads(p.read_text()) for p in sorted(DATA.glob("*.toml")) if p.name != "loop-profile.toml"}


def paths_in(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in a parsed TOML document (table keys and list indexes)."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths_in(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node[:3]):  # the first few items of long lists are enough
            out += paths_in(v, (*prefix, i))
    return out


@st.composite
def mutated_records(draw: st.DrawFn) -> dict[str, Any]:
    """A real record with a few values replaced by anything, removed, or joined by unknown keys."""
    name = draw(st.sampled_from(sorted(RECORDS)))
    data = tomllib.loads(tomli_w.dumps(RECORDS[name]))  # a fresh copy
    for _ in range(draw(st.integers(1, 4))):
        paths = paths_in(data)
        path = draw(st.sampled_from(paths))
        parent = data
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(toml_values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(keys)] = draw(toml_values)
    return data


@SETTINGS
@given(mutated_records())
def test_read_record_on_mutated_real_records(data: dict[str, Any]) -> None:
    try:
        text = tomli_w.dumps(data)
    except (TypeError, ValueError):
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "r.toml"
        path.write_text(text)
        result = must_be_kvtui_error(read_record, path)
    assert not isinstance(result, KvtuiError) or isinstance(result, RecordError)


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_real_records_read_back(name: str) -> None:
    """The unmutated records the mutations start from are valid (written as kvtui.session/1, the conversation as
    /2; all read as /2)."""
    assert RECORDS[name]["schema"] == ("kvtui.session/2" if name == "conversation.toml" else "kvtui.session/1")
    assert read_record(DATA / name).schema == "kvtui.session/2"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_records(), st.sampled_from(["table", "md", "csv", "json"]))
def test_show_on_mutated_real_records(data: dict[str, Any], fmt: str) -> None:
    """`kvtui show` on what the reader accepts: a one-line error or a summary, never a traceback."""
    import contextlib
    import io

    from kvtui.show import show

    try:
        text = tomli_w.dumps(data)
    except (TypeError, ValueError):
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "r.toml"
        path.write_text(text)
        with contextlib.redirect_stdout(io.StringIO()):
            must_be_kvtui_error(show, [str(path)], fmt)
