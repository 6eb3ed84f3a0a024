"""The session record: one typed model, the only writer and reader of the TOML file.

A record is a :class:`SessionRecord` holding :class:`Side` s, each holding :class:`Run` s. Every key is
declared once, below, with its type, default and meaning: reading checks each value against its type
(a one-line ``RecordError`` naming the key), writing leaves out what is unknown (TOML has no null), and
the README's key table is the same declarations (``python -m kvtui.core.record.model``). A
:class:`~kvtui.core.record.accumulator.RunAccumulator` builds a run while it streams (runner and recorder).

``kvtui.session/2`` adds each run's ``schedule`` and the loop's text; a ``kvtui.session/1`` record is
read as /2, every run taking the session's schedule.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import tomli_w

from kvtui.core.errors import RecordError
from kvtui.core.logs.provenance import RanWith
from kvtui.core.quality.checks import TaskCheck
from kvtui.core.quality.fairness import Fairness
from kvtui.core.quality.kld import SideScore
from kvtui.core.quality.loops import Loop
from kvtui.core.quality.templates import TemplateRepeat
from kvtui.core.record.tomlmodel import dump, key, load, markdown_table
from kvtui.core.vocab import FAILED, Schedule, SessionStatus, SideStatus, StopReason

SCHEMA = "kvtui.session/2"
SCHEMA_V1 = "kvtui.session/1"
READABLE = (SCHEMA_V1, SCHEMA)
CUT_SHORT = "cut short: kvtui ended before the run finished"


@dataclass(frozen=True, slots=True)
class Run:
    """One measured request of a side."""

    run: int = key("run number on this side, 0-based (a rerun goes on counting)")
    stop: StopReason = key("why it ended: end of text, `n_predict` or the context, a stop string, a loop kvtui "
                           "stopped, aborted, or an error")
    schedule: Schedule | None = key("how its figures were taken: `simultaneous` (with the other sides, contended), "
                                    "`separate` (with the other sides, each on its own GPU or machine: not "
                                    "contended), `alternate` (one request at a time) or `solo` (its server "
                                    "alone); a "
                                    "kvtui.session/1 record's runs take the session's `schedule`", None)
    prompt: str = key("the name of the suite's prompt it answered; in a conversation `turn k`", "")
    turn: int | None = key("in a conversation: the turn it answered, 1-based (absent outside conversations)", None)
    repeat: int = key("which repeat of that prompt, 0-based (runs of two sides pair by prompt and repeat)", 0)
    seed: int | None = key("the sampler seed it used (the profile's seed + repeat)", None)
    prompt_n: int | None = key("prompt tokens the server processed, its count (without those reused from its cache)",
                               None)
    cache_n: int | None = key("prompt tokens reused from the server's prompt cache (its `timings.cache_n`; "
                              "conversations send `cache_prompt: true`, as agents' servers do)", None)
    context_n: int | None = key("the request's prompt tokens in all, `prompt_n + cache_n`: the context the turn "
                                "was answered in", None)
    prompt_per_second: float | None = key("prompt processing tokens/s, the server's own timing (pp)", None)
    predicted_n: int | None = key("tokens generated, the server's count (its last count for a run cut short)", None)
    predicted_per_second: float | None = key("generation tokens/s, the server's own timing (tg); absent for a run "
                                             "cut short, since the server sends no timings then", None)
    ttft_ms: float | None = key("request sent to first token, measured by kvtui", None)
    client_tokens_per_second: float | None = key(
        "generation tokens/s measured by kvtui, `(n_last - n_first) / (t_last - t_first)` as the server defines "
        "it; stands in for tg only where no run of the side has the server's figure, shown as `~14.0 (kvtui)`, "
        "and never compared with a server's figure", None)
    t_sent: float | None = key("when the request was sent, seconds since the session started", None)
    t_end: float | None = key("when the run ended, seconds since the session started", None)
    text: str = key("the generated text", "")
    pieces: tuple[str, ...] = key("each streamed piece of text, in order (for replay)", ())
    t_ms: tuple[float, ...] = key("each piece's arrival, ms after the request", ())
    ids: tuple[int, ...] = key("each piece's last token id (-1: unknown)", ())
    counts: tuple[int, ...] = key("the server's token count at each piece", ())
    loop: Loop | None = key("the repetition loop found in it: with `stop_on_loop` where it stopped, otherwise the "
                            "last one reported", None)
    pattern: TemplateRepeat | None = key(
        "the quiet PATTERN signal: the text ended in one skeleton repeated with only numbers or one word changing "
        "(a table or list may do this on purpose; never a failure, never stops a run)", None)
    error: str | None = key("what went wrong in this run", None)
    check: TaskCheck | None = key("the task check of its text", None)
    top_ids: tuple[tuple[int, ...], ...] = key("with `n_probs`: per piece, the top-N token ids", ())
    top_logprobs: tuple[tuple[float, ...], ...] = key("with `n_probs`: their log-probabilities (before sampling)",
                                                      ())

    def problem(self) -> str | None:
        """What is inconsistent in it (checked when read), or None."""
        n = len(self.pieces)
        if len(self.t_ms) != n or any(len(x) not in (0, n) for x in (self.ids, self.counts)):
            return "pieces and t_ms differ in length"
        return None

    @property
    def measured(self) -> bool:
        """Its figures count: it did not fail, or it streamed tokens before it failed."""
        return self.stop != StopReason.ERROR or bool(self.predicted_n)


@dataclass(frozen=True, slots=True)
class ReplyLoop:
    """Consecutive runs whose replies are near-identical although their prompts differ."""

    first_run: int = key("index of the first of those runs (in a conversation, its `turn` says which turn)")
    runs: int = key("how many runs in a row")


@dataclass(frozen=True, slots=True)
class ConversationInfo:
    """What kind of conversation the session ran."""

    mode: Literal["free", "forced", "mirror"] = key(
        "`free` (each side kept its own history), `forced` (every side answered each turn in the same context) "
        "or `mirror` (the requests of a real agent, `kvtui mirror`)")


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """One turn of a conversation: what it asked every side."""

    turn: int = key("the turn, 1-based")
    t: float | None = key("when it began, seconds since the session started", None)
    keep: int | None = key("`forced` and `mirror`: how many leading messages equal the previous turn's request "
                           "(the request is those, then `messages`); absent in a `free` conversation, where "
                           "`messages` is what the turn adds to each side's own history", None)
    messages: str = key("the turn's new messages, as JSON text (OpenAI chat messages, tool calls untouched)", "[]")
    params: str = key("the request's other fields as JSON text (tools, tool_choice, max_tokens, ...)", "{}")


@dataclass(slots=True)
class Side:
    """One configuration under test, and its server."""

    name: str = key("the side's name")
    cache_type_k: str = key("`-ctk`, the K cache type")
    cache_type_v: str = key("`-ctv`, the V cache type")
    status: SideStatus = key("where the side is; in a finished record `done`, `aborted`, `crashed` (its server "
                             "died) or `error` (a request failed)", SideStatus.WAITING)
    argv: tuple[str, ...] = key("the server's command line (API key masked); empty for an attached server", ())
    url: str | None = key("the URL of the server kvtui attached to instead of starting one (it was left running)",
                          None)
    cache_types: Literal["set", "declared"] | None = key(
        "`set`: kvtui passed `-ctk`/`-ctv`; `declared`: an attached server's types as the profile says them "
        "(llama-server does not report them)", None)
    placement: str | None = key("where the profile put the side's server: `device` (`--device CUDA1`), "
                                "`GPU 1` (`gpus`, as CUDA_VISIBLE_DEVICES) or the attached URL", None)
    served_model: str | None = key("an attached server's model, as its `/props` says", None)
    kv_estimate_mib: float | None = key("kvtui's KV cache estimate from the GGUF metadata", None)
    kv_cache_mib: float | None = key("KV cache size the server printed (`llama_kv_cache: size = ...`, summed)", None)
    port: int | None = key("the server's port", None)
    log: str | None = key("the server's log file", None)
    pid: int | None = key("the server's process id", None)
    n_ctx: int | None = key("the context the server really has (`/props`)", None)
    build: str | None = key("the server's build (`/props`)", None)
    flash_attn: str | None = key("flash attention as the server's log says: `enabled`, `disabled`, `auto`", None)
    warnings: tuple[str, ...] = key("what the server's log says it did differently from what was asked", ())
    ran_with: RanWith | None = key("what the server's `-lv 4` log and `/props` say it ran with", None)
    load_s: float | None = key("seconds from start to answering /health", None)
    warmup_ms: float | None = key("the warm-up request's duration", None)
    t_start: float | None = key("server started, seconds since the session started", None)
    t_ready: float | None = key("server answered /health, seconds since the session started", None)
    t_warm: float | None = key("warm-up done, seconds since the session started", None)
    t_exit: float | None = key("server exited, seconds since the session started", None)
    memory_source: Literal["nvml", "rss", "remote"] | None = key(
        "`nvml` (VRAM of the process), `rss` (no NVIDIA GPU) or `remote` (an attached server whose process is not "
        "on this machine: not sampled)", None)
    vram_peak_mib: float | None = key("the server process's peak VRAM (NVML)", None)
    rss_peak_mib: float | None = key("the server process's peak RSS (no GPU)", None)
    gpu_name: str | None = key("the GPU NVML reported", None)
    gpu_total_mib: float | None = key("that GPU's memory", None)
    gpu_used_peak_mib: float | None = key("peak memory used on that GPU by every process", None)
    memory_t: list[float] = key("memory samples, one per second: seconds since the session started", factory=list)
    memory_mib: list[float] = key("the process's memory at each of those times", factory=list)
    error: str | None = key("why the side failed: the cause and, in brackets, the fix", None)
    exit_code: int | None = key("the server's exit status", None)
    log_tail: tuple[str, ...] | None = key("the last log lines of a server that died", None)
    reply_loop: ReplyLoop | None = key("a loop of replies (the turn-level loop)", None)
    runs: list[Run] = key("every measured request, in order", factory=list)

    def problem(self) -> str | None:
        if len(self.memory_t) != len(self.memory_mib):
            return "memory_t and memory_mib differ in length"
        return None

    @property
    def cache(self) -> str:
        return f"K {self.cache_type_k} / V {self.cache_type_v}"


@dataclass(frozen=True, slots=True)
class Host:
    """The machine (keys absent where unknown)."""

    os: str | None = key("operating system and kernel", None)
    machine: str | None = key("CPU architecture", None)
    cpu: str | None = key("CPU model", None)
    cores: int | None = key("logical CPU cores", None)
    ram_mib: float | None = key("total RAM", None)
    gpu_name: str | None = key("the first NVIDIA GPU NVML sees", None)
    gpu_count: int | None = key("how many NVIDIA GPUs", None)
    gpu_total_mib: float | None = key("the first GPU's memory", None)
    gpu_driver: str | None = key("the NVIDIA driver", None)


@dataclass(frozen=True, slots=True)
class Server:
    """The llama-server every side ran."""

    bin: str | None = key("its path", None)
    version: str | None = key("its version text, e.g. `b10434 (7e4c0a9)`", None)


@dataclass(frozen=True, slots=True)
class Model:
    """The GGUF model every side loaded."""

    path: str | None = key("its path", None)
    name: str | None = key("`general.name`, or the file name", None)
    size_mib: float | None = key("the file's size", None)
    arch: str | None = key("`general.architecture`", None)


@dataclass(frozen=True, slots=True)
class Comparison:
    """Where another side's generation parts from side 0's, for one prompt and repeat."""

    base: str = key("side 0's name")
    other: str = key("the other side's name")
    prompt: str = key("the prompt", "")
    repeat: int = key("the repeat", 0)
    identical: bool = key("the two runs produced the same token ids", False)
    first_divergence: int | None = key("index of the first differing token (absent when identical)", None)
    prefix_agreement: float = key("share of positions equal before it", 0.0)
    alignment: float = key("matched tokens / the longer length, after aligning the two (difflib on token ids)", 0.0)
    top1_agreement: float | None = key("with `n_probs`: share of the common prefix whose most likely token agrees",
                                       None)
    kl_mean: float | None = key("with `n_probs`: a lower bound of the mean KL divergence over the common prefix, "
                                "from the two top-N lists (tokens missing from one list are bounded, never given "
                                "an invented probability), nats; `kvtui score` measures it properly", None)
    kl_top_n: int | None = key("the shortest top-N list the bound came from", None)
    kl_positions: int | None = key("positions the bound is a mean over", None)
    basis: str = key("what was compared: `ids` (token ids), `pieces` (the streamed texts, for chat runs whose "
                     "stream carried no token ids) or `words` (the texts' words, where a reply came unstreamed)",
                     "ids")


@dataclass(frozen=True, slots=True)
class Verdict:
    """A paired test of another side against side 0 on one measure."""

    base: str = key("side 0's name")
    other: str = key("the other side's name")
    measure: str = key("`tg`, `pp` (speed: sign test) or `answers` (McNemar exact)")
    pairs: int = key("pairs of runs with the same prompt, seed and kind of schedule", 0)
    wins: int = key("pairs where the other side was faster, or right where side 0 was wrong", 0)
    losses: int = key("the opposite", 0)
    p: float = key("the exact two-sided p-value", 1.0)
    median_change_pct: float | None = key("median of the paired changes (answers: change of the pass rate), %", None)
    significant: bool = key("p < 0.05 (needs 6 or more pairs that differ)", False)
    not_comparable: str | None = key("why the two sides cannot be compared (see `fairness`): the test is kept, "
                                     "but it measures that difference too", None)
    test: str = key("`sign test` or `McNemar exact`", "")


@dataclass(frozen=True, slots=True)
class Scoring:
    """The base side's generations, teacher-forced on every side's own server once generation ended."""

    status: Literal["running", "done", "aborted", "failed", "skipped"] = key(
        "`done`; `aborted` (a key or a quit stopped it: the scores cover the positions scored until then); "
        "`failed` (a server stopped answering: likewise); `skipped` (nothing to score, see `error`); `running` "
        "(kvtui ended first)")
    base: str = key("the side every other side is compared with: the f16 side, else the first")
    top_k: int = key("`n_probs` per position", 0)
    positions_cap: int = key("the profile's `score_positions`: at most this many positions per side, shared "
                             "among the prompts (0: no cap)", 0)
    prompts: tuple[str, ...] = key("the prompts whose base generation was scored (the base's first run of each)", ())
    positions: int = key("positions to score per side: each of those generations, up to its share of the cap", 0)
    sides: tuple[str, ...] = key("the sides scored against the base (the base itself is scored too: it is the "
                                 "reference)", ())
    not_scored: tuple[str, ...] = key("sides left out, each with why (`q4_0: its server crashed`)", ())
    t_start: float | None = key("scoring began, seconds since the session started", None)
    t_end: float | None = key("it ended (in a sequential plan the other sides generate in between)", None)
    seconds: float | None = key("time spent scoring", None)
    error: str | None = key("why it stopped early, or why nothing was scored", None)


@dataclass(slots=True)
class SessionRecord:
    """A whole session: what ran, where, how, and every run of every side."""

    schema: str = key(f"the record's layout, `{SCHEMA}` (kvtui also reads `{SCHEMA_V1}`)", SCHEMA)
    kvtui_version: str = key("the kvtui that wrote it", "")
    created: str = key("when the session started (ISO 8601, local time with offset)", "")
    status: SessionStatus = key("`running` (autosaved mid-run, or kvtui was killed), `done`, `failed` (a side "
                                "crashed or errored, in any run or rerun), `aborted`", SessionStatus.RUNNING)
    duration_s: float | None = key("session length", None)
    mode: Literal["parallel", "sequential"] | None = key("`parallel` or `sequential`", None)
    mode_reason: str = key("why: the memory plan or your flag", "")
    schedule: Schedule | None = key("the session's schedule as planned; each run says how it really ran", None)
    error: str | None = key("what stopped the whole session", None)
    warnings: tuple[str, ...] = key("what the plan found legal but likely not meant (e.g. chat prompts for a model "
                                    "without a chat template)", ())
    host: Host = key("the machine", factory=Host)
    server: Server = key("the llama-server", factory=Server)
    model: Model = key("the model", factory=Model)
    profile: dict[str, Any] = key("the profile as run, with the model path resolved (see Profiles)", factory=dict)
    conversation: ConversationInfo | None = key("a conversation's kind (absent for prompts)", None)
    turns: list[TurnRecord] = key("a conversation's turns, in order; each side's runs answer them (`runs.turn`)",
                                  factory=list)
    sides: list[Side] = key("one table per side", factory=list)
    fairness: list[Fairness] = key("pairs that are not comparable: per other side, what differs from side 0 "
                                   "besides the cache (checked before any verdict)", factory=list)
    comparisons: list[Comparison] = key("divergence: per other side, prompt and repeat, against side 0",
                                        factory=list)
    verdicts: list[Verdict] = key("paired tests: per other side and measure, against side 0", factory=list)
    scoring: Scoring | None = key("how the base's generations were scored once generation ended (absent with "
                                  "`score = false`)", None)
    scores: list[SideScore] = key("per other side: its teacher-forced figures against the base on the base's "
                                  "generations, as `kvtui score --json` prints them", factory=list)

    def to_toml(self) -> dict[str, Any]:
        """The record as TOML-ready data."""
        return dump(self)


# -- the file ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _profile_toml(profile_json: str) -> str:
    """The ``[profile]`` table as TOML; cached, since an autosave every few seconds would format a long prompt
    again each time (tomli_w: 175 ms for a 105k-token prompt on this 2-core machine, on the event loop)."""
    return tomli_w.dumps({"profile": json.loads(profile_json)}, multiline_strings=True)


def write_record(path: Path, record: SessionRecord) -> None:
    """Write the record atomically: temp file in the same folder, fsync, rename; mode 0600 (it holds the prompt)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = record.to_toml()
    data["schema"] = SCHEMA  # the layout written is always the current one
    profile = data.pop("profile", None)
    text = tomli_w.dumps(data, multiline_strings=True)
    if profile is not None:  # last, and formatted once per session: it holds the prompt, maybe 100k tokens of it
        text += "\n" + _profile_toml(json.dumps(profile, sort_keys=False))
    payload = text.encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_record(path: str | Path) -> SessionRecord:
    """Read and check a record; never modifies the file.

    Raises:
        RecordError: missing, not TOML, another schema, or a key missing or of the wrong type (one line).
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise RecordError(f"{p}: no such record", "check the path (records are in sessions/)") from None
    except OSError as exc:
        raise RecordError(f"{p}: cannot read: {exc.strerror}") from None
    if not raw.strip():
        raise RecordError(f"{p}: the file is empty", "the run that wrote it may have been killed before saving")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RecordError(f"{p}: not a valid TOML record: {exc}", "the file is truncated or was edited badly") from None
    except RecursionError:  # tomllib recurses into nested arrays and tables
        raise RecordError(f"{p}: not a valid TOML record: nested too deeply",
                          "this is not a kvtui session record") from None
    schema = data.get("schema")
    if schema not in READABLE:
        if isinstance(schema, str) and schema.startswith("kvtui.session/"):
            raise RecordError(f"{p}: schema {schema!r} is newer than this kvtui reads ({SCHEMA!r})",
                              "a newer kvtui wrote it: upgrade kvtui")
        if "sides" in data and ("prompt" in data or "prompts" in data):
            raise RecordError(f"{p}: this is a profile, not a session record",
                              f"run it with `kvtui run {p}`; `kvtui show` and `kvtui replay` take records")
        raise RecordError(f"{p}: not a kvtui session record (no schema = {SCHEMA!r})",
                          "this is not a kvtui session record")
    record = load(SessionRecord, data, "", str(p))
    return _upgrade_v1(record) if schema == SCHEMA_V1 else record


def _upgrade_v1(record: SessionRecord) -> SessionRecord:
    """A kvtui.session/1 record as /2: its runs take the session's schedule; a failed side makes it ``failed``."""
    for side in record.sides:
        side.runs = [r if r.schedule is not None else replace(r, schedule=record.schedule) for r in side.runs]
    if record.status == SessionStatus.DONE and any(s.status in FAILED for s in record.sides):
        record.status = SessionStatus.FAILED  # a /1 record said done after a rerun that failed
    record.schema = SCHEMA
    return record


def keys_markdown() -> str:
    """The README's key table, made from the declarations above."""
    return markdown_table(SessionRecord)


if __name__ == "__main__":  # pragma: no cover - prints the README's table
    print(keys_markdown(), end="")

