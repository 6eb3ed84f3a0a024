"""The session record: built from events, written atomically with mode 0600, read back unchanged."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

import pytest

from kvtui.core.errors import RecordError
from kvtui.core.events import (
    LoopDetected,
    MemorySampled,
    RequestSent,
    RunFinished,
    ServerExited,
    ServerReady,
    ServerStarting,
    SessionFinished,
    SessionStarted,
    SideFinished,
    SideInfo,
    TokenReceived,
)
from kvtui.core.quality.loops import Loop
from kvtui.core.record.model import Host, Run, SessionRecord
from kvtui.core.record.recorder import AUTOSAVE_COST, SCHEMA, SessionRecorder, read_record, write_record


def events() -> list:
    sides = (SideInfo("q8_0", "q8_0", "q8_0", ("llama-server", "-ctk", "q8_0"), 20.72),
             SideInfo("q4_0", "q4_0", "q4_0", ("llama-server", "-ctk", "q4_0"), None))
    out = [SessionStarted(0.0, "demo", "parallel", "both fit", "simultaneous", sides, "/m.gguf", "Gemma", 241.4,
                          "gemma3", "/bin/llama-server", "b10434 (7e4c0a9)", "2026-11-29T16:00:00+00:00")]
    for i in (0, 1):
        out += [ServerStarting(0.1, i, 18000 + i, ("llama-server",), f"/tmp/s{i}.log"),
                ServerReady(1.0, i, 100 + i, 0.9, 4096, "b1-7e4c0a9", 20.72 / (i + 1), "enabled"),
                RequestSent(1.5, i, 0, schedule="simultaneous"),
                TokenReceived(1.6, i, 0, 1, "def", 5),
                MemorySampled(1.7, i, "rss", 340.0 - i * 10),
                TokenReceived(1.8, i, 0, 3, " f():\n    \"日本\"", 6)]
    out += [LoopDetected(1.9, 1, 0, 33, 120, 4, "again"),
            RunFinished(2.0, 0, Run(0, "eos", "simultaneous", prompt_n=20, prompt_per_second=300.5, predicted_n=3,
                                    predicted_per_second=45.2, ttft_ms=100.0, client_tokens_per_second=10.0,
                                    t_end=2.0, text='def f():\n    "日本"', pieces=("def", ' f():\n    "日本"'),
                                    t_ms=(100.0, 300.0), ids=(5, 6), counts=(1, 3))),
            RunFinished(2.1, 1, Run(0, "loop", "simultaneous", prompt_n=20, prompt_per_second=310.0, predicted_n=3,
                                    predicted_per_second=47.0, ttft_ms=90.0, client_tokens_per_second=11.0,
                                    t_end=2.1, text="x", pieces=("x",), t_ms=(90.0,), ids=(7,), counts=(3,),
                                    loop=Loop(33, 120, 4, "again"))),
            ServerExited(2.2, 0, 0, True), ServerExited(2.2, 1, 0, True),
            SideFinished(2.3, 0, "done"), SideFinished(2.3, 1, "done"),
            SessionFinished(2.4, "done")]
    return out


def test_record_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    rec = SessionRecorder(path, {"name": "demo"}, Host(cpu="test", cores=2))
    for e in events():
        rec(e)
    data = read_record(path)
    assert data == rec.record  # what was written is what is read back, field for field
    assert data.schema == SCHEMA and data.status == "done" and data.mode == "parallel"
    assert data.schedule == "simultaneous" and data.server.version == "b10434 (7e4c0a9)"
    a, b = data.sides
    assert (a.cache_type_k, a.cache_type_v, b.cache_type_k) == ("q8_0", "q8_0", "q4_0")
    assert a.kv_cache_mib == pytest.approx(20.72) and b.kv_cache_mib == pytest.approx(10.36)
    assert "kv_estimate_mib" not in tomllib.loads(path.read_text())["sides"][1]  # None is omitted: no null in TOML
    assert a.rss_peak_mib == 340.0 and a.memory_source == "rss"
    run = a.runs[0]
    assert run.text == 'def f():\n    "日本"' and run.pieces == ("def", ' f():\n    "日本"')
    assert run.t_ms == (100.0, 300.0) and run.predicted_per_second == 45.2 and run.schedule == "simultaneous"
    assert run.ids == (5, 6) and run.counts == (1, 3)
    assert b.runs[0].loop == Loop(33, 120, 4, "again")
    assert data == read_record(path)  # reading twice gives the same, the file is untouched


def test_record_is_private_and_atomic(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    write_record(path, SessionRecord())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["r.toml"]  # no temp file left


def test_autosave_and_partial_finalize(tmp_path: Path) -> None:
    now = [0.0]
    path = tmp_path / "r.toml"
    rec = SessionRecorder(path, {}, Host(), clock=lambda: now[0])
    evs = events()
    for e in evs[:5]:
        rec(e)
    assert not path.exists()
    now[0] = 10.0
    rec(evs[5])
    saved = read_record(path)
    assert saved.status == "running"
    assert saved.sides[0].runs[0].stop == "aborted" and saved.sides[0].runs[0].pieces == ("def",)  # the open run
    rec.finalize_partial("aborted")
    data = read_record(path)
    assert data.status == "aborted" and all(s.status == "aborted" for s in data.sides)


def test_autosave_paces_itself_by_what_a_save_costs(tmp_path: Path) -> None:
    """A save that took 0.2 s of CPU waits 40 s for the next (0.25% of a core), not the usual 3 s."""
    now, cpu = [0.0], [0.0]

    def cpu_clock() -> float:
        cpu[0] += 0.1  # every reading 0.1 s of CPU after the one before: each save costs 0.1 s
        return cpu[0]

    path = tmp_path / "r.toml"
    rec = SessionRecorder(path, {}, Host(), clock=lambda: now[0], cpu_clock=cpu_clock)
    evs = events()
    for e in evs[:3]:
        rec(e)
    now[0] = 3.5
    rec(evs[3])  # the first save, 3 s in as always
    first = path.stat().st_ino  # a save replaces the file: a new inode
    assert rec.autosave_interval() == pytest.approx(0.1 / AUTOSAVE_COST)  # 40 s
    now[0] = 3.5 + 39.0
    rec(evs[4])
    assert path.stat().st_ino == first  # 39 s later: not yet
    now[0] = 3.5 + 40.5
    rec(evs[5])
    assert read_record(path).sides[0].runs[0].pieces == ("def",)  # saved again, with what streamed since


@pytest.mark.parametrize("content, match", [
    ("", "empty"),
    ("schema = 'kvtui.session/1'\nsides = [", "not a valid TOML"),
    ("schema = 'kvtui.session/9'\n", "upgrade kvtui"),
    ("title = 'x'\n", "not a kvtui session record"),
    ("schema = 'kvtui.session/1'\nmode = 3\n", "mode has the wrong type"),
    ("schema = 'kvtui.session/1'\n[[sides]]\nname='a'\ncache_type_k='f16'\ncache_type_v='f16'\n"
     "[[sides.runs]]\nrun=0\nstop='boom'\n", "stop = 'boom'"),
])
def test_bad_records_give_one_line(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(RecordError, match=match) as info:
        read_record(path)
    assert "\n" not in info.value.message and "bad.toml" in info.value.message
