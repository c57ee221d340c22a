"""The tail of the engine log (``logs/horos-backup.log``), read-only, toggled with ``l``."""

from __future__ import annotations

from typing import Sequence, Tuple

from textual.reactive import reactive
from textual.widgets import Log

from tui.source import LOG_LINES


def new_lines(old: Sequence[str], new: Sequence[str]) -> Tuple[bool, Sequence[str]]:
    """``(append, lines)``: the lines to append when ``new`` continues ``old``, else everything to redraw."""
    if not old:
        return False, new
    overlap = min(len(old), len(new))
    for k in range(overlap, 0, -1):  # longest suffix of old that is a prefix of new
        if list(old[-k:]) == list(new[:k]):
            return True, new[k:]
    return False, new


class LogPane(Log):
    """Shows ``tail_lines``; appends when the log grew, redraws after a rotation."""

    tail_lines: reactive[Tuple[str, ...]] = reactive(())

    def __init__(self, **kwargs) -> None:
        super().__init__(max_lines=LOG_LINES, auto_scroll=True, **kwargs)

    def on_mount(self) -> None:
        self.border_title = "Engine log"

    def watch_tail_lines(self, old: Tuple[str, ...], new: Tuple[str, ...]) -> None:
        append, lines = new_lines(old, new)
        if not append:
            self.clear()
        if lines:
            self.write_lines(lines)
