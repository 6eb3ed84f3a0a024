"""Capture the real-model loop corpus: real_gemma270m.json, from the bundled llama-server.

Starts the bundled llama-server with the bundled Gemma 3 270M (a small *base* model),
sends raw ``/completion`` requests (non-streaming, ``return_tokens`` and ``n_probs: 1``,
so every token id and its text come back), and writes every reply as one corpus case.

The labels are NOT computed: each was set by a person reading the generated text
(does it end in a verbatim repetition of one block?) and is written below in
``LABELS``, with the repeating block as it reads, when there is one. The script only
checks that a "loop" label's block really is what the tail repeats (then it fills in
``period``, ``start`` and ``repeats`` straight from the definition: the smallest
token cycle whose text is that block, and the earliest index from which the tail has
that period). A reply without a label stops the script; it prints the text to read.

Usage (from the repository root; about 15-30 minutes on 2 cores):

    python tests/data/loops/capture_real.py                 # capture and write the corpus
    python tests/data/loops/capture_real.py --raw-out R.json  # also keep the raw replies
    python tests/data/loops/capture_real.py --from-raw R.json # relabel without the server
    python tests/data/loops/capture_real.py --show            # print each reply, write nothing

Greedy decoding on a CPU is deterministic for one build and thread count; another
build or machine may produce other text, so re-read every reply before keeping a label.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO))

from kvtui.core.locate import bundled_model, find_server, server_version  # noqa: E402

OUT = HERE / "real_gemma270m.json"
N_PREDICT = 400

USER = "<start_of_turn>user\n{}<end_of_turn>\n<start_of_turn>model\n"

# name -> (prompt, overrides of the request). Temperature 0 unless given.
PROMPTS: dict[str, tuple[str, dict]] = {
    # chat-style turns: the base model was never tuned for them and tends to echo
    "chat-palindrome": (USER.format("Write a Python function `is_palindrome(s)` that ignores case and "
                                    "punctuation, with two pytest tests."), {}),
    "chat-capital": (USER.format("What is the capital of France?"), {}),
    "chat-kv-cache": (USER.format("Explain in one paragraph what a KV cache is in a transformer."), {}),
    "chat-translate": (USER.format("Translate 'good morning, how are you?' into German and Spanish."), {}),
    "chat-haiku": (USER.format("Write a haiku about the sea."), {}),
    "chat-sort": (USER.format("Sort this list in Python: [3, 1, 2]. Show the code."), {}),
    "transcript-hi": ("User: Hi\nAssistant: Hello! How can I help you today?\nUser: Hi\nAssistant:", {}),
    "qa-arith": ("Q: What is 2 + 2?\nA: 4\nQ: What is 3 + 5?\nA:", {}),
    # "list the numbers" and repeated phrases
    "list-numbers": ("List the numbers from 1 to 5:", {}),
    "count-to-100": ("Count from 1 to 100, separated by commas: 1, 2, 3,", {}),
    "repeat-robot": ("Repeat after me: I am a robot. I am a robot. I am a robot.", {}),
    "jack-dull-boy": ("All work and no play makes Jack a dull boy. All work and no play makes Jack", {}),
    # code prefixes
    "code-fibonacci": ('def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n', {}),
    "code-matrix-class": ("import numpy as np\n\n\nclass Matrix:\n    def __init__(self, rows):\n", {}),
    "code-c-main": ("#include <stdio.h>\n#include <stdlib.h>\n\nint main(int argc, char **argv) {\n", {}),
    "code-sql": ("-- schema for a small blog\nCREATE TABLE users (\n    id INTEGER PRIMARY KEY,\n", {}),
    "code-html": ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n  <meta charset=\"utf-8\">\n", {}),
    "code-pytest": ("import pytest\n\nfrom shop.cart import Cart\n\n\ndef test_empty_cart_total():\n", {}),
    # prose, lists, tables, JSON
    "prose-rome": ("The history of the Roman Empire begins", {}),
    "prose-village": ("Once upon a time, in a small village by the sea,", {}),
    "prose-photosynthesis": ("Photosynthesis is the process by which", {}),
    "list-shopping": ("Shopping list:\n- apples\n- bread\n-", {}),
    "markdown-table": ("| Model | Parameters | Context |\n|---|---|---|\n| Llama 3 | 8B | 8k |\n", {}),
    "json-literal": ('{"name": "kvtui", "version": "0.1.0", "dependencies": {', {}),
    "readme-install": ("# kvtui\n\n## Installation\n\nTo install the package, run", {}),
    # sampled, with fixed seeds
    "t07-chat-capital": (USER.format("What is the capital of France?"), {"temperature": 0.7, "seed": 1}),
    "t07-code-fibonacci": ('def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
                           {"temperature": 0.7, "seed": 2}),
    "t07-prose-village": ("Once upon a time, in a small village by the sea,", {"temperature": 0.7, "seed": 3}),
    "t07-list-numbers": ("List the numbers from 1 to 5:", {"temperature": 0.7, "seed": 4}),
    "t07-json-literal": ('{"name": "kvtui", "version": "0.1.0", "dependencies": {',
                         {"temperature": 0.7, "seed": 5, "n_predict": 600}),
}

# name -> ("loop", the repeating block as a person read it) or ("none", why not).
# Set by reading each reply (python capture_real.py --show), never by running the detector.
LABELS: dict[str, tuple[str, str]] = {
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def capture(threads: int) -> dict:
    """Run the server, send every prompt, return the raw replies."""
    binary, model = find_server(), bundled_model()
    port = free_port()
    argv = [str(binary.path), "-m", str(model), "-c", "4096", "-np", "1", "-fa", "on",
            "-ctk", "q8_0", "-ctv", "q8_0", "--host", "127.0.0.1", "--port", str(port), "-t", str(threads)]
    proc = subprocess.Popen(argv, env=binary.launch_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    raw: dict = {"server": server_version(binary), "model": model.name, "argv": argv[1:], "replies": {}}
    try:
        with httpx.Client(timeout=900) as http:
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"llama-server exited with code {proc.returncode}")
                try:
                    if http.get(base + "/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("llama-server did not become ready in 120 s")
                time.sleep(0.3)
            http.post(base + "/completion", json={"prompt": "Hello", "n_predict": 4, "temperature": 0})
            for name, (prompt, over) in PROMPTS.items():
                body = {"prompt": prompt, "n_predict": N_PREDICT, "temperature": 0.0, "seed": 42,
                        "cache_prompt": False, "stream": False, "return_tokens": True, "n_probs": 1} | over
                t = time.monotonic()
                r = http.post(base + "/completion", json=body)
                r.raise_for_status()
                data = r.json()
                probs = data["completion_probabilities"]
                ids = list(data["tokens"])
                if [p["id"] for p in probs] != ids:
                    raise SystemExit(f"{name}: token ids and probabilities differ")
                raw["replies"][name] = {
                    "prompt": prompt, "sampling": {k: body[k] for k in ("temperature", "seed", "n_predict")},
                    "ids": ids, "pieces": [p["token"] for p in probs], "stop": data.get("stop_type"),
                }
                print(f"{name}: {len(ids)} tokens, stop {data.get('stop_type')}, "
                      f"{time.monotonic() - t:.0f} s", file=sys.stderr, flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return raw


def periodic_start(ids: list[int], p: int) -> int:
    """The earliest index from which ids has period p (the definition, walked backwards)."""
    s = len(ids) - p
    while s > 0 and ids[s - 1] == ids[s - 1 + p]:
        s -= 1
    return s


def locate_block(ids: list[int], pieces: list[str], block: str) -> tuple[int, int]:
    """The token cycle whose text is the block a person saw repeating: (period, start).

    The smallest p whose last p tokens read as the block (or a rotation of it, since a
    cycle can be read from any of its tokens) and whose tail repeats them at least twice.
    """
    for p in range(1, len(ids) // 2 + 1):
        text = "".join(pieces[-p:])
        if len(text) == len(block) and text in block + block and ids[-p:] == ids[-2 * p:-p]:
            return p, periodic_start(ids, p)
    raise SystemExit(f"the tail does not repeat the block {block!r}")


def build(raw: dict) -> dict:
    missing = [n for n in raw["replies"] if n not in LABELS]
    if missing:
        for n in missing:
            show(n, raw["replies"][n])
        raise SystemExit(f"no label for: {', '.join(missing)} (read them above, then add them to LABELS)")
    cases = []
    for name, rep in raw["replies"].items():
        label, note = LABELS[name]
        ids, pieces = rep["ids"], rep["pieces"]
        s = rep["sampling"]
        how = (f"Gemma 3 270M, temperature {s['temperature']:g}, seed {s['seed']}, n_predict {s['n_predict']}, "
               f"stopped by {rep['stop']} after {len(ids)} tokens")
        case = {"name": name, "label": label}
        if label == "loop":
            period, start = locate_block(ids, pieces, note)
            case["description"] = (f"{how}. Label by a person reading the text: the tail repeats {note!r} "
                                    f"verbatim (period and start then from the definition).")
            case |= {"period": period, "start": start, "repeats": (len(ids) - start) // period}
        else:
            case["description"] = f"{how}. Label by a person reading the text: not a loop; {note}"
        case |= {"tokenizer": "gemma-3-270m", "prompt": rep["prompt"], "tokens": ids, "pieces": pieces}
        cases.append(case)
    return {"format": 1,
            "source": (f"real llama-server {raw['server']} ({' '.join(raw['argv'][2:])}), model {raw['model']}; "
                       "tests/data/loops/capture_real.py; labels by a person reading each reply"),
            "cases": cases}


def show(name: str, rep: dict) -> None:
    print(f"===== {name}: {len(rep['ids'])} tokens, stop {rep['stop']}, {rep['sampling']}")
    print("".join(rep["pieces"]))


def dump(data: dict) -> str:
    """JSON with one case field per line, so the file stays small and diffable."""
    head = {k: v for k, v in data.items() if k != "cases"}
    lines = ["{" + json.dumps(head, ensure_ascii=False)[1:-1] + ', "cases": [']
    for n, case in enumerate(data["cases"]):
        fields = [f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in case.items()]
        lines.append(" {\n" + ",\n".join(fields) + "\n }" + ("," if n < len(data["cases"]) - 1 else ""))
    lines.append("]}")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from-raw", type=Path, help="use replies saved by --raw-out instead of the server")
    ap.add_argument("--raw-out", type=Path, help="save the raw replies here")
    ap.add_argument("--show", action="store_true", help="print every reply and write nothing")
    ap.add_argument("--threads", type=int, default=2, help="llama-server -t (default 2)")
    args = ap.parse_args()
    raw = json.loads(args.from_raw.read_text(encoding="utf-8")) if args.from_raw else capture(args.threads)
    if args.raw_out:
        args.raw_out.write_text(json.dumps(raw, ensure_ascii=False), encoding="utf-8")
    if args.show:
        for name, rep in raw["replies"].items():
            show(name, rep)
        return 0
    OUT.write_text(dump(build(raw)), encoding="utf-8")
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
