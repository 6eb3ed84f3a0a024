"""Tests that need a real NVIDIA GPU: run on the lent H200 machines (see README, "On a GPU"); skipped elsewhere.

The server is ``$KVTUI_LLAMA_SERVER`` (or what kvtui finds), the model ``$KVTUI_TEST_MODEL`` (or the bundled
Gemma 3 270M). Each test starts its own llama-server with every layer offloaded and stops it by PID.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from kvtui.core.logs.provenance import parse_ran_with
from kvtui.core.run.memory import NvmlProbe, make_probe
from kvtui.core.server.locate import bundled_model, find_server
from kvtui.core.server.process import free_port


def _gpu_count() -> tuple[int, str]:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetCount(), ""
    except Exception as exc:  # no driver, no library, no device
        return 0, f"{exc.__class__.__name__}: {exc}"


GPUS, WHY = _gpu_count()
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(GPUS == 0, reason=f"needs an NVIDIA GPU (NVML: {WHY or 'no device'})")]


def _model() -> Path:
    env = os.environ.get("KVTUI_TEST_MODEL")
    return Path(env) if env else bundled_model()


def _start(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    binary = find_server()
    port = free_port()
    log = tmp_path / f"server-{port}.log"
    argv = [str(binary.path), "-m", str(_model()), "-c", "4096", "-np", "1", "-ngl", "99", "-fa", "on",
            "-ctk", "q8_0", "-ctv", "q8_0", "--host", "127.0.0.1", "--port", str(port), "-lv", "4", *extra]
    with open(log, "wb") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=binary.launch_env(),
                                start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc, port, log
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    pytest.fail("llama-server did not become ready in 120 s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def test_every_layer_is_offloaded_and_the_kv_cache_is_on_the_gpu(tmp_path: Path) -> None:
    proc, _, log = _start(tmp_path)
    try:
        text = log.read_text(errors="replace")
    finally:
        _stop(proc)
    ran = parse_ran_with(text)
    assert ran.kv_buffers, text[-3000:]
    assert all(b.device != "CPU" for b in ran.kv_buffers), ran.kv_buffers
    assert ran.layers_offloaded, "the log says how many layers went to the GPU"
    done, total = ran.layers_offloaded.split("/")
    assert done == total, ran.layers_offloaded
    assert ran.flash_attn == "enabled" and ran.graph_splits is not None


@pytest.mark.skipif(shutil.which("nvidia-smi") is None, reason="needs nvidia-smi")
def test_nvml_per_process_memory_matches_nvidia_smi(tmp_path: Path) -> None:
    """kvtui's per-PID VRAM (NVML compute + graphics process lists, summed over GPUs) against nvidia-smi."""
    proc, _, _ = _start(tmp_path)
    try:
        time.sleep(1.0)
        probe = make_probe()
        assert isinstance(probe, NvmlProbe)
        ours = probe.sample([proc.pid]).per_pid[proc.pid]
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, check=True).stdout
        theirs = sum(float(used) for pid, used in (ln.split(",") for ln in out.strip().splitlines())
                     if int(pid) == proc.pid)
    finally:
        _stop(proc)
    assert ours is not None and theirs > 0, out
    assert abs(ours - theirs) <= 2, (ours, theirs)


@pytest.mark.skipif(GPUS < 2, reason="needs two NVIDIA GPUs")
def test_a_server_on_the_second_gpu_is_measured_there(tmp_path: Path) -> None:
    binary = find_server()
    listed = subprocess.run([str(binary.path), "--list-devices"], capture_output=True, text=True,
                            env=binary.launch_env()).stdout
    second = [ln.split(":")[0].strip() for ln in listed.splitlines() if ln.strip().endswith("free)")][1]
    proc, _, _ = _start(tmp_path, "--device", second)
    try:
        time.sleep(1.0)
        sample = make_probe().sample([proc.pid])
    finally:
        _stop(proc)
    assert sample.per_pid[proc.pid] and sample.per_pid[proc.pid] > 100, sample
