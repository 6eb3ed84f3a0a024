"""Streaming requests to llama-server: raw ``/completion`` or ``/v1/chat/completions``.

Counts tokens the way the server does (``tokens_predicted`` / ``timings``), never
by chunks: a chunk may carry several tokens (an incomplete UTF-8 character is
held back) or none. Closing the stream is how a request is cancelled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from kvtui.core.errors import KvtuiError, RequestRefused
from kvtui.core.profiles import Prompt, Sampling
from kvtui.core.server.sse import DONE, SSEDecoder, SSEError
from kvtui.core.server.streamhttp import StreamResponse, open_stream
from kvtui.core.server.wire import ChatChoice, ChatChunk, CompletionChunk, ErrorBody, Timings, TokenProb, read_json

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Piece:
    """One streamed chunk of text: ``n`` is the server's running token count."""

    t: float
    n: int
    text: str
    token_id: int | None
    top: tuple[tuple[int, float], ...] | None = None  # (token id, logprob) of the top-N, when asked for


@dataclass(frozen=True, slots=True)
class Progress:
    """How far the server is through the prompt (``prompt_progress`` of a ``return_progress`` request).

    ``cache`` tokens came from the prompt cache; ``processed`` counts them too.
    ``time_ms`` is the server's time spent on the prompt so far.
    """

    total: int
    cache: int
    processed: int
    time_ms: float

    @property
    def tokens_per_second(self) -> float | None:
        done = self.processed - self.cache
        return done / (self.time_ms / 1000) if self.time_ms > 0 and done > 0 else None

    @property
    def eta_s(self) -> float | None:
        rate = self.tokens_per_second
        return (self.total - self.processed) / rate if rate else None

    @staticmethod
    def parse(raw: Any) -> Progress | None:
        got = read_json(_ProgressBody, raw)
        if got is None or None in (got.total, got.cache, got.processed, got.time_ms):
            return None
        return Progress(int(got.total), int(got.cache), int(got.processed), float(got.time_ms))  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class _ProgressBody:
    total: int | None = None
    cache: int | None = None
    processed: int | None = None
    time_ms: float | None = None


@dataclass(slots=True)
class StreamResult:
    """How a request ended, with the server's own timings when it sent them."""

    stop: str = "error"  # eos | length | word | aborted | error | loop
    timings: Timings | None = None  # the server's own, from the final event
    truncated: bool = False
    error: str | None = None


def http_client() -> httpx.AsyncClient:
    """The HTTP client for talking to llama-server: a fresh connection for every request.

    llama-server closes the connection a few milliseconds after a streamed
    response ends, although its headers say ``Keep-Alive: timeout=5, max=100``
    (measured on b10434: 60 of 60 streams). A pooled client hands that dying
    connection to the next request, which then fails with "Server disconnected
    without sending a response" whenever it is sent inside those milliseconds:
    a rerun, whose measured request follows its warm-up at once, failed about
    1 time in 10. Idle non-streamed connections have the same race at the
    server's 5 s keep-alive timeout. A new loopback connection costs well
    under a millisecond, so kvtui keeps none alive.
    """
    return httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0))


class StreamStalled(KvtuiError):
    """No token arrived for longer than the stall timeout."""


def chat_messages(prompt: Prompt) -> list[dict[str, str]]:
    """A chat prompt's messages: the system message, if any, then the user's."""
    system = [{"role": "system", "content": prompt.system}] if prompt.system else []
    return [*system, {"role": "user", "content": prompt.text}]


def build_request(prompt: Prompt, sampling: Sampling, *, n_predict: int | None = None,
                  cache_prompt: bool = False, seed: int | None = None,
                  n_probs: int | None = None) -> tuple[str, dict[str, Any]]:
    """The endpoint path and JSON body for one request.

    Args:
        prompt: what to ask and through which endpoint.
        sampling: the shared sampler settings.
        n_predict: override of ``sampling.n_predict`` (warm-up uses a few tokens).
        cache_prompt: False on measured requests so every run processes the whole prompt.
        seed: override of ``sampling.seed`` (each repeat gets its own).
        n_probs: override of ``sampling.n_probs`` (0 for warm-up).
    """
    common: dict[str, Any] = {
        "temperature": sampling.temperature,
        "seed": sampling.seed if seed is None else seed,
        "top_k": sampling.top_k,
        "top_p": sampling.top_p,
        "stream": True,
        "cache_prompt": cache_prompt,
    }
    limit = sampling.n_predict if n_predict is None else n_predict
    probs = sampling.n_probs if n_probs is None else n_probs
    if prompt.endpoint == "chat":
        body = {**common, "messages": chat_messages(prompt), "max_tokens": limit, "timings_per_token": True,
                "stream_options": {"include_usage": True}}
        if probs:
            body.update(logprobs=True, top_logprobs=probs)
        return "/v1/chat/completions", body
    # return_progress: chunks with prompt_progress while a long prompt is processed (b10434 sends them)
    body = {**common, "prompt": prompt.text, "n_predict": limit, "return_progress": True}
    if probs:
        body["n_probs"] = probs
    return "/completion", body


def _top(entries: Any) -> tuple[tuple[int, float], ...] | None:
    """The last token's top-N as (id, logprob) from ``completion_probabilities`` or chat ``logprobs``."""
    last = read_json(TokenProb, entries[-1]) if isinstance(entries, list) and entries else None
    if last is None or last.top_logprobs is None:
        return None
    out = [(e.id, e.logprob) for e in (read_json(TokenProb, t) for t in last.top_logprobs)
           if e is not None and e.id is not None and e.logprob is not None]
    return tuple(out) or None


_STOP_TYPES = {"eos": "eos", "limit": "length", "word": "word"}
_FINISH = {"stop": "eos", "length": "length", "tool_calls": "eos"}


class StreamParser:
    """Turns decoded payloads of either endpoint into pieces and a result."""

    def __init__(self) -> None:
        self.result = StreamResult()
        self.n = 0
        self.finished = False
        self.progress: Progress | None = None  # the latest prompt_progress, until taken

    def take(self, payload: Any, t: float) -> Piece | None:
        """Handle one payload; return a Piece when it carries generated text or a token."""
        if payload is DONE:
            self.finished = True
            return None
        if not isinstance(payload, dict):
            raise SSEError(f"unexpected event payload: {payload!r:.80}")
        if "error" in payload:
            body = read_json(ErrorBody, payload["error"])
            msg = body.message if body is not None and body.message else str(payload["error"])
            raise KvtuiError(f"server error: {_one_line(msg)}",
                             "check the profile's prompt and sampling settings against the server's message",
                             exit_code=1)
        if "choices" in payload:
            return self._chat(payload, t)
        return self._completion(payload, t)

    def _completion(self, payload: dict[str, Any], t: float) -> Piece | None:
        p = read_json(CompletionChunk, payload)
        assert p is not None
        n = p.tokens_predicted
        if p.stop:
            self.finished = True
            self.result.stop = _STOP_TYPES.get(p.stop_type, "eos")
            self.result.timings = read_json(Timings, p.timings)
            self.result.truncated = p.truncated
            if n is not None:
                self.n = n
            return Piece(t, self.n, p.content, None) if p.content else None
        if p.prompt_progress is not None:
            self.progress = Progress.parse(p.prompt_progress)
            if n == 0 or (n is None and not p.content):
                return None  # a progress report, not a token (its tokens:[0] is bogus)
        if n is None:
            n = self.n + 1
        self.n = n
        last = p.tokens[-1] if p.tokens and isinstance(p.tokens[-1], int) else None
        return Piece(t, n, p.content, last, _top(p.completion_probabilities))

    def _chat(self, payload: dict[str, Any], t: float) -> Piece | None:
        p = read_json(ChatChunk, payload)
        assert p is not None
        timings = read_json(Timings, p.timings)
        if timings is not None:
            self.result.timings = timings
        choice = read_json(ChatChoice, p.choices[0]) if p.choices else None
        if choice is None:
            return None  # the usage event
        if choice.finish_reason:
            self.result.stop = _FINISH.get(choice.finish_reason, "eos")
        text = (choice.delta or {}).get("content") or ""
        if not isinstance(text, str) or not text:
            return None
        n = timings.predicted_n if timings is not None else None
        self.n = n if n is not None else self.n + 1
        content = (choice.logprobs or {}).get("content")
        last = read_json(TokenProb, content[-1]) if isinstance(content, list) and content else None
        return Piece(t, self.n, text, last.id if last is not None else None, _top(content))


async def stream(
    http: httpx.AsyncClient,
    base_url: str,
    path: str,
    body: dict[str, Any],
    *,
    api_key: str = "",
    stall_timeout_s: float = 120.0,
    clock: Clock = time.monotonic,
    result: StreamResult | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_raw: Callable[[bytes], Awaitable[None]] | None = None,
) -> AsyncIterator[Piece]:
    """POST a streaming request and yield pieces as they arrive.

    ``http`` is the session's client, kept in the signature for the callers; the stream itself goes over a
    connection of its own (server/streamhttp.py: two thirds of httpx's CPU per token). The caller's ``result``
    is filled in as the stream ends; ``on_progress`` gets each prompt-progress report; ``on_raw`` gets the
    response's bytes as they arrive, untouched (``kvtui mirror`` passes them on). Leaving the loop
    early (``break``, cancellation) closes the connection, which makes the
    server stop generating.

    Raises:
        StreamStalled: no event for ``stall_timeout_s`` seconds.
        SSEError: malformed data from the server.
        KvtuiError: an HTTP error status, with the server's message.
    """
    parser = StreamParser()
    if result is not None:
        parser.result = result
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with open_stream(base_url + path, body, headers) as resp:  # not httpx: see server/streamhttp.py
        if on_raw is not None:
            await _raw_head(on_raw, resp)
        if resp.status_code != 200:
            raw = await resp.aread()
            if on_raw is not None:
                await on_raw(raw)
            raise http_error(resp.status_code, path, raw)
        decoder = SSEDecoder()
        lines = resp.aiter_lines() if on_raw is None else _raw_lines(resp, on_raw)
        while True:
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
                # lands as a line arrives, and a cancelled (aborted) stream would then carry on
                async with asyncio.timeout(stall_timeout_s):
                    line = await anext(lines)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise StreamStalled(f"no data from the server for {stall_timeout_s:g} s",
                                    "it may be hung or overloaded; raise run.stall_timeout_s if it is just slow",
                                    exit_code=1) from None
            payload = decoder.feed(line.rstrip("\r"))
            if payload is None:
                continue
            piece = parser.take(payload, clock())
            if parser.progress is not None:
                if on_progress is not None:
                    on_progress(parser.progress)
                parser.progress = None
            if piece is not None:
                yield piece
            if parser.finished and payload is DONE:
                break
        tail = decoder.close()
        if tail is not None:
            piece = parser.take(tail, clock())
            if piece is not None:
                yield piece
    if not parser.finished:
        raise SSEError("the stream ended before the server said it was done")


async def _raw_head(on_raw: Callable[[bytes], Awaitable[None]], resp: StreamResponse | httpx.Response) -> None:
    """A raw sink that takes the response's status and content type first (its ``head``) gets them."""
    head = getattr(on_raw, "head", None)
    if head is not None:
        await head(resp.status_code, resp.headers.get("content-type", ""))


async def _raw_lines(resp: StreamResponse, on_raw: Callable[[bytes], Awaitable[None]]) -> AsyncIterator[str]:
    """The response's lines, each chunk of bytes handed to ``on_raw`` first, as it came."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    buf = ""
    async for chunk in resp.aiter_bytes():
        await on_raw(chunk)
        buf += decoder.decode(chunk)
        *lines, buf = buf.split("\n")
        for line in lines:
            yield line
    buf += decoder.decode(b"", final=True)
    if buf:
        yield buf


async def post(http: httpx.AsyncClient, base_url: str, path: str, body: dict[str, Any], *, api_key: str = "",
               timeout_s: float = 120.0, clock: Clock = time.monotonic,
               on_raw: Callable[[bytes], Awaitable[None]] | None = None) -> tuple[Piece | None, StreamResult]:
    """POST an unstreamed chat (or ``/completion``) request: its reply as one piece (None when empty), how it ended.

    Raises:
        KvtuiError: an HTTP error status (with the server's message), or a body that is not a chat reply.
    """
    import json

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    resp = await http.post(base_url + path, json=body, headers=headers, timeout=httpx.Timeout(10.0, read=timeout_s))
    raw = resp.content
    if on_raw is not None:
        await _raw_head(on_raw, resp)
        await on_raw(raw)
    if resp.status_code != 200:
        raise http_error(resp.status_code, path, raw)
    try:
        data = json.loads(raw)
    except ValueError:
        raise SSEError(f"the server's reply is not JSON: {raw[:80]!r}") from None
    result = StreamResult(stop="eos", timings=read_json(Timings, data.get("timings") if isinstance(data, dict)
                                                        else None))
    n = result.timings.predicted_n if result.timings is not None else None
    if isinstance(data, dict) and "choices" not in data and isinstance(data.get("content"), str):  # /completion
        result.stop = _STOP_TYPES.get(data.get("stop_type"), "eos")  # type: ignore[arg-type]
        return (Piece(clock(), n or 0, data["content"], None) if data["content"] else None), result
    choice = read_json(ChatChoice, (data.get("choices") or [None])[0]) if isinstance(data, dict) else None
    if choice is None:
        raise SSEError("the server's reply has no choices")
    result.stop = _FINISH.get(choice.finish_reason or "stop", "eos")
    message = (data["choices"][0] or {}).get("message") or {}
    text = message.get("content") if isinstance(message.get("content"), str) else ""
    return (Piece(clock(), n or 0, text, None) if text else None), result


def _one_line(text: str, limit: int = 200) -> str:
    """Server text for a one-line message: whitespace (newlines too) collapsed, cut at ``limit``."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def http_error(status: int, path: str, raw: bytes) -> KvtuiError:
    """A refused request as cause + fix, from llama-server's JSON error body where it has one.

    llama-server answers before any SSE, e.g. ``400 {"error": {"type": "exceed_context_size_error",
    "n_prompt_tokens": 602, "n_ctx": 256, ...}}``.
    """
    import json

    try:
        data = json.loads(raw)
        inner = data["error"] if isinstance(data, dict) and "error" in data else data
        err = read_json(ErrorBody, inner) or ErrorBody(message=str(inner))
    except ValueError:
        err = ErrorBody(message=raw.decode("utf-8", "replace")[:200])
    message = _one_line(err.message or str(err))
    if err.type == "exceed_context_size_error":
        n_prompt = "?" if err.n_prompt_tokens is None else err.n_prompt_tokens
        n_ctx = "?" if err.n_ctx is None else err.n_ctx
        return RequestRefused(f"the prompt ({n_prompt} tokens) does not fit the server's context ({n_ctx} tokens)",
                              "raise server.ctx_size in the profile, or shorten the prompt", status)
    if status in (401, 403):
        hint = "the server refused kvtui's API key: another program may answer on this port"
    elif status == 503:
        hint = "the server is still loading or has no free slot: rerun once it is ready"
    else:
        hint = "check the profile's prompt and sampling settings against the server's message"
    return RequestRefused(f"HTTP {status} from {path}: {message}", hint, status)
