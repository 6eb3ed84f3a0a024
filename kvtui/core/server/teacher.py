"""Teacher forcing over HTTP on a stock llama-server: one side's distribution at every position of a text.

llama-server has no prompt log-probabilities, but it has everything needed to
get them one position at a time: a ``/completion`` request whose prompt is the
token ids up to position i, with ``n_predict: 1``, ``n_probs: K`` (the top-K of
the full softmax, before any sampler) and ``cache_prompt: true``, evaluates just
the one new token in the server's own KV cache (quantized or not) and returns
the next-token distribution there. The actual next token's probability (what PPL
and delta-p need) is in the top-K almost always; where it is not, the position
is asked again with a ``logit_bias`` that makes the actual token the sampled one,
whose probability the server reports exactly even outside the top-K (the bias
acts in the sampler, after the probabilities are taken).

Positions go 16 to a request (a prompt array: the server makes a task of each
and runs them in order on its one slot, each evaluating one new token on the
cache the one before left, as single requests would), so the server does not
wait for kvtui between positions. The requests go over a kept-alive connection
of the teacher's own (:mod:`kvtui.core.server.keepalive`): llama-server closes
an idle one after 5 seconds, and a request that meets that close is sent again
on a fresh connection, which is safe because the same prompts give the same
distributions whatever the cache holds. The answers are read by
:func:`read_positions`, which takes the ids and log-probabilities out of the raw
JSON without building the 1,000 token objects of each (``json.loads`` is the
fallback for anything it does not recognise).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from kvtui.core.errors import KvtuiError
from kvtui.core.quality.kld import Position
from kvtui.core.server.keepalive import KeepAliveConnection, TransportError

FORCE_BIAS = 1000.0  # added to the actual token's logit in the sampler: it becomes the sampled token
RETRIES = 3  # fresh-connection attempts after a transport error
BATCH = 16  # positions per request (Teacher.segment)
_RETRYABLE = (httpx.RemoteProtocolError, httpx.ConnectError, httpx.ReadError, httpx.WriteError)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where one side's llama-server answers."""

    name: str
    base_url: str
    api_key: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def new_client() -> httpx.AsyncClient:
    """An HTTP client for scoring: keep-alive connections that expire before the server's 5 s idle close."""
    return httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=10.0),
                             limits=httpx.Limits(max_keepalive_connections=16, keepalive_expiry=2.0))


class Teacher:
    """Teacher-forced next-token distributions from one llama-server.

    Args:
        http: a client from :func:`new_client` (shared by all sides), for ``/tokenize`` and the like; the
            scoring requests go over the teacher's own connection (close it with :meth:`aclose`).
        endpoint: the server.
        top_k: ``n_probs`` per position.
        batch: positions per request (:meth:`segment`); 1 for a server with several slots, which would run the
            tasks of one request side by side, each on another slot's cache.
    """

    def __init__(self, http: httpx.AsyncClient, endpoint: Endpoint, top_k: int, batch: int = BATCH) -> None:
        if top_k < 1:
            raise ValueError("top_k must be at least 1")
        self.http = http
        self.endpoint = endpoint
        self.top_k = top_k
        self.batch = batch  # positions per request: 1 for a server with several slots (they would split a batch)
        self.retried = 0  # transport errors that a fresh connection fixed
        self._conn = KeepAliveConnection(endpoint.base_url, endpoint.headers)

    async def aclose(self) -> None:
        """Close the scoring connection."""
        await self._conn.aclose()

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        url = self.endpoint.base_url + path
        for attempt in range(RETRIES + 1):
            try:
                resp = await self.http.post(url, json=body, headers=self.endpoint.headers)
                break
            except _RETRYABLE as exc:
                if attempt == RETRIES:
                    raise KvtuiError(f"{self.endpoint.name}: llama-server stopped answering ({type(exc).__name__})",
                                     "see the server log; it may have crashed or run out of memory",
                                     exit_code=1) from None
                self.retried += 1
        if resp.status_code != 200:
            raise KvtuiError(f"{self.endpoint.name}: HTTP {resp.status_code} from {path}: {_message(resp)}",
                             "see the server log", exit_code=1)
        try:
            return resp.json()
        except ValueError:
            raise KvtuiError(f"{self.endpoint.name}: {path} answered with something that is not JSON",
                             "is this a llama-server? check --server-bin", exit_code=1) from None

    async def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids of ``text``; ``add_special`` adds the model's BOS the way llama-perplexity does."""
        data = await self._post("/tokenize", {"content": text, "add_special": add_special})
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise KvtuiError(f"{self.endpoint.name}: /tokenize answered without a token list",
                             "is this a llama-server? check --server-bin", exit_code=1)
        return tokens

    async def apply_template(self, messages: list[dict[str, str]]) -> str:
        """The prompt text the server's chat template makes of ``messages`` (what a chat request evaluates)."""
        data = await self._post("/apply-template", {"messages": messages})
        prompt = data.get("prompt") if isinstance(data, dict) else None
        if not isinstance(prompt, str):
            raise KvtuiError(f"{self.endpoint.name}: /apply-template answered without a prompt",
                             "this llama-server build may be too old for chat scoring; use a recent one", exit_code=1)
        return prompt

    async def position(self, context: Sequence[int], actual: int) -> Position:
        """The distribution after ``context`` (token ids), with ``actual`` forced as the next token."""
        body = {"prompt": list(context), "n_predict": 1, "n_probs": self.top_k, "cache_prompt": True,
                "temperature": 0.0, "top_k": 1, "logit_bias": [[actual, FORCE_BIAS]], "stream": False}
        raw = await self._post_raw("/completion", json.dumps(body, separators=(",", ":")).encode())
        found = read_position(raw)
        if found is None:
            raise KvtuiError(f"{self.endpoint.name}: /completion answered without n_probs log-probabilities",
                             "this llama-server build may be too old; use a recent one", exit_code=1)
        ids, logprobs, got, lp = found
        if got != actual or not ids:
            raise KvtuiError(f"{self.endpoint.name}: the server sampled token {got}, not the forced {actual}",
                             "speculative decoding or a grammar may be on; score without them", exit_code=1)
        return Position(ids, logprobs, actual, lp)

    async def _post_raw(self, path: str, body: bytes) -> bytes:
        """POST on the scoring connection; a transport error is retried on a fresh one (the request is idempotent)."""
        for attempt in range(RETRIES + 1):
            try:
                status, data = await self._conn.post(path, body)
                break
            except TransportError as exc:
                if attempt == RETRIES:
                    raise KvtuiError(f"{self.endpoint.name}: llama-server stopped answering ({exc})",
                                     "see the server log; it may have crashed or run out of memory",
                                     exit_code=1) from None
                self.retried += 1
            except TimeoutError:
                raise KvtuiError(f"{self.endpoint.name}: llama-server did not answer {path} within 10 minutes",
                                 "see the server log; it may be stuck", exit_code=1) from None
        if status != 200:
            raise KvtuiError(f"{self.endpoint.name}: HTTP {status} from {path}: {_text(data)}",
                             "see the server log", exit_code=1)
        return data

    async def positions(self, prompts: Sequence[Sequence[int]]) -> list[tuple[list[int], list[float], int, float]]:
        """The top-K after each of ``prompts`` (token ids), from one request.

        llama-server makes a task of each prompt and runs them on its one slot in order, each on the cache the one
        before left: every task evaluates one new token, exactly as the same prompts sent one by one would. Nothing
        is forced, so the sampled token is the most likely one; the actual next token's log-probability is read
        from the top-K, where it usually is (:meth:`segment` asks again, forcing it, where it is not).

        Returns:
            (top ids, their log-probabilities, the sampled id, its log-probability) per prompt, in order.
        """
        body = {"prompt": [list(p) for p in prompts], "n_predict": 1, "n_probs": self.top_k, "cache_prompt": True,
                "temperature": 0.0, "top_k": 1, "stream": False}
        raw = await self._post_raw("/completion", json.dumps(body, separators=(",", ":")).encode())
        found = read_positions(raw, len(prompts))
        if found is None or any(not ids for ids, _, _, _ in found):
            raise KvtuiError(f"{self.endpoint.name}: /completion answered without n_probs log-probabilities",
                             "this llama-server build may be too old; use a recent one", exit_code=1)
        return found

    async def segment(self, tokens: Sequence[int], first: int,
                      on_position: Callable[[int, Position], None], batch: int | None = None) -> None:
        """Score positions ``first`` .. ``len(tokens) - 2``: the distribution after ``tokens[:i + 1]``.

        The first position, whose context the server evaluates as one batch, is asked alone with its actual
        token forced (:meth:`position`). The rest go ``batch`` to a request (:meth:`positions`), so the server
        runs them back to back instead of waiting for kvtui between positions; one whose actual next token is
        outside its top-K is asked again at the end with that token forced: its context is still in the cache,
        so the server evaluates the same one token again. Each result goes to ``on_position(i, position)`` as
        it comes (those asked again last).
        """
        end = len(tokens) - 1
        if first >= end:
            return
        on_position(first, await self.position(tokens[: first + 1], tokens[first + 1]))
        again = []
        batch = batch or self.batch
        for start in range(first + 1, end, batch):
            chunk = range(start, min(start + batch, end))
            for i, (ids, logprobs, got, lp) in zip(chunk, await self.positions([tokens[: i + 1] for i in chunk]),
                                                   strict=True):
                actual = tokens[i + 1]
                if got != actual and actual not in ids:
                    again.append(i)
                    continue
                known = lp if got == actual else logprobs[ids.index(actual)]
                on_position(i, Position(ids, logprobs, actual, known))
        for i in again:
            on_position(i, await self.position(tokens[: i + 1], tokens[i + 1]))


def _message(resp: httpx.Response) -> str:
    try:
        err = resp.json().get("error", {})
        text = err.get("message", str(err)) if isinstance(err, dict) else str(err)
    except (ValueError, AttributeError):
        text = resp.text
    flat = " ".join(str(text).split())
    return flat[:200]


def _text(data: bytes) -> str:
    try:
        err = json.loads(data).get("error", {})
        text = err.get("message", str(err)) if isinstance(err, dict) else str(err)
    except (ValueError, AttributeError):
        text = data.decode("utf-8", "replace")
    return " ".join(str(text).split())[:200]


_CP = re.compile(rb'"completion_probabilities":')
_INDEX = re.compile(rb'"index":(\d+)')
_ID = re.compile(rb'"id":(-?\d+)')
_LOGPROB = re.compile(rb'"logprob":([^,}\]]+)')


def read_position(raw: bytes) -> tuple[list[int], list[float], int, float] | None:
    """(top ids, their log-probabilities, the sampled id, its log-probability) from a ``/completion`` answer.

    Returns:
        None when the answer has no ``completion_probabilities`` with a top list.
    """
    found = read_positions(raw, 1)
    return found[0] if found else None


def read_positions(raw: bytes, n: int) -> list[tuple[list[int], list[float], int, float]] | None:
    """What :func:`read_position` reads, for each of the ``n`` answers of a request with ``n`` prompts.

    The keys are found in the raw text: inside a JSON string a quote is always escaped, so ``"id":`` can only be
    a key. Each answer's entry must have its own id and logprob before its ``"top_logprobs":``, every listed token
    an id, a token and a logprob, and the answers must come in order; anything else (another layout, a null, a
    key of the same name elsewhere) is parsed with ``json.loads`` instead, so the result is always what the JSON
    says.

    Returns:
        None when an answer has no ``completion_probabilities`` with a top list.
    """
    starts = [m.start() for m in _CP.finditer(raw)]
    if len(starts) == n and [int(i) for i in _INDEX.findall(raw)] == list(range(n)):
        out = []
        for k, start in enumerate(starts):
            found = _read_one(raw[start:starts[k + 1] if k + 1 < n else len(raw)])
            if found is None:
                break
            out.append(found)
        else:
            return out
    return _read_positions_json(raw, n)


def _read_one(part: bytes) -> tuple[list[int], list[float], int, float] | None:
    split = part.find(b'"top_logprobs":')
    if split < 0 or part.find(b'"top_logprobs":', split + 1) >= 0:
        return None
    head, tail = part[:split], part[split:]
    try:
        own_id, own_lp = _ID.findall(head), _LOGPROB.findall(head)
        ids, lps = _ID.findall(tail), _LOGPROB.findall(tail)
        if len(own_id) == len(own_lp) == 1 and len(ids) == len(lps) == tail.count(b'"token":') > 0:
            return [int(i) for i in ids], [float(v) for v in lps], int(own_id[0]), float(own_lp[0])
    except ValueError:
        pass
    return None


def _read_positions_json(raw: bytes, n: int) -> list[tuple[list[int], list[float], int, float]] | None:
    try:
        data = json.loads(raw)
        answers = sorted(data, key=lambda a: a["index"]) if isinstance(data, list) else [data]
        if len(answers) != n:
            return None
        out = []
        for answer in answers:
            entry = answer["completion_probabilities"][0]
            top = entry["top_logprobs"]
            out.append(([int(t["id"]) for t in top], [float(t["logprob"]) for t in top], int(entry["id"]),
                        float(entry["logprob"])))
        return out
    except (KeyError, IndexError, TypeError, ValueError):
        return None
