"""Conversations in a profile: parsing with readable errors, the turns a profile's source gives, the chat body."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from kvtui.core.errors import ProfileError
from kvtui.core.profiles import Sampling, load_profile, parse_profile
from kvtui.core.run.converse import _common_prefix
from kvtui.core.run.turns import ProfileTurns, chat_body

REPO = Path(__file__).resolve().parents[2]
SIDES = [{"name": "a", "cache_type_k": "q8_0", "cache_type_v": "q8_0"},
         {"name": "b", "cache_type_k": "q4_0", "cache_type_v": "q4_0"}]
SCRIPTED = {"name": "c", "sides": SIDES, "conversation": {"mode": "free", "system": "Be brief."},
            "turns": [{"user": "write a function that reverses a string"}, {"user": "add a docstring"},
                      {"user": "add a test"}]}
TOOL_CALL = {"role": "assistant", "content": None,
             "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "ls", "arguments": "{}"}}]}
TRANSCRIPT = [
    {"role": "system", "content": "You are a coding agent."},
    {"role": "user", "content": "list the files"},
    TOOL_CALL,
    {"role": "tool", "tool_call_id": "c1", "content": "a.py b.py"},
    {"role": "assistant", "content": "There are two files: a.py and b.py."},
    {"role": "user", "content": "open a.py"},
]


def bad(data: dict, base_dir: Path | None = None) -> ProfileError:
    with pytest.raises(ProfileError) as info:
        parse_profile(data, source="p.toml", base_dir=base_dir)
    return info.value


def with_(**changes) -> dict:
    d = copy.deepcopy(SCRIPTED)
    for k, v in changes.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    return d


def collect(source: ProfileTurns, replies: dict[int, str] | None = None) -> list:
    """Iterate a source as the engine does: each turn's reply future resolved before the next turn."""
    async def go() -> list:
        out = []
        async for req in source:
            out.append(req)
            if req.reply is not None:
                text = (replies or {}).get(req.turn)
                req.reply.set_result(None if text is None else SimpleNamespace(text=text))
        return out

    return asyncio.run(go())


# -- parsing ------------------------------------------------------------------------------------------------


def test_scripted_turns_become_steps() -> None:
    p = parse_profile(SCRIPTED, source="p.toml")
    conv = p.conversation
    assert conv is not None and conv.mode == "free" and len(conv.steps) == 3
    assert conv.steps[0].before == ({"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "write a function that reverses a string"})
    assert conv.steps[1].before == ({"role": "user", "content": "add a docstring"},)
    # the warm-up and the plan's checks read the first turn as a chat prompt
    assert p.prompt.endpoint == "chat" and p.prompt.text == "write a function that reverses a string"


def test_turns_alone_make_a_free_conversation() -> None:
    p = parse_profile(with_(conversation=None), source="p.toml")
    assert p.conversation is not None and p.conversation.mode == "free"


def test_to_dict_round_trips() -> None:
    forced = with_(conversation={"mode": "forced"},
                   turns=[{"user": "hi", "assistant": "Hello!"}, {"user": "more", "expected": "x"}])
    for data in (SCRIPTED, forced):
        p = parse_profile(data, source="p.toml")
        d = p.to_dict()
        assert "prompts" not in d and d["conversation"]["mode"] == data["conversation"]["mode"]
        assert parse_profile(d, source="again").conversation == p.conversation


@pytest.mark.parametrize("data, key, words", [
    (with_(prompt={"text": "hi"}), "prompt", "not both"),
    (with_(turns=None), "turns", "needs [[turns]] or conversation.file"),
    (with_(turns=[{"user": "hi", "assistant": "hello"}]), "turns[0].assistant", "only a forced conversation"),
    (with_(turns=[{"usr": "hi"}]), "turns[0].usr", 'did you mean "user"'),
    (with_(turns=[{"user": "  "}]), "turns[0].user", "empty"),
    (with_(turns=[{"assistant": "x"}]), "turns[0]", "missing user"),
    (with_(turns="hi"), "turns", "expected a list"),
    (with_(conversation={"mode": "greedy"}), "conversation.mode", "not allowed"),
    (with_(conversation={"file": "log.json"}), "turns", "not both"),
    (with_(run={"repeats": 3}), "run.repeats", "runs once"),
    (with_(turns=[{"user": "hi", "expected_regex": "("}]), "turns[0].expected_regex", "regular expression"),
])
def test_bad_conversations_name_the_key_and_the_fix(data: dict, key: str, words: str) -> None:
    e = bad(data)
    assert f"p.toml: {key}:" in e.message, e.message
    assert words in e.message + " " + e.hint, (e.message, e.hint)
    assert "\n" not in e.message and e.hint


def test_assistant_message_error_says_how_to_fix() -> None:
    e = bad(with_(turns=[{"user": "hi", "assistant": "hello"}]))
    assert 'conversation.mode = "forced"' in e.hint


# -- transcripts ---------------------------------------------------------------------------------------------


def transcript_profile(tmp_path: Path, content: object, mode: str = "free", raw: str | None = None) -> dict:
    (tmp_path / "log.json").write_text(raw if raw is not None else json.dumps(content))
    return {"name": "t", "sides": SIDES, "conversation": {"mode": mode, "file": "log.json"}}


def test_transcript_free_keeps_tool_calls_as_context(tmp_path: Path) -> None:
    p = parse_profile(transcript_profile(tmp_path, TRANSCRIPT), source="p.toml", base_dir=tmp_path)
    conv = p.conversation
    assert conv is not None and conv.file == str((tmp_path / "log.json").resolve())
    # turns: at the assistant's text reply, and at the end (the last user message awaits an answer)
    assert [len(s.before) for s in conv.steps] == [4, 1]
    assert conv.steps[0].before[2] == TOOL_CALL and conv.steps[1].reply is None


def test_transcript_forced_answers_at_every_assistant_message(tmp_path: Path) -> None:
    data = transcript_profile(tmp_path, {"messages": TRANSCRIPT}, mode="forced")
    conv = parse_profile(data, source="p.toml", base_dir=tmp_path).conversation
    assert conv is not None and [s.reply for s in conv.steps] == [TOOL_CALL, TRANSCRIPT[4], None]
    reqs = collect(ProfileTurns(conv))
    assert [len(r.messages) for r in reqs] == [2, 4, 6]
    assert reqs[2].messages == tuple(TRANSCRIPT)  # identical for every side: the transcript up to the turn
    assert all(r.reply is None for r in reqs)  # every reply is the transcript's: nothing to wait for


@pytest.mark.parametrize("content, raw, words", [
    (None, "[{\"role\": \"user\",", "not valid JSON"),
    ({"turns": []}, None, "no list of messages"),
    ([{"content": "hi"}], None, "message 1 has no role"),
    ([{"role": "robot", "content": "hi"}], None, "not a chat role"),
    ([{"role": "user", "content": 3}], None, "not text"),
    ([{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}], None, "before any user"),
    ([{"role": "system", "content": "hi"}], None, "no user message"),
])
def test_bad_transcripts(tmp_path: Path, content: object, raw: str | None, words: str) -> None:
    e = bad(transcript_profile(tmp_path, content, raw=raw), base_dir=tmp_path)
    assert "conversation.file" in e.message and words in e.message, e.message


def test_missing_transcript_file(tmp_path: Path) -> None:
    e = bad({"name": "t", "sides": SIDES, "conversation": {"file": "nope.json"}}, base_dir=tmp_path)
    assert "cannot read" in e.message and "relative to the profile" in e.hint


def test_shipped_conversation_profile() -> None:
    p = load_profile(REPO / "profiles" / "coding-conversation.toml")
    assert p.model == "smollm2" and p.sampling.temperature == 0.0
    assert p.conversation is not None and 5 <= len(p.conversation.steps) <= 6
    assert [s.cache_type_k for s in p.sides] == ["q8_0", "q4_0"]


# -- the profile's turn source ------------------------------------------------------------------------------


def test_free_source_gives_each_turn_its_new_messages() -> None:
    conv = parse_profile(SCRIPTED, source="p.toml").conversation
    reqs = collect(ProfileTurns(conv))
    assert [r.turn for r in reqs] == [1, 2, 3] and all(r.own_history for r in reqs)
    assert reqs[1].messages == ({"role": "user", "content": "add a docstring"},)
    assert reqs[0].user_text() == "write a function that reverses a string"


def test_forced_source_takes_the_primary_reply_where_none_is_given() -> None:
    data = with_(conversation={"mode": "forced"},
                 turns=[{"user": "one"}, {"user": "two", "assistant": "given"}, {"user": "three"}])
    source = ProfileTurns(parse_profile(data, source="p.toml").conversation)
    reqs = collect(source, {1: "primary said"})
    assert not any(r.own_history for r in reqs)
    assert reqs[1].messages[-2:] == ({"role": "assistant", "content": "primary said"},
                                     {"role": "user", "content": "two"})
    assert reqs[2].messages[-2] == {"role": "assistant", "content": "given"}
    assert reqs[0].reply is not None and reqs[1].reply is None and reqs[2].reply is None  # the last needs none
    again = collect(source)  # sequential mode: the next side's pass reuses the primary's reply
    assert again[1].messages == reqs[1].messages and again[0].reply is None


def test_forced_source_ends_without_a_primary_reply() -> None:
    data = with_(conversation={"mode": "forced"}, turns=[{"user": "one"}, {"user": "two"}])
    reqs = collect(ProfileTurns(parse_profile(data, source="p.toml").conversation), {})
    assert [r.turn for r in reqs] == [1]


def test_chat_body_sampling_then_the_request_fields() -> None:
    msgs = ({"role": "user", "content": "hi"},)
    body = chat_body(Sampling(temperature=0.0, seed=7, n_predict=64), msgs)
    assert body["messages"] == list(msgs) and body["cache_prompt"] is True and body["stream"] is True
    assert body["max_tokens"] == 64 and body["seed"] == 7 and body["timings_per_token"] is True
    agent = chat_body(Sampling(), msgs, {"max_tokens": 9, "stream": False, "tools": [{"type": "function"}]})
    assert agent["max_tokens"] == 9 and agent["stream"] is False and agent["tools"] == [{"type": "function"}]


def test_common_prefix() -> None:
    a = ({"role": "user", "content": "x"}, {"role": "assistant", "content": "y"})
    assert _common_prefix(a, a + ({"role": "user", "content": "z"},)) == 2
    assert _common_prefix(a, ({"role": "user", "content": "other"},)) == 0
    assert _common_prefix((), a) == 0
