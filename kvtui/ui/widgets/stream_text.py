"""StreamText: a generation's text as it streams, soft-wrapped, redrawn only where it changed.

A TextArea re-renders every visible line (with its syntax and cursor machinery) on each insert; at 15 flushes
a second in two panes that alone cost a third of a core. Here appended text re-wraps only the last line, the
wrapped rows are cached as strips, and a refresh covers only the rows that changed. Scrolling repaints the
whole view, so while it follows a stream the view scrolls in jumps: when the text reaches the bottom it moves
up by ``JUMP`` of its height at once and the new rows fill the room below, a full repaint every dozen rows
rather than on every new line. ``settle()`` closes the gap when the stream ends.
"""

from __future__ import annotations

from rich.cells import cell_len, get_character_cell_size
from rich.segment import Segment
from rich.style import Style
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from kvtui.core.view import FIGURES_MARK, TURN_MARK

_CONTROL = {c: " " for c in range(32)}  # a tab or a stray control character takes one cell
JUMP = 0.4  # share of the view's height a following view scrolls by at once


def wrap_spans(line: str, width: int) -> list[tuple[int, int]]:
    """Where a line breaks into rows of at most ``width`` cells: after the last space that fits, else anywhere.

    Args:
        line: one line of text (no newline).
        width: cells per row.

    Returns:
        (start, end) character spans that together cover the line exactly, whitespace included (so character
        offsets into the text stay valid).
    """
    n = len(line)
    if width <= 0 or not line:
        return [(0, n)]
    if line.isascii():
        if n <= width:
            return [(0, n)]
        spans = []
        start = 0
        while n - start > width:
            end = start + width
            cut = end + 1 if line[end] == " " else line.rfind(" ", start, end) + 1
            if cut <= start:
                cut = end
            spans.append((start, cut))
            start = cut
        spans.append((start, n))
        return spans
    spans = []
    start, cells, last_space, k = 0, 0, -1, 0
    while k < n:
        ch = line[k]
        w = get_character_cell_size(ch) if ch >= " " else 1
        if cells + w > width and k > start:
            cut = k + 1 if ch == " " else last_space + 1 if last_space >= start else k
            spans.append((start, cut))
            start, last_space = cut, -1
            if cut > k:
                k, cells = k + 1, 0
            else:  # the row's tail moves down: measure it, then look at this character again
                cells = cell_len(line[start:k].translate(_CONTROL))
            continue
        cells += w
        if ch == " ":
            last_space = k
        k += 1
    spans.append((start, n))
    return spans


class StreamText(ScrollView, can_focus=False):
    """Append-only text with soft wrap, a kept tail of ``max_lines`` lines, and a highlighted end region.

    Args:
        max_lines: logical lines kept (older ones are trimmed in steps; ``trimmed`` counts their characters).
    """

    COMPONENT_CLASSES = {"stream-text--loop", "stream-text--turn", "stream-text--figures"}
    DEFAULT_CSS = """
    StreamText { scrollbar-gutter: stable; scrollbar-size-vertical: 1; overflow-x: hidden; }
    StreamText > .stream-text--loop { background: $error 30%; }
    StreamText > .stream-text--turn { color: $accent; text-style: bold; }
    StreamText > .stream-text--figures { color: $foreground 55%; text-style: italic; }
    """
    # a conversation's lines of its own (kvtui.core.view): the turn's header, and its figures under the reply
    MARKS = ((TURN_MARK, 2), (FIGURES_MARK, 3))

    def __init__(self, max_lines: int = 400, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.max_lines = max_lines
        self.trimmed = 0  # characters cut from the top
        self._lines: list[str] = [""]  # logical lines kept
        self._starts: list[int] = [0]  # offset of each kept line in the whole text (trimmed part included)
        self._rows: list[tuple[int, int, int]] = []  # display rows: (line index, start, end)
        self._first_row: list[int] = [0]  # first row of each line
        self._width = 0
        self._slack = 0  # blank rows below the text: room that a following view fills before it scrolls again
        self._cache: dict[int, Strip] = {}
        self._highlight: int | None = None
        self._styles: tuple[Style, ...] | None = None  # (base, loop, turn, figures): looked up once per style change
        self.following = True  # the view keeps the newest text in sight, until the reader scrolls away
        self._scrolling = False  # a scroll of ours, not the reader's
        self._rewrap(0)

    # -- content ------------------------------------------------------------------------------------

    @property
    def text(self) -> str:
        """The kept text."""
        return "\n".join(self._lines)

    def clear(self) -> None:
        """Start over (a new run)."""
        self.trimmed, self._lines, self._starts, self._highlight, self._slack = 0, [""], [0], None, 0
        self._cache.clear()
        self._rewrap(0)
        self.following = True
        self._scroll(0)
        self.refresh()

    def append(self, text: str) -> None:
        """Add streamed text; follows the end when the view was at the end."""
        if not text:
            return
        follow = self.following
        first = len(self._lines) - 1
        parts = text.split("\n")
        self._lines[-1] += parts[0]
        for part in parts[1:]:
            self._starts.append(self._starts[-1] + len(self._lines[-1]) + 1)
            self._lines.append(part)
        if len(self._lines) > self.max_lines + self.max_lines // 4:  # trim in steps, not on every append
            cut = len(self._lines) - self.max_lines
            self.trimmed = self._starts[cut]
            del self._lines[:cut], self._starts[:cut]
            self._cache.clear()
            self._rewrap(0)
            self.refresh()
        else:
            row = self._first_row[first]
            self._rewrap(first, resize=not follow)  # a following view sizes itself once, in _follow
            self.refresh_lines(row, max(1, len(self._rows) - row))
        if follow:
            self._follow()

    def _follow(self) -> None:
        """Keep the newest row in view, scrolling in jumps (see the module docstring)."""
        height = self.scrollable_content_region.height
        rows = len(self._rows)
        top = int(self.scroll_y)
        if height <= 0 or rows <= top + height:  # still room below (or no size yet): fill it, no scroll
            self._slack = top + height - rows if rows > height > 0 else 0
            self._resize_virtual()
            return
        self._place_end()

    def _place_end(self) -> None:
        """Show the newest row at 1 - JUMP of the height, with room below; the same wherever the view was."""
        height = self.scrollable_content_region.height
        rows = len(self._rows)
        top = max(0, rows - max(1, round(height * (1 - JUMP)))) if rows > height else 0
        self._slack = top + height - rows if rows > height else 0
        self._resize_virtual()
        self._scroll(top)

    def _scroll(self, top: float) -> None:
        self._scrolling = True
        try:
            self.scroll_to(y=top, animate=False, immediate=True, force=True)
        finally:
            self._scrolling = False

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        if not self._scrolling:  # the reader scrolled: follow again only once back at the end
            self.following = new >= self.max_scroll_y

    def settle(self) -> None:
        """The stream has ended: drop the room below the text (a following view then ends at the last row)."""
        if not self._slack:
            return
        self._slack = 0
        self._resize_virtual()
        if self.following:
            self._scroll(self.max_scroll_y)
        self.refresh()

    def highlight_from(self, offset: int | None) -> None:
        """Mark the text from character ``offset`` (in the whole text, trimmed part included) to the end."""
        if offset == self._highlight:
            return
        self._highlight = offset
        self._cache.clear()
        self.refresh()

    # -- layout -------------------------------------------------------------------------------------

    def _rewrap(self, first: int, resize: bool = True) -> None:
        """Re-wrap lines from ``first`` on; rows before them are kept (and their cached strips)."""
        row = self._first_row[first] if first < len(self._first_row) else len(self._rows)
        del self._rows[row:], self._first_row[first:]
        for k in [k for k in self._cache if k >= row]:
            del self._cache[k]
        width = self._width
        for i in range(first, len(self._lines)):
            self._first_row.append(len(self._rows))
            self._rows.extend((i, a, b) for a, b in wrap_spans(self._lines[i], width))
        if resize:
            self._resize_virtual()

    def _resize_virtual(self) -> None:
        size = Size(self._width, len(self._rows) + self._slack)
        if size != self.virtual_size:
            # no layout pass: the pane's size does not depend on its text; only the scroll range and bar change
            bar = self.show_vertical_scrollbar
            self.set_reactive(ScrollView.virtual_size, size)
            self._scroll_update(size)
            if self.show_vertical_scrollbar != bar:  # the bar appears: that one needs a layout pass
                self.refresh(layout=True)

    def on_resize(self) -> None:
        width = self.scrollable_content_region.width
        if width != self._width:
            self._width = width
            self._cache.clear()
            self._rewrap(0, resize=False)
        if self.following:
            self._place_end()  # the same view whether the text came before or after this size
        else:
            self._resize_virtual()
        self.refresh()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._cache.clear()
        self._styles = None

    # -- rendering ----------------------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        row = int(self.scroll_y) + y
        width = self.scrollable_content_region.width
        strip = self._cache.get(row)
        if strip is None:
            strip = self._render_row(row, width)
            if row < len(self._rows):
                self._cache[row] = strip
        return strip

    def _render_row(self, row: int, width: int) -> Strip:
        if self._styles is None:
            base = self.rich_style
            self._styles = (base, *(base + self.get_component_rich_style(f"stream-text--{name}", partial=True)
                                    for name in ("loop", "turn", "figures")))
        base, loop = self._styles[:2]
        if row >= len(self._rows):
            return Strip.blank(width, base)
        i, a, b = self._rows[row]
        line = self._lines[i]
        for mark, style in self.MARKS:
            if line.startswith(mark):
                base = self._styles[style]
        text = line[a:b].translate(_CONTROL)
        segments = []
        mark = None if self._highlight is None else self._highlight - self.trimmed - self._starts[i] - a
        if mark is None or mark >= len(text):
            segments.append(Segment(text, base))
        else:
            mark = max(0, mark)
            if mark:
                segments.append(Segment(text[:mark], base))
            segments.append(Segment(text[mark:], loop))
        return Strip(segments).crop_extend(0, width, base)
