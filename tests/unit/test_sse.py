"""SSE decoding and llama-server stream parsing: keep-alives, [DONE], multi-byte tokens, empty chunks."""

from __future__ import annotations

import json

import pytest

from kvtui.core.profiles import Prompt, Sampling
from kvtui.core.server.client import StreamParser, build_request
from kvtui.core.server.sse import DONE, SSEDecoder, SSEError, decode_lines


def sse(*payloads) -> list[str]:
    lines = []
    for p in payloads:
        lines += [p if isinstance(p, str) else "data: " + json.dumps(p), ""]
    return lines


def test_keepalive_comments_are_ignored() -> None:
    items = list(decode_lines([":", "", ":", "", 'data: {"a": 1}', ""]))
    assert items == [{"a": 1}]


def test_done_marker() -> None:
    assert list(decode_lines(sse({"x": 1}, "data: [DONE]"))) == [{"x": 1}, DONE]


def test_multiline_data_is_joined() -> None:
    assert list(decode_lines(['data: {"a":', "data: 2}", ""])) == [{"a": 2}]


def test_event_without_trailing_blank_line_counts() -> None:
    assert list(decode_lines(['data: {"a": 3}'])) == [{"a": 3}]


def test_malformed_json_is_a_readable_error() -> None:
    dec = SSEDecoder()
    dec.feed("data: {not json")
    with pytest.raises(SSEError) as info:
        dec.feed("")
    assert "malformed JSON" in info.value.message


def completion_chunks() -> list:
    return [
        {"content": " the", "tokens": [506], "stop": False, "tokens_predicted": 1, "tokens_evaluated": 6},
        # stop-string hold-back: a token with no text yet
        {"content": "", "tokens": [236743], "stop": False, "tokens_predicted": 2},
        # a multi-byte character completed over 4 tokens arrives once, with the last id only
        {"content": "日", "tokens": [99], "stop": False, "tokens_predicted": 6},
        {"content": "", "tokens": [1], "stop": False, "tokens_predicted": 7},  # EOS
        {"content": "", "tokens": [], "stop": True, "stop_type": "eos", "tokens_predicted": 7,
         "timings": {"prompt_n": 6, "prompt_per_second": 30.0, "predicted_n": 7, "predicted_per_second": 22.0}},
    ]


def test_completion_counts_tokens_not_chunks() -> None:
    parser = StreamParser()
    pieces = [p for i, c in enumerate(decode_lines(sse(*completion_chunks()))) if (p := parser.take(c, i))]
    assert [p.n for p in pieces] == [1, 2, 6, 7]
    assert "".join(p.text for p in pieces) == " the日"
    assert pieces[2].token_id == 99
    assert parser.finished and parser.result.stop == "eos"
    assert parser.result.timings.predicted_n == 7


def test_completion_limit_and_progress_chunks() -> None:
    parser = StreamParser()
    progress = {"content": "", "tokens": [0], "stop": False, "tokens_predicted": 0,
                "prompt_progress": {"total": 10, "processed": 5}}
    assert parser.take(progress, 0.0) is None
    parser.take({"content": "a", "tokens": [5], "stop": False, "tokens_predicted": 1}, 1.0)
    parser.take({"content": "", "stop": True, "stop_type": "limit", "truncated": True, "timings": {}}, 2.0)
    assert parser.result.stop == "length" and parser.result.truncated


def test_stop_word() -> None:
    parser = StreamParser()
    parser.take({"content": "", "stop": True, "stop_type": "word", "stopping_word": "6", "timings": {}}, 0)
    assert parser.result.stop == "word"


def test_chat_stream_role_event_usage_and_done() -> None:
    events = [
        {"choices": [{"finish_reason": None, "index": 0, "delta": {"role": "assistant", "content": None}}]},
        {"choices": [{"finish_reason": None, "index": 0, "delta": {"content": " hello"}}],
         "timings": {"predicted_n": 1}},
        {"choices": [{"finish_reason": None, "index": 0, "delta": {"content": " world"}}],
         "timings": {"predicted_n": 3}},
        {"choices": [{"finish_reason": "length", "index": 0, "delta": {}}]},
        {"choices": [], "usage": {"completion_tokens": 3},
         "timings": {"predicted_n": 3, "predicted_per_second": 50.0, "prompt_per_second": 9.0}},
        "data: [DONE]",
    ]
    parser = StreamParser()
    pieces = [p for c in decode_lines(sse(*events)) if (p := parser.take(c, 0.0))]
    assert [p.text for p in pieces] == [" hello", " world"]
    assert [p.n for p in pieces] == [1, 3]
    assert parser.finished and parser.result.stop == "length"
    assert parser.result.timings.predicted_per_second == 50.0


def test_error_payload_mid_stream() -> None:
    parser = StreamParser()
    with pytest.raises(Exception, match="context"):
        parser.take({"error": {"code": 400, "message": "exceeds the available context size"}}, 0)


def test_build_request_measured_requests_skip_the_prompt_cache() -> None:
    path, body = build_request(Prompt("hi"), Sampling(n_predict=9, seed=7))
    assert path == "/completion" and body["cache_prompt"] is False and body["n_predict"] == 9
    assert body["seed"] == 7 and body["stream"] is True
    path, body = build_request(Prompt("hi", endpoint="chat", system="be brief"), Sampling())
    assert path == "/v1/chat/completions" and body["messages"][0]["role"] == "system"
    assert body["timings_per_token"] is True
