"""Precision and recall of the loop and template detectors over the labelled corpus in tests/data/loops/.

Run ``python benchmarks/loops_corpus.py [FILE_OR_DIR ...] [--sweep]``. Each score comes
two ways: ``tail`` asks ``find_loop`` / ``find_template`` about each whole sequence;
``stream`` feeds the detectors piece by piece and counts a report anywhere along the
stream (what a live run shows), so a "none" case that looks like a loop for a moment
is a false alarm there.

The first table scores the verbatim LOOP against ``label`` (the verbatim rule). The
second scores against ``stuck``, a reader's label: PATTERN (the quiet template signal)
against ``template``, LOOP against any stuck reply, and the two together (LOOP where it
fires, else PATTERN) against any stuck reply; then PATTERN on the lists, tables, test
suites and code of similar items (``form``) alone. ``--sweep`` prints PATTERN's scores
for other thresholds, which is how the defaults were chosen.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvtui.core.quality.loops import LoopDetector, find_loop  # noqa: E402
from kvtui.core.quality.templates import TemplateDetector, find_template  # noqa: E402

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
    return any(det.feed(t, p) is not None for t, p in zip(case["tokens"], pieces, strict=True))


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


def _pattern_streamed(case: dict, params: dict) -> bool:
    det = TemplateDetector(**params)
    return any(det.feed(p) is not None for p in case["pieces"])


def _ratio(a: int, b: int) -> float:
    return a / b if b else 1.0


def stuck_scores(paths: list[Path] | None = None, **params: int) -> dict[str, dict]:
    """Score LOOP and PATTERN against the reader's label ``stuck``, once per distinct text.

    Args:
        paths: files or folders to read (default: tests/data/loops/).
        params: TemplateDetector thresholds, when not the defaults.

    Returns:
        ``{"tail": scores, "stream": scores}``. Each has ``pattern`` (tp, fp, fn, on_verbatim,
        precision, recall against "template"; false_alarms and misses by name), ``loop`` and
        ``either`` (tp, fp, fn, precision, recall against "verbatim" or "template"), and
        ``forms`` (PATTERN on the cases with a ``form``: tp, fp, stuck, legit, precision,
        and ``legit_silent``, the legitimate ones it stayed silent on).
    """
    # One case per text: PATTERN reads text, so a word- and a char-tokenized copy are one case.
    cases, seen = [], set()
    for c in load_cases(paths):
        text = "".join(c.get("pieces") or [])
        if text and text not in seen:
            seen.add(text)
            cases.append(c)
    out = {}
    for mode in ("tail", "stream"):
        pat = {"tp": 0, "fp": 0, "fn": 0, "on_verbatim": 0, "false_alarms": [], "misses": []}
        loop = {"tp": 0, "fp": 0, "fn": 0}
        either = {"tp": 0, "fp": 0, "fn": 0}
        forms = {"tp": 0, "fp": 0, "stuck": 0, "legit": 0, "false_alarms": []}
        for c in cases:
            cid = f"{c['file']}:{c['name']}"
            if mode == "tail":
                looped = find_loop(c["tokens"], **c.get("params", {})) is not None
                pattern = find_template(c["pieces"], **params) is not None
            else:
                looped = _streamed(c)
                pattern = _pattern_streamed(c, params)
            truth = c["stuck"]
            if pattern and truth == "template":
                pat["tp"] += 1
            elif pattern and truth == "none":
                pat["fp"] += 1
                pat["false_alarms"].append(cid)
            elif pattern:
                pat["on_verbatim"] += 1
            elif truth == "template":
                pat["fn"] += 1
                pat["misses"].append(cid)
            for s, fired in ((loop, looped), (either, looped or pattern)):
                if fired:
                    s["tp" if truth != "none" else "fp"] += 1
                elif truth != "none":
                    s["fn"] += 1
            if c.get("form") and truth != "verbatim":
                forms["stuck" if truth == "template" else "legit"] += 1
                if pattern:
                    forms["tp" if truth == "template" else "fp"] += 1
                    if truth == "none":
                        forms["false_alarms"].append(cid)
        for s in (pat, loop, either):
            s["precision"] = _ratio(s["tp"], s["tp"] + s["fp"])
            s["recall"] = _ratio(s["tp"], s["tp"] + s["fn"])
        forms["precision"] = _ratio(forms["tp"], forms["tp"] + forms["fp"])
        forms["legit_silent"] = forms["legit"] - forms["fp"]
        out[mode] = {"pattern": pat, "loop": loop, "either": either, "forms": forms}
    return out


def _print_stuck(scores: dict[str, dict], names: bool = True) -> None:
    print(f"\n{'reader label, distinct texts':<34}{'mode':<8}{'tp':>4}{'fp':>4}{'fn':>4}{'precision':>11}{'recall':>8}")
    rows = (("PATTERN vs template", "pattern"), ("LOOP vs stuck (either kind)", "loop"),
            ("LOOP or PATTERN vs stuck", "either"))
    for title, key in rows:
        for mode, sc in scores.items():
            s = sc[key]
            print(f"{title:<34}{mode:<8}{s['tp']:>4}{s['fp']:>4}{s['fn']:>4}{s['precision']:>11.3f}"
                  f"{s['recall']:>8.3f}")
    for mode, sc in scores.items():
        f, p = sc["forms"], sc["pattern"]
        print(f"\n{mode}: PATTERN also fired on {p['on_verbatim']} verbatim loops (LOOP shows there). On lists, "
              f"tables, test suites and code ({f['stuck'] + f['legit']} cases, {f['stuck']} stuck): "
              f"precision {f['precision']:.3f} ({f['tp']}/{f['tp'] + f['fp']}), silent on {f['legit_silent']} "
              f"of {f['legit']} legitimate ones")
        if names:
            for m in p["false_alarms"]:
                print(f"    PATTERN on a legitimate text: {m}")
            for m in p["misses"]:
                print(f"    PATTERN missed: {m}")


def _sweep(paths: list[Path] | None) -> None:
    print(f"\n{'min_repeats':>12}{'inline_chars':>13}{'fixed_words':>12}{'mode':>8}{'tp':>4}{'fp':>4}{'fn':>4}"
          f"{'precision':>11}{'recall':>8}{'forms legit silent':>20}")
    grid = [(r, c, 2) for r in (4, 6, 8, 10, 12, 16) for c in (80, 160, 240)] + [(8, 160, f) for f in (0, 1, 3)]
    for reps, chars, fixed in grid:
        sc = stuck_scores(paths, min_repeats=reps, min_inline_chars=chars, min_fixed_words=fixed)
        for mode in ("tail", "stream"):
            p, f = sc[mode]["pattern"], sc[mode]["forms"]
            print(f"{reps:>12}{chars:>13}{fixed:>12}{mode:>8}{p['tp']:>4}{p['fp']:>4}{p['fn']:>4}"
                  f"{p['precision']:>11.3f}{p['recall']:>8.3f}{f['legit_silent']:>14}/{f['legit']}")


def main(argv: list[str]) -> int:
    sweep = "--sweep" in argv
    argv = [a for a in argv if a != "--sweep"]
    paths = [Path(a) for a in argv] or None
    scores = corpus_scores(paths)
    print(f"{'verbatim rule':<14}{'mode':<8}{'cases':>6}{'tp':>5}{'fp':>5}{'fn':>5}{'tn':>5}"
          f"{'precision':>11}{'recall':>8}{'exact':>9}")
    for mode, s in scores.items():
        print(f"{'LOOP vs loop':<14}{mode:<8}{s['cases']:>6}{s['tp']:>5}{s['fp']:>5}{s['fn']:>5}{s['tn']:>5}"
              f"{s['precision']:>11.3f}{s['recall']:>8.3f}{s['exact']:>5}/{s['with_expected']:<3}")
        for m in s["mistakes"]:
            print(f"    wrong: {m}")
    _print_stuck(stuck_scores(paths))
    if sweep:
        _sweep(paths)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
