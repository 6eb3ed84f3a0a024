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
``STUCK`` holds a second, reader's label where it differs from that rule: a reply stuck in
a template (``7 x N = 10`` with N counting) is no verbatim loop but is stuck all the same.

Usage (from the repository root; 15 minutes on 2 idle cores, 45 on busy ones):

    python tests/data/loops/capture_real.py --raw R.json   # capture what R.json lacks, write the corpus
    python tests/data/loops/capture_real.py --raw R.json --show   # print each reply, write no corpus
    python tests/data/loops/capture_real.py --relabel   # set the reader labels (STUCK) again, offline

``--raw`` keeps every reply as it arrives, so a second run only sends the prompts it
lacks, and relabelling needs no server. Without it every prompt is sent again.

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

from kvtui.core.server.locate import bundled_model, find_server, server_version  # noqa: E402

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
    # more that should not loop: counters (near-loops), sampled prose and code
    "csv-rows": ("id,name,score\n1,alice,90\n2,bob,85\n3,carol,77\n4,", {"n_predict": 300}),
    "times-table": ("Multiplication table of 7:\n7 x 1 = 7\n7 x 2 = 14\n7 x 3 = 21\n", {"n_predict": 300}),
    "numbered-steps": ("How to bake bread:\n1. Mix flour, water, yeast and salt.\n2.", {"n_predict": 300}),
    "code-js-fetch": ("async function fetchUser(id) {\n  const response = await fetch(`/api/users/${id}`);\n",
                      {"n_predict": 300}),
    "t07-prose-rome": ("The history of the Roman Empire begins", {"temperature": 0.7, "seed": 6, "n_predict": 300}),
    "t07-readme-install": ("# kvtui\n\n## Installation\n\nTo install the package, run",
                           {"temperature": 0.7, "seed": 7, "n_predict": 300}),
    "t07-code-matrix-class": ("import numpy as np\n\n\nclass Matrix:\n    def __init__(self, rows):\n",
                              {"temperature": 0.7, "seed": 8, "n_predict": 300}),
    "t07-markdown-table": ("| Model | Parameters | Context |\n|---|---|---|\n| Llama 3 | 8B | 8k |\n",
                           {"temperature": 0.7, "seed": 9, "n_predict": 300}),
    "t07-code-c-main": ("#include <stdio.h>\n#include <stdlib.h>\n\nint main(int argc, char **argv) {\n",
                        {"temperature": 0.7, "seed": 10, "n_predict": 300}),
    "t07-chat-kv-cache": (USER.format("Explain in one paragraph what a KV cache is in a transformer."),
                          {"temperature": 0.7, "seed": 11, "n_predict": 300}),
}

# name -> ("loop", the repeating block as a person read it[, text the model left the loop with])
#      or ("none", why it is not a loop).
# Set by reading each reply (capture_real.py --raw R.json --show), never by running the detector.
# A loop the model later left is cut where it left it: a "loop" case must end in its loop.
LABELS: dict[str, tuple[str, ...]] = {
    "chat-palindrome": ("loop", "Write a Python function `is_palindrome(s)` that ignores case and punctuation, "
                                "with two pytest tests. staan\n的文章\n"),
    "chat-capital": ("loop", "What is the capital of France? siebie\n"),
    "chat-kv-cache": ("loop", "Explain in one paragraph what a KV cache is in a transformer. voyez\nに通るmodel\n"),
    "chat-translate": ("loop", "Translate 'good morning, how are you?' into German and Spanish. mendatang\nに対応\n"),
    "chat-haiku": ("loop", "Write a haiku about the sea. mendatang\npaying\n"),
    "chat-sort": ("loop", "\n nared"),
    "transcript-hi": ("loop", "\nUser: Hi\nAssistant: Hi"),
    "qa-arith": ("loop", " 3 + 5 ="),
    "list-numbers": ("loop", "0"),
    "count-to-100": ("loop", "The first number is 1, the second number is 2, the third number is 3, the fourth "
                             "number is 4, the fifth number is 5, the sixth number is 6, the seventh number is 7, "
                             "the eighth number is 8, the ninth number is 9, the tenth number is 10.\n\n"),
    "repeat-robot": ("loop", " I am a robot."),
    "jack-dull-boy": ("loop", "Jack is a very smart boy. He is very smart. He is very smart.\n\n"),
    "code-fibonacci": ("none", "an if/elif ladder whose case number counts up (`elif n == 20: return 19`, "
                               "`elif n == 21: return 19`, ...): a near-loop with a counter, no block comes "
                               "twice in a row."),
    "code-matrix-class": ("none", "near-duplicate comparison methods; __eq__ to __le__ comes twice, then the "
                                  "order changes (__ne__, __eq__): no block repeats back to back at the end."),
    # Declarations whose names grow (n_k, m_k, n_k_k, ...), until the last name never ends.
    "code-c-main": ("loop", "_k"),
    "code-sql": ("loop", "    password_length_length INTEGER,\n"),
    "code-html": ("loop", '  <link rel="stylesheet" type="text/css" href="css/main.css">\n'),
    "code-pytest": ("loop", "    assert cart.total == 0\n"),
    "prose-rome": ("loop", " The Romans were the first people to conquer the land of what is now the "
                           "United States of America."),
    "prose-village": ("loop", " One day, John saw a beautiful man named John. He was very happy to see John. "
                              "He was very happy to see John."),
    "prose-photosynthesis": ("loop", "Photosynthesis is a chemical reaction that occurs in the presence of "
                                     "sunlight.\n\n"),
    "list-shopping": ("loop", "- jam\n"),
    "markdown-table": ("loop", "| Llama 3 | 8B | 8k |\n"),
    "json-literal": ("loop", '    "core-dev": "core",\n'),
    "readme-install": ("loop", "## License\n\nThis package is licensed under the Apache License v2.0.\n\n"
                               "## Disclaimer\n\nThis package is intended for educational purposes only. It is "
                               "not intended to replace or replace any other licensed software.\n\n## Contact\n\n"
                               "If you have any questions or concerns about this package, please contact us at "
                               "kvtui@gmail.com.\n\n## Acknowledgements\n\nThis package was developed in "
                               "collaboration with the University of California, Berkeley.\n\n"),
    "t07-chat-capital": ("loop", "the country that has the largest population?\n"),
    "t07-code-fibonacci": ("none", "a short recursive function and a print; the model ended it (end of text)."),
    # Two whole copies of the 42-token paragraph and 24 tokens of a third when n_predict ran
    # out. A person reads that as stuck (the same paragraph verbatim, at temperature 0.7);
    # the rule needs three whole copies, so the detector misses it (see REMARKS).
    "t07-prose-village": ("loop", "One day, Lily woke up in the middle of the night and was very sad. She didn't "
                                  "want to sleep with her doll anymore. So, she decided to try to sleep with her "
                                  "doll.\n\n"),
    "t07-list-numbers": ("none", "counts 1) to 100), then 111) 12...: a counter, every item differs."),
    "t07-json-literal": ("loop", '    "chess": "2.5.0",\n'),
    "csv-rows": ("none", "CSV rows alternating bob and carol with the id counting up (5,carol,75 / "
                         "6,bob,75 / ...): a near-loop with a counter."),
    "times-table": ("none", "`7 x N = 10` with N counting up: wrong arithmetic, a near-loop with a counter, "
                            "never the same line twice."),
    "numbered-steps": ("none", "numbered steps alternating 'Add water and stir.' and 'Add flour and stir.' with "
                               "the number counting up: a near-loop with a counter."),
    "code-js-fetch": ("loop", "  const user = JSON.parse(user);\n  const result = JSON.parse(result);\n"),
    "t07-prose-rome": ("loop", "The Empire was established by the Roman Empire at the beginning of the first "
                               "century BC. The Empire was established by the Roman Empire at the beginning of "
                               "the first century BC.\n\n"),
    # Six copies of the paragraph, then "## Usage" and other text: cut where it left the loop.
    "t07-readme-install": ("loop", "To install the package with the dependencies listed in the package.lock file, "
                                   "you can run the following:\n\n```bash\npip install -U -r requirements.txt\n"
                                   "```\n\n", "## Usage"),
    "t07-code-matrix-class": ("none", "near-duplicate comparison methods whose bodies and order keep changing "
                                      "(__lt__, __le__, __ge__, __le__, __gt__, __lt__, __gt__, ...): no block "
                                      "twice in a row."),
    "t07-markdown-table": ("loop", "| Llama 3 | 8B | 8k |\n"),
    "t07-code-c-main": ("none", "declarations with a counter (*p11, *p12, ..., *p53): every item differs."),
    "t07-chat-kv-cache": ("loop", "Explain in one paragraph what a KV cache is in a transformer.atiquementmodel\n"),
}

# Said in the case's description too.
REMARKS: dict[str, str] = {
    "code-c-main": ("First labelled 'none' from a printout cut off before the tail; the whole text ends "
                    "in '_k' 76 times."),
    "t07-prose-village": ("Two whole copies and 24 tokens of a third when n_predict ran out: the rule needs "
                          "three whole copies (126 tokens), so the detector does not report it (a known miss; "
                          "live, it would be reported 18 tokens later)."),
}


# What a reader calls each reply, where that differs from what LABELS implies (a "loop" reads
# as stuck "verbatim", a "none" as not stuck). LABELS answers the verbatim rule's question ("does
# it end in a verbatim repetition?"); these answer a reader's ("is the model stuck?"), and were
# set by reading each reply again (2026-12-01, issue 18 item 7), never by running a detector.
STUCK: dict[str, tuple[str, str]] = {
    "code-fibonacci": ("template", "an `elif n == K:` / `return 19` ladder with K counting up to 27 (after "
                                   "`return K` up to 19): the function never computes anything"),
    "code-matrix-class": ("template", "redefines `__eq__` .. `__ge__` a second time with the same bodies "
                                      "and starts a third round"),
    "t07-list-numbers": ("template", "asked for the numbers 1 to 5, writes `1) 2) 3) ...` up to 100) and "
                                     "on: a counter and nothing else"),
    "csv-rows": ("template", "35 rows alternating `bob,75` and `carol,75` with only the id counting: no data"),
    "times-table": ("template", "`7 x N = 10` for N = 10..33: the same wrong result while N counts"),
    "numbered-steps": ("template", "34 steps alternating 'Add water and stir.' and 'Add flour and stir.': "
                                   "the recipe never moves on"),
    "t07-code-matrix-class": ("template", "cycles through the comparison methods, redefining `__lt__`, "
                                          "`__gt__`, `__eq__` again and again with bodies that change at random"),
    "t07-code-c-main": ("template", "declares `*p11, *p12, ..., *p53` in one line: a counter and nothing else"),
}

# The replies that are lists, tables or code of similar items without being verbatim loops:
# where a template is plausible, and where the quiet signal's precision is reported.
FORMS: dict[str, str] = {
    "code-fibonacci": "code", "code-matrix-class": "code", "t07-list-numbers": "list", "csv-rows": "table",
    "times-table": "table", "numbered-steps": "list", "t07-code-matrix-class": "code", "t07-code-c-main": "code",
}


def reader_label(name: str, label: str) -> dict:
    """The case's ``stuck`` field, ``stuck_reason`` where a reader's call differs from LABELS, and ``form``."""
    out = {"stuck": "verbatim" if label == "loop" else "none"}
    if name in STUCK:
        stuck, why = STUCK[name]
        out = {"stuck": stuck, "stuck_reason": why}
    if name in FORMS:
        out["form"] = FORMS[name]
    return out

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def capture(threads: int, raw: dict, raw_path: Path | None) -> dict:
    """Run the server and send every prompt that ``raw`` has no reply for; returns ``raw``."""
    todo = [n for n in PROMPTS if n not in raw.get("replies", {})]
    if not todo:
        return raw
    binary, model = find_server(), bundled_model()
    port = free_port()
    args = ["-c", "4096", "-np", "1", "-fa", "on", "-ctk", "q8_0", "-ctv", "q8_0", "-t", str(threads)]
    argv = [str(binary.path), "-m", str(model), *args, "--host", "127.0.0.1", "--port", str(port)]
    head = {"server": server_version(binary), "model": model.name, "argv": args}
    if raw.get("replies") and {k: raw.get(k) for k in head} != head:
        raise SystemExit(f"{raw_path} was captured with another server, model or arguments; use a new file")
    raw |= head
    raw.setdefault("replies", {})
    proc = subprocess.Popen(argv, env=binary.launch_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
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
            for name in todo:
                prompt, over = PROMPTS[name]
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
                if raw_path is not None:
                    raw_path.write_text(json.dumps(raw, ensure_ascii=False), encoding="utf-8")
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


def cut_before(pieces: list[str], marker: str) -> int:
    """How many tokens come before the one where ``marker`` first begins."""
    at = "".join(pieces).index(marker)
    n = end = 0
    while end + len(pieces[n]) <= at:
        end += len(pieces[n])
        n += 1
    return n


def build(raw: dict) -> dict:
    missing = [n for n in raw["replies"] if n not in LABELS]
    if missing:
        for n in missing:
            show(n, raw["replies"][n])
        raise SystemExit(f"no label for: {', '.join(missing)} (read them above, then add them to LABELS)")
    cases = []
    for name, rep in raw["replies"].items():
        label, note, *cut = LABELS[name]
        ids, pieces = rep["ids"], rep["pieces"]
        s = rep["sampling"]
        how = (f"Gemma 3 270M, temperature {s['temperature']:g}, seed {s['seed']}, n_predict {s['n_predict']}, "
               f"stopped by {rep['stop']} after {len(ids)} tokens")
        if cut:
            n = cut_before(pieces, cut[0])
            how += f"; cut at token {n}, where the model left the loop (it went on with {cut[0]!r})"
            ids, pieces = ids[:n], pieces[:n]
        case = {"name": name, "label": label}
        if label == "loop":
            period, start = locate_block(ids, pieces, note)
            case["description"] = (f"{how}. Label by a person reading the text: the tail repeats {note!r} "
                                   f"verbatim (period and start then from the definition).")
            case |= {"period": period, "start": start, "repeats": (len(ids) - start) // period}
        else:
            case["description"] = f"{how}. Label by a person reading the text: not a loop; {note}"
        if name in REMARKS:
            case["description"] += " " + REMARKS[name]
        case |= reader_label(name, label)
        case |= {"tokenizer": "gemma-3-270m", "prompt": rep["prompt"], "tokens": ids, "pieces": pieces}
        cases.append(case)
    return {"format": 1,
            "source": (f"real llama-server {raw['server']} ({' '.join(raw['argv'])}), model {raw['model']}; "
                       "tests/data/loops/capture_real.py; labels by a person reading each reply"),
            "cases": cases}


def relabel(data: dict) -> dict:
    """The corpus with every case's reader label set again from STUCK (no server, no raw replies)."""
    cases = []
    for case in data["cases"]:
        head = {k: v for k, v in case.items() if k in ("name", "label", "description", "period", "start",
                                                         "repeats")}
        rest = {k: v for k, v in case.items() if k not in head and k not in ("stuck", "stuck_reason", "form")}
        cases.append(head | reader_label(case["name"], case["label"]) | rest)
    return data | {"cases": cases}


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
    ap.add_argument("--raw", type=Path, help="keep the raw replies here; only prompts it lacks are sent")
    ap.add_argument("--show", action="store_true", help="print every reply and write no corpus")
    ap.add_argument("--threads", type=int, default=2, help="llama-server -t (default 2)")
    ap.add_argument("--relabel", action="store_true",
                    help="only set the reader labels (STUCK) in the existing corpus again; sends nothing")
    args = ap.parse_args()
    if args.relabel:
        OUT.write_text(dump(relabel(json.loads(OUT.read_text(encoding="utf-8")))), encoding="utf-8")
        print(f"relabelled {OUT}", file=sys.stderr)
        return 0
    raw: dict = {}
    if args.raw is not None and args.raw.exists():
        raw = json.loads(args.raw.read_text(encoding="utf-8"))
    raw = capture(args.threads, raw, args.raw)
    raw["replies"] = {n: raw["replies"][n] for n in PROMPTS}  # in PROMPTS order, nothing else
    if args.show:
        for name, rep in raw["replies"].items():
            show(name, rep)
        return 0
    OUT.write_text(dump(build(raw)), encoding="utf-8")
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
