"""Throughput of ``LoopDetector.feed`` and ``TemplateDetector.feed`` on worst-case, text-like and looping streams.

Run ``python benchmarks/loops_bench.py [--tokens N] [--runs R]``. The targets are
200,000 tokens/s on any input for the verbatim loop detector and 50,000 pieces/s
for the template detector (five times the 10,000 tokens/s per side the panes keep up
with; it reads text, not ids, and its cost follows the lexemes in a piece, printed too). Each stream is
fed to a fresh detector R times and the best
run is reported, timed in CPU seconds of this process: a busy machine (the load
average is printed) only ever makes a run slower.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvtui.core.quality.loops import LoopDetector  # noqa: E402
from kvtui.core.quality.templates import TemplateDetector  # noqa: E402

TARGET = 200_000
TEMPLATE_TARGET = 50_000


def cpu_model() -> str:
    """The CPU's name from /proc/cpuinfo, else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def streams(n: int) -> dict[str, list[int]]:
    """The inputs: each name says what makes it hard."""
    rng = random.Random(1234)
    zipf = rng.choices(range(8000), weights=[1 / (r + 1) for r in range(8000)], k=n)
    text = Path(__file__).read_text() * (n // 3000 + 1)
    cycle = [rng.randrange(32000) for _ in range(150)]
    block = [rng.randrange(32000) for _ in range(40)]
    near, runs, binary = [], [], []
    while len(near) < n:  # one block again and again with a different token between
        near += block + [rng.randrange(32000)]
    while len(runs) < n:  # the same, with a block of one token: long matches at every period
        runs += [1] * 40 + [rng.randrange(32000)]
    while len(binary) < n:  # runs of 30-70 zeros or ones: the same, irregularly
        binary += [rng.randrange(2)] * rng.randrange(30, 70)
    return {
        "one token repeated": [7] * n,
        "period 2 (a b a b)": [1, 2] * (n // 2),
        "random, vocab 4": [rng.randrange(4) for _ in range(n)],
        "random, vocab 2": [rng.randrange(2) for _ in range(n)],
        "text-like (Zipf ids)": zipf,
        "this file, char ids": [ord(c) for c in text[:n]],
        "long loop, period 150": (cycle * (n // 150 + 1))[:n],
        "block + counter (near)": near[:n],
        "40 x one token + counter": runs[:n],
        "runs of 0s and 1s": binary[:n],
    }


def text_streams(n: int) -> dict[str, list[str]]:
    """The template detector's inputs (text pieces): each name says what makes it hard."""
    rng = random.Random(1234)
    source = Path(__file__).read_text() * (n // 1000 + 1)
    words = re.findall(r" ?\w+|\s+|[^\w\s]+", source)
    times, csv, block, free, breaks = [], [], [], [], []
    k = 0
    while len(times) < n:  # a wrong times table: a template going on, every lexeme checked
        k += 1
        times += ["7", " x", " ", *str(k), " =", " ", "1", "0", "\n"]
        csv += [*str(k), ",", "bob" if k % 2 else "carol", ",", "7", "5", "\n"]
        block += ["    elif", " n", " ==", " ", *str(k), ":\n", "        return", " ", *str(k), "\n"]
        free += ["The", " ", f"w{rng.randrange(10 ** 6)}", " is", " happy", ".", " "]
        # two positions changing freely: the run breaks and begins again every cycle
        breaks += [f"x{rng.randrange(10 ** 6)}", " =", " ", str(rng.randrange(10 ** 6)), "\n"]
    vocab = re.findall(r"[a-z]{3,}", source)
    cycle = [" " + rng.choice(vocab) for _ in range(100)]
    long_block = []
    while len(long_block) < n:  # a 204-lexeme template (100 words, a counter, a line break)
        k += 1
        long_block += cycle + [" ", *str(k), "\n"]
    return {
        "prose, word pieces": words[:n],
        "prose, char pieces": list(source[:n]),
        "symbols only": [rng.choice("()[]{}<>+-*/=") for _ in range(n)],
        "random a / b / newline": [rng.choice(["a", " b", "\n"]) for _ in range(n)],
        "one number, digit pieces": ["1"] + ["0"] * (n - 1),
        "wrong times table": times[:n],
        "alternating CSV rows": csv[:n],
        "elif ladder": block[:n],
        "one free word": free[:n],
        "two free slots (breaks)": breaks[:n],
        "204-lexeme template": long_block[:n],
    }


def rate(items: list, runs: int, make=LoopDetector) -> float:
    """Items per CPU second through a fresh detector, best of several runs."""
    best = float("inf")
    for _ in range(runs):
        feed = make().feed
        t0 = time.process_time()
        for item in items:
            feed(item)
        best = min(best, time.process_time() - t0)
    return len(items) / best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=100_000, help="tokens per stream")
    ap.add_argument("--runs", type=int, default=5, help="runs per stream; the best counts")
    args = ap.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"date:    {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {cpu_model()} ({platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {load:.1f}), Python {platform.python_version()}")
    print(f"tokens:  {args.tokens:,} per stream, target {TARGET:,} tokens/s\n")
    print(f"{'input':<26}{'tokens/s':>12}  ok")
    worst = float("inf")
    for name, toks in streams(args.tokens).items():
        r = rate(toks, args.runs)
        worst = min(worst, r)
        print(f"{name:<26}{r:>12,.0f}  {'yes' if r >= TARGET else 'NO'}")
    print(f"\nslowest: {worst:,.0f} tokens/s")
    print(f"\nTemplateDetector.feed, target {TEMPLATE_TARGET:,} pieces/s\n")
    print(f"{'input':<26}{'pieces/s':>12}{'lexemes/piece':>15}  ok")
    worst_t = float("inf")
    for name, pieces in text_streams(args.tokens).items():
        r = rate(pieces, args.runs, TemplateDetector)
        worst_t = min(worst_t, r)
        det = TemplateDetector()
        for piece in pieces:
            det.feed(piece)
        per = det.lexemes / len(pieces)
        print(f"{name:<26}{r:>12,.0f}{per:>15.2f}  {'yes' if r >= TEMPLATE_TARGET else 'NO'}")
    print(f"\nslowest: {worst_t:,.0f} pieces/s")
    return 0 if worst >= TARGET and worst_t >= TEMPLATE_TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
