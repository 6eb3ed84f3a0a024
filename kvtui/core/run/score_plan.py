"""What a run scores once generation ends: the base side's generations, as token segments to teacher-force.

The pure half of scoring inside ``kvtui run`` (:mod:`kvtui.core.run.gen_scoring` drives the servers):
which runs of the base side are scored, how many positions each gets under the profile's
``score_positions``, the generated token ids where the stream gave every one of them, and which sides
cannot be scored and why.

The base's first run of each prompt is scored (a suite's prompts each get an equal share of the cap, the
first tokens of each generation), so with repeats the figures are of one generation per prompt: scoring
measures the distributions, which do not change between repeats of a prompt, only the sampled tokens do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from kvtui.core.profiles import Prompt
from kvtui.core.quality.speculative import speculative_argument
from kvtui.core.record.model import Run
from kvtui.core.run.scoring import Segment
from kvtui.core.vocab import StopReason


def scored_runs(runs: Sequence[Run], prompts: Sequence[Prompt]) -> list[tuple[Prompt, Run]]:
    """The base side's first run of each prompt that generated a token, in the profile's prompt order."""
    out = []
    for prompt in prompts:
        candidates = [r for r in runs if r.prompt == prompt.name and r.pieces and r.stop != StopReason.ERROR]
        if candidates:
            out.append((prompt, min(candidates, key=lambda r: (r.repeat, r.run))))
    return out


def per_run_limit(cap: int, runs: int) -> int | None:
    """Positions each scored generation may give: the cap shared equally (None: no cap)."""
    if cap <= 0 or runs <= 0:
        return None
    return max(1, math.ceil(cap / runs))


def generated_ids(run: Run) -> list[int] | None:
    """The run's generated token ids, when its stream gave every one (one id per piece, counts 1, 2, 3, ...).

    A chunk that completes a multi-byte character carries only its last id (llama-server-facts §6), and a
    chat stream carries none: then None, and the caller tokenizes the text instead.
    """
    ids, counts = run.ids, run.counts
    if not ids or len(ids) != len(counts) or any(i < 0 for i in ids):
        return None
    if any(c != k + 1 for k, c in enumerate(counts)):
        return None
    return list(ids)


def segment(prompt_tokens: Sequence[int], generated: Sequence[int], limit: int | None, ctx: int) -> Segment:
    """The prompt and the first ``limit`` generated tokens, scored from the first generated token on.

    Args:
        prompt_tokens: the prompt as the server tokenized it (with its BOS).
        generated: the generated token ids.
        limit: at most this many positions (None: all).
        ctx: the servers' context: the segment never exceeds it.
    """
    gen = list(generated if limit is None else generated[:limit])
    tokens = (list(prompt_tokens) + gen)[:ctx]
    return Segment(tuple(tokens), max(len(prompt_tokens) - 1, 0))


def not_scored(name: str, status: str, args: Sequence[str], env: Mapping[str, str]) -> str | None:
    """Why a side cannot be scored (``"q4_0: its server crashed"``), or None when it can."""
    flag = speculative_argument(args, env)
    if flag is not None:
        return (f"{name}: {flag} turns on speculative decoding (tokens accepted from a draft come back with "
                "probability 1 and no top list)")
    if status != "done":
        why = {"crashed": "its server crashed", "error": "a request failed", "aborted": "it was aborted"}
        return f"{name}: {why.get(status, 'it did not finish (' + status + ')')}"
    return None
