"""80x24 is the smallest supported terminal: what must stay visible there, and at 120x40 and 200x50.

Every pane keeps its side, KV types, tok/s, tokens, KV MiB, memory and status (or its loop badge); the header
keeps two unbroken lines with the mode, the schedule and the session's end; the footer keeps `q quit` and
`? help`. (The snapshots in tests/snapshots show the same screens as pictures.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kvtui.core.record.recorder import read_record
from kvtui.core.record.replay import Replayer
from kvtui.ui.app import KvtuiApp

SESSIONS = Path(__file__).resolve().parents[1] / "data" / "sessions"


def screen_lines(app: KvtuiApp) -> list[str]:
    strips = app.screen._compositor.render_strips()
    return ["".join(segment.text for segment in strip) for strip in strips]


async def settled_lines(app: KvtuiApp, pilot) -> list[str]:
    """The screen once the replay has stopped, its state is drawn and the footer composed: waits for those,
    never for a fixed time (a busy machine gets to a frame late; a fixed pause made this test flaky)."""
    await app.workers.wait_for_complete()
    app.draw_now()
    for _ in range(200):
        await pilot.pause(0.05)
        lines = screen_lines(app)
        if lines[-1].strip():
            break
    return lines


def pane_texts(lines: list[str], panes: int) -> list[str]:
    """Each pane's column of the screen, from its top border to its bottom border."""
    top = next(i for i, ln in enumerate(lines) if "╭" in ln or "╔" in ln or "┏" in ln)
    bottom = max(i for i, ln in enumerate(lines) if "╰" in ln or "╚" in ln or "┗" in ln)
    width = len(lines[0])
    cols = [(k * width // panes, (k + 1) * width // panes) for k in range(panes)]
    return ["\n".join(ln[a:b] for ln in lines[top:bottom + 1]) for a, b in cols]


def frozen(name: str, at: float | None = None) -> KvtuiApp:
    record = read_record(SESSIONS / name)
    if at is None:
        at = float(record.duration_s or 0) + 1
    elif at < 0:  # mid-run: both sides streaming
        runs = [s.runs[0] for s in record.sides]
        start, end = max(r.t_sent for r in runs), min(r.t_end for r in runs)
        at = start + (end - start) * 0.45
    return KvtuiApp(Replayer(record, stop_at=at))


CASES = [
    ("demo.toml", -1, ("generating",)),
    ("demo.toml", None, ("done",)),
    ("loop.toml", None, ("LOOP",)),
    ("crash.toml", None, ("done", "crashed")),
]


@pytest.mark.parametrize("size", [(80, 24), (120, 40), (200, 50)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize(("name", "at", "statuses"), CASES, ids=["running", "finished", "loop", "crashed"])
async def test_what_must_stay_visible(size: tuple[int, int], name: str, at: float | None,
                                      statuses: tuple[str, ...]) -> None:
    app = frozen(name, at)
    async with app.run_test(size=size) as pilot:
        lines = await settled_lines(app, pilot)
        state = app.state
    header = lines[:2]
    assert header[0].startswith(" kvtui ") and state.started.profile_name in header[0]
    assert re.search(r"mode parallel .*schedule simultaneous", header[1]), header
    if state.finished:
        assert f"session {state.finished}" in header[1]
    assert not any(ln.rstrip().endswith("…") and "(" not in ln for ln in header), header  # cut only in the reason
    footer = lines[-1]
    assert "q quit" in footer and "? help" in footer
    for k, (pane, s) in enumerate(zip(pane_texts(lines, 2), state.sides, strict=True)):
        assert s.name in pane and s.cache_type_k in pane, pane
        assert re.search(r"\d+\.\d tok/s", pane), pane
        assert re.search(rf"\b{s.tokens:,} tok|tokens {s.tokens:,}", pane), pane
        assert f"{s.kv_cache_mib:.2f} MiB" in pane, pane
        assert re.search(r"RAM (\(no NVIDIA GPU\) )?[\d,]+ MiB", pane), pane
        assert any(st in pane for st in statuses), pane
        assert pane.count("╮") + pane.count("╗") + pane.count("┓") == 1, f"pane {k} is cut or wraps"
