"""The verdict on the real bundled server: divergence, a prompt suite with repeats, three configs in the app."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from kvtui.core.quality.divergence import first_divergence
from kvtui.core.quality.loops import find_loop  # noqa: F401  (the runner's detector must import)
from kvtui.core.record.recorder import read_record
from kvtui.core.run.live import LiveSession
from kvtui.core.run.prepare import prepare
from kvtui.ui.app import KvtuiApp

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.server

SIDES = {
    "f16": '[[sides]]\nname = "f16"\ncache_type_k = "f16"\ncache_type_v = "f16"\n',
    "q8_0": '[[sides]]\nname = "q8_0"\ncache_type_k = "q8_0"\ncache_type_v = "q8_0"\n',
    "q4_0": '[[sides]]\nname = "q4_0"\ncache_type_k = "q4_0"\ncache_type_v = "q4_0"\n',
    "k8v4": '[[sides]]\nname = "K q8_0 V q4_0"\ncache_type_k = "q8_0"\ncache_type_v = "q4_0"\n',
}


def profile(tmp_path: Path, sides: list[str], prompts: str, sampling: str, run: str = "") -> Path:
    text = ('name = "t"\n[model]\npath = "bundled"\n[server]\nctx_size = 1024\nthreads = 1\n'
            + "".join(SIDES[s] for s in sides) + prompts + f"[sampling]\n{sampling}\n[run]\n{run}\n")
    path = tmp_path / "p.toml"
    path.write_text(text)
    return path


def test_greedy_divergence_matches_the_recorded_ids(tmp_path: Path, server_binary, no_leftover_servers) -> None:
    prof = profile(tmp_path, ["f16", "q4_0"],
                   '[prompt]\ntext = "def fibonacci(n):\\n    \\"\\"\\"Return the n-th Fibonacci number.\\"\\"\\"\\n"\n',
                   "temperature = 0.0\nseed = 1\nn_predict = 48\nn_probs = 5")
    prepared = prepare(prof, server_bin=str(server_binary.path), record=str(tmp_path / "r.toml"))
    assert asyncio.run(LiveSession(prepared).run()) == "done"
    data = read_record(tmp_path / "r.toml")
    (comp,) = data.comparisons
    a, b = (s.runs[0] for s in data.sides)
    expected = first_divergence(a.ids, b.ids)
    assert comp.identical is (expected is None)
    assert comp.first_divergence == expected
    if expected is not None:
        assert a.ids[:expected] == b.ids[:expected] and a.ids[expected] != b.ids[expected]
    # n_probs gave each token its top-5: top-1 agreement and KL on the common prefix
    assert len(a.top_ids) == len(a.pieces) and all(len(t) == 5 for t in a.top_ids)
    assert 0.0 <= comp.top1_agreement <= 1.0 and comp.kl_mean >= 0.0
    # greedy: the generated token is the argmax of its own top list, until the texts part
    assert all(ids[0] == tok for ids, tok in zip(a.top_ids, a.ids, strict=True) if tok >= 0)


def test_suite_with_repeats_gives_medians_pass_rates_and_verdict(tmp_path: Path, server_binary,
                                                                  no_leftover_servers) -> None:
    prompts = ('[[prompts]]\nname = "capital"\ntext = "Question: What is the capital of France?\\nAnswer: The capital '
               'of France is"\nexpected = "Paris"\n'
               '[[prompts]]\nname = "count"\ntext = "1, 2, 3, 4, 5,"\nexpected_regex = "\\\\b6\\\\b"\n')
    prof = profile(tmp_path, ["f16", "q4_0"], prompts, "temperature = 0.7\nseed = 7\nn_predict = 12",
                   'repeats = 3\nschedule = "alternate"')
    record = tmp_path / "suite.toml"
    out = subprocess.run([sys.executable, "-m", "kvtui", "run", str(prof), "--headless", "--record", str(record),
                          "--server-bin", str(server_binary.path)], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    data = read_record(record)
    assert data.schedule == "alternate"
    for side in data.sides:
        runs = side.runs
        assert [(r.prompt, r.repeat) for r in runs] == [(p, k) for k in range(3) for p in ("capital", "count")]
        assert [r.seed for r in runs] == [7, 7, 8, 8, 9, 9]  # each repeat its own seed, shared by the sides
        assert all(r.check is not None and r.check.answer_ok is not None for r in runs)
        assert {r.schedule for r in runs} == {"alternate"}  # each run says how it was measured
    measures = {v.measure: v for v in data.verdicts}
    assert set(measures) == {"tg", "pp", "answers"}
    assert measures["tg"].pairs == 6 and measures["tg"].test == "sign test"
    assert measures["answers"].test == "McNemar exact"
    assert len(data.comparisons) == 6
    # the headless table shows medians with min-max, pass rates and the paired verdicts
    assert "answers" in out.stdout and "/6" in out.stdout and "paired verdicts" in out.stdout
    assert "sign test p=" in out.stdout and "McNemar exact p=" in out.stdout
    assert any(ch == "(" for ch in out.stdout.split("kvtui result", 1)[1])  # a median (min-max)


async def test_three_configs_in_the_app(tmp_path: Path, server_binary, no_leftover_servers) -> None:
    prof = profile(tmp_path, ["f16", "q8_0", "k8v4"], '[prompt]\ntext = "The quick brown fox"\n',
                   "temperature = 0.0\nn_predict = 16")
    prepared = prepare(prof, server_bin=str(server_binary.path), record=str(tmp_path / "three.toml"))
    app = KvtuiApp(LiveSession(prepared))
    async with app.run_test(size=(180, 45)) as pilot:
        for _ in range(600):
            if app.state.finished is not None:
                break
            await pilot.pause(0.1)
        assert app.state.finished == "done"
        app.draw_now()
        await pilot.pause()
        panes = app.panes()
        assert len(panes) == 3 and all(p.region.width > 40 for p in panes)  # three columns side by side
        assert [s.cache_label for s in app.state.sides] == ["K f16 / V f16", "K q8_0 / V q8_0", "K q8_0 / V q4_0"]
        assert all(p.view.text for p in panes)
        await pilot.press("q")
    data = read_record(tmp_path / "three.toml")
    assert [s.status for s in data.sides] == ["done"] * 3
    assert {(c.base, c.other) for c in data.comparisons} == {("f16", "q8_0"), ("f16", "K q8_0 V q4_0")}
