"""Memory probes: NVML through a fake ``pynvml`` (this machine has no GPU), RSS through psutil."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from kvtui.core.run.memory import GpuDevice, MemorySample, NvmlProbe, RssProbe, gpu_summary, make_probe

MIB = 2**20
ME = os.getpid()
PARENT = os.getppid()
NOT_A_PID = 4_194_000  # above Linux's pid_max, so never a live process


class FakeNVMLError(Exception):
    """Like pynvml.NVMLError: carries the NVML return code in ``value``."""

    _TEXT: ClassVar[dict[int, str]] = {9: "Driver Not Loaded", 12: "NVML Shared Library Not Found",
                                       999: "Unknown Error"}

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return self._TEXT.get(self.value, f"NVML code {self.value}")


def proc(pid: int, used: int | None) -> SimpleNamespace:
    return SimpleNamespace(pid=pid, usedGpuMemory=used, gpuInstanceId=0, computeInstanceId=0)


class FakeNvml(types.ModuleType):
    """A pynvml stand-in: devices with memory, compute and graphics process lists, injectable failures.

    Args:
        devices: (name, total MiB, used MiB) per device.
        compute: per device, the compute process list.
        graphics: per device, the graphics process list.
        fail: names of functions that raise, optionally "name:device" for one device.
        init_code: when set, nvmlInit raises with this NVML code.
    """

    NVMLError = FakeNVMLError

    def __init__(self, devices: list[tuple[Any, int, int]], compute: list[list[Any]] | None = None,
                 graphics: list[list[Any]] | None = None, fail: set[str] | None = None,
                 init_code: int | None = None) -> None:
        super().__init__("pynvml")
        self.devices = devices
        self.compute = compute or [[] for _ in devices]
        self.graphics = graphics or [[] for _ in devices]
        self.fail = fail or set()
        self.init_code = init_code
        self.calls: list[str] = []

    def _check(self, name: str, index: int | None = None) -> None:
        self.calls.append(name)
        if name in self.fail or (index is not None and f"{name}:{index}" in self.fail):
            raise FakeNVMLError(999)

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        self.calls.append("nvmlInit")
        if self.init_code is not None:
            raise FakeNVMLError(self.init_code)

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.calls.append("nvmlShutdown")

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        self._check("nvmlDeviceGetCount")
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:  # noqa: N802
        self._check("nvmlDeviceGetHandleByIndex")
        return i

    def nvmlDeviceGetName(self, h: int) -> Any:  # noqa: N802
        self._check("nvmlDeviceGetName", h)
        return self.devices[h][0]

    def nvmlSystemGetDriverVersion(self) -> str:  # noqa: N802
        self._check("nvmlSystemGetDriverVersion")
        return "570.86.15"

    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace:  # noqa: N802
        self._check("nvmlDeviceGetMemoryInfo", h)
        _, total, used = self.devices[h]
        return SimpleNamespace(total=total * MIB, used=used * MIB, free=(total - used) * MIB)

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[Any]:  # noqa: N802
        self._check("nvmlDeviceGetComputeRunningProcesses", h)
        return self.compute[h]

    def nvmlDeviceGetGraphicsRunningProcesses(self, h: int) -> list[Any]:  # noqa: N802
        self._check("nvmlDeviceGetGraphicsRunningProcesses", h)
        return self.graphics[h]


H200 = ("NVIDIA H200", 143_771, 1_000)


@pytest.fixture
def install(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Put a fake ``pynvml`` where ``import pynvml`` finds it."""

    def _install(fake: Any) -> Any:
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        return fake

    yield _install


def test_nvml_starts_lazily_and_lists_devices(install: Any) -> None:
    fake = install(FakeNvml([(b"NVIDIA H200", 143_771, 1_000), ("NVIDIA H100", 81_559, 559)]))
    probe = NvmlProbe()
    assert fake.calls == []  # nothing until first use
    devices = probe.devices()
    assert devices == [
        GpuDevice(0, "NVIDIA H200", 143_771.0, 1_000.0, 142_771.0, "570.86.15"),  # bytes names decoded
        GpuDevice(1, "NVIDIA H100", 81_559.0, 559.0, 81_000.0, "570.86.15"),
    ]
    assert probe.available and probe.source == "nvml" and fake.calls.count("nvmlInit") == 1


def test_same_pid_in_compute_and_graphics_is_counted_once(install: Any) -> None:
    fake = install(FakeNvml([H200, H200],
                            compute=[[proc(ME, 300 * MIB), proc(PARENT, 100 * MIB)], [proc(PARENT, 50 * MIB)]],
                            graphics=[[proc(ME, 300 * MIB)], []]))
    sample = NvmlProbe().sample([ME, PARENT])
    assert sample.source == "nvml"
    assert sample.per_pid == {ME: 300.0, PARENT: 150.0}  # merged by PID, summed over devices
    assert {p.pid: p.devices for p in sample.processes} == {ME: (0,), PARENT: (0, 1)}
    assert sample.device_total_mib == 2 * 143_771.0 and sample.device_used_mib == 2_000.0
    assert sample.device_name == "2x NVIDIA H200"
    # one NVML round: memory + both lists per device, nothing else
    round_calls = fake.calls[fake.calls.index("nvmlSystemGetDriverVersion") + 1:]
    assert len(round_calls) == 6


def test_na_memory_is_none_not_zero(install: Any) -> None:
    install(FakeNvml([H200], compute=[[proc(ME, None), proc(PARENT, 2**64 - 1), proc(1, 64 * MIB)]]))
    sample = NvmlProbe().sample([ME, PARENT, 1])
    assert sample.per_pid == {ME: None, PARENT: None, 1: 64.0}
    # a value in one list wins over N/A in the other
    install(FakeNvml([H200], compute=[[proc(ME, None)]], graphics=[[proc(ME, 10 * MIB)]]))
    assert NvmlProbe().sample([ME]).per_pid == {ME: 10.0}


def test_unlisted_pid_holds_zero_unless_nvml_cannot_tell(install: Any) -> None:
    install(FakeNvml([H200], compute=[[proc(1, 10 * MIB)]]))
    sample = NvmlProbe().sample([ME])
    assert sample.per_pid == {ME: 0.0}  # every list read, every listed PID visible: really no GPU memory
    assert sample.device_name == "NVIDIA H200" and sample.device_total_mib == 143_771.0  # device 0
    # NVML lists a PID this namespace cannot see (a container): ours may be that one under another number
    install(FakeNvml([H200], compute=[[proc(NOT_A_PID, 10 * MIB)]]))
    assert NvmlProbe().sample([ME]).per_pid == {ME: None}
    # a process that is gone is N/A, as with RSS
    install(FakeNvml([H200], compute=[[proc(1, 10 * MIB)]]))
    assert NvmlProbe().sample([NOT_A_PID]).per_pid == {NOT_A_PID: None}


@pytest.mark.parametrize(("code", "text"), [(12, "no NVIDIA GPU"), (9, "no NVIDIA GPU"),
                                            (999, "NVML error: Unknown Error")])
def test_init_failure_degrades_and_falls_back(install: Any, code: int, text: str) -> None:
    install(FakeNvml([H200], init_code=code))
    probe = NvmlProbe()
    assert not probe.available and probe.error == text
    assert probe.devices() == []
    assert probe.sample([ME]) == MemorySample("nvml", {ME: None})
    assert isinstance(make_probe(), RssProbe)
    assert gpu_summary() == text


def test_no_devices_and_no_pynvml(install: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = install(FakeNvml([]))
    assert gpu_summary() == "no NVIDIA GPU" and "nvmlShutdown" in fake.calls
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` now raises ImportError
    probe = NvmlProbe()
    assert not probe.available and "nvidia-ml-py" in (probe.error or "")


def test_failing_calls_give_na_never_raise(install: Any) -> None:
    fake = install(FakeNvml([H200, H200], compute=[[proc(ME, 300 * MIB)], [proc(PARENT, 5 * MIB)]],
                            fail={"nvmlDeviceGetGraphicsRunningProcesses:0", "nvmlDeviceGetMemoryInfo:0",
                                  "nvmlDeviceGetName:1", "nvmlSystemGetDriverVersion"}))
    probe = NvmlProbe()
    sample = probe.sample([ME, PARENT, 1])
    assert sample.per_pid == {ME: 300.0, PARENT: 5.0, 1: None}  # 1: a list failed, so can't tell
    assert sample.device_total_mib is None and sample.device_used_mib is None  # device 0 unreadable
    assert sample.device_name == "NVIDIA H200 + GPU 1"
    devices = probe.devices()
    assert devices[0].total_mib is None and devices[1].total_mib == 143_771.0 and devices[0].driver is None
    fake.fail = {"nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses",
                 "nvmlDeviceGetMemoryInfo"}
    assert probe.sample([ME]).per_pid == {ME: None}


def test_count_failure_after_init(install: Any) -> None:
    fake = install(FakeNvml([H200], fail={"nvmlDeviceGetCount"}))
    probe = NvmlProbe()
    assert not probe.available and probe.error == "NVML error: Unknown Error"
    assert "nvmlShutdown" in fake.calls


def test_close_shuts_down_and_restarts_lazily(install: Any) -> None:
    fake = install(FakeNvml([H200]))
    probe = NvmlProbe()
    assert probe.available
    probe.close()
    assert fake.calls[-1] == "nvmlShutdown"
    assert probe.devices()[0].name == "NVIDIA H200"
    assert fake.calls.count("nvmlInit") == 2


def test_make_probe_and_summary_with_a_gpu(install: Any) -> None:
    install(FakeNvml([H200]))
    probe = make_probe()
    assert isinstance(probe, NvmlProbe) and probe.source == "nvml"
    assert isinstance(make_probe("rss"), RssProbe)
    summary = gpu_summary()
    assert isinstance(summary, list) and summary[0].name == "NVIDIA H200"


def test_rss_of_this_process_and_of_a_dead_one() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the PID no longer exists
    probe = RssProbe()
    sample = probe.sample([ME, child.pid, ME])
    assert sample.source == "rss" and probe.source == "rss" and probe.available
    assert list(sample.per_pid) == [ME, child.pid]
    assert (sample.per_pid[ME] or 0) > 10  # a Python process with pytest loaded
    assert sample.per_pid[child.pid] is None
    assert sample.device_name is None and (sample.device_total_mib or 0) > (sample.device_used_mib or 0) > 0
    assert probe.devices() == []


def test_rss_excludes_children() -> None:
    import psutil

    sample = RssProbe().sample([ME])
    own = psutil.Process(ME).memory_info().rss / MIB
    assert sample.per_pid[ME] == pytest.approx(own, rel=0.2)
