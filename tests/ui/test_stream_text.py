"""StreamText: wrapping that keeps character offsets, a view that follows in jumps, a reader who scrolls away."""

from __future__ import annotations

import random

from rich.cells import cell_len
from textual.app import App, ComposeResult

from kvtui.ui.widgets.stream_text import JUMP, StreamText, wrap_spans

CODE = "".join(f"def f{k}(x):\n    return x * {k}  # a comment long enough to wrap in a narrow pane\n\n"
               for k in range(40))


def test_wrap_spans_cover_the_line_and_fit_the_width() -> None:
    rng = random.Random(7)
    alphabet = "ab cd  e\tf日本語 x"
    for _ in range(5000):
        line = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        width = rng.randint(1, 15)
        spans = wrap_spans(line, width)
        assert spans[0][0] == 0 and spans[-1][1] == len(line)
        assert all(b == c and b > a for (a, b), (c, _) in zip(spans, spans[1:], strict=False))
        for a, b in spans:
            row = line[a:b].replace("\t", " ").rstrip(" ")
            assert cell_len(row) <= width or len(row) == 1  # a wide character in a 1-cell row


def test_words_break_at_spaces() -> None:
    line = "the quick brown fox jumps"
    assert [line[a:b] for a, b in wrap_spans(line, 10)] == ["the quick ", "brown fox ", "jumps"]


class Host(App):
    def compose(self) -> ComposeResult:
        yield StreamText(400)


async def test_the_view_follows_in_jumps_and_stops_when_the_reader_scrolls_up() -> None:
    app = Host()
    async with app.run_test(size=(40, 12)) as pilot:
        view = app.query_one(StreamText)
        await pilot.pause()
        height = view.scrollable_content_region.height
        scrolls = []
        for piece in CODE.split(" "):
            view.append(piece + " ")
            if view.scroll_y not in scrolls:
                scrolls.append(view.scroll_y)
        assert view.text == CODE + " "
        rows = len(view._rows)
        # the newest row is in view, at or below 1 - JUMP of the height; the view moved in steps of JUMP of it
        assert round(height * (1 - JUMP)) <= rows - view.scroll_y <= height
        steps = [b - a for a, b in zip(scrolls, scrolls[1:], strict=False)]
        assert steps and min(steps) >= round(height * JUMP) - 1, steps
        assert len(scrolls) < rows / (height * JUMP) + 2  # far fewer repaints of the whole view than rows
        view.settle()
        assert view.scroll_y == rows - height  # the end of the text at the bottom
        view.scroll_to(y=0, animate=False, immediate=True)  # the reader goes back to the start
        await pilot.pause()
        assert not view.following
        view.append("more\n")
        assert view.scroll_y == 0  # not pulled away from what they read
        view.clear()
        assert view.following and view.text == "" and view.scroll_y == 0


async def test_the_view_is_the_same_whether_text_came_before_or_after_its_size() -> None:
    early, late = Host(), Host()
    async with early.run_test(size=(40, 12)) as pilot:
        view = early.query_one(StreamText)
        view.append(CODE)  # before the first resize has given it a size
        await pilot.pause()
        before = (view.scroll_y, len(view._rows))
    async with late.run_test(size=(40, 12)) as pilot:
        await pilot.pause()
        view = late.query_one(StreamText)
        view.append(CODE)
        await pilot.pause()
        after = (view.scroll_y, len(view._rows))
    assert before == after


async def test_the_loop_region_is_marked_from_its_offset() -> None:
    app = Host()
    async with app.run_test(size=(40, 12)) as pilot:
        view = app.query_one(StreamText)
        view.append("hello world\nab ab ab ab\n")
        view.highlight_from(len("hello world\n"))
        await pilot.pause()
        loop_style = view.get_component_rich_style("stream-text--loop", partial=True)
        first = view.render_line(int(0 - view.scroll_y + view._first_row[0]))
        second = view.render_line(int(view._first_row[1] - view.scroll_y))
        assert all(seg.style.bgcolor != loop_style.bgcolor for seg in first if seg.text.strip())
        assert any(seg.style.bgcolor == loop_style.bgcolor for seg in second if seg.text.strip())
