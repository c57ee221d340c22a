"""The latest issues (issues.csv / the ledger's issue log), newest first, filterable by code."""

from __future__ import annotations

import datetime as dt
from typing import Dict, Optional, Tuple

from textual.content import Content
from textual.reactive import reactive
from textual.widgets import DataTable

from horos_async.codes import IssueCode
from horos_async.status import IssueRow
from tui import formatting as fmt

COLUMNS = ("time", "code", "study", "detail")
UID_WIDTH = 24
WARNING_CODES = frozenset({IssueCode.PARTIAL, IssueCode.INCOMING_OVER_LIMIT})
"""Codes that are notices rather than failures (shown in the warning colour, the rest in error)."""


def issue_key(issue: IssueRow, n: int) -> str:
    """A row key unique within one table (issues have no id in the Snapshot)."""
    return f"{n}:{issue.ts}:{issue.code}:{issue.uid}"


def newest_first(issues: Tuple[IssueRow, ...], code: str = "") -> Tuple[IssueRow, ...]:
    """Issues sorted newest first, only ``code`` when given."""
    rows = [i for i in issues if not code or i.code == code]
    return tuple(sorted(rows, key=lambda i: i.ts, reverse=True))


def code_counts(issues: Tuple[IssueRow, ...]) -> Dict[str, int]:
    """How many issues of each code, codes sorted by name."""
    counts: Dict[str, int] = {}
    for i in issues:
        counts[i.code] = counts.get(i.code, 0) + 1
    return dict(sorted(counts.items()))


class IssuesTable(DataTable):
    """Issues table; set ``issues`` (all of them) and ``code_filter`` (empty = every code)."""

    issues: reactive[Tuple[IssueRow, ...]] = reactive(())
    code_filter: reactive[str] = reactive("")

    def __init__(self, zone: Optional[dt.tzinfo] = None, **kwargs) -> None:
        super().__init__(cursor_type="row", **kwargs)
        self.zone = zone
        self.now: Optional[float] = None
        """Reference time: today's issues show a bare clock time (set to the Snapshot's ``taken``)."""
        self.shown: Tuple[IssueRow, ...] = ()

    def on_mount(self) -> None:
        self._show(force=True)

    def watch_issues(self) -> None:
        if self.is_mounted:
            self._show()

    def watch_code_filter(self) -> None:
        if self.is_mounted:
            self._show()

    def selected(self) -> Optional[IssueRow]:
        """The issue under the cursor."""
        if not self.shown or not 0 <= self.cursor_row < len(self.shown):
            return None
        return self.shown[self.cursor_row]

    def on_resize(self) -> None:
        self._show(force=True)

    def _show(self, force: bool = False) -> None:
        rows = newest_first(self.issues, self.code_filter)
        total = len(self.issues)
        what = f"{len(rows)} of {total}" if self.code_filter else f"{total}"
        self.border_title = f"Issues · {what}" + (f" · code {self.code_filter}" if self.code_filter else "")
        if rows == self.shown and not force:
            return
        keep = self.selected()
        self.shown = rows
        times = [fmt.clock_time(i.ts, self.zone, self.now) for i in rows]
        uid_width = max(12, min(UID_WIDTH, self.size.width // 5))
        widths = [max([4] + [len(t) for t in times]), max([4] + [len(i.code) for i in rows]), uid_width]
        room = self.size.width - sum(widths) - 2 * self.cell_padding * len(COLUMNS) - 2  # 2: scrollbar
        widths.append(max(20, room))
        self.clear(columns=True)
        for key, title, width in zip(COLUMNS, ("Time", "Code", "Study UID", "Detail"), widths):
            self.add_column(title, key=key, width=width)
        for n, (i, when) in enumerate(zip(rows, times)):
            style = "$warning" if i.code in WARNING_CODES else "$error"
            self.add_row(Content(when), Content.styled(i.code, style),
                         Content(fmt.shorten(i.uid, uid_width) or fmt.DASH),
                         Content(" ".join(i.detail.split())), key=issue_key(i, n))
        if keep is not None and keep in rows:
            self.move_cursor(row=rows.index(keep), animate=False)
