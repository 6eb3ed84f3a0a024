"""Teacher forcing over HTTP on a stock llama-server: one side's distribution at every position of a text.

llama-server has no prompt log-probabilities, but it has everything needed to
get them one position at a time: a ``/completion`` request whose prompt is the
token ids up to position i, with ``n_predict: 1``, ``n_probs: K`` (the top-K of
the full softmax, before any sampler) and ``cache_prompt: true``, evaluates just
the one new token in the server's own KV cache (quantized or not) and returns
the next-token distribution there. A ``logit_bias`` on the actual next token
makes it the sampled token, whose probability the server reports exactly even
when it is outside the top-K (the bias acts in the sampler, after the
probabilities are taken). That is what PPL and delta-p need.

Connections are kept alive (a new TCP connection per position would cost more
than the evaluation). llama-server closes an idle keep-alive connection after 5
seconds, and a request sent just as it does fails with "Server disconnected
without sending a response"; the scoring request is idempotent (the same prompt
gives the same distribution whatever the cache holds: the server re-evaluates at
least the last token), so it is simply sent again on a fresh connection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from kvtui.core.errors import KvtuiError
from kvtui.core.quality.kld import Position

FORCE_BIAS = 1000.0  # added to the actual token's logit in the sampler: it becomes the sampled token
RETRIES = 3  # fresh-connection attempts after a transport error
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
        http: a client from :func:`new_client` (shared by all sides).
        endpoint: the server.
        top_k: ``n_probs`` per position.
    """

    def __init__(self, http: httpx.AsyncClient, endpoint: Endpoint, top_k: int) -> None:
        if top_k < 1:
            raise ValueError("top_k must be at least 1")
        self.http = http
        self.endpoint = endpoint
        self.top_k = top_k
        self.retried = 0  # transport errors that a fresh connection fixed

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

    async def position(self, context: Sequence[int], actual: int) -> Position:
        """The distribution after ``context`` (token ids), with ``actual`` forced as the next token."""
        body = {"prompt": list(context), "n_predict": 1, "n_probs": self.top_k, "cache_prompt": True,
                "temperature": 0.0, "top_k": 1, "logit_bias": [[actual, FORCE_BIAS]], "stream": False}
        data = await self._post("/completion", body)
        try:
            entry = data["completion_probabilities"][0]
            top = entry["top_logprobs"]
            ids = [int(t["id"]) for t in top]
            logprobs = [float(t["logprob"]) for t in top]
            got, lp = int(entry["id"]), float(entry["logprob"])
        except (KeyError, IndexError, TypeError, ValueError):
            raise KvtuiError(f"{self.endpoint.name}: /completion answered without n_probs log-probabilities",
                             "this llama-server build may be too old; use a recent one", exit_code=1) from None
        if got != actual or not top:
            raise KvtuiError(f"{self.endpoint.name}: the server sampled token {got}, not the forced {actual}",
                             "speculative decoding or a grammar may be on; score without them", exit_code=1)
        return Position(ids, logprobs, actual, lp)

    async def segment(self, tokens: Sequence[int], first: int,
                      on_position: Callable[[int, Position], None]) -> None:
        """Score positions ``first`` .. ``len(tokens) - 2``: the distribution after ``tokens[:i + 1]``.

        Each position's result goes to ``on_position(i, position)`` as it arrives.
        """
        for i in range(first, len(tokens) - 1):
            on_position(i, await self.position(tokens[: i + 1], tokens[i + 1]))


def _message(resp: httpx.Response) -> str:
    try:
        err = resp.json().get("error", {})
        text = err.get("message", str(err)) if isinstance(err, dict) else str(err)
    except (ValueError, AttributeError):
        text = resp.text
    flat = " ".join(str(text).split())
    return flat[:200]
