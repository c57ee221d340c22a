"""A one-line bar gauge that fills its width; its colour comes from CSS (the parent's state class)."""

from __future__ import annotations

from typing import Optional

from textual.content import Content
from textual.reactive import reactive
from textual.widget import Widget

from tui.formatting import BAR_EMPTY, BAR_FULL


class Meter(Widget):
    """A bar ``fraction`` full (0..1, clamped); empty and dim when the fraction is unknown."""

    DEFAULT_CSS = """
    Meter { height: 1; width: 1fr; }
    """

    fraction: reactive[Optional[float]] = reactive(None)
    """How full the bar is, 0..1; None = unknown."""

    def render(self) -> Content:
        width = max(1, self.content_size.width)
        frac = self.fraction
        filled = 0 if frac is None else int(round(max(0.0, min(1.0, frac)) * width))
        return Content.assemble(BAR_FULL * filled, (BAR_EMPTY * (width - filled), "dim"))
