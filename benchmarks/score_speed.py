"""How long `kvtui score` takes: f16, q8_0 and q4_0 of the bundled model teacher-forced over lighthouse.txt.

    python benchmarks/score_speed.py                       # 8 chunks of 520 = 2,072 positions per side
    python benchmarks/score_speed.py --top-k 100 --concurrency 3 --noise-floor

The target (issue 13): 2,048 positions for 3 sides in under 4 minutes on a 2-core machine. The wall time
includes starting and stopping every server. On a machine shared with other work the wall time says
little, so the script also reports the CPU time kvtui and its servers used (getrusage of this process
and of the servers it waited for) and the load average: CPU seconds / cores is the wall time the same
work needs when it has the cores to itself. Prints one line per run and the figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kvtui.core.quality import DEFAULT_TOP_K  # noqa: E402
from kvtui.core.run.scoring import ScoreSettings, prepare_scoring, score_text  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ctx", type=int, default=520)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=DEFAULT_TOP_K)
    ap.add_argument("--concurrency", type=int)
    ap.add_argument("--noise-floor", action="store_true", help="also score a second f16 server (4 servers)")
    ap.add_argument("--server-bin")
    ap.add_argument("--text", default=str(REPO / "benchmarks" / "data" / "lighthouse.txt"))
    args = ap.parse_args()

    settings = ScoreSettings(ctx=args.ctx, chunks=args.chunks, top_k=args.top_k, noise_floor=args.noise_floor,
                             concurrency=args.concurrency)
    prepared = prepare_scoring(REPO / "profiles" / "quality.toml", settings, server_bin=args.server_bin)
    text = Path(args.text).read_text(encoding="utf-8")
    load0 = os.getloadavg()[0]
    cpu0 = _cpu_s()
    t0 = time.monotonic()
    report = asyncio.run(score_text(prepared, text, settings))
    wall = time.monotonic() - t0
    cpu = _cpu_s() - cpu0
    cores = os.cpu_count() or 1
    servers = len(report.sides) + 1 + (report.noise_floor is not None)
    per = wall / (report.positions * servers) * 1000
    print(f"{servers} servers x {report.positions:,} positions (ctx {report.ctx}, {report.chunks} chunks), "
          f"top-{report.top_k}, concurrency {args.concurrency or 'auto'}, {os.cpu_count()} CPUs: {wall:.1f} s wall, "
          f"{per:.1f} ms per position per server; 2,048 positions x 3 sides at that rate: "
          f"{per * 2048 * 3 / 1000:.0f} s")
    print(f"CPU used: {cpu:.0f} s (kvtui and its servers), {cpu / report.positions / servers * 1000:.1f} ms per "
          f"position per server; with the {cores} cores to itself: {cpu / cores:.0f} s; load average "
          f"{load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    for s in report.sides:
        print(f"  {s.side}: KLD {s.kld_mean:.5f} ± {s.kld_mean_unc:.5f}, same top {s.same_top_pct:.2f}%")
    print(json.dumps({"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "ms_per_position_server": round(per, 2),
                      **report.to_dict()}))
    return 0


def _cpu_s() -> float:
    """User + system CPU seconds of this process and of the children it has waited for (the servers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


if __name__ == "__main__":
    sys.exit(main())
