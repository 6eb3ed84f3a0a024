"""Placement (device, gpus), attach keys and prompt progress: argv, environment, the per-GPU plan, parsing.

The model is the real bundled GGUF (its header only); llama-server is not run
(``help_flags``/``server_version`` are stubbed, as in test_plan.py) and NVML is
the fake ``pynvml`` of test_gpu.py: this machine has no GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_gpu import ME, MIB, PARENT, FakeNvml, proc
from test_plan import gemma, no_server  # noqa: F401 - fixtures

from kvtui.core.errors import ProfileError
from kvtui.core.events import PromptProgress, RequestSent, SessionStarted, SideInfo, TokenReceived
from kvtui.core.profiles import Prompt, Sampling, Side, parse_profile
from kvtui.core.remote import check_remote
from kvtui.core.run import plan
from kvtui.core.run.memory import GpuDevice, NvmlProbe
from kvtui.core.run.plan import HEADROOM, gpu_index, make_plan
from kvtui.core.server.client import Progress, StreamParser, build_request
from kvtui.core.server.locate import ServerBinary
from kvtui.core.server.process import server_args, side_env
from kvtui.core.view import SessionState
from kvtui.core.vocab import Schedule

BINARY = ServerBinary(Path("/nonexistent/llama-server"), "--server-bin")


def prof(*sides: dict, ngl: int = 99, ctx: int = 32768):
    data = {"name": "p", "model": {"path": "bundled"}, "server": {"ctx_size": ctx, "n_gpu_layers": ngl},
            "sides": list(sides), "prompt": {"text": "hi"}}
    return parse_profile(data, "p.toml")


def side(name: str, kv: str, **more) -> dict:
    return {"name": name, "cache_type_k": kv, "cache_type_v": kv, **more}


class TwoGpus:
    """A probe that sees two GPUs with these free MiB."""

    source = "nvml"
    available = True

    def __init__(self, free0: float, free1: float) -> None:
        self.free = (free0, free1)

    def devices(self) -> list[GpuDevice]:
        return [GpuDevice(i, f"Fake H200 #{i}", 143_771.0, 143_771.0 - f, f, "570") for i, f in enumerate(self.free)]


# -- argv and environment ---------------------------------------------------------------------------


def test_device_becomes_the_device_flag_and_gpus_the_environment(gemma: Path) -> None:  # noqa: F811
    p = prof(side("a", "q8_0", device="Vulkan1"), side("b", "q4_0", gpus="1"))
    a, b = p.sides
    args = server_args(p, a, gemma)
    assert args[args.index("--device") + 1] == "Vulkan1"
    assert "--device" not in server_args(p, b, gemma)
    assert side_env(a) == () and side_env(b) == (("CUDA_VISIBLE_DEVICES", "1"),)
    pl = make_plan(p, gemma, BINARY, vram_budget_mib=1e6)
    assert pl.sides[0].args == tuple(server_args(p, a, gemma, plan.help_flags(BINARY)))
    assert "--device" in pl.sides[0].args and pl.sides[1].env == (("CUDA_VISIBLE_DEVICES", "1"),)
    assert (pl.sides[0].placement, pl.sides[1].placement) == ("Vulkan1", "GPU 1")


@pytest.mark.parametrize(("given", "index"), [
    ({"device": "CUDA1"}, 1), ({"device": "Vulkan0"}, 0), ({"gpus": "2"}, 2), ({"gpus": "0,1"}, None), ({}, None),
])
def test_gpu_index_of_a_side(given: dict, index: int | None) -> None:
    assert gpu_index(Side("s", "f16", "f16", **given)) == index


def test_profile_keys_are_checked_and_the_key_never_recorded() -> None:
    with pytest.raises(ProfileError, match=r"sides\[1\]\.device: has no effect on an attached server"):
        prof(side("a", "q8_0"), side("b", "q4_0", url="http://127.0.0.1:8081", device="CUDA1"))
    with pytest.raises(ProfileError, match=r"sides\[0\]\.gpus: .* is not a list of GPU indices"):
        prof(side("a", "q8_0", gpus="first"), side("b", "q4_0"))
    with pytest.raises(ProfileError, match=r"sides\[1\]\.url: .* is not an http URL"):
        prof(side("a", "q8_0"), side("b", "q4_0", url="127.0.0.1:8081"))
    p = prof(side("a", "q8_0"), side("b", "q4_0", url="http://127.0.0.1:8081/", api_key="s3cret"))
    assert p.sides[1].url == "http://127.0.0.1:8081" and p.sides[1].attached
    assert p.to_dict()["sides"][1] == {"name": "b", "cache_type_k": "q4_0", "cache_type_v": "q4_0",
                                       "extra_args": [], "url": "http://127.0.0.1:8081", "api_key": "***"}
    check_remote(p)  # loopback: fine
    far = prof(side("a", "q8_0"), side("b", "q4_0", url="http://10.0.0.5:8080"))
    with pytest.raises(ProfileError, match="10.0.0.5 is another machine") as info:
        check_remote(far)
    assert "--allow-remote" in info.value.hint
    check_remote(far, allow_remote=True)


# -- the plan per GPU ---------------------------------------------------------------------------------


def test_sides_on_two_gpus_plan_each_against_its_own_and_run_separate(gemma: Path) -> None:  # noqa: F811
    p = prof(side("a", "q8_0", gpus="0"), side("b", "q4_0", gpus="1"))
    one = make_plan(p, gemma, BINARY, probe=TwoGpus(1e6, 1e6))
    need_a, need_b = (d.need_mib for d in one.per_device)
    # each GPU needs one server's share only; 10% more than the larger is free on each
    free = max(need_a, need_b) / HEADROOM + 1
    pl = make_plan(p, gemma, BINARY, probe=TwoGpus(free, free))
    assert pl.mode == "parallel" and pl.fits is True
    assert pl.schedule == Schedule.SEPARATE and not Schedule.SEPARATE.contended
    assert [(d.gpu, d.sides, d.free_mib) for d in pl.per_device] == [(0, ("a",), free), (1, ("b",), free)]
    assert pl.mode_reason.startswith("each side on its own GPU: GPU 0 ~")
    # both on one GPU with that much free: they do not fit together
    same = make_plan(prof(side("a", "q8_0", gpus="1"), side("b", "q4_0", gpus="1")), gemma, BINARY,
                     probe=TwoGpus(free, free))
    assert same.mode == "sequential" and same.per_device[0].need_mib == pytest.approx(need_a + need_b, rel=0.01)


def test_one_gpu_short_of_memory_makes_the_run_sequential(gemma: Path) -> None:  # noqa: F811
    p = prof(side("a", "q8_0", gpus="0"), side("b", "q4_0", gpus="1"))
    pl = make_plan(p, gemma, BINARY, probe=TwoGpus(1e6, 10.0))
    assert pl.mode == "sequential" and pl.fits is False and "GPU 1" in pl.budget_source


def test_unplaced_sides_stay_simultaneous_and_contended(gemma: Path) -> None:  # noqa: F811
    pl = make_plan(prof(side("a", "q8_0"), side("b", "q4_0")), gemma, BINARY, probe=TwoGpus(1e6, 1e6))
    assert pl.schedule == Schedule.SIMULTANEOUS and Schedule.SIMULTANEOUS.contended and pl.per_device == ()


def test_an_attached_side_needs_no_memory_in_the_plan(gemma: Path) -> None:  # noqa: F811
    p = prof(side("a", "q8_0"), side("b", "q4_0", url="http://127.0.0.1:8081"))
    both = make_plan(prof(side("a", "q8_0"), side("b", "q4_0")), gemma, BINARY, vram_budget_mib=1e6)
    pl = make_plan(p, gemma, BINARY, vram_budget_mib=1e6)
    assert pl.sides[1].args == () and pl.sides[1].attached
    assert pl.need_mib < both.need_mib
    assert pl.schedule == Schedule.SIMULTANEOUS  # a local attached server's GPU is unknown: contended


def test_a_server_on_gpu_1_is_measured_on_gpu_1(monkeypatch: pytest.MonkeyPatch) -> None:
    """It also holds a little on GPU 0 (facts §7): summed, and its device is the one it mostly uses."""
    fake = FakeNvml([("NVIDIA H200", 143_771, 1_000), ("NVIDIA H200", 143_771, 9_000)],
                    compute=[[proc(ME, 18 * MIB), proc(PARENT, 700 * MIB)], [proc(ME, 800 * MIB)]])
    monkeypatch.setitem(__import__("sys").modules, "pynvml", fake)
    sample = NvmlProbe().sample([ME, PARENT])
    assert sample.per_pid[ME] == 818.0
    assert sample.device_of(ME) == ("NVIDIA H200", 143_771.0, 9_000.0)
    assert sample.device_of(PARENT) == ("NVIDIA H200", 143_771.0, 1_000.0)
    assert [p.main_device for p in sample.processes] == [1, 0]


# -- prompt progress ----------------------------------------------------------------------------------


def test_progress_chunks_are_not_tokens() -> None:
    """The chunk of facts §1, with its bogus tokens:[0]."""
    parser = StreamParser()
    chunk = {"index": 0, "content": "", "tokens": [0], "stop": False, "id_slot": -1, "tokens_predicted": 0,
             "tokens_evaluated": 6802, "prompt_progress": {"total": 6802, "cache": 0, "processed": 2048,
                                                           "time_ms": 2635}}
    assert parser.take(chunk, 0.0) is None
    assert parser.progress == Progress(6802, 0, 2048, 2635.0)
    assert parser.progress.tokens_per_second == pytest.approx(2048 / 2.635)
    assert parser.progress.eta_s == pytest.approx((6802 - 2048) / (2048 / 2.635))
    piece = parser.take({"content": " a", "tokens": [9], "stop": False, "tokens_predicted": 1}, 1.0)
    assert piece is not None and piece.n == 1 and piece.token_id == 9
    assert Progress.parse({"total": "x"}) is None and Progress.parse(None) is None
    assert build_request(Prompt("hi"), Sampling())[1]["return_progress"] is True


def test_progress_line_and_state() -> None:
    e = PromptProgress(5.0, 0, 0, 4.0, 24_576, 12_288, 0, 3072.0, 4.0)
    assert e.line() == "prompt 12,288/24,576 (50%) 3,072 t/s ~4 s left" and e.fraction == 0.5
    assert PromptProgress(3.0, 0, 0, 3.2).line() == "prompt processing… 3 s"
    state = SessionState()
    state.apply(SessionStarted(0.0, "p", "parallel", "", Schedule.SEPARATE, (SideInfo("a", "q8_0", "q8_0", (),
                                                                                        placement="GPU 1"),),
                               "", "", 0.0, "", "", "", ""))
    state.apply(RequestSent(1.0, 0, 0))
    state.apply(e)
    s = state.sides[0]
    assert s.progress_line == e.line() and s.placement == "GPU 1"
    state.apply(TokenReceived(6.0, 0, 0, 1, " a"))
    assert s.progress is None and s.progress_line == ""


def test_doctor_proposes_one_side_per_gpu_with_the_most_free() -> None:
    from kvtui.doctor import propose_placement

    gpus = [GpuDevice(0, "H200", 143_771.0, 100_000.0, 43_771.0, "570"),
            GpuDevice(1, "H200", 143_771.0, 1_000.0, 142_771.0, "570"),
            GpuDevice(2, "H200", 143_771.0, 2_000.0, 141_771.0, "570")]
    (line,) = propose_placement(gpus)
    assert 'gpus = "1" under the first [[sides]] and gpus = "2" under the second' in line
    assert propose_placement(gpus[:1]) == []


# -- long contexts ------------------------------------------------------------------------------------


def test_a_long_prompt_is_recorded_once_and_formatted_once(tmp_path: Path) -> None:
    """The record holds the prompt text once (in [profile]); autosaves do not format it again."""
    from kvtui.core.profiles import load_profile
    from kvtui.core.record.model import Run, SessionRecord, _profile_toml, read_record, write_record
    from kvtui.core.record.model import Side as RecSide

    p = load_profile(Path(__file__).resolve().parents[2] / "profiles" / "long-context.toml")
    text = p.prompt.text
    assert len(text) > 70_000
    rec = SessionRecord(profile=p.to_dict(), sides=[RecSide("q8_0", "q8_0", "q8_0", runs=[
        Run(run=0, stop="length", prompt=p.prompt.name, text=" 1337")])])
    _profile_toml.cache_clear()
    for _ in range(3):
        write_record(tmp_path / "r.toml", rec)
    assert _profile_toml.cache_info().misses == 1 and _profile_toml.cache_info().hits == 2
    raw = (tmp_path / "r.toml").read_text()
    assert raw.count("Locker 1337: ") == 1  # the prompt once, nowhere else
    back = read_record(tmp_path / "r.toml")
    assert back.profile["prompts"][0]["text"] == text and back.sides[0].runs[0].prompt == "lockers"


def test_memory_of_a_server_on_another_machine_is_remote() -> None:
    from kvtui.core.events import ServerReady, ServerStarting
    from kvtui.core.record.recorder import SessionRecorder
    from kvtui.core.server.attached import local_pid

    assert local_pid("http://192.0.2.7:8080") is None  # TEST-NET: never this machine
    from kvtui.core.record.model import Host

    rec = SessionRecorder(None, {}, Host())
    rec.handle(SessionStarted(0.0, "p", "parallel", "", Schedule.SEPARATE,
                              (SideInfo("a", "q8_0", "q8_0", ()),
                               SideInfo("b", "q4_0", "q4_0", (), placement="http://192.0.2.7:8080", attached=True)),
                              "", "", 0.0, "", "", "", ""))
    rec.handle(ServerStarting(0.1, 1, 8080, (), "", attached="http://192.0.2.7:8080"))
    rec.handle(ServerReady(0.2, 1, 0, 0.1, 4096, "b1", None, None, attached=True, model_path="/m/x.gguf"))
    side = rec.record.sides[1]
    assert (side.url, side.cache_types, side.memory_source, side.pid, side.served_model, side.log) == (
        "http://192.0.2.7:8080", "declared", "remote", None, "/m/x.gguf", None)
    assert rec.record.sides[0].cache_types == "set"
