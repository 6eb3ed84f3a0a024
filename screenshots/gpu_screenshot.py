"""Screenshot the real app during a live run (made on an NVIDIA H200 for the README's "On a GPU").

Unlike make_screenshots.py (replays of recorded sessions), this starts the real
llama-servers: the app runs headless under Textual's Pilot, and the SVG is saved
once both panes stream and show a memory reading.

With ``--progress`` it waits instead for a side's prompt progress (a long prompt being processed) and
keeps the session's record (``--record``).

Usage: python screenshots/gpu_screenshot.py --model PATH.gguf --server-bin PATH/llama-server
           [--profile profiles/gpu-demo.toml] [--n-predict 1500] [--out-dir screenshots]
       python screenshots/gpu_screenshot.py --progress --profile profiles/h200-four-caches.toml \
           --name gpu-long-prompt.svg --record sessions/examples/h200-long-prompt.toml ...
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from kvtui.core.profiles import load_profile  # noqa: E402
from kvtui.core.run.live import LiveSession  # noqa: E402
from kvtui.core.run.prepare import prepare  # noqa: E402
from kvtui.ui.app import KvtuiApp  # noqa: E402

SIZE = (150, 42)


async def shot(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile)
    # a longer generation than the headless run, so that the screenshot catches both sides streaming
    profile = replace(profile, sampling=replace(profile.sampling, n_predict=args.n_predict))
    if args.progress:
        profile = replace(profile, sides=profile.sides[:args.sides])
    prepared = prepare(profile, model=args.model, server_bin=args.server_bin, record=args.record,
                       no_record=not args.record)
    session = LiveSession(prepared)
    app = KvtuiApp(session)
    async with app.run_test(size=SIZE) as pilot:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + args.timeout

        def streaming() -> bool:
            sides = app.state.sides
            if args.progress:  # a prompt part-way through, its progress line on screen
                return any(s.progress is not None and s.progress.fraction is not None
                           and 0.1 <= s.progress.fraction <= 0.9 for s in sides)
            return (len(sides) == 2 and all(s.tokens >= args.min_tokens and s.mem_mib is not None for s in sides))

        while not streaming():
            if loop.time() > deadline or app.state.finished is not None:
                print("gave up waiting: " + ", ".join(f"{s.name} {s.status} {s.tokens} tok"
                                                       for s in app.state.sides), file=sys.stderr)
                break
            await pilot.pause(0.01 if args.progress else 0.05)
        if args.progress:  # a prompt takes well under a second here: draw this state now, not at the next frame
            for pane in app.panes():
                pane.refresh_view(session.now(), force=True)
            await pilot.pause(0)
        else:
            await pilot.pause(0.3)  # a text flush and a figures refresh
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        app.save_screenshot(args.name, args.out_dir)
        print(Path(args.out_dir) / args.name, [(s.name, s.status, s.tokens) for s in app.state.sides])
        if not args.progress:
            await pilot.press("X")  # abort both, let the streams close, then quit
        while app.state.finished is None and loop.time() < deadline + 30:
            await pilot.pause(0.1)
        await pilot.press("q")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=str(REPO / "profiles" / "gpu-demo.toml"))
    ap.add_argument("--model")
    ap.add_argument("--server-bin")
    ap.add_argument("--n-predict", type=int, default=1500)
    ap.add_argument("--min-tokens", type=int, default=120)
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--out-dir", default=str(HERE))
    ap.add_argument("--name", default="gpu-running.svg")
    ap.add_argument("--progress", action="store_true", help="shoot a long prompt's progress instead")
    ap.add_argument("--sides", type=int, default=2, help="with --progress: the profile's first N sides")
    ap.add_argument("--record", help="keep the session's record here")
    return asyncio.run(shot(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
