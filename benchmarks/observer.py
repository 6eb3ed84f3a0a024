"""Does watching a run slow it down? The same profile under the app, headless, and a bare client.

On a CPU, kvtui shares cores with the llama-servers it measures: every bit of CPU the app spends on frames is
taken from the servers, and lowers the very tg it reports. This runs profiles/demo.toml (with ``n_predict``
raised, from a temporary copy) three ways, interleaved and paired (each round runs every mode once, in a
rotating order, so slow drift of a shared machine hits all modes alike):

- **app**: ``kvtui run`` in a pseudo-terminal of COLSxROWS, as a person would run it; ``q`` once it is done;
- **headless**: ``kvtui run --headless`` with its output to a pipe;
- **bare**: the same two llama-servers (the argv kvtui's plan gives them), one warm-up request each, then both
  measured requests streamed at once by a minimal httpx client that only counts the stream.

For each run it reports the CPU of the measuring process (kvtui, or the bare client) while both sides
generate (its CPU seconds between the later request and the earlier end, over that wall time, in % of one
core), and each server's own tg (``predicted_per_second``). At the end: medians per mode, and the paired
change of each server's tg against the bare client in the same round.

With ``--ui-only 10,30,50`` it measures instead what the app itself costs, with no servers to disturb the
figure: a real recorded session, paced to a steady rate per side, replayed in the app (in a pseudo-terminal)
and headless (which draws nothing), alternated; the difference is the price of drawing.

Usage: python benchmarks/observer.py [--rounds 3] [--n-predict 600] [--size 160x45] [--out DIR]
       python benchmarks/observer.py --ui-only 10,30,50 [--rounds 3] [--size 160x45] [--sides 3]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import pty
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kvtui.core.record.recorder import read_record  # noqa: E402

PYTHON = sys.executable
MODES = ("app", "headless", "bare")


class CpuTrace:
    """Samples a process's CPU seconds (and its children's, optionally) four times a second in a thread."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.samples: list[tuple[float, float]] = []  # (time.time(), CPU seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                t = self.proc.cpu_times()
            except psutil.Error:
                return
            self.samples.append((time.time(), t.user + t.system))
            self._stop.wait(0.25)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def share(self, start: float, end: float) -> float | None:
        """CPU in % of one core between two wall-clock times (linear between samples)."""
        if end <= start or len(self.samples) < 2:
            return None

        def at(t: float) -> float | None:
            for (t0, c0), (t1, c1) in zip(self.samples, self.samples[1:], strict=False):
                if t0 <= t <= t1:
                    return c0 + (c1 - c0) * ((t - t0) / (t1 - t0) if t1 > t0 else 0)
            return None

        a, b = at(start), at(end)
        return None if a is None or b is None else (b - a) / (end - start) * 100


def make_profile(n_predict: int, folder: Path) -> Path:
    """profiles/demo.toml with ``n_predict`` raised and no scoring."""
    text = (REPO / "profiles" / "demo.toml").read_text()
    text, count = re.subn(r"(?m)^n_predict = \d+", f"n_predict = {n_predict}", text)
    assert count == 1, "profiles/demo.toml has no n_predict line"
    # generation only: the scoring that follows it is outside the measured window, and would only make runs longer
    text, count = re.subn(r"(?m)^score_positions = \d+", "score = false", text)
    assert count == 1, "profiles/demo.toml has no score_positions line"
    path = folder / "observer.toml"
    path.write_text(text)
    return path


def window(record: Any, server_starts: list[float]) -> tuple[float, float, list[float | None]]:
    """Wall-clock window when every side generated, and each side's tg, from a record.

    The record's times are seconds since the session began; a server's create time (wall clock) minus its
    ``t_start`` gives that beginning.
    """
    sides = record.sides
    t0 = statistics.median(ws - s.t_start for ws, s in zip(server_starts, sides, strict=True))
    runs = [s.runs[0] for s in sides]
    start = max(r.t_sent + r.ttft_ms / 1000 for r in runs)
    end = min(r.t_end for r in runs)
    return t0 + start, t0 + end, [r.predicted_per_second for r in runs]


def find_servers(parent: psutil.Process, count: int, timeout: float = 60) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [c for c in parent.children(recursive=True) if "llama-server" in c.name()]
        if len(found) >= count:
            return sorted(found, key=lambda p: p.create_time())
        time.sleep(0.05)
    raise RuntimeError("the llama-servers did not start")


def in_terminal(argv: list[str], size: tuple[int, int]) -> tuple[int, int]:
    """Start ``python -m kvtui ARGV`` in a pseudo-terminal of COLSxROWS whose output is read (and dropped) as a
    terminal would; returns (pid, terminal fd)."""
    cols, rows = size
    pid, fd = pty.fork()
    if pid == 0:  # the child: the app in a terminal of the given size
        os.environ["TERM"] = "xterm-256color"
        os.chdir(REPO)
        os.execv(PYTHON, [PYTHON, "-m", "kvtui", *argv])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def drain() -> None:  # a terminal reads what the app writes; so must we, or the app blocks
        while True:
            try:
                if not os.read(fd, 65536):
                    return
            except OSError:
                return

    threading.Thread(target=drain, daemon=True).start()
    return pid, fd


def run_app(profile: Path, record: Path, size: tuple[int, int]) -> dict:
    """kvtui run in a pseudo-terminal; q once the record says the session is over."""
    pid, fd = in_terminal(["run", str(profile), "--record", str(record)], size)
    trace = CpuTrace(pid)
    servers = find_servers(psutil.Process(pid), 2)
    starts = [p.create_time() for p in servers]
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            if read_record(record).status != "running":
                break
        except Exception:  # not written yet, or mid-rename
            continue
    time.sleep(1.0)
    os.write(fd, b"q")
    os.waitpid(pid, 0)
    trace.stop()
    return measure(trace, record, starts)


def run_headless(profile: Path, record: Path) -> dict:
    proc = subprocess.Popen([PYTHON, "-m", "kvtui", "run", str(profile), "--headless", "--record", str(record)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO)
    trace = CpuTrace(proc.pid)
    servers = find_servers(psutil.Process(proc.pid), 2)
    starts = [p.create_time() for p in servers]
    proc.communicate(timeout=900)
    trace.stop()
    return measure(trace, record, starts)


def measure(trace: CpuTrace, record: Path, starts: list[float]) -> dict:
    data = read_record(record)
    start, end, tg = window(data, starts)
    return {"cpu_pct": trace.share(start, end), "tg": tg, "window_s": end - start}


BARE = r'''
import asyncio, json, sys, time, httpx
ports, path, body, warm = json.loads(sys.argv[1])
async def stream(http, port, body):
    sent = time.time(); first = None; timings = {}
    async with http.stream("POST", f"http://127.0.0.1:{port}{path}", json=body, timeout=None) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line[6:].strip() != "[DONE]":
                if first is None: first = time.time()
                d = json.loads(line[6:]); timings = d.get("timings") or timings
    return {"sent": sent, "first": first, "end": time.time(), "tg": timings.get("predicted_per_second")}
async def main():
    async with httpx.AsyncClient() as http:
        for port in ports:
            while True:
                try:
                    if (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200: break
                except httpx.HTTPError: pass
                await asyncio.sleep(0.1)
        for port in ports:
            await stream(http, port, warm)
        out = await asyncio.gather(*(stream(http, port, body) for port in ports))
    print(json.dumps(out))
asyncio.run(main())
'''


def run_bare(profile_path: Path, folder: Path) -> dict:
    """The same servers and requests, streamed by a minimal client (no kvtui in the loop)."""
    from kvtui.core.profiles import load_profile
    from kvtui.core.run.prepare import prepare
    from kvtui.core.server.client import build_request
    from kvtui.core.server.process import free_port

    profile = load_profile(profile_path)
    plan = prepare(profile, no_record=True).plan
    ports = [free_port() for _ in plan.sides]
    logs = [open(folder / f"bare-side{i}.log", "wb") for i in range(len(plan.sides))]  # noqa: SIM115
    servers = [subprocess.Popen([str(plan.binary.path), *side.args, "--port", str(port)], stdout=log,
                                stderr=subprocess.STDOUT, env=plan.binary.launch_env())  # its libraries too
               for side, port, log in zip(plan.sides, ports, logs, strict=True)]
    try:
        path, body = build_request(profile.prompt, profile.sampling, cache_prompt=False)
        _, warm = build_request(profile.prompt, profile.sampling, n_predict=8, cache_prompt=False)
        client = subprocess.Popen([PYTHON, "-c", BARE, json.dumps([ports, path, body, warm])],
                                  stdout=subprocess.PIPE)
        trace = CpuTrace(client.pid)
        out, _ = client.communicate(timeout=900)
        trace.stop()
    finally:
        for s in servers:
            s.terminate()
        for s in servers:
            s.wait(10)
        for log in logs:
            log.close()
    runs = json.loads(out)
    start, end = max(r["first"] for r in runs), min(r["end"] for r in runs)
    return {"cpu_pct": trace.share(start, end), "tg": [r["tg"] for r in runs], "window_s": end - start}


def paced_record(rate: float, tokens: int, folder: Path, n_sides: int = 2) -> tuple[Path, float, float]:
    """A real recorded demo session (tests/data/sessions/demo.toml) stretched to ``tokens`` pieces per side
    arriving at ``rate`` a second: its text repeated, token ids made distinct (no loop); ``n_sides`` panes (its
    two sides repeated under new names). Returns the record and the span (record seconds) in which all sides
    stream."""
    from dataclasses import replace

    from kvtui.core.record.recorder import write_record

    record = read_record(REPO / "tests" / "data" / "sessions" / "demo.toml")
    sides = []
    for side in record.sides:
        run = side.runs[0]
        pieces = (list(run.pieces) * (tokens // len(run.pieces) + 1))[:tokens]
        t_ms = [round(1000 * (0.5 + k / rate), 1) for k in range(tokens)]
        t_end = (run.t_sent or 0.0) + t_ms[-1] / 1000 + 0.01
        run = replace(run, pieces=tuple(pieces), ids=tuple(100_000 + k for k in range(tokens)), t_ms=tuple(t_ms),
                      counts=tuple(range(1, tokens + 1)), text="".join(pieces), predicted_n=tokens, loop=None,
                      t_end=t_end)
        t0 = side.memory_t[0]
        memory_t = [t0 + k for k in range(int(t_end - t0))]
        sides.append(replace(side, runs=[run], memory_t=type(side.memory_t)(memory_t),
                             memory_mib=type(side.memory_mib)([side.memory_mib[0]] * len(memory_t))))
    two = sides
    sides = [replace(two[k % 2], name=two[k % 2].name + (f" #{k // 2 + 1}" if k >= 2 else "")) for k in range(n_sides)]
    runs = [s.runs[0] for s in sides]
    record = replace(record, sides=sides, duration_s=max(r.t_end or 0.0 for r in runs) + 0.5, comparisons=[],
                     verdicts=[])
    path = folder / f"paced-{rate:g}-{n_sides}.toml"
    write_record(path, record)
    return path, max(r.t_sent or 0.0 for r in runs) + 0.5, min(r.t_end or 0.0 for r in runs)


def replay_cpu(record: Path, span: tuple[float, float], size: tuple[int, int] | None) -> float:
    """CPU (% of one core) of ``kvtui replay`` (in a terminal, or headless when size is None) while both
    sides stream; the measurement starts 5 s in (after start-up) and stops 1 s before the streams end."""
    started = time.time()
    if size is None:
        proc = subprocess.Popen([PYTHON, "-m", "kvtui", "replay", str(record), "--headless"], cwd=REPO,
                                stdout=subprocess.DEVNULL)
        pid, fd = proc.pid, None
    else:
        pid, fd = in_terminal(["replay", str(record)], size)
    trace = CpuTrace(pid)
    start, end = started + max(span[0], 5.0), started + span[1] - 1.0
    time.sleep(max(0.0, end - time.time()) + 0.5)
    share = trace.share(start, end)
    trace.stop()
    if fd is None:
        proc.kill()
        proc.wait()
    else:
        os.write(fd, b"q")
        os.waitpid(pid, 0)
    return share if share is not None else float("nan")


def ui_only(rates: list[float], rounds: int, size: tuple[int, int], folder: Path, n_sides: int = 2) -> None:
    """The app's own cost, without servers in the way: a paced replay in a terminal against the same replay
    headless (which draws nothing), alternated."""
    print(f"\nthe app's own cost: a recorded session replayed at a steady rate, {n_sides} panes in a "
          f"{size[0]}x{size[1]} terminal and headless")
    print(f"{'tok/s per side':>15} {'app CPU %':>10} {'headless CPU %':>15} {'the app draws':>14}")
    for rate in rates:
        record, *span = paced_record(rate, int(rate * 30) + 20, folder, n_sides)
        app, headless = [], []
        for _ in range(rounds):
            app.append(replay_cpu(record, tuple(span), size))  # type: ignore[arg-type]
            headless.append(replay_cpu(record, tuple(span), None))  # type: ignore[arg-type]
        a, h = statistics.median(app), statistics.median(headless)
        print(f"{rate:>15,.0f} {a:>10.1f} {h:>15.1f} {a - h:>13.1f}%   (app runs: "
              f"{', '.join(f'{x:.1f}' for x in app)})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n-predict", type=int, default=600)
    ap.add_argument("--size", default="160x45", help="the app's terminal, COLSxROWS")
    ap.add_argument("--out", default="", help="keep records and results here (default: a temporary folder)")
    ap.add_argument("--ui-only", default="", metavar="RATES",
                    help="instead: the app's own cost at these tok/s per side (e.g. 10,30,50), on paced replays")
    ap.add_argument("--sides", type=int, default=2, help="with --ui-only: panes in the replay (default 2)")
    args = ap.parse_args()
    size = tuple(int(x) for x in args.size.split("x"))
    folder = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="kvtui-observer-"))
    folder.mkdir(parents=True, exist_ok=True)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    print(f"kvtui observer effect, {date.today()}, {cpu}, {psutil.cpu_count()} cores; "
          f"load {os.getloadavg()[0]:.1f}")
    if args.ui_only:
        ui_only([float(r) for r in args.ui_only.split(",")], args.rounds, size, folder,  # type: ignore[arg-type]
                args.sides)
        return
    profile = make_profile(args.n_predict, folder)
    print(f"demo profile, n_predict={args.n_predict}, the app in a {args.size} terminal")
    results: list[dict] = []
    for k in range(args.rounds):
        order = MODES[k % 3:] + MODES[:k % 3]
        for mode in order:
            record = folder / f"r{k}-{mode}.toml"
            if mode == "app":
                r = run_app(profile, record, size)  # type: ignore[arg-type]
            elif mode == "headless":
                r = run_headless(profile, record)
            else:
                r = run_bare(profile, folder)
            r.update(round=k, mode=mode, load=os.getloadavg()[0])
            results.append(r)
            tg = " ".join(f"{x:.2f}" if x else "?" for x in r["tg"])
            print(f"round {k + 1} {mode:>8}: CPU {r['cpu_pct']:.1f}% of a core over {r['window_s']:.0f} s; "
                  f"tg {tg}", flush=True)
    (folder / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\n{'mode':>8} {'CPU % (median)':>15} {'tg per server (median)':>24} {'tg vs bare (paired median)':>28}")
    for mode in MODES:
        rs = [r for r in results if r["mode"] == mode]
        cpu_m = statistics.median(r["cpu_pct"] for r in rs if r["cpu_pct"] is not None)
        tgs = [statistics.median(r["tg"][i] for r in rs) for i in range(len(rs[0]["tg"]))]
        changes = []
        for i in range(len(tgs)):
            for r in rs:
                bare = next(b for b in results if b["mode"] == "bare" and b["round"] == r["round"])
                changes.append((r["tg"][i] - bare["tg"][i]) / bare["tg"][i] * 100)
        paired = "" if mode == "bare" else f"{statistics.median(changes):+.1f}%"
        print(f"{mode:>8} {cpu_m:>15.1f} {' / '.join(f'{t:.2f}' for t in tgs):>24} {paired:>28}")
    print(f"records and results.json in {folder}")


if __name__ == "__main__":
    main()
