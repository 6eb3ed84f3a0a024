"""Scoring inside a run, the parts without a server: what is scored, the state the app draws from, the record's
[scoring] and [[scores]] through recorder and replay, and what headless and show print of them.

The scoring itself on real servers is in tests/e2e/test_run_scoring_server.py.
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from kvtui.core.events import (
    RequestSent,
    RunFinished,
    ScoreReady,
    ScoringProgress,
    ScoringStarted,
    SessionFinished,
    SessionStarted,
    SideFinished,
    SideInfo,
    TokenReceived,
)
from kvtui.core.profiles import Prompt
from kvtui.core.quality.kld import SideScore
from kvtui.core.record.model import Run, Scoring, read_record
from kvtui.core.record.recorder import SessionRecorder
from kvtui.core.record.replay import record_events
from kvtui.core.run.score_plan import generated_ids, not_scored, per_run_limit, scored_runs, segment
from kvtui.core.view import SessionState
from kvtui.core.vocab import StopReason
from kvtui.headless import HeadlessConsole
from kvtui.score_table import print_scores, scoring_notes


def _run(prompt: str, repeat: int = 0, run: int = 0, pieces: tuple[str, ...] = ("a", "b"), stop: str = "length",
         ids: tuple[int, ...] = (5, 6), counts: tuple[int, ...] = (1, 2)) -> Run:
    return Run(run=run, stop=StopReason(stop), prompt=prompt, repeat=repeat, pieces=pieces, t_ms=(1.0,) * len(pieces),
               ids=ids, counts=counts, text="".join(pieces), prompt_n=4, predicted_n=len(pieces))


def test_the_first_run_of_each_prompt_that_generated_is_scored_in_prompt_order() -> None:
    prompts = [Prompt("x", name="b"), Prompt("y", name="a"), Prompt("z", name="c")]
    runs = [_run("a", repeat=1, run=3), _run("a", repeat=0, run=1), _run("b", run=0, stop="error"),
            _run("b", run=2, repeat=1), _run("c", pieces=(), ids=(), counts=())]
    chosen = scored_runs(runs, prompts)
    assert [(p.name, r.run) for p, r in chosen] == [("b", 2), ("a", 1)]  # b's errored run and empty c are left out


def test_the_cap_is_shared_equally_among_the_scored_generations() -> None:
    assert per_run_limit(256, 1) == 256 and per_run_limit(256, 3) == 86 and per_run_limit(2, 5) == 1
    assert per_run_limit(0, 3) is None


def test_generated_ids_only_when_the_stream_gave_every_one() -> None:
    assert generated_ids(_run("a", ids=(5, 6, 1), counts=(1, 2, 3), pieces=("a", "b", ""))) == [5, 6, 1]
    # a multi-byte character: the chunk that completes it carries only its last id, and the count jumps
    assert generated_ids(_run("a", ids=(5, 9), counts=(1, 3))) is None
    assert generated_ids(_run("a", ids=(-1, -1), counts=(1, 2))) is None  # a chat stream carries no ids
    assert generated_ids(_run("a", ids=(), counts=())) is None


def test_a_segment_scores_the_generation_after_the_prompt_within_the_context() -> None:
    seg = segment([2, 10, 11], [20, 21, 22, 23], limit=3, ctx=100)
    assert seg.tokens == (2, 10, 11, 20, 21, 22) and seg.first == 2 and seg.positions == 3
    assert segment([2, 10, 11], [20, 21, 22, 23], limit=None, ctx=5).positions == 2  # never past the context


def test_why_a_side_is_not_scored() -> None:
    assert not_scored("q8_0", "done", ("-ctk", "q8_0"), {}) is None
    assert "its server crashed" in not_scored("q4_0", "crashed", (), {})  # type: ignore[operator]
    why = not_scored("q4_0", "done", ("-md", "draft.gguf"), {})
    assert why is not None and why.startswith("q4_0: -md turns on speculative decoding")


SCORE = SideScore("q4_0", "q8_0", 30, 1000, 0.0622, 0.0089, 0.011, 0.22, 0.33, 0.44, 0.73, 0.77, 97.5, 1.2, 0.002,
                  11.3, 1.2, -3.0, 0.9, 0.05, 0.02, 1.05, 0.02, 1.28, 1.22)
STARTED = Scoring("running", "q8_0", 1000, 256, ("palindromes.py",), 30, ("q4_0",), (), t_start=2.0)
DONE = replace(STARTED, status="done", t_end=6.0, seconds=4.0)


def _session_events() -> list:
    sides = (SideInfo("q8_0", "q8_0", "q8_0", ()), SideInfo("q4_0", "q4_0", "q4_0", ()))
    out = [SessionStarted(0.0, "demo", "parallel", "fits", "simultaneous", sides, "/m", "m", 1.0, "gemma3", "/b", "v",
                          "2026-12-01T00:00:00+00:00")]
    for i in (0, 1):
        out += [RequestSent(0.5, i, 0, "palindromes.py"), TokenReceived(1.0, i, 0, 1, "x", 7),
                RunFinished(1.5, i, _run("palindromes.py", pieces=("x",), ids=(7,), counts=(1,))),
                SideFinished(1.6, i, "done")]
    return out + [ScoringStarted(2.0, STARTED), ScoringProgress(3.0, 20, 60), ScoreReady(6.0, DONE, (SCORE,)),
                  SessionFinished(6.1, "done")]


def test_the_state_follows_scoring_and_a_new_session_forgets_it() -> None:
    st = SessionState()
    events = _session_events()
    for e in events[:-2]:
        st.apply(e)
    assert st.scoring_now and (st.score_done, st.score_total) == (20, 60)  # 30 positions x (q4_0 + the base)
    st.apply(events[-2])
    assert not st.scoring_now and st.scoring.status == "done" and st.scores == (SCORE,)  # type: ignore[union-attr]
    st.apply(events[0])
    assert st.scoring is None and st.scores == () and st.score_total == 0


def test_the_record_keeps_the_scores_and_replay_gives_them_back(tmp_path: Path) -> None:
    rec = SessionRecorder(tmp_path / "r.toml", {"name": "demo"}, host=None)  # type: ignore[arg-type]
    for e in _session_events():
        rec.handle(e)
    back = read_record(tmp_path / "r.toml")
    assert back.scoring == DONE and back.scores == [SCORE]
    replayed = [e for e in record_events(back) if isinstance(e, ScoringStarted | ScoreReady | SessionFinished)]
    assert [type(e).__name__ for e in replayed] == ["ScoringStarted", "ScoreReady", "SessionFinished"]
    assert replayed[0].t == 2.0 and replayed[0].scoring.status == "running"  # type: ignore[union-attr]
    assert replayed[1].t == 6.0 and replayed[1].scores == (SCORE,)  # type: ignore[union-attr]


def test_a_record_cut_short_while_scoring_says_aborted(tmp_path: Path) -> None:
    rec = SessionRecorder(tmp_path / "r.toml", {"name": "demo"}, host=None)  # type: ignore[arg-type]
    for e in _session_events()[:-3]:
        rec.handle(e)
    rec.finalize_partial()
    back = read_record(tmp_path / "r.toml")
    assert back.scoring.status == "aborted" and "kvtui ended" in back.scoring.error  # type: ignore[union-attr,operator]


def _text(print_to) -> str:
    buf = io.StringIO()
    print_to(Console(file=buf, width=160, highlight=False))
    return buf.getvalue()


def test_headless_says_what_is_scored_and_prints_the_table(tmp_path: Path) -> None:
    rec = SessionRecorder(None, {"name": "demo"}, host=None)  # type: ignore[arg-type]

    def run(console: Console) -> None:
        head = HeadlessConsole(console, live=False)
        for e in _session_events():
            rec.handle(e)
            head.handle(e)
        head.print_summary(rec.record, None)

    out = _text(run)
    assert "scoring: q8_0's generation (30 positions) teacher-forced on q4_0 and q8_0 itself, top-1000" in out
    assert "scoring done in 4 s" in out
    assert "quality: every side against q8_0" in out and "0.06220 ± 0.00890" in out and "97.50 ± 1.20" in out


def test_notes_say_why_scoring_stopped_and_which_sides_were_left_out() -> None:
    failed = replace(DONE, status="failed", error="q8_0: llama-server stopped answering (ConnectionResetError)",
                     not_scored=("q5_0: its server crashed",))
    notes = scoring_notes(failed)
    assert notes[0].startswith("scored: q8_0's generation of palindromes.py, 30 positions per side, capped at 256")
    assert "scoring failed: q8_0: llama-server stopped answering (ConnectionResetError)" in notes
    assert "not scored: q5_0: its server crashed" in notes


@pytest.mark.parametrize("status", ["skipped"])
def test_show_prints_a_skipped_scoring_without_a_table(tmp_path: Path, status: str) -> None:
    rec = SessionRecorder(tmp_path / "r.toml", {"name": "demo"}, host=None)  # type: ignore[arg-type]
    for e in _session_events()[:-4]:
        rec.handle(e)
    rec.handle(ScoreReady(2.0, replace(STARTED, status=status, prompts=(), positions=0,
                                       error="q8_0 (the base) generated nothing to score")))
    out = _text(lambda c: print_scores(c, rec.record))
    assert "mean KLD" not in out and "scoring skipped: q8_0 (the base) generated nothing to score" in out
