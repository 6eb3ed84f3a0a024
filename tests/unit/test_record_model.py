"""The typed session record: every key declared once, read and written only through the model.

Round trips, the one-line errors that name the key, kvtui.session/1 records, the README's key table,
the run accumulator, and the session status a failed side gives.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from kvtui.cli import main
from kvtui.core.errors import RecordError
from kvtui.core.events import RequestSent, RunFinished, SessionFinished, SideFinished, TokenReceived
from kvtui.core.logs.provenance import parse_ran_with
from kvtui.core.quality.checks import check_text
from kvtui.core.quality.fairness import Fairness
from kvtui.core.quality.kld import SideScore
from kvtui.core.quality.loops import Loop
from kvtui.core.quality.templates import TemplateRepeat
from kvtui.core.record.accumulator import RunAccumulator
from kvtui.core.record.model import (
    CUT_SHORT,
    SCHEMA,
    Comparison,
    ConversationInfo,
    Host,
    Model,
    ReplyLoop,
    Run,
    Scoring,
    Server,
    SessionRecord,
    Side,
    TurnRecord,
    Verdict,
    keys_markdown,
    read_record,
    write_record,
)
from kvtui.core.record.recorder import SessionRecorder
from kvtui.core.record.tomlmodel import describe
from kvtui.core.server.wire import Timings, read_json

REPO = Path(__file__).resolve().parents[2]
SESSIONS = REPO / "tests" / "data" / "sessions"
LOGS = REPO / "tests" / "data" / "logs"
RECORDS_SO_FAR = [p for p in sorted(SESSIONS.glob("*.toml")) if p.name != "loop-profile.toml"] + sorted(
    (REPO / "sessions" / "examples").glob("*.toml"))


def full_record() -> SessionRecord:
    """A record with every kind of key set: nested tables, arrays of tables, lists of lists, enums."""
    check = check_text("```python\ndef test_a():\n    assert 1\n```\n", expected="assert")
    run = Run(run=0, stop="loop", schedule="alternate", prompt="p", turn=2, repeat=1, seed=43, prompt_n=9, cache_n=30,
              context_n=39,
              prompt_per_second=120.5, predicted_n=3, predicted_per_second=20.25, ttft_ms=31.5,
              client_tokens_per_second=19.75, t_sent=1.5, t_end=2.5, text="abc", pieces=("a", "b", "c"),
              t_ms=(10.0, 20.0, 30.5), ids=(1, 2, -1), counts=(1, 2, 3), loop=Loop(1, 0, 3, "a"),
              pattern=TemplateRepeat("7 x # = #\n", 1, 10, 24, 0, 2), error="why",
              check=check, top_ids=((1, 2), (2, 1), (3, 4)), top_logprobs=((-0.1, -2.5), (-0.2, -3.0), (-1.0, -1.5)))
    side = Side("q8_0", "q8_0", "q8_0", status="done", argv=("llama-server", "-ctk", "q8_0"), kv_estimate_mib=14.34,
                kv_cache_mib=14.35, port=4000, log="/tmp/x.log", pid=12, n_ctx=4096, build="b1", flash_attn="enabled",
                warnings=("w",), load_s=1.25, warmup_ms=600.0, t_start=0.1, t_ready=1.0, t_warm=1.5, t_exit=3.0,
                memory_source="nvml", vram_peak_mib=400.0, rss_peak_mib=300.0, gpu_name="H200", gpu_total_mib=143771.0,
                gpu_used_peak_mib=900.0, memory_t=[1.0, 2.0], memory_mib=[390.0, 400.0], error="e (fix)",
                exit_code=-9, log_tail=("a", "b"), reply_loop=ReplyLoop(0, 3), runs=[run, run],
                ran_with=replace(parse_ran_with((LOGS / "bundled-q8_0-q8_0.log").read_text()), build_number=10434,
                                 cpu_lines=("tensor x (q4_K) cannot be used with preferred buffer type CUDA_Host, "
                                            "using CPU instead",)))
    return SessionRecord(
        kvtui_version="0.1.0", created="2026-11-29T17:00:00+00:00", status="failed", duration_s=3.5,
        mode="parallel", mode_reason="both fit", schedule="alternate", error="session error",
        host=Host("Linux", "x86_64", "EPYC", 2, 24000.0, "H200", 1, 143771.0, "580"),
        server=Server("/bin/llama-server", "b1"), model=Model("/m.gguf", "Gemma", 241.0, "gemma3"),
        profile={"name": "demo", "sampling": {"seed": 42}}, conversation=ConversationInfo("forced"),
        turns=[TurnRecord(1, 0.5, 0, '[{"role": "user", "content": "hi"}]', '{"max_tokens": 8}'),
               TurnRecord(2, 1.5, 2, '[{"role": "user", "content": "more"}]', "{}")],
        sides=[side, Side("q4_0", "q4_0", "q4_0", url="http://127.0.0.1:8081", cache_types="declared",
                                            placement="http://127.0.0.1:8081", served_model="/m.gguf",
                                            memory_source="remote")],
        comparisons=[Comparison("q8_0", "q4_0", "p", 1, False, 2, 0.5, 0.25, 0.9, 0.01, 5, 3)],
        fairness=[Fairness("q8_0", "q4_0", ("rotation differs: K+V vs off",))],
        verdicts=[Verdict("q8_0", "q4_0", "tg", 6, 6, 0, 0.03125, 4.5, True, "sign test",
                          "not comparable: rotation differs: K+V vs off")],
        scoring=Scoring("aborted", "q8_0", 1000, 256, ("p",), 40, ("q4_0",), ("q5_0: its server crashed",), t_start=3.0,
                        t_end=9.5, seconds=6.5, error="stopped before it finished"),
        scores=[SideScore("q4_0", "q8_0", 30, 1000, 0.06, 0.009, 0.011, 0.22, 0.33, 0.44, 0.73, 0.77, 97.5, 1.2,
                          0.002, 11.3, 1.2, -3.0, 0.9, 0.05, 0.02, 1.05, 0.02, 1.28, 1.22)])


def test_round_trip_keeps_every_key(tmp_path: Path) -> None:
    record = full_record()
    write_record(tmp_path / "r.toml", record)
    back = read_record(tmp_path / "r.toml")
    assert back == record
    assert back.sides[0].runs[0].check.tests == 1 and back.sides[0].runs[0].check.answer_ok is True
    assert back.sides[0].runs[0].check.blocks == ()  # the blocks themselves are not recorded
    declared = {name for name, _, _ in describe(SessionRecord)}
    assert written_keys(tomllib.loads((tmp_path / "r.toml").read_text())) == declared - {"sides.runs.check.blocks"}


def written_keys(node: Any, prefix: str = "") -> set[str]:
    """Every key path in a TOML document, list indexes left out, the free-form [profile] not walked into."""
    out: set[str] = set()
    if isinstance(node, list):
        for item in node:
            out |= written_keys(item, prefix)
    elif isinstance(node, dict):
        for k, v in node.items():
            out.add(prefix + k)
            if prefix + k != "profile" and isinstance(v, dict | list):
                out |= written_keys(v, f"{prefix}{k}.")
    return out


@pytest.mark.parametrize("path", RECORDS_SO_FAR, ids=lambda p: p.name)
def test_records_written_so_far_load_and_hold_only_declared_keys(path: Path) -> None:
    """kvtui.session/1 records (the test data, the GPU examples) load as /2: runs take the session's schedule."""
    raw = tomllib.loads(path.read_text())
    assert raw["schema"] in ("kvtui.session/1", "kvtui.session/2")
    assert written_keys(raw) <= {name for name, _, _ in describe(SessionRecord)}, "a key the model does not declare"
    record = read_record(path)
    assert record.schema == SCHEMA and record.schedule is not None
    assert all(r.schedule == record.schedule for s in record.sides for r in s.runs)


def test_a_v1_record_whose_side_failed_reads_as_failed(tmp_path: Path) -> None:
    text = (SESSIONS / "crash.toml").read_text().replace('status = "failed"', 'status = "done"', 1)
    (tmp_path / "r.toml").write_text(text)
    assert read_record(tmp_path / "r.toml").status == "failed"


def mutate(tmp_path: Path, change: Any) -> Path:
    """A record with three runs on side 0, changed by ``change(data)``, written as TOML."""
    record = full_record()
    record.sides[0].runs.append(record.sides[0].runs[0])
    data = record.to_toml()
    change(data)
    path = tmp_path / "bad.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def _set(key_path: str, value: Any) -> Any:
    def change(data: dict[str, Any]) -> None:
        *parents, last = re.findall(r"\w+|\[\d+\]", key_path)
        node: Any = data
        for step in parents:
            node = node[int(step[1:-1])] if step.startswith("[") else node[step]
        if value is DELETE:
            del node[last]
        elif last.startswith("["):
            node[int(last[1:-1])] = value
        else:
            node[last] = value
    return change


DELETE = object()
EDITED = "the record was edited by hand or is damaged"
DAMAGED = "the record is damaged"


@pytest.mark.parametrize("key_path, value, message, fix", [
    ("sides[0].runs[2].stop", 5, "sides[0].runs[2].stop has the wrong type (int)", EDITED),
    ("sides[0].warnings", 5, "sides[0].warnings has the wrong type (int)", EDITED),
    ("sides[0].runs[1].pieces[1]", 7, "sides[0].runs[1].pieces[1] has the wrong type (int)", EDITED),
    ("sides[0].runs[0].top_ids[0]", [1, "x"], "sides[0].runs[0].top_ids[0][1] has the wrong type (str)", EDITED),
    ("sides[0].runs[0].stop", "boom", "sides[0].runs[0].stop = 'boom' is not one of eos, length, word, loop, "
                                      "aborted, error", EDITED),
    ("status", "finished", "status = 'finished' is not one of running, done, failed, aborted", EDITED),
    ("sides[0].memory_source", "gpu", "sides[0].memory_source = 'gpu' is not one of nvml, rss, remote", EDITED),
    ("sides[0].pid", True, "sides[0].pid has the wrong type (bool)", EDITED),
    ("sides[0].kv_cache_mib", "14", "sides[0].kv_cache_mib has the wrong type (str)", EDITED),
    ("host", 3, "host has the wrong type (int)", EDITED),
    ("host.cores", 2.5, "host.cores has the wrong type (float)", EDITED),
    ("sides[1]", 3, "sides[1] is not a table", DAMAGED),
    ("sides[0].name", DELETE, "sides[0].name is missing", DAMAGED),
    ("sides[0].runs[0].loop.start", DELETE, "sides[0].runs[0].loop.start is missing", DAMAGED),
    ("sides[0].memory_t", [1.0], "sides[0].memory_t and memory_mib differ in length", DAMAGED),
    ("sides[0].runs[0].t_ms", [1.0], "sides[0].runs[0].pieces and t_ms differ in length", DAMAGED),
    ("verdicts[0].p", "small", "verdicts[0].p has the wrong type (str)", EDITED),
])
def test_a_bad_value_is_one_line_naming_the_key(tmp_path: Path, key_path: str, value: Any, message: str,
                                                fix: str) -> None:
    path = mutate(tmp_path, _set(key_path, value))
    with pytest.raises(RecordError) as info:
        read_record(path)
    assert info.value.message == f"{path}: {message}"
    assert info.value.hint == fix


def test_a_profile_given_as_a_record_says_so(tmp_path: Path) -> None:
    with pytest.raises(RecordError) as info:
        read_record(REPO / "profiles" / "demo.toml")
    assert "this is a profile, not a session record" in info.value.message and "None" not in info.value.message
    assert "kvtui run" in info.value.hint


@pytest.mark.parametrize("argv", [["show"], ["replay", "--headless"], ["replay"]], ids=["show", "replay-headless",
                                                                                       "replay-app"])
def test_warnings_5_is_a_one_line_error_exit_2(tmp_path: Path, capsys, argv: list[str]) -> None:
    """It used to pass the reader and crash replay with TypeError: 'int' object is not iterable."""
    bad = tmp_path / "w.toml"
    bad.write_text((SESSIONS / "demo.toml").read_text().replace("warnings = []", "warnings = 5", 1))
    code = main([argv[0], str(bad), *argv[1:]])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.splitlines() == [f"kvtui: error: {bad}: sides[0].warnings has the wrong type (int)",
                                "kvtui: fix: the record was edited by hand or is damaged"]


def test_readme_key_table_is_made_from_the_model() -> None:
    """The README's "Session records" table is ``python -m kvtui.core.record.model``'s output, between its markers."""
    readme = (REPO / "README.md").read_text()
    found = re.search(r"<!-- record-keys:begin[^>]*-->\n(.*?)<!-- record-keys:end -->", readme, re.S)
    assert found, "the README lost its record-keys markers"
    assert found.group(1) == keys_markdown(), "run `python -m kvtui.core.record.model` and paste its table into the README"


def test_every_key_has_a_meaning() -> None:
    rows = describe(SessionRecord)
    assert all(doc.strip() for _, _, doc in rows)
    assert len({name for name, _, _ in rows}) == len(rows)


# -- the run accumulator ------------------------------------------------------------------------


def test_accumulator_builds_the_run() -> None:
    acc = RunAccumulator(2, 10.0, "p", 1, 43, "simultaneous")
    acc.add(10.1, 1, "a", 5, ((5, -0.1),))
    acc.add(10.3, 3, "bc", 6, ((6, -0.2),))
    acc.add(10.5, 5, "d", None, ((7, -0.3),))
    timings = Timings(prompt_n=9, prompt_per_second=100.0, predicted_n=5, predicted_per_second=9.8765)
    run = acc.finish(11.0, "length", timings=timings, check=check_text("abcd"))
    assert (run.run, run.prompt, run.repeat, run.seed, run.schedule) == (2, "p", 1, 43, "simultaneous")
    assert run.text == "abcd" and run.pieces == ("a", "bc", "d") and run.ids == (5, 6, -1) and run.counts == (1, 3, 5)
    assert run.t_ms == (100.0, 300.0, 500.0) and run.ttft_ms == pytest.approx(100.0)
    assert run.client_tokens_per_second == pytest.approx(10.0)  # (5 - 1) tokens / 0.4 s, as the server counts
    assert run.predicted_per_second == 9.877 and run.prompt_n == 9 and run.t_end == 11.0
    assert run.top_ids == ((5,), (6,), (7,))


def test_accumulator_cut_short_and_without_timings() -> None:
    acc = RunAccumulator(0, 1.0)
    acc.add(1.2, 4, "x", 9, None)
    run = acc.cut_short()
    assert run.stop == "aborted" and run.error == CUT_SHORT and run.t_end is None
    assert run.predicted_n == 4 and run.predicted_per_second is None and run.top_ids == ()


def test_accumulator_ignores_timings_of_the_wrong_type() -> None:
    """The server's JSON is outside kvtui: what cannot be a number is left out, so the record stays readable."""
    timings = read_json(Timings, {"prompt_n": "9", "predicted_per_second": [1]})
    run = RunAccumulator(0, 1.0).finish(2.0, "eos", timings=timings)
    assert run.prompt_n is None and run.predicted_per_second is None and run.predicted_n == 0


# -- the session status --------------------------------------------------------------------------


def recorder_with_two_sides() -> SessionRecorder:
    from kvtui.core.events import SessionStarted, SideInfo

    rec = SessionRecorder(None, {}, Host())
    rec.handle(SessionStarted(0.0, "p", "parallel", "", "simultaneous", (SideInfo("a", "f16", "f16", ()),
                              SideInfo("b", "q4_0", "q4_0", ())), "", "", 0.0, "", "", "", ""))
    return rec


def test_a_side_that_failed_makes_the_session_failed() -> None:
    rec = recorder_with_two_sides()
    rec.handle(SideFinished(1.0, 0, "done"))
    rec.handle(SideFinished(1.0, 1, "error"))
    rec.handle(SessionFinished(2.0, "aborted"))
    assert rec.record.status == "failed" and rec.record.sides[1].status == "error"


def test_a_rerun_that_fails_makes_a_done_session_failed() -> None:
    rec = recorder_with_two_sides()
    for i in (0, 1):
        rec.handle(SideFinished(1.0, i, "done"))
    rec.handle(SessionFinished(2.0, "done"))
    assert rec.record.status == "done"
    rec.handle(RequestSent(3.0, 1, 1, schedule="solo"))
    rec.handle(TokenReceived(3.1, 1, 1, 1, "x", 1))
    rec.handle(RunFinished(3.2, 1, Run(1, "error", "solo", error="the server died")))
    rec.handle(SideFinished(3.3, 1, "crashed"))
    assert rec.record.status == "failed" and rec.record.sides[1].status == "crashed"
    rec.handle(SideFinished(4.0, 1, "done"))  # a second rerun that works
    assert rec.record.status == "done"


def test_finalize_keeps_a_failed_side_failed() -> None:
    rec = recorder_with_two_sides()
    rec.handle(SideFinished(1.0, 1, "crashed"))
    rec.handle(RequestSent(1.5, 0, 0))
    rec.handle(TokenReceived(1.6, 0, 0, 2, "ab", 3))
    rec.finalize_partial("aborted")
    assert rec.record.status == "failed"
    (run,) = rec.record.sides[0].runs
    assert run.stop == "aborted" and run.pieces == ("ab",) and rec.record.sides[0].status == "aborted"
