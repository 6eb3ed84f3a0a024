"""The headless console: a consumer of the core's events that prints progress and the result table."""

from __future__ import annotations

import time

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from kvtui.core.events import (
    ErrorRaised,
    Event,
    LoopDetected,
    PatternDetected,
    PromptProgress,
    ReplyLoopDetected,
    RunFinished,
    ScoreReady,
    ScoringProgress,
    ScoringStarted,
    ServerExited,
    ServerReady,
    ServerStarting,
    SessionFinished,
    SessionStarted,
    SideWaiting,
    TurnStarted,
    WarmupDone,
)
from kvtui.core.quality.summary import SideSummary, clean_finish, comparisons, summarize, unfair_pair, verdicts
from kvtui.core.record.model import SessionRecord
from kvtui.core.view import SessionState, one_line, turn_figures
from kvtui.score_table import print_scores

PROGRESS_PRINT_S = 5.0  # at most one progress line per side this often
PROGRESS_AFTER_S = 1.0  # a prompt done sooner prints no progress


class HeadlessConsole:
    """Prints a run as it happens: status lines, a live rate table on a terminal, then the summary.

    Args:
        console: where to print (a plain, non-terminal console gives plain lines).
        live: show the live table (only sensible on a terminal).
    """

    def __init__(self, console: Console | None = None, live: bool | None = None) -> None:
        self.console = console or Console(highlight=False)
        self.state = SessionState()  # the same fold of the events the app draws from
        self.use_live = self.console.is_terminal if live is None else live
        self._live: Live | None = None
        self._last_refresh = 0.0
        self._last_progress: dict[tuple[int, int], float] = {}  # (side, run) -> time of its last progress line
        self._last_score_line = 0.0  # when a scoring progress line was last printed

    def __call__(self, event: Event) -> None:
        self.handle(event)

    def say(self, side: int | None, text: str, style: str = "") -> None:
        sides = self.state.sides
        who = f"[bold]{escape(sides[side].name)}[/]: " if side is not None and side < len(sides) else ""
        self.console.print(f"{who}{text}", style=style, soft_wrap=True)  # one line each, even in a log file

    def handle(self, e: Event) -> None:
        """Print what the event means for a person watching."""
        looping_before = isinstance(e, LoopDetected) and self.state.sides[e.side].loop is not None
        pattern_before = isinstance(e, PatternDetected) and self.state.sides[e.side].pattern is not None
        self.state.apply(e)
        match e:
            case SessionStarted():
                kind = "replay of " if e.replay else ""
                self.console.print(f"[bold]kvtui[/] {kind}{e.profile_name}: {e.model_name} "
                                   f"({e.model_arch}, {e.model_size_mib:.0f} MiB) on llama-server {e.server_version}")
                self.console.print(f"mode: {e.mode} ({e.mode_reason}); schedule: {e.schedule}")
                for k, side in enumerate(e.sides):
                    if side.placement:
                        self.say(k, f"on {escape(side.placement)}", "dim")
                for w in e.warnings:
                    self.console.print(f"[yellow]warning: {escape(w)}[/]", soft_wrap=True)
                if e.conversation:
                    self.console.print(f"conversation: {e.conversation}")
                if self.use_live:
                    self._live = Live(self._table(), console=self.console, refresh_per_second=8, transient=True)
                    self._live.start()
            case SideWaiting():
                self.say(e.side, f"waits ({e.reason})", "dim")
            case ServerStarting():
                if e.attached:
                    self.say(e.side, f"attaching to the llama-server at {escape(e.attached)}", "dim")
                else:
                    env = "".join(f"{k}={v} " for k, v in e.env)
                    self.say(e.side, f"starting {env}llama-server on port {e.port} (log: {e.log_path})", "dim")
            case ServerReady():
                kv = f", KV cache {e.kv_cache_mib:.2f} MiB" if e.kv_cache_mib is not None else ""
                fa = f", flash attention {e.flash_attn}" if e.flash_attn else ""
                if e.attached:
                    mem = f"pid {e.pid}" if e.pid else "memory: remote"
                    self.say(e.side, f"attached (n_ctx {e.n_ctx}, build {e.build}, {mem}; cache types as declared)")
                else:
                    self.say(e.side, f"ready in {e.load_s:.1f} s (n_ctx {e.n_ctx}{kv}{fa})")
                if e.ran_with is not None:
                    self.say(e.side, f"ran with: {escape(e.ran_with.badge())}", "dim")
                for w in e.warnings:
                    self.say(e.side, f"warning: {w}", "yellow")
            case PromptProgress():
                # only a prompt that takes a while; then a line every PROGRESS_PRINT_S, and its last report
                key = (e.side, e.run)
                last = self._last_progress.get(key)
                done = e.total is not None and e.processed == e.total
                if e.elapsed_s >= PROGRESS_AFTER_S and (last is None or e.t - last >= PROGRESS_PRINT_S
                                                         or (done and e.t > last)):
                    self._last_progress[key] = e.t
                    self.say(e.side, e.line(), "dim")
            case WarmupDone():
                self.say(e.side, f"warmed up ({e.ms:.0f} ms)", "dim")
            case PatternDetected():
                if not pattern_before:  # once per run (the view state resets it per run): the quiet signal
                    self.say(e.side, f"pattern: {escape(repr(e.skeleton.strip())[:60])} x{e.repeats} from piece "
                                     f"{e.start} (the same skeleton, only numbers or a word changing)", "yellow")
            case LoopDetected():
                if not looping_before:
                    self.say(e.side, f"repetition loop: {e.period}-token cycle from token {e.start}, "
                                     f"x{e.repeats} so far", "bold red")
            case TurnStarted():
                self.console.print(f"[bold]turn {e.turn}[/]: {escape(one_line(e.user, 120))}", soft_wrap=True)
            case ReplyLoopDetected():
                last = e.first_turn + e.turns - 1
                self.say(e.side, f"a loop of replies: turns {e.first_turn}-{last} gave the same or a near-same "
                                 "reply", "bold red")
            case RunFinished() if e.result.turn is not None:
                r = e.result
                self.say(e.side, f"turn {r.turn}: {turn_figures(r)}")
                if r.text:
                    self.say(e.side, f"  {escape(repr(one_line(r.text, 100)))}", "dim")
                for k, d in self.state.new_divergences:  # once this reply and the primary's are both in
                    self.say(k, f"  turn {r.turn} {d.line()}", "dim")
            case RunFinished():
                r = e.result
                if r.predicted_per_second is not None:
                    tps = f"{r.predicted_per_second:.1f} t/s"
                else:  # cut short (abort, loop): the server sent no timings; kvtui's own rate, marked
                    tps = f"~{r.client_tokens_per_second:.1f} t/s (kvtui)" if r.client_tokens_per_second else "?"
                pps = f"{r.prompt_per_second:.1f}" if r.prompt_per_second is not None else "?"
                planned = self.state.started.schedule if self.state.started else None
                how = f", {r.schedule}" if r.schedule and planned and r.schedule != planned else ""  # e.g. solo
                self.say(e.side, f"run {r.run + 1}: {r.predicted_n} tokens, tg {tps}, pp {pps} t/s, "
                                 f"stop: {r.stop}{how}")
            case ErrorRaised():
                self.say(e.side, f"error: {escape(e.message)}", "bold red")
                if e.hint:
                    self.say(e.side, f"  fix: {escape(e.hint)}", "red")
            case ServerExited():
                if not e.expected:
                    self.say(e.side, f"llama-server exited with code {e.returncode}; log tail:", "red")
                    for line in e.log_tail[-8:]:
                        self.console.print(Text("    " + line, style="dim"))
            case ScoringStarted():
                sc = e.scoring
                self.console.print(f"scoring: {escape(sc.base)}'s generation{'s' if len(sc.prompts) > 1 else ''} "
                                   f"({sc.positions:,} positions) teacher-forced on {escape(', '.join(sc.sides))} and "
                                   f"{escape(sc.base)} itself, top-{sc.top_k}", soft_wrap=True)
                for why in sc.not_scored:
                    self.console.print(f"[yellow]not scored: {escape(why)}[/]", soft_wrap=True)
                self._last_score_line = e.t
            case ScoringProgress():
                if e.t - self._last_score_line >= PROGRESS_PRINT_S and e.done < e.total:
                    self._last_score_line = e.t
                    self.console.print(f"[dim]scoring {e.done:,}/{e.total:,} positions ({e.fraction:.0%})[/]")
            case ScoreReady():
                sc = e.scoring
                style = "" if sc.status == "done" else "yellow"
                took = f" in {sc.seconds:.0f} s" if sc.seconds is not None else ""
                line = f"scoring {sc.status}{took}" + (f": {escape(sc.error)}" if sc.error else "")
                self.console.print(f"[{style}]{line}[/]" if style else line, soft_wrap=True)
            case SessionFinished():
                self._stop_live()
                return
        self._refresh()

    def _refresh(self) -> None:
        if self._live is None:
            return
        now = time.monotonic()
        if now - self._last_refresh > 0.1:
            self._last_refresh = now
            self._live.update(self._table())

    def _stop_live(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def close(self) -> None:
        """Stop the live display (on any exit)."""
        self._stop_live()

    def _table(self) -> Table:
        t = Table(box=None, pad_edge=False)
        for col in ("side", "KV types", "status", "tokens", "tok/s", "memory", ""):
            t.add_column(col)
        for s in self.state.sides:
            rate = s.meter.average
            mem = "" if s.mem_mib is None else f"{'VRAM' if s.mem_source == 'nvml' else 'RAM'} {s.mem_mib:.0f} MiB"
            loop = f"loop {s.loop[0]}x{s.loop[2]}" if s.loop else ""
            t.add_row(s.name, s.cache_label, s.status, str(s.tokens), f"{rate:.1f}" if rate else "-", mem, loop)
        return t

    def print_summary(self, record: SessionRecord, path: str | None) -> None:
        """The final side-by-side table (a matrix with more sides), verdicts, divergence, the record path."""
        summaries = summarize(record)
        answers = any(s.answers_checked for s in summaries)
        t = Table(title="kvtui result", title_justify="left")
        cols = [("side", "left"), ("KV types", "left"), ("pp t/s", "right"), ("tg t/s", "right"),
                ("TTFT ms", "right"), ("tokens", "right"), ("KV MiB", "right"), ("peak mem", "right")]
        if answers:
            cols.append(("answers", "right"))
        cols += [("loops", "right"), ("stop", "left")]
        for col, just in cols:
            t.add_column(col, justify=just)  # type: ignore[arg-type]
        for s in summaries:
            kv = f"{s.kv_mib:.2f}" if s.kv_mib is not None else "?"
            if s.kv_estimate_mib is not None:
                kv += f" (est {s.kv_estimate_mib:.2f})"
            mem = f"{s.mem_peak_mib:.0f} {s.mem_kind}" if s.mem_peak_mib is not None else "-"
            row = [s.name, s.cache, str(s.pp or "-"), s.tg_text, str(s.ttft_ms or "-"), str(s.tokens or "-"), kv, mem]
            if answers:
                row.append(f"{s.answers_right}/{s.answers_checked}" if s.answers_checked else "-")
            row += [loops_cell(s), _stops(s.stops) or s.status]
            t.add_row(*row)
        self.console.print(t)
        for line in legend_lines(summaries):
            self.console.print(f"[dim]{escape(line)}[/]")
        if len(summaries) >= 2:
            for c in comparisons(record):
                style = "bold yellow" if c.unfair is not None else ""
                self.console.print(f"[{style}]{escape(c.line())}[/]" if style else escape(c.line()), soft_wrap=True)
            clean = [s.name for s in summaries if clean_finish(s)]
            self.console.print(f"clean finish: {', '.join(clean) if clean else 'none'}")
        found = verdicts(record)
        if found and any(v.pairs > 1 for _, _, v in found):
            self.console.print("[bold]paired verdicts[/] (runs paired by prompt and seed):")
            for base, other, v in found:
                flag = unfair_pair(record, base, other)
                prefix = f"[bold yellow]{escape(flag.line)}[/]; " if flag is not None else ""
                self.console.print(f"  {other} vs {base}: {prefix}{v}")
        for line in divergence_lines(record):
            self.console.print(line, soft_wrap=True)  # one line each, even in a log file
        print_scores(self.console, record)
        for s, side in zip(summaries, record.sides, strict=False):
            if s.reply_loop is not None:
                first, count = s.reply_loop
                turn = side.runs[first].turn if first < len(side.runs) else None
                if turn is not None:
                    self.console.print(f"[bold red]{s.name}: a loop of replies[/]: turns {turn}-{turn + count - 1} "
                                       "gave the same or a near-same reply")
                else:
                    self.console.print(f"[bold red]{s.name}: a loop of replies[/]: runs {first + 1}-{first + count} "
                                       "gave near-identical answers to different prompts")
        if path:
            self.console.print(f"record: {path}")


def loops_cell(s: SideSummary) -> str:
    """``1/6 (17/100)``: runs that looped of the side's runs, and per 100 runs when there are several."""
    if not s.runs:
        return "-"
    text = f"{s.loops}/{s.runs}"
    if s.runs > 1 and s.loops_per_100 is not None:
        text += f" ({s.loops_per_100:.0f}/100)"
    return text


def legend_lines(summaries: list[SideSummary], loops_column: bool = True) -> list[str]:
    """What the table's figures are, where it is not plain: contention, kvtui's own rates, runs left out, loops."""
    out = []
    if len(summaries) > 1 and any(s.contended for s in summaries):
        out.append("figures from simultaneous generation: the servers shared the hardware")
    if any(s.tg_own for s in summaries):
        out.append("~ (kvtui): kvtui's own rate; the server sent no timings for runs cut short")
    out += [s.note for s in summaries if s.note]
    if loops_column and any(s.runs > 1 for s in summaries):
        out.append("loops: runs that looped / runs (per 100 runs)")
    return out


def _stops(stops: tuple[str, ...]) -> str:
    """``length x5, loop`` rather than five repeats of the same word."""
    from collections import Counter

    return ", ".join(f"{k} x{n}" if n > 1 else k for k, n in Counter(stops).items())


def divergence_lines(record: SessionRecord) -> list[str]:
    """One line per side pair: where the generations part, and how close the distributions are."""
    import statistics

    out = []
    comps = record.comparisons
    for key in dict.fromkeys((c.base, c.other) for c in comps):
        cs = [c for c in comps if (c.base, c.other) == key]
        same = sum(1 for c in cs if c.identical)
        firsts = [c.first_divergence for c in cs if c.first_divergence is not None]
        unit = "/".join(dict.fromkeys({"pieces": "piece", "words": "word"}.get(c.basis, "token") for c in cs))
        text = f"{key[1]} vs {key[0]}: identical in {same}/{len(cs)} runs"
        if firsts:
            text += f"; first different {unit} at {statistics.median(firsts):g} (median)"
        text += f"; aligned agreement {statistics.mean(c.alignment for c in cs):.0%}"
        top1 = [c.top1_agreement for c in cs if c.top1_agreement is not None]
        # records before the sound bound stored kl_mean alone (with a 1e-6 floor): not shown
        kls = [c for c in cs if c.kl_mean is not None and c.kl_positions]
        if top1:
            text += f"; top-1 agreement {statistics.mean(top1):.1%}"
        if kls:
            n = sum(c.kl_positions or 0 for c in kls)
            mean = sum((c.kl_mean or 0.0) * (c.kl_positions or 0) for c in kls) / max(n, 1)
            text += (f", KL >= {mean:.4f} nats (lower bound from top-{min(c.kl_top_n or 0 for c in kls)}, "
                     f"over {n} positions; kvtui score measures it properly)")
        if "piece" in unit:
            text += " (compared by streamed pieces: the chat stream sent no token ids)"
        if "word" in unit:
            text += " (unstreamed replies compared by words)"
        out.append(text)
    return out
