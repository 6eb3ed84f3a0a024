"""Precision and recall of the loop detector over the labelled corpus in tests/data/loops/.

Run ``python benchmarks/loops_corpus.py [FILE_OR_DIR ...]``. Two scores are printed:
``tail`` asks ``find_loop`` about each whole sequence; ``stream`` feeds a
``LoopDetector`` token by token and counts a detection anywhere along the stream
(what stopping a live generation would do), so a "none" case that looks like a loop
for a moment is a false alarm there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvtui.core.loops import LoopDetector, find_loop  # noqa: E402

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "loops"
STUCK_LABELS = ("verbatim", "template", "none")


def load_cases(paths: list[Path] | None = None) -> list[dict]:
    """Read every case from the given JSON files or folders (default: the corpus folder).

    Args:
        paths: files or folders; folders contribute their ``*.json`` files.

    Returns:
        The cases, each with ``file`` set to the file it came from.
    """
    files: list[Path] = []
    for p in paths or [CORPUS]:
        files += sorted(p.glob("*.json")) if p.is_dir() else [p]
    cases = []
    for f in files:
        data = json.loads(f.read_text(encoding="utf-8"))
        for case in data["cases"] if "cases" in data else [data]:
            if case["label"] not in ("loop", "none"):
                raise ValueError(f"{f.name}: {case.get('name')}: label must be 'loop' or 'none'")
            if case.get("stuck") not in STUCK_LABELS:
                raise ValueError(f"{f.name}: {case.get('name')}: stuck must be one of {', '.join(STUCK_LABELS)}")
            cases.append(case | {"file": f.name})
    return cases


def _streamed(case: dict) -> bool:
    det = LoopDetector(**case.get("params", {}))
    pieces = case.get("pieces") or [""] * len(case["tokens"])
    return any(det.feed(t, p) is not None for t, p in zip(case["tokens"], pieces))


def corpus_scores(paths: list[Path] | None = None) -> dict[str, dict]:
    """Score the detector on every labelled case.

    Args:
        paths: files or folders to read (default: tests/data/loops/).

    Returns:
        ``{"tail": scores, "stream": scores}``; each has tp, fp, fn, tn, precision,
        recall, ``exact`` (loops found with the expected period and start, where the
        case gives them) and ``mistakes`` (names of wrongly labelled cases).
    """
    out = {}
    cases = load_cases(paths)
    for mode in ("tail", "stream"):
        s = {"cases": len(cases), "tp": 0, "fp": 0, "fn": 0, "tn": 0, "exact": 0,
             "with_expected": 0, "mistakes": []}
        for c in cases:
            loop = find_loop(c["tokens"], pieces=c.get("pieces"), **c.get("params", {}))
            found = loop is not None if mode == "tail" else _streamed(c)
            truth = c["label"] == "loop"
            s[("t" if found == truth else "f") + ("p" if found else "n")] += 1
            if found != truth:
                s["mistakes"].append(f"{c['file']}:{c.get('name', '?')}")
            if truth and c.get("period") is not None:
                s["with_expected"] += 1
                if loop and loop.period == c["period"] and loop.start == c.get("start", loop.start):
                    s["exact"] += 1
        s["precision"] = s["tp"] / (s["tp"] + s["fp"]) if s["tp"] + s["fp"] else 1.0
        s["recall"] = s["tp"] / (s["tp"] + s["fn"]) if s["tp"] + s["fn"] else 1.0
        out[mode] = s
    return out


def main(argv: list[str]) -> int:
    scores = corpus_scores([Path(a) for a in argv] or None)
    print(f"{'mode':<8}{'cases':>6}{'tp':>5}{'fp':>5}{'fn':>5}{'tn':>5}"
          f"{'precision':>11}{'recall':>8}{'exact':>9}")
    for mode, s in scores.items():
        print(f"{mode:<8}{s['cases']:>6}{s['tp']:>5}{s['fp']:>5}{s['fn']:>5}{s['tn']:>5}"
              f"{s['precision']:>11.3f}{s['recall']:>8.3f}{s['exact']:>5}/{s['with_expected']:<3}")
        for m in s["mistakes"]:
            print(f"    wrong: {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
