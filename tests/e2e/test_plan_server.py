"""Parallel or sequential, on the real llama-server: what the plan says is what really runs.

Each run is watched from outside with psutil (which llama-server children of
kvtui are alive, every 20 ms) and checked against the record's timestamps.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from kvtui.core.profiles import load_profile
from kvtui.core.record.recorder import read_record
from kvtui.core.run.live import LiveSession
from kvtui.core.run.prepare import prepare
from kvtui.ui.app import KvtuiApp
from kvtui.ui.screens.confirm import ConfirmScreen

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "profiles" / "demo.toml"
pytestmark = pytest.mark.server


def demo_profile(tmp_path: Path, repeats: int = 1, n_predict: int = 64) -> Path:
    """The demo profile with fewer tokens (and maybe repeats), as a file."""
    text = DEMO.read_text()
    assert "repeats = 1" in text and "n_predict = 160" in text
    text = text.replace("repeats = 1", f"repeats = {repeats}").replace("n_predict = 160", f"n_predict = {n_predict}")
    path = tmp_path / "profile.toml"
    path.write_text(text)
    return path


class ServerWatcher:
    """Samples the llama-server processes under a PID: how many were alive at once, and which."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.seen: set[int] = set()
        self.max_alive = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _alive(self) -> list[int]:
        out = []
        try:
            children = self.root.children(recursive=True)
        except psutil.NoSuchProcess:
            return out
        for c in children:
            try:
                # serving processes only, not the `--help` / `--version` probes kvtui runs while planning
                if ("llama-server" in c.name() and "--port" in c.cmdline()
                        and c.status() != psutil.STATUS_ZOMBIE):
                    out.append(c.pid)
            except psutil.NoSuchProcess:
                pass
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            alive = self._alive()
            self.seen.update(alive)
            self.max_alive = max(self.max_alive, len(alive))
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_kvtui(args: list[str], cwd: Path, timeout: float = 300) -> tuple[subprocess.CompletedProcess[str], ServerWatcher]:
    proc = subprocess.Popen([sys.executable, "-m", "kvtui", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=cwd)
    watcher = ServerWatcher(proc.pid)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
        watcher.stop()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), watcher


def test_sequential_servers_really_run_one_at_a_time(tmp_path: Path, server_binary, no_leftover_servers) -> None:
    record = tmp_path / "seq.toml"
    done, watcher = run_kvtui(["run", str(demo_profile(tmp_path)), "--headless", "--mode", "sequential",
                               "--record", str(record), "--server-bin", str(server_binary.path)], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "mode: sequential (asked for sequential); schedule: solo" in done.stdout
    # from outside: two servers, never both alive
    assert len(watcher.seen) == 2 and watcher.max_alive == 1, (watcher.seen, watcher.max_alive)

    data = read_record(record)
    assert (data.mode, data.mode_reason, data.schedule) == ("sequential", "asked for sequential", "solo")
    first, second = data.sides
    assert {first.pid, second.pid} == watcher.seen
    # from the record: side 1's server started after side 0's had exited
    assert first.t_start < first.t_ready < first.runs[0].t_end <= first.t_exit
    assert first.t_exit <= second.t_start < second.t_ready < second.runs[0].t_end <= second.t_exit
    assert all(s.status == "done" and s.exit_code is not None for s in (first, second))


def test_alternate_schedule_measures_one_at_a_time_with_both_loaded(tmp_path: Path, server_binary,
                                                                     no_leftover_servers) -> None:
    record = tmp_path / "alt.toml"
    done, watcher = run_kvtui(["run", str(demo_profile(tmp_path, repeats=2)), "--headless", "--record", str(record),
                               "--server-bin", str(server_binary.path)], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "mode: parallel (both fit: " in done.stdout and "schedule: alternate" in done.stdout
    assert "figures from simultaneous generation" not in done.stdout
    assert len(watcher.seen) == 2 and watcher.max_alive == 2  # both loaded at once

    data = read_record(record)
    assert (data.mode, data.schedule) == ("parallel", "alternate")
    a, b = data.sides
    assert [r.run for r in a.runs] == [0, 1] and [r.run for r in b.runs] == [0, 1]
    runs = sorted(((r.t_sent, r.t_end, side, r.run) for side, s in enumerate((a, b)) for r in s.runs))
    # measured one at a time, the first to go alternating: A B, then B A
    assert [(side, run) for _, _, side, run in runs] == [(0, 0), (1, 0), (1, 1), (0, 1)]
    for (_, end, *_), (start, *_) in zip(runs, runs[1:], strict=False):
        assert end <= start, runs
    # and both servers stayed up from before the first measurement to after the last
    for s in (a, b):
        assert s.t_warm <= runs[0][0] and s.t_exit >= runs[-1][1]
        assert all(r.predicted_n > 0 and r.stop in ("eos", "length") for r in s.runs)


def test_parallel_that_will_not_fit_is_refused_unless_forced(tmp_path: Path, server_binary,
                                                             no_leftover_servers) -> None:
    record = tmp_path / "par.toml"
    args = ["run", str(demo_profile(tmp_path, n_predict=16)), "--headless", "--mode", "parallel",
            "--vram-budget", "100", "--record", str(record), "--server-bin", str(server_binary.path)]
    refused, watcher = run_kvtui(args, tmp_path)
    assert refused.returncode == 2
    (line,) = refused.stderr.splitlines()
    assert line.startswith("kvtui: error: parallel run will not fit: the servers need ~")
    assert "--vram-budget is 100 MiB" in line and "--force" in line
    assert refused.stdout == "" and not watcher.seen and not record.exists()

    forced, watcher = run_kvtui([*args, "--force"], tmp_path)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert watcher.max_alive == 2
    data = read_record(record)
    assert data.mode == "parallel" and data.mode_reason.startswith("asked for parallel (plan says ")


async def test_app_asks_before_a_parallel_run_that_will_not_fit(tmp_path: Path, server_binary,
                                                                 no_leftover_servers) -> None:
    profile = load_profile(demo_profile(tmp_path, n_predict=16))

    def app_for(name: str) -> KvtuiApp:
        prepared = prepare(profile, server_bin=str(server_binary.path), mode="parallel", vram_budget_mib=100,
                           record=str(tmp_path / name))
        return KvtuiApp(LiveSession(prepared))

    app = app_for("no.toml")
    async with app.run_test(size=(150, 42)) as pilot:
        await pilot.pause(0.2)
        assert isinstance(app.screen, ConfirmScreen)
        assert "parallel run will not fit" in app.screen.question
        assert app.session.runner is None and not app.state.sides  # nothing started while it asks
        await pilot.press("n")
    assert app.return_value == 2 and not (tmp_path / "no.toml").exists()  # run_app exits with it

    app = app_for("yes.toml")
    async with app.run_test(size=(150, 42)) as pilot:
        await pilot.pause(0.2)
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while app.state.finished is None:
            assert loop.time() < deadline, "the run did not finish"
            await pilot.pause(0.1)
        await pilot.press("q")
    data = read_record(tmp_path / "yes.toml")
    assert data.mode == "parallel" and [s.status for s in data.sides] == ["done", "done"]


def test_a_rerun_of_one_side_is_solo_and_not_compared_with_contended_runs(tmp_path: Path, server_binary,
                                                                          no_leftover_servers) -> None:
    """The rerun side runs alone (`solo`) while its partner's run was `simultaneous`: each run says how it was
    measured, and the comparison says the speed figures cannot be compared instead of mixing them."""
    from kvtui.core.quality.summary import comparisons

    prepared = prepare(str(demo_profile(tmp_path, n_predict=16)), server_bin=str(server_binary.path),
                       record=str(tmp_path / "r.toml"))
    live = LiveSession(prepared)

    async def run_then_rerun() -> tuple[str, str]:
        return await live.run(), await live.rerun(0)

    assert asyncio.run(run_then_rerun()) == ("done", "done")
    data = read_record(tmp_path / "r.toml")
    assert data.schedule == "simultaneous" and data.status == "done"
    first, second = data.sides
    assert [r.schedule for r in first.runs] == ["simultaneous", "solo"] and [r.run for r in first.runs] == [0, 1]
    assert [r.schedule for r in second.runs] == ["simultaneous"]
    (c,) = comparisons(data)
    assert c.line().endswith("; tg, pp, TTFT not compared: simultaneous vs solo runs"), c.line()
    assert "KV -47%" in c.line()
