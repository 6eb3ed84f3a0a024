"""What a streamed token costs kvtui's process: httpx against kvtui's own transport (server/streamhttp.py).

Starts one bundled llama-server, then streams the same request (300 tokens, temperature 0) alternately
through httpx (``AsyncClient.stream`` + ``aiter_lines``, what kvtui used before) and through
``client.stream`` (kvtui's reader: its transport, SSE decoding and chunk parsing), and reports the CPU
time of this process per streamed chunk for each, median over the rounds. Only this process's CPU is
counted (``time.process_time``), not the server's, so a busy machine changes the figure little.

Usage: python benchmarks/stream_cost.py [--rounds 5] [--n-predict 300] [--server-bin PATH]
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
from datetime import date
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kvtui.core.server import client  # noqa: E402
from kvtui.core.server.locate import bundled_model, find_server  # noqa: E402
from kvtui.core.server.process import free_port  # noqa: E402


async def via_httpx(url: str, body: dict) -> int:
    n = 0
    async with httpx.AsyncClient(timeout=60) as http, http.stream("POST", url + "/completion", json=body) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                json.loads(line[6:])
                n += 1
    return n


async def via_kvtui(url: str, body: dict) -> int:
    async with client.http_client() as http:
        return sum([1 async for _ in client.stream(http, url, "/completion", body)])


async def wait_ready(url: str) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(600):
            try:
                if (await http.get(url + "/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the server did not come up")


async def measure(url: str, rounds: int, n_predict: int) -> dict[str, list[float]]:
    body = {"prompt": "Once upon a time", "n_predict": n_predict, "stream": True, "temperature": 0,
            "cache_prompt": False}
    await wait_ready(url)
    await via_kvtui(url, body)  # warm-up
    out: dict[str, list[float]] = {"httpx": [], "kvtui": []}
    for _ in range(rounds):
        for name, f in (("httpx", via_httpx), ("kvtui", via_kvtui)):
            cpu = time.process_time()
            chunks = await f(url, body)
            out[name].append((time.process_time() - cpu) / max(chunks, 1) * 1e6)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n-predict", type=int, default=300)
    ap.add_argument("--server-bin")
    args = ap.parse_args()
    binary = find_server(args.server_bin)
    port = free_port()
    srv = subprocess.Popen([str(binary.path), "-m", str(bundled_model()), "--port", str(port), "-c", "2048"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=binary.launch_env())
    try:
        res = asyncio.run(measure(f"http://127.0.0.1:{port}", args.rounds, args.n_predict))
    finally:
        srv.terminate()
        srv.wait(10)
    print(f"{date.today()} {platform.processor() or platform.machine()}: CPU of kvtui's process per streamed chunk, "
          f"median of {args.rounds} streams of {args.n_predict} tokens")
    for name, values in res.items():
        print(f"  {name:6} {statistics.median(values):6.0f} us  ({', '.join(f'{v:.0f}' for v in values)})")


if __name__ == "__main__":
    main()
