"""Profile validation: every bad input names the file, the key, the value and the fix."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kvtui.core.errors import ProfileError
from kvtui.core.profiles import CACHE_TYPES, load_profile, parse_profile

REPO = Path(__file__).resolve().parents[2]

GOOD = {
    "name": "t",
    "sides": [{"name": "a", "cache_type_k": "q8_0", "cache_type_v": "q8_0"},
              {"name": "b", "cache_type_k": "q4_0", "cache_type_v": "q4_0"}],
    "prompt": {"text": "hello"},
}


def bad(data: dict, **kw) -> ProfileError:
    with pytest.raises(ProfileError) as info:
        parse_profile(data, source="p.toml", **kw)
    return info.value


def with_(path: str, value) -> dict:
    import copy

    d = copy.deepcopy(GOOD)
    keys = path.split(".")
    target = d
    for k in keys[:-1]:
        target = target[int(k)] if k.isdigit() else target.setdefault(k, {})
    target[keys[-1]] = value
    return d


def test_shipped_profiles_load() -> None:
    demo = load_profile(REPO / "profiles" / "demo.toml")
    assert [(s.cache_type_k, s.cache_type_v) for s in demo.sides] == [("q8_0", "q8_0"), ("q4_0", "q4_0")]
    assert demo.ctx_size == 4096 and demo.model == "bundled"
    coding = load_profile(REPO / "profiles" / "coding-circuit-breaker.toml")
    assert coding.ctx_size == 168000
    assert "circuit breaker" in coding.prompt.text.lower()
    assert [s.cache_type_k for s in coding.sides] == ["q8_0", "q4_0"]


def test_defaults() -> None:
    p = parse_profile(GOOD, source="p.toml")
    assert p.flash_attn == "on" and p.run.repeats == 1 and p.run.mode == "auto" and p.model == ""
    assert p.sampling.temperature == 0.0 and p.prompt.endpoint == "completion"


def test_bad_cache_type_names_key_value_and_allowed() -> None:
    e = bad(with_("sides.0.cache_type_k", "q3_k"))
    assert "p.toml" in e.message and "sides[0].cache_type_k" in e.message and '"q3_k"' in e.message
    for t in CACHE_TYPES:
        assert t in e.hint


def test_unknown_key_did_you_mean() -> None:
    e = bad(with_("server.ctx_szie", 4096))
    assert "server.ctx_szie" in e.message and "unknown key" in e.message
    assert 'did you mean "ctx_size"' in e.hint


def test_unknown_top_level_key_lists_known() -> None:
    e = bad(with_("zzz", 1))
    assert "zzz" in e.message and "known keys" in e.hint


def test_wrong_type() -> None:
    e = bad(with_("server.ctx_size", "big"))
    assert "server.ctx_size" in e.message and "expected an integer" in e.message and '"big"' in e.message


def test_bool_is_not_an_integer() -> None:
    e = bad(with_("sampling.n_predict", True))
    assert "sampling.n_predict" in e.message


def test_bad_choice_lists_allowed() -> None:
    e = bad(with_("run.mode", "both"))
    assert "run.mode" in e.message and "auto, parallel, sequential" in e.hint
    e = bad(with_("prompt.endpoint", "generate"))
    assert "completion, chat" in e.hint


def test_quantized_v_needs_flash_attention() -> None:
    e = bad(with_("server.flash_attn", "off"))
    assert "server.flash_attn" in e.message and "quantized V" in e.message and 'flash_attn = "on"' in e.hint


def test_one_side_is_not_a_comparison() -> None:
    d = with_("sides", GOOD["sides"][:1])
    assert "at least two" in bad(d).message


def test_no_sides() -> None:
    d = dict(GOOD)
    del d["sides"]
    assert "sides" in bad(d).message


def test_missing_cache_type() -> None:
    d = with_("sides", [{"name": "a", "cache_type_k": "f16"}, GOOD["sides"][1]])
    assert "sides[0].cache_type_v" in bad(d).message


def test_duplicate_side_names() -> None:
    d = with_("sides.1.name", "a")
    assert "names must differ" in bad(d).message


def test_prompt_missing_and_both() -> None:
    d = dict(GOOD)
    d["prompt"] = {}
    assert "missing text or file" in bad(d).message
    d["prompt"] = {"text": "x", "file": "y"}
    assert "either text or file" in bad(d).message


def test_prompt_file(tmp_path: Path) -> None:
    (tmp_path / "q.txt").write_text("from a file")
    d = with_("prompt", {"file": "q.txt"})
    assert parse_profile(d, source="p.toml", base_dir=tmp_path).prompt.text == "from a file"
    e = bad(with_("prompt", {"file": "nope.txt"}), base_dir=tmp_path)
    assert "prompt.file" in e.message and "nope.txt" in e.message


def test_extra_args_must_be_strings() -> None:
    e = bad(with_("server.extra_args", ["--foo", 3]))
    assert "server.extra_args" in e.message and "list of strings" in e.message


def test_too_small_values() -> None:
    assert "run.repeats" in bad(with_("run.repeats", 0)).message
    assert "server.ctx_size" in bad(with_("server.ctx_size", 16)).message
    assert "sampling.temperature" in bad(with_("sampling.temperature", -1)).message


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="no such profile"):
        load_profile(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    with pytest.raises(ProfileError, match="not valid TOML") as info:
        load_profile(broken)
    assert "broken.toml" in info.value.message


def test_round_trip_to_dict() -> None:
    p = parse_profile(GOOD, source="p.toml")
    again = parse_profile(p.to_dict(), source="p.toml")
    assert dataclasses.replace(again, source="p.toml") == p


@pytest.mark.parametrize("key,value,hint", [
    ("sampling.n_predict", "160", "write n_predict = 160 (no quotes)"),
    ("sampling.temperature", "0.7", "write temperature = 0.7 (no quotes)"),
    ("run.warmup", "true", "write warmup = true (no quotes)"),
    ("name", 5, 'write name = "5" (in quotes)'),
    ("sampling.seed", [1], "give an integer here"),
])
def test_wrong_type_says_what_to_write(key: str, value, hint: str) -> None:
    err = bad(with_(key, value))
    assert "expected" in err.message and err.hint == hint


def test_a_folder_given_as_a_profile_names_a_profile_inside(tmp_path: Path) -> None:
    with pytest.raises(ProfileError) as info:
        load_profile(REPO / "profiles")
    assert info.value.message == f"{REPO / 'profiles'} is a folder, not a profile"
    assert info.value.hint == f"give a profile file, e.g. {REPO / 'profiles' / 'demo.toml'}"
    with pytest.raises(ProfileError) as info:
        load_profile(tmp_path)
    assert info.value.hint == "give a profile .toml file"


def test_a_record_given_as_a_profile_says_how_to_use_it() -> None:
    record = REPO / "tests" / "data" / "sessions" / "demo.toml"
    with pytest.raises(ProfileError) as info:
        load_profile(record)
    assert info.value.message == f"{record} is a session record, not a profile"
    assert f"kvtui run --from {record}" in info.value.hint and f"kvtui replay {record}" in info.value.hint


def test_scoring_is_on_by_default_capped_and_can_be_turned_off() -> None:
    p = parse_profile(GOOD, source="p.toml")
    assert p.run.score is True and p.run.score_positions == 256
    off = parse_profile(with_("run.score", False), source="p.toml")
    assert off.run.score is False and off.to_dict()["run"]["score"] is False
    assert parse_profile(with_("run.score_positions", 0), source="p.toml").run.score_positions == 0
    err = bad(with_("run.score_positions", -5))
    assert "run.score_positions" in err.message and "0 (no cap)" in err.hint
    assert "run.score" in bad(with_("run.score", "yes")).message
