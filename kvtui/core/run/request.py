"""One measured request, streamed: pieces into the run's accumulator, loops, patterns and prompt progress out.

The runner decides when a request runs and what its end means; this module
does what happens while it streams, and emits the events it finds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from kvtui.core.events import Event, LoopDetected, PatternDetected, PromptProgress, TokenReceived
from kvtui.core.quality.figures import round3
from kvtui.core.quality.loops import LoopDetector, piece_key
from kvtui.core.quality.templates import TemplateDetector
from kvtui.core.record.accumulator import RunAccumulator
from kvtui.core.server import client
from kvtui.core.server.base import Server

PROGRESS_TICK_S = 1.0  # elapsed-time reports while a prompt is processed, where the build sends no progress


@dataclass
class RequestContext:
    """Who the request belongs to and how to report: the side, its run number, the session's clock and sink."""

    side: int
    run: int
    emit: Callable[[Event], None]
    now: Callable[[], float]
    aborted: Callable[[], bool]  # the user aborted this side: stop at the next piece
    on_loop: Callable[[], None]  # a loop was found (the runner marks the side looping)
    stall_timeout_s: float
    stop_on_loop: bool
    raw: Callable[[bytes], Awaitable[None]] | None = None  # gets the response's bytes as they come (the mirror)


async def stream_request(http: httpx.AsyncClient, srv: Server, path: str, body: dict[str, Any],
                         acc: RunAccumulator, result: client.StreamResult, ctx: RequestContext) -> None:
    """Stream one request into ``acc``; raises CancelledError to stop on a loop or an abort.

    While the prompt is processed, the server's ``prompt_progress`` becomes
    ``PromptProgress`` events; a build that sends none gets the elapsed time
    once a second instead.
    """
    heard = False  # the server sent a prompt_progress

    def on_progress(p: client.Progress) -> None:
        nonlocal heard
        heard = True
        t = ctx.now()
        ctx.emit(PromptProgress(t, ctx.side, ctx.run, round(t - acc.t_sent, 3), p.total, p.processed, p.cache,
                                round3(p.tokens_per_second), round3(p.eta_s)))

    async def tick() -> None:
        while True:
            await asyncio.sleep(PROGRESS_TICK_S)
            if not heard:
                t = ctx.now()
                ctx.emit(PromptProgress(t, ctx.side, ctx.run, round(t - acc.t_sent, 3)))

    ticker = asyncio.create_task(tick())
    loops, patterns = LoopDetector(), TemplateDetector()
    try:
        async for piece in client.stream(http, srv.base_url, path, body, api_key=srv.api_key,
                                         stall_timeout_s=ctx.stall_timeout_s, clock=ctx.now, result=result,
                                         on_progress=on_progress, on_raw=ctx.raw):
            ticker.cancel()  # the prompt is done once a token comes
            if ctx.aborted():  # belt and braces: an abort stops the stream at the next piece at the latest
                raise asyncio.CancelledError
            acc.add(piece.t, piece.n, piece.text, piece.token_id, piece.top)
            ctx.emit(TokenReceived(piece.t, ctx.side, ctx.run, piece.n, piece.text, piece.token_id))
            pattern = patterns.feed(piece.text)
            if pattern is not None and (acc.pattern is None or (pattern.skeleton, pattern.repeats) != (
                    acc.pattern.skeleton, acc.pattern.repeats)):
                acc.pattern = pattern
                ctx.emit(PatternDetected(ctx.now(), ctx.side, ctx.run, pattern.skeleton, pattern.repeats,
                                         pattern.start, pattern.lines))
            key = piece.token_id if piece.token_id is not None else piece_key(piece.text)
            if key is None:
                continue
            found = loops.feed(key, piece.text)
            if found is not None and (acc.loop is None or found.repeats != acc.loop.repeats):
                acc.loop = found
                ctx.on_loop()
                ctx.emit(LoopDetected(ctx.now(), ctx.side, ctx.run, found.period, found.start, found.repeats,
                                      found.text))
                if ctx.stop_on_loop:
                    raise asyncio.CancelledError  # closes the stream: the server stops generating
    finally:
        ticker.cancel()



async def post_request(http: httpx.AsyncClient, srv: Server, path: str, body: dict[str, Any],
                       acc: RunAccumulator, result: client.StreamResult, ctx: RequestContext) -> None:
    """An unstreamed request (``"stream": false``): the whole reply arrives as one piece."""
    piece, got = await client.post(http, srv.base_url, path, body, api_key=srv.api_key,
                                   timeout_s=ctx.stall_timeout_s, clock=ctx.now, on_raw=ctx.raw)
    result.stop, result.timings, result.truncated, result.error = got.stop, got.timings, got.truncated, got.error
    if piece is not None:
        acc.add(piece.t, piece.n, piece.text, None)
        ctx.emit(TokenReceived(piece.t, ctx.side, ctx.run, piece.n, piece.text, None))
