"""Per-month coverage: one row per month folder with studies done of eligible (shown on wide terminals)."""

from __future__ import annotations

from typing import Optional, Tuple

from textual.content import Content
from textual.reactive import reactive
from textual.widgets import DataTable

from horos_async.status import Snapshot
from tui import formatting as fmt

BAR_WIDTH = 6


class MonthTable(DataTable):
    """Months newest first; set ``snapshot`` to update."""

    snapshot: reactive[Optional[Snapshot]] = reactive(None)

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", **kwargs)
        self.shown: Tuple[Tuple[str, int, int], ...] = ()

    def on_mount(self) -> None:
        self.border_title = "Months"
        for key, title, width in (("month", "Month", 7), ("done", "Done", 11), ("bar", "Coverage", BAR_WIDTH + 5)):
            self.add_column(title, key=key, width=width)
        self._show()

    def watch_snapshot(self) -> None:
        if self.is_mounted:
            self._show()

    def _show(self) -> None:
        months = tuple(reversed(self.snapshot.months)) if self.snapshot else ()
        if months == self.shown:
            return
        complete = sum(1 for _, eligible, done in months if eligible and done >= eligible)
        self.border_title = f"Months · {complete}/{len(months)} complete" if months else "Months"
        if [m for m, _, _ in months] == [m for m, _, _ in self.shown]:
            for old, new in zip(self.shown, months):
                if old != new:
                    for column, cell in zip(("month", "done", "bar"), self._cells(new)):
                        self.update_cell(new[0], column, cell)
        else:
            self.clear()
            for m in months:
                self.add_row(*self._cells(m), key=m[0])
        self.shown = months

    @staticmethod
    def _cells(month: Tuple[str, int, int]) -> Tuple[Content, ...]:
        name, eligible, done = month
        frac = done / eligible if eligible else None
        style = "$success" if eligible and done >= eligible else ""
        pct = fmt.percent(done, eligible)
        return (Content(name), Content(f"{fmt.count(done)}/{fmt.count(eligible)}"),
                Content.styled(f"{fmt.bar(frac, BAR_WIDTH)} {pct or 0:3.0f}%", style))
