"""How fast can tokens arrive before the app falls behind?

Feeds synthetic token events into the real KvtuiApp (headless, 2 panes) at
rising rates per side and measures, for each rate:
- frame lag: how late a 20 Hz probe timer fires (the event loop's backlog);
  typical = median, worst = 99th percentile;
- whether every token reached the screen by the end (the panes' text, plus what a pane trimmed
  from its top: it keeps the last 400 lines of a long generation, the record keeps everything);
- the app's CPU use (process CPU time / wall time).
The highest rate whose typical lag stays under 50 ms with nothing dropped is
the figure the README quotes.

Usage: python benchmarks/ui_throughput.py [--seconds 4] [--rates 500,1000,2000,5000,10000,20000]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvtui.core.events import (  # noqa: E402
    RequestSent,
    RunFinished,
    ServerReady,
    SessionFinished,
    SessionStarted,
    SideFinished,
    SideInfo,
    TokenReceived,
)
from kvtui.core.record.model import Run  # noqa: E402
from kvtui.ui.app import KvtuiApp  # noqa: E402

WORDS = ("def", " value", " =", " compute", "(", "x", ")", "\n", "    return", " x", " *", " 2", "\n\n", " #", " note")


class SyntheticSession:
    """Emits token events for two sides at ``rate`` tokens/s each for ``seconds``."""

    def __init__(self, rate: float, seconds: float) -> None:
        self.rate, self.seconds = rate, seconds
        self.sinks: list = []
        self.t0 = time.monotonic()
        self.sent = 0
        self.recorder = None  # nothing is recorded
        self.plan = None
        self.memory_source = None

    def finalize(self, status: str) -> None:
        return None

    def kill_now(self) -> None:
        return None

    def now(self) -> float:
        return time.monotonic() - self.t0

    def side_count(self) -> int:
        return 2

    def emit(self, e) -> None:
        for s in self.sinks:
            s(e)

    async def run(self) -> str:
        sides = tuple(SideInfo(n, n, n, ()) for n in ("q8_0", "q4_0"))
        self.emit(SessionStarted(0.0, "bench", "parallel", "synthetic", "simultaneous", sides, "/m", "synthetic",
                                 1.0, "bench", "/bin/true", "bench", "2026-01-01T00:00:00"))
        for i in (0, 1):
            self.emit(ServerReady(self.now(), i, 0, 0.0, 4096, "", 10.0, "enabled"))
            self.emit(RequestSent(self.now(), i, 0))
        total = int(self.rate * self.seconds)
        step = 0.01  # emit in 10 ms batches, as a fast server's chunks bunch up in the socket
        self.t0 = time.monotonic()
        n = 0
        while n < total:
            due = min(total, int(self.now() * self.rate))
            while n < due:
                n += 1
                t = self.now()
                for i in (0, 1):
                    self.emit(TokenReceived(t, i, 0, n, WORDS[n % len(WORDS)], n % len(WORDS)))
            await asyncio.sleep(step)
        self.sent = n
        for i in (0, 1):
            self.emit(RunFinished(self.now(), i, Run(0, "length", prompt_n=10, prompt_per_second=100.0, predicted_n=n,
                                                     predicted_per_second=self.rate, ttft_ms=10.0,
                                                     client_tokens_per_second=self.rate)))
            self.emit(SideFinished(self.now(), i, "done"))
        self.emit(SessionFinished(self.now(), "done"))
        return "done"

    async def rerun(self, side=None) -> str:
        return "done"

    def abort(self, side=None) -> None:
        pass

    async def aclose(self) -> None:
        pass

    def save(self):
        return None


async def measure(rate: float, seconds: float) -> dict:
    session = SyntheticSession(rate, seconds)
    app = KvtuiApp(session)
    lags: list[float] = []
    proc = psutil.Process()
    async with app.run_test(size=(160, 45)) as pilot:
        expected = [time.monotonic()]
        period = 0.05

        def probe() -> None:
            now = time.monotonic()
            lags.append(max(0.0, now - expected[0]))
            expected[0] = now + period

        expected[0] = time.monotonic() + period
        app.set_interval(period, probe)
        cpu0, wall0 = proc.cpu_times(), time.monotonic()
        await app.workers.wait_for_complete()
        # let the last flush land, then check every token is on screen
        await pilot.pause(0.3)
        cpu1, wall1 = proc.cpu_times(), time.monotonic()
        # every token reached its pane: what is shown plus what the pane trimmed from the top (it keeps a tail)
        shown = [len(p.query_one("StreamText").text) + p._trimmed for p in app.panes()]
        expected_chars = sum(len(WORDS[k % len(WORDS)]) for k in range(1, session.sent + 1))
    cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (wall1 - wall0)
    lags_ms = sorted(x * 1000 for x in lags)
    return {
        "rate": rate,
        "tokens": session.sent,
        "complete": all(s == expected_chars for s in shown),
        "lag_typical_ms": statistics.median(lags_ms) if lags_ms else float("nan"),
        "lag_p99_ms": lags_ms[int(len(lags_ms) * 0.99) - 1] if lags_ms else float("nan"),
        "cpu_pct": cpu * 100,
        "wall_s": wall1 - wall0,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rates", default="500,1000,2000,5000,10000,20000")
    args = ap.parse_args()
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    print(f"kvtui UI throughput, {date.today()}, {cpu}, {psutil.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{'tok/s per side':>15} {'tokens':>8} {'all shown':>10} {'lag typ ms':>11} {'lag p99 ms':>11} {'CPU %':>7}")
    best = 0.0
    for rate in (float(r) for r in args.rates.split(",")):
        r = asyncio.run(measure(rate, args.seconds))
        print(f"{r['rate']:>15,.0f} {r['tokens']:>8,} {str(r['complete']):>10} {r['lag_typical_ms']:>11.1f} "
              f"{r['lag_p99_ms']:>11.1f} {r['cpu_pct']:>7.0f}")
        if r["complete"] and r["lag_typical_ms"] < 50:
            best = max(best, rate)
    print(f"highest rate that keeps up (typical lag < 50 ms, nothing dropped): {best:,.0f} tok/s per side")


if __name__ == "__main__":
    main()
