"""Scoring: every side teacher-forced on the same tokens, compared with the base side position by position.

``score_endpoints`` is the part that needs only running servers: it takes the
token segments to score and one endpoint per side, and returns a
``SideScore`` per side against the base. ``score_text`` is ``kvtui score``:
it plans the sides from a profile, starts their servers (plus a second server
of the base's configuration, the noise floor), chunks a text the way
``llama-perplexity`` does and scores it.

Chunking follows tools/perplexity/perplexity.cpp: the text is tokenized once
with the model's BOS, cut into chunks of ``ctx`` tokens, the first token of each
chunk is set to BOS, and the predictions for the second half of each chunk are
scored (``ctx - 1 - ctx // 2`` positions per chunk), so every scored token has
at least half a chunk of context.
"""

from __future__ import annotations

import asyncio
import os
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx

from kvtui.core.errors import EXIT_RUN_FAILED, KvtuiError, ServerError
from kvtui.core.profiles import Profile, load_profile
from kvtui.core.quality import DEFAULT_CTX, DEFAULT_TOP_K
from kvtui.core.quality.kld import Position, PositionStat, SideScore, compare_position, summarize
from kvtui.core.quality.speculative import check_not_speculative, speculative_argument  # noqa: F401
from kvtui.core.run.prepare import Prepared, prepare
from kvtui.core.server.locate import ServerBinary, help_flags
from kvtui.core.server.process import LlamaServer
from kvtui.core.server.teacher import Endpoint, Teacher, new_client

NOISE_SUFFIX = " (2nd server)"

Progress = Callable[[str, int, int], None]  # (side name, positions done, positions in all)

@dataclass(frozen=True, slots=True)
class Segment:
    """Token ids to score from ``first`` on: the distributions after ``tokens[:i + 1]`` for i >= first."""

    tokens: tuple[int, ...]
    first: int

    @property
    def positions(self) -> int:
        return max(len(self.tokens) - 1 - self.first, 0)


def text_segments(tokens: Sequence[int], ctx: int, chunks: int | None = None, bos: int | None = None) -> list[Segment]:
    """llama-perplexity's chunks: ``ctx`` tokens each, BOS first, the second half scored.

    Args:
        tokens: the whole text's token ids (with the BOS the model adds, if any).
        ctx: the chunk length (``-c``).
        chunks: at most this many chunks (None: all complete ones).
        bos: the BOS token id when the model adds one; each chunk starts with it.

    Raises:
        KvtuiError: the text is shorter than one chunk.
    """
    if ctx < 4:
        raise KvtuiError(f"--ctx {ctx} is too small", "use 4 or more, e.g. --ctx 512")
    available = len(tokens) // ctx
    if available == 0:
        raise KvtuiError(f"the text is {len(tokens)} tokens, shorter than one chunk of --ctx {ctx}",
                         "use a longer text or a smaller --ctx")
    n = available if chunks is None else min(chunks, available)
    out = []
    for c in range(n):
        chunk = list(tokens[c * ctx:(c + 1) * ctx])
        if bos is not None:
            chunk[0] = bos
        out.append(Segment(tuple(chunk), ctx // 2))
    return out


async def generation_segment(teacher: Teacher, prompt: str, generated: Sequence[int]) -> Segment:
    """A prompt and the tokens generated after it, scored from the first generated token on.

    The prompt is tokenized by the server as ``/completion`` tokenizes a text
    prompt (with the model's BOS); a chat prompt must be templated first.
    """
    tokens = await teacher.tokenize(prompt)
    return Segment(tuple(tokens) + tuple(generated), max(len(tokens) - 1, 0))


def choose_base(sides: Sequence[tuple[str, str, str]], wanted: str | None = None) -> str:
    """The base side: ``wanted``, else the first side with an f16 K and V cache, else the first side.

    Args:
        sides: (name, cache_type_k, cache_type_v) per side.

    Raises:
        KvtuiError: ``wanted`` is not a side.
    """
    names = [s[0] for s in sides]
    if wanted is not None:
        if wanted not in names:
            raise KvtuiError(f"--base {wanted} is not a side of the profile", f"sides: {', '.join(names)}")
        return wanted
    for name, k, v in sides:
        if k == "f16" and v == "f16":
            return name
    return names[0]


class Collector:
    """Compares every side's positions with the base's as they arrive.

    The base's positions are kept (compactly: 4-byte ids and float32
    log-probabilities, which is the precision the server computes them in)
    until every other side has been compared at that position.
    """

    def __init__(self, base: str, others: int) -> None:
        self.base = base
        self.others = others
        self.base_positions: dict[int, Position] = {}
        self.uses: dict[int, int] = {}
        self.pending: dict[str, dict[int, Position]] = {}
        self.stats: dict[str, list[PositionStat]] = {}

    def add(self, name: str, index: int, pos: Position) -> None:
        if name == self.base:
            self.base_positions[index] = Position(array("i", pos.ids), array("f", pos.logprobs), pos.actual,
                                                  pos.actual_logprob)
            for other, waiting in self.pending.items():
                if index in waiting:
                    self._compare(other, index, waiting.pop(index))
            return
        if index in self.base_positions:
            self._compare(name, index, pos)
        else:
            self.pending.setdefault(name, {})[index] = pos

    def scores(self, top_k: int) -> dict[str, SideScore]:
        """Every side compared so far against the base (sides with no position compared yet left out)."""
        return {name: summarize(stats, side=name, base=self.base, top_k=top_k)
                for name, stats in self.stats.items() if stats}

    def _compare(self, name: str, index: int, pos: Position) -> None:
        self.stats.setdefault(name, []).append(compare_position(self.base_positions[index], pos))
        self.uses[index] = self.uses.get(index, 0) + 1
        if self.uses[index] >= self.others:
            del self.base_positions[index], self.uses[index]


async def score_endpoints(http: httpx.AsyncClient, endpoints: Sequence[Endpoint], segments: Sequence[Segment], *,
                          base: str, top_k: int = DEFAULT_TOP_K, concurrency: int | None = None,
                          progress: Progress | None = None) -> dict[str, SideScore]:
    """Teacher-force every endpoint over ``segments`` and compare each with ``base``.

    Args:
        http: a client from ``teacher.new_client()``.
        endpoints: one per side, each with a distinct name; one is ``base``.
        segments: what to score (``text_segments``, or a prompt plus a generation).
        base: the name of the base endpoint.
        top_k: ``n_probs`` per position.
        concurrency: endpoints scored at once (None: all).
        progress: called with (name, done, total) after each position.

    Returns:
        side name -> its score against the base, for every endpoint but the base.
    """
    if base not in {e.name for e in endpoints}:
        raise ValueError(f"base {base!r} is not one of the endpoints")
    total = sum(s.positions for s in segments)
    collector = Collector(base, len(endpoints) - 1)
    limit = asyncio.Semaphore(concurrency or len(endpoints))

    async def run(endpoint: Endpoint) -> None:
        async with limit:
            teacher = Teacher(http, endpoint, top_k)
            try:
                await score_side(teacher, segments, collector, total, progress)
            finally:
                await teacher.aclose()

    await _gather_or_cancel([run(e) for e in sorted(endpoints, key=lambda e: e.name != base)])
    return collector.scores(top_k)


async def score_side(teacher: Teacher, segments: Sequence[Segment], collector: Collector, total: int,
                     progress: Progress | None) -> None:
    """Teacher-force one side over ``segments``, handing each position to ``collector`` as it comes."""
    name = teacher.endpoint.name
    done = 0
    offset = 0
    for seg in segments:
        def take(i: int, pos: Position, offset: int = offset - seg.first) -> None:
            nonlocal done
            collector.add(name, offset + i, pos)
            done += 1
            if progress is not None:
                progress(name, done, total)

        await teacher.segment(seg.tokens, seg.first, take)
        offset += seg.positions


async def _gather_or_cancel(coros: list) -> None:  # type: ignore[type-arg]
    """Run together; the first failure cancels the rest and is raised."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# --- kvtui score: a profile and a text ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScoreSettings:
    """How ``kvtui score`` scores a text."""

    ctx: int = DEFAULT_CTX
    chunks: int | None = None
    top_k: int = DEFAULT_TOP_K
    base: str | None = None
    noise_floor: bool = True
    concurrency: int | None = None  # servers scored at once (None: all of them; 1 in a sequential plan)


@dataclass(frozen=True, slots=True)
class ScoreReport:
    """The result of scoring a text: every side against the base, and the noise floor."""

    base: str
    top_k: int
    ctx: int
    chunks: int
    positions: int
    text_tokens: int
    sides: tuple[SideScore, ...]
    noise_floor: SideScore | None = None
    seconds: float = 0.0
    kv_types: dict[str, str] = field(default_factory=dict)  # side name -> "K q8_0 / V q8_0"

    def to_dict(self) -> dict[str, object]:
        """``kvtui score --json``: ``{"base": ..., "sides": {name: figures}, "noise_floor": figures, ...}``."""
        out: dict[str, object] = {"base": self.base, "top_k": self.top_k, "ctx": self.ctx, "chunks": self.chunks,
                                  "positions": self.positions, "text_tokens": self.text_tokens,
                                  "seconds": round(self.seconds, 1),
                                  "sides": {s.side: s.to_dict() for s in self.sides}}
        if self.noise_floor is not None:
            out["noise_floor"] = self.noise_floor.to_dict()
        return out


def scoring_threads(concurrency: int) -> int:
    """``-t`` for each server when the profile leaves threads to llama-server: the cores shared out."""
    return max(1, (os.cpu_count() or 1) // max(concurrency, 1))


def scoring_args(binary: ServerBinary, profile_threads: int, concurrency: int) -> list[str]:
    """Arguments added to every side's server for scoring (none changes the distributions).

    ``-t``: the cores shared out among the servers scored at once, where the
    profile leaves threads to llama-server (two servers each spinning on every
    core would slow both). ``--swa-full``: a model with sliding-window
    attention (Gemma 3) otherwise keeps a window-sized cache that cannot take
    one more token without restoring a checkpoint taken a few tokens back,
    which re-evaluates about 6 tokens per position instead of 1.
    """
    args = [] if profile_threads > 0 else ["-t", str(scoring_threads(concurrency))]
    if "--swa-full" in help_flags(binary):
        args.append("--swa-full")
    return args


def prepare_scoring(profile: str | Path | Profile, settings: ScoreSettings, *, model: str | None = None,
                    server_bin: str | None = None) -> Prepared:
    """Plan the sides for scoring: the profile with ``-c`` set to the chunk length, no record.

    Raises:
        KvtuiError: a bad profile or path, or a side that would decode speculatively.
    """
    prof = profile if isinstance(profile, Profile) else load_profile(profile)
    attached = [side.name for side in prof.sides if side.attached]
    if attached:  # kvtui score starts every side's server itself, with -c set to the chunk length
        raise KvtuiError(f"kvtui score starts its own servers, and {', '.join(attached)} "
                         f"{'is' if len(attached) == 1 else 'are'} attached (url = ...)",
                         "score a profile whose servers kvtui starts, or let `kvtui run` score the attached servers "
                         "after generation ([run] score, on by default)")
    prof = replace(prof, ctx_size=settings.ctx)
    prepared = prepare(prof, model=model, server_bin=server_bin, no_record=True)
    env = prepared.plan.binary.launch_env()
    for side in prepared.plan.sides:
        check_not_speculative(side.name, side.args, env)
    choose_base([(s.name, s.cache_type_k, s.cache_type_v) for s in prepared.plan.sides], settings.base)
    return prepared


async def score_text(prepared: Prepared, text: str, settings: ScoreSettings,
                     progress: Progress | None = None, clock: Callable[[], float] = time.monotonic) -> ScoreReport:
    """Start the sides' servers, score ``text`` on each, stop them; returns the report.

    In a parallel plan every server runs at once (or ``concurrency``); in a sequential
    one (the memory plan says they do not fit together) one at a time. Each
    server is started for its turn and stopped after it.

    Raises:
        KvtuiError: a server failed, the sides tokenize the text differently, or the text is too short.
    """
    t0 = clock()
    plan = prepared.plan
    sides = {s.name: s for s in plan.sides}
    base = choose_base([(s.name, s.cache_type_k, s.cache_type_v) for s in plan.sides], settings.base)
    jobs = [(base, sides[base])]
    if settings.noise_floor:
        jobs.append((base + NOISE_SUFFIX, sides[base]))
    jobs += [(name, s) for name, s in sides.items() if name != base]
    if plan.mode == "sequential":
        concurrency = 1
    else:
        # all at once, each with its share of the cores: a server left to run alone at the end would leave the
        # other cores idle (3 single-thread servers on 2 cores: 258 s against 297 s for 2 then 1)
        concurrency = settings.concurrency or len(jobs)
    extra = scoring_args(plan.binary, plan.profile.threads, concurrency)

    lock = asyncio.Lock()
    shared: dict[str, object] = {}
    collector = Collector(base, len(jobs) - 1)
    slots = asyncio.Semaphore(concurrency)
    servers: list[LlamaServer] = []

    async def segments_for(teacher: Teacher) -> list[Segment]:
        with_bos = await teacher.tokenize(text)
        async with lock:
            if "tokens" not in shared:
                bare = await teacher.tokenize(text, add_special=False)
                bos = with_bos[0] if len(with_bos) == len(bare) + 1 else None
                shared["tokens"] = with_bos
                shared["segments"] = text_segments(with_bos, settings.ctx, settings.chunks, bos)
            elif shared["tokens"] != with_bos:
                raise KvtuiError(f"{teacher.endpoint.name} tokenizes the text differently from the other sides",
                                 "every side must run the same model and server build", exit_code=EXIT_RUN_FAILED)
        return shared["segments"]  # type: ignore[return-value]

    async def job(i: int, name: str, args: tuple[str, ...], http: httpx.AsyncClient) -> None:
        async with slots:
            slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:40]
            srv = LlamaServer(plan.binary, [*args, *extra], prepared.log_dir / f"score{i}-{slug}.log")
            servers.append(srv)
            try:
                await srv.start()
                await srv.wait_ready(http)
                teacher = Teacher(http, Endpoint(name, srv.base_url, srv.api_key), settings.top_k)
                try:
                    segments = await segments_for(teacher)
                    total = sum(s.positions for s in segments)
                    await score_side(teacher, segments, collector, total, progress)
                finally:
                    await teacher.aclose()
            except (httpx.HTTPError, KvtuiError) as exc:
                if srv.proc is not None and srv.proc.returncode is not None:
                    raise srv.failure() from None  # the server died: its log says why
                if isinstance(exc, KvtuiError):
                    raise
                raise ServerError(f"{name}: {type(exc).__name__} talking to llama-server",
                                  "see the server log in " + str(prepared.log_dir)) from None
            finally:
                await srv.stop()

    try:
        async with new_client() as http:
            await _gather_or_cancel([job(i, name, s.args, http) for i, (name, s) in enumerate(jobs)])
    finally:
        for srv in servers:
            srv.kill_now()
    segments: list[Segment] = shared["segments"]  # type: ignore[assignment]
    scores = collector.scores(settings.top_k)
    noise = scores.pop(base + NOISE_SUFFIX, None)
    kv = {s.name: f"K {s.cache_type_k} / V {s.cache_type_v}" for s in plan.sides}
    return ScoreReport(base=base, top_k=settings.top_k, ctx=settings.ctx, chunks=len(segments),
                       positions=sum(s.positions for s in segments), text_tokens=len(shared["tokens"]),  # type: ignore
                       sides=tuple(scores[name] for name in sides if name in scores), noise_floor=noise,
                       seconds=clock() - t0, kv_types=kv)

