"""Memory probes: per-process GPU memory through NVML (nvidia-ml-py), or RSS through psutil.

NVML is initialised lazily, on first use, and nothing here raises to callers:
a failed start leaves the probe unavailable (``error`` says why) and a failed
call gives N/A values. As nvitop does, a process's GPU memory comes from both
the compute and the graphics process lists, merged by PID (a process in both
is counted once), summed over devices; N/A (``None``: NVML cannot tell, e.g.
under WDDM or when the PID belongs to another PID namespace) is kept apart
from 0 (the process holds no GPU memory).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import psutil

MIB = 2**20
_NA_ULL = 2**64 - 1  # NVML_VALUE_NOT_AVAILABLE as an unsigned long long, should pynvml pass it through
_NO_GPU_CODES = (9, 12)  # NVML_ERROR_DRIVER_NOT_LOADED, NVML_ERROR_LIBRARY_NOT_FOUND
_LISTS = ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class GpuDevice:
    """One GPU as NVML reports it; memory figures are None where a call failed."""

    index: int
    name: str
    total_mib: float | None
    used_mib: float | None
    free_mib: float | None
    driver: str | None


@dataclass(frozen=True, slots=True)
class ProcessMemory:
    """One process's GPU memory summed over the devices it is on (None = N/A)."""

    pid: int
    used_mib: float | None
    devices: tuple[int, ...] = ()
    device_mib: tuple[float | None, ...] = ()  # on each of ``devices``, in the same order

    @property
    def main_device(self) -> int | None:
        """The device it holds the most memory on (a server on GPU 1 also holds a little on GPU 0)."""
        known = [(m, d) for d, m in zip(self.devices, self.device_mib, strict=False) if m is not None]
        return max(known)[1] if known else (self.devices[0] if self.devices else None)


@dataclass(frozen=True, slots=True)
class MemorySample:
    """One reading: memory per PID in MiB (None = N/A) and the device totals.

    For ``nvml`` the totals are those of the device(s) the processes are on
    (device 0 when none is); for ``rss`` they are the machine's RAM and
    ``device_name`` is None.
    """

    source: Literal["nvml", "rss"]
    per_pid: dict[int, float | None]
    device_total_mib: float | None = None
    device_used_mib: float | None = None
    device_name: str | None = None
    processes: tuple[ProcessMemory, ...] = field(default=())
    devices: tuple[tuple[int, str, float | None, float | None], ...] = ()  # (index, name, total, used) each GPU

    def device_of(self, pid: int) -> tuple[str, float | None, float | None] | None:
        """(name, total, used) of the GPU this process is mainly on, or None where it is on none."""
        proc = next((p for p in self.processes if p.pid == pid), None)
        main = proc.main_device if proc is not None else None
        for index, name, total, used in self.devices:
            if index == main:
                return name, total, used
        return None


class MemoryProbe(Protocol):
    """What the runner, the planner and ``kvtui doctor`` use (tests pass fakes of this)."""

    source: Literal["nvml", "rss"]

    @property
    def available(self) -> bool: ...

    def devices(self) -> list[GpuDevice]: ...

    def sample(self, pids: Iterable[int]) -> MemorySample: ...

    def close(self) -> None: ...


class NvmlProbe:
    """GPU memory through NVML, started on first use.

    Args:
        nvml: the ``pynvml`` module to use; None imports it when first needed (tests inject fakes).
    """

    source: Literal["nvml"] = "nvml"

    def __init__(self, nvml: Any | None = None) -> None:
        self._nv = nvml
        self._lock = threading.Lock()
        self._state: Literal["new", "ready", "failed"] = "new"
        self._handles: list[Any] = []
        self._names: list[str] = []
        self._driver: str | None = None
        self.error: str | None = None  # why NVML is unavailable, once a start failed

    @property
    def available(self) -> bool:
        """True once NVML started and sees at least one GPU (starts it on first use)."""
        return self._start()

    def _start(self) -> bool:
        with self._lock:
            if self._state == "new":
                self._state, self.error = self._try_start()
            return self._state == "ready"

    def _try_start(self) -> tuple[Literal["ready", "failed"], str | None]:
        try:
            nv = self._nv if self._nv is not None else importlib.import_module("pynvml")
            self._nv = nv
            nv.nvmlInit()
        except ImportError:
            return "failed", "nvidia-ml-py (pynvml) is not installed"
        except Exception as exc:  # NVMLError when there is no driver or library, or anything odd
            return "failed", _nvml_error_text(exc)
        try:
            handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(int(nv.nvmlDeviceGetCount()))]
        except Exception as exc:
            _quiet(nv.nvmlShutdown)
            return "failed", _nvml_error_text(exc)
        if not handles:
            _quiet(nv.nvmlShutdown)
            return "failed", "no NVIDIA GPU"
        self._handles = handles
        self._names = [_quiet(lambda h=h: _text(nv.nvmlDeviceGetName(h))) or f"GPU {i}"
                       for i, h in enumerate(handles)]
        self._driver = _quiet(lambda: _text(nv.nvmlSystemGetDriverVersion()))
        return "ready", None

    def devices(self) -> list[GpuDevice]:
        """Every GPU with its memory now.

        Returns:
            The devices; empty when NVML is unavailable.
        """
        if not self._start():
            return []
        out = []
        for i, h in enumerate(self._handles):
            mem = _quiet(lambda h=h: self._nv.nvmlDeviceGetMemoryInfo(h))
            out.append(GpuDevice(i, self._names[i], _mib(getattr(mem, "total", None)),
                                 _mib(getattr(mem, "used", None)), _mib(getattr(mem, "free", None)), self._driver))
        return out

    def sample(self, pids: Iterable[int]) -> MemorySample:
        """Read the GPU memory of these processes and of the devices they are on, in one NVML round.

        Args:
            pids: the processes (llama-server PIDs).

        Returns:
            The sample; a PID's value is None where NVML cannot tell, 0.0 where it holds no GPU memory.
        """
        wanted = list(dict.fromkeys(int(p) for p in pids))
        if not self._start():
            return MemorySample("nvml", {p: None for p in wanted})
        nv = self._nv
        found: dict[int, dict[int, int | None]] = {}  # pid -> device -> bytes (None = N/A)
        listed: set[int] = set()
        blind = False  # some process list could not be read
        device_mem = []
        for i, h in enumerate(self._handles):
            device_mem.append(_quiet(lambda h=h: nv.nvmlDeviceGetMemoryInfo(h)))
            for name in _LISTS:
                fn = getattr(nv, name, None)
                procs = _quiet(lambda fn=fn, h=h: list(fn(h))) if fn is not None else None
                if procs is None:
                    blind = True
                    continue
                for proc in procs:
                    pid = int(proc.pid)
                    listed.add(pid)
                    used = _bytes(getattr(proc, "usedGpuMemory", None))
                    on_device = found.setdefault(pid, {})
                    # the same process in both lists reports the same memory: keep one, never add
                    on_device[i] = _larger(on_device[i], used) if i in on_device else used

        missing_means_zero = not blind and all(psutil.pid_exists(p) for p in listed if p not in wanted)
        per_pid: dict[int, float | None] = {}
        processes = []
        for pid in wanted:
            on_device = found.get(pid)
            if on_device:
                values = list(on_device.values())
                used_mib = None if any(v is None for v in values) else sum(v for v in values if v) / MIB
                order = sorted(on_device)
                processes.append(ProcessMemory(pid, used_mib, tuple(order),
                                               tuple(_mib(on_device[d]) for d in order)))
            else:
                # not listed: no GPU memory, unless a list failed or NVML shows PIDs we cannot see
                # (another PID namespace, as in containers), when it can't be told
                used_mib = 0.0 if missing_means_zero and psutil.pid_exists(pid) else None
            per_pid[pid] = used_mib

        on = sorted({d for p in processes for d in p.devices}) or [0]
        mems = [device_mem[d] for d in on]
        total = used = None
        if all(m is not None for m in mems):
            total = sum(_mib(m.total) or 0.0 for m in mems)
            used = sum(_mib(m.used) or 0.0 for m in mems)
        per_device = tuple((d, self._names[d], _mib(m.total) if m is not None else None,
                            _mib(m.used) if m is not None else None) for d, m in enumerate(device_mem))
        return MemorySample("nvml", per_pid, total, used, _label([self._names[d] for d in on]), tuple(processes),
                            per_device)

    def close(self) -> None:
        """Shut NVML down; a later call starts it again."""
        with self._lock:
            if self._state == "ready":
                _quiet(self._nv.nvmlShutdown)
            self._state = "new"
            self._handles, self._names = [], []


class RssProbe:
    """Resident memory (RSS) of each process through psutil, for CPU-only machines."""

    source: Literal["rss"] = "rss"
    error: str | None = None

    @property
    def available(self) -> bool:
        return True

    def devices(self) -> list[GpuDevice]:
        """No GPUs: RSS is host memory.

        Returns:
            An empty list.
        """
        return []

    def sample(self, pids: Iterable[int]) -> MemorySample:
        """Read each process's RSS (its own, children not included) and the machine's RAM.

        Args:
            pids: the processes.

        Returns:
            The sample; None for a process that is gone or cannot be read.
        """
        per_pid = {pid: _rss_mib(pid) for pid in dict.fromkeys(int(p) for p in pids)}
        vm = _quiet(psutil.virtual_memory)
        if vm is None:
            return MemorySample("rss", per_pid)
        return MemorySample("rss", per_pid, vm.total / MIB, (vm.total - vm.available) / MIB, None)

    def close(self) -> None:
        """Nothing to release."""


def make_probe(prefer: Literal["auto", "nvml", "rss"] = "auto") -> NvmlProbe | RssProbe:
    """Choose NVML when an NVIDIA GPU answers, else RSS.

    Args:
        prefer: ``rss`` skips NVML; ``auto`` and ``nvml`` try it first and fall back to RSS.

    Returns:
        A probe whose ``source`` says which it is.
    """
    if prefer != "rss":
        probe = NvmlProbe()
        if probe.available:
            return probe
    return RssProbe()


def probe_devices(probe: MemoryProbe | None) -> list[GpuDevice]:
    """A probe's GPUs, or [] when there is no probe, no GPU, or the probe fails (a plan must still be made)."""
    if probe is None or not probe.available:
        return []
    return _quiet(probe.devices) or []


def gpu_summary() -> list[GpuDevice] | str:
    """What ``kvtui doctor`` prints about GPUs.

    Returns:
        The devices, or a line saying why there are none ("no NVIDIA GPU", or NVML's error).
    """
    probe = NvmlProbe()
    try:
        if not probe.available:
            return probe.error or "no NVIDIA GPU"
        return probe.devices()
    finally:
        probe.close()


# -- helpers --------------------------------------------------------------------------------------


def _quiet(fn: Callable[[], _T]) -> _T | None:
    """Call ``fn``; any error (NVMLError, psutil's, a fake's) becomes None."""
    try:
        return fn()
    except Exception:
        return None


def _nvml_error_text(exc: Exception) -> str:
    if getattr(exc, "value", None) in _NO_GPU_CODES:
        return "no NVIDIA GPU"
    return f"NVML error: {exc}"


def _text(value: Any) -> str:
    """Older pynvml returns bytes, newer str."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _bytes(value: Any) -> int | None:
    if not isinstance(value, int) or value < 0 or value == _NA_ULL:
        return None
    return value


def _larger(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


def _mib(value: Any) -> float | None:
    return value / MIB if isinstance(value, int | float) else None


def _label(names: list[str]) -> str:
    """``NVIDIA H200`` for one device, ``2x NVIDIA H200`` or ``A + B`` for several."""
    unique = list(dict.fromkeys(names))
    if len(names) == 1:
        return names[0]
    if len(unique) == 1:
        return f"{len(names)}x {unique[0]}"
    return " + ".join(names)


def _rss_mib(pid: int) -> float | None:
    try:
        return psutil.Process(pid).memory_info().rss / MIB
    except (psutil.Error, ValueError, OSError):  # gone, a zombie, not ours to read, or a bad PID
        return None

