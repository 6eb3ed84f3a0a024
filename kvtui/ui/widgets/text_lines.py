"""TextLines: a few lines of styled text that repaint one by one.

A Static repaints all its lines when any changes. A pane's figures change a number or two at a time (the token
count, a memory sample) twice a second, and each repainted line costs as much as the rest of the frame; here
only the lines whose text changed are repainted. Lines never wrap: what does not fit ends in an ellipsis.
"""

from __future__ import annotations

from rich.segment import Segment
from rich.text import Text
from textual.geometry import Region
from textual.strip import Strip
from textual.widget import Widget


class TextLines(Widget):
    """Shows ``lines``; its height follows their number."""

    DEFAULT_CSS = """
    TextLines { height: auto; }
    """

    def __init__(self, *, classes: str | None = None) -> None:
        super().__init__(classes=classes)
        self.lines: list[Text] = []
        self._plain: list[tuple[str, tuple]] = []  # what each line shows: text and styles, to find what changed
        self._strips: dict[int, Strip] = {}

    def set_lines(self, lines: list[Text]) -> None:
        """Show these lines; repaint only those that differ from what is shown."""
        keys = [(t.plain, tuple((s.start, s.end, str(s.style)) for s in t.spans), str(t.style)) for t in lines]
        if keys == self._plain:
            return
        old = self._plain
        self.lines, self._plain = lines, keys
        if len(keys) != len(old):
            self._strips.clear()
            self.styles.height = len(keys)  # a layout pass, only when the number of lines changes
            self.refresh()
            return
        for y, (a, b) in enumerate(zip(old, keys, strict=True)):
            if a != b:
                self._strips.pop(y, None)
                self.refresh(Region(0, y, self.size.width, 1))

    def get_content_height(self, container, viewport, width: int) -> int:  # type: ignore[no-untyped-def]
        return len(self.lines)

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips.clear()

    def on_resize(self) -> None:
        self._strips.clear()

    def render_line(self, y: int) -> Strip:
        strip = self._strips.get(y)
        if strip is None:
            strip = self._strips[y] = self._render_row(y)
        return strip

    def _render_row(self, y: int) -> Strip:
        base = self.rich_style
        width = self.size.width
        if y >= len(self.lines):
            return Strip.blank(width, base)
        text = self.lines[y].copy()
        text.no_wrap, text.overflow = True, "ellipsis"
        text.truncate(width, overflow="ellipsis")
        segments = Segment.apply_style(text.render(self.app.console), base)
        return Strip(list(segments)).crop_extend(0, width, base)
