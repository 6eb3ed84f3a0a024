"""Measurement fidelity: does kvtui measure what the server measures, and what does kvtui itself cost?

1. Rate fidelity: kvtui's client-side tokens/s against the server's own
   ``predicted_per_second`` over many runs (target: median ratio within 2% of 1.0).
2. Start-up overhead: kvtui in-process (plan + two servers + first token) against a bare
   start of the same two llama-servers, both requests sent once both answer /health (kvtui's
   protocol), timed to the first token.
   The two kinds alternate (bare, kvtui, kvtui, bare, ...) so that drift on a shared
   machine hits both alike; the figure is the median of the paired differences, with
   their spread. A fresh interpreter's imports are measured apart and added, labelled
   (target: overhead <= 0.5 s).

Usage: python benchmarks/fidelity.py [--runs 8] [--starts 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kvtui.core.events import TokenReceived  # noqa: E402
from kvtui.core.profiles import load_profile  # noqa: E402
from kvtui.core.run.live import LiveSession  # noqa: E402
from kvtui.core.run.prepare import prepare  # noqa: E402
from kvtui.core.server.locate import find_server  # noqa: E402
from kvtui.core.server.process import free_port  # noqa: E402


def demo_profile(**run_changes):
    p = load_profile(REPO / "profiles" / "demo.toml")
    return replace(p, run=replace(p.run, **run_changes), sampling=replace(p.sampling, n_predict=96))


def rate_fidelity(runs: int) -> list[float]:
    prof = demo_profile(repeats=runs, schedule="alternate")
    prepared = prepare(prof, no_record=True)
    asyncio.run(LiveSession(prepared).run())
    ratios = []
    for side in prepared.recorder.record.sides:
        for r in side.runs:
            if r.predicted_per_second and r.client_tokens_per_second:
                ratios.append(r.client_tokens_per_second / r.predicted_per_second)
    return ratios


async def bare_start() -> float:
    """Two llama-servers started by hand with exactly kvtui's arguments, both requests sent once both answer
    /health (as kvtui does); seconds to the first token of either."""
    plan = prepare(demo_profile(warmup=False), no_record=True).plan
    binary = find_server()
    t0 = time.monotonic()
    procs, ports = [], []
    for side in plan.sides:
        port = free_port()
        ports.append(port)
        procs.append(subprocess.Popen(
            [str(binary.path), *side.args, "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=binary.launch_env()))
    try:
        async with httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0)) as http:
            async def healthy(port: int) -> None:
                while True:
                    try:
                        if (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                            return
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(0.05)

            async def first_token(port: int) -> float:
                body = {"prompt": demo_profile().prompt.text, "n_predict": 8, "stream": True, "cache_prompt": False}
                async with http.stream("POST", f"http://127.0.0.1:{port}/completion", json=body) as resp:
                    async for line in resp.aiter_lines():
                        if line.startswith("data: ") and json.loads(line[6:]).get("content"):
                            return time.monotonic() - t0
                return time.monotonic() - t0

            # kvtui's protocol: both servers up, then both requests at once (neither measured while the other
            # still loads); the first token of either is the figure
            await asyncio.gather(*(healthy(p) for p in ports))
            times = await asyncio.gather(*(first_token(p) for p in ports))
            return min(times)
    finally:
        for p in procs:
            p.terminate()
            p.wait(5)


def kvtui_start() -> float:
    """kvtui in-process from prepare() to its first token (no warm-up, as the bare start has none)."""
    t0 = time.monotonic()
    prepared = prepare(demo_profile(warmup=False), no_record=True)
    session = LiveSession(prepared)
    first: list[float] = []

    def sink(e: object) -> None:
        if isinstance(e, TokenReceived) and not first:
            first.append(time.monotonic() - t0)
            session.abort(None)

    session.sinks.append(sink)
    asyncio.run(session.run())
    return first[0]


def import_cost() -> float:
    """A fresh interpreter importing what `kvtui run --headless` imports."""
    t0 = time.monotonic()
    imports = "import kvtui.cli, kvtui.core.run.prepare, kvtui.core.run.live, kvtui.headless"
    subprocess.run([sys.executable, "-c", imports], check=True, cwd=REPO)
    t1 = time.monotonic()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return (t1 - t0) - (time.monotonic() - t1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=8, help="measured runs per side for rate fidelity")
    ap.add_argument("--starts", type=int, default=8, help="interleaved pairs of cold starts")
    args = ap.parse_args()
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    print(f"kvtui measurement fidelity, {date.today()}, {cpu}, llama-server {find_server().path}")
    ratios = rate_fidelity(args.runs)
    med = statistics.median(ratios)
    print(f"client tok/s / server predicted_per_second over {len(ratios)} runs: median {med:.4f} "
          f"(min {min(ratios):.4f}, max {max(ratios):.4f}); |median - 1| = {abs(med - 1) * 100:.2f}% (target <= 2%)")
    diffs, bare, ours = [], [], []
    for k in range(args.starts):
        if k % 2 == 0:
            b = asyncio.run(bare_start())
            o = kvtui_start()
        else:
            o = kvtui_start()
            b = asyncio.run(bare_start())
        bare.append(b)
        ours.append(o)
        diffs.append(o - b)
    imports = [import_cost() for _ in range(5)]
    q1, med, q3 = statistics.quantiles(diffs, n=4) if len(diffs) > 1 else (diffs[0],) * 3
    imp = statistics.median(imports)
    print(f"first token, {args.starts} interleaved pairs: bare llama-server x2 median {statistics.median(bare):.3f} s, "
          f"kvtui in-process median {statistics.median(ours):.3f} s")
    print(f"  kvtui - bare, paired: median {med:+.3f} s (quartiles {q1:+.3f} .. {q3:+.3f}, "
          f"min {min(diffs):+.3f}, max {max(diffs):+.3f})")
    print(f"  imports only (a fresh interpreter importing the headless path, less a bare interpreter): "
          f"median {imp:.3f} s of 5 (min {min(imports):.3f}, max {max(imports):.3f})")
    print(f"  kvtui start-up overhead = paired median + imports = {med + imp:.3f} s (target <= 0.5 s)")


if __name__ == "__main__":
    main()
