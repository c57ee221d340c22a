"""The issues screen: every issue the engine reported, newest first, filterable by code, with details.

``c`` cycles the code filter (or pick one in the list at the top), ``enter`` opens one issue in full,
``escape`` or ``i`` goes back to the main screen.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Select

from horos_async.codes import EngineState
from horos_async.status import IssueRow, Snapshot
from tui.screens.issue_detail import IssueDetailScreen
from tui.widgets.engine_header import EngineHeader
from tui.widgets.issues_table import IssuesTable, code_counts


class IssuesScreen(Screen):
    """Full-height issues table with a code filter."""

    BINDINGS = [
        Binding("escape,i", "app.pop_screen", "Back"),
        Binding("c", "cycle_code", "Next code"),
        Binding("a", "all_codes", "All codes"),
        Binding("enter", "detail", "Detail", show=True, priority=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.codes: Tuple[str, ...] = ()

    def compose(self) -> ComposeResult:
        yield EngineHeader(zone=self.app.zone, id="engine")
        yield Select([], prompt="All codes", allow_blank=True, compact=True, id="code-filter")
        yield IssuesTable(zone=self.app.zone, id="all-issues")
        yield Footer()

    def on_mount(self) -> None:
        self.watch(self.app, "snapshot", self.show_snapshot)
        self.query_one(IssuesTable).focus()

    def show_snapshot(self, snapshot: Optional[Snapshot]) -> None:
        """Header and table follow the app's Snapshot; the code list changes only when codes do."""
        self.query_one(EngineHeader).snapshot = snapshot
        if snapshot is None or snapshot.engine == EngineState.UNREADABLE:
            return
        table = self.query_one(IssuesTable)
        table.now = snapshot.taken
        table.issues = snapshot.issues
        counts = code_counts(snapshot.issues)
        if tuple(counts) != self.codes:
            self.codes = tuple(counts)
            select = self.query_one(Select)
            current = table.code_filter
            select.set_options([(f"{code} ({n})", code) for code, n in counts.items()])
            if current in counts:
                select.value = current

    def on_select_changed(self, event: Select.Changed) -> None:
        value = event.value
        self.query_one(IssuesTable).code_filter = value if isinstance(value, str) else ""

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_detail()

    def action_detail(self) -> None:
        """Open the issue under the cursor."""
        issue: Optional[IssueRow] = self.query_one(IssuesTable).selected()
        if issue is not None:
            self.app.push_screen(IssueDetailScreen(issue, self.app.zone))

    def action_cycle_code(self) -> None:
        """All codes → first code → second code … → all codes."""
        cycle: List[str] = [""] + list(self.codes)
        table = self.query_one(IssuesTable)
        current = table.code_filter if table.code_filter in cycle else ""
        self.set_code(cycle[(cycle.index(current) + 1) % len(cycle)])

    def action_all_codes(self) -> None:
        """Clear the code filter."""
        self.set_code("")

    def set_code(self, code: str) -> None:
        """Filter the table to ``code`` ("" = all) and keep the list at the top in step."""
        self.query_one(IssuesTable).code_filter = code
        select = self.query_one(Select)
        if code:
            select.value = code
        else:
            select.clear()
