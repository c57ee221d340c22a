"""The main screen: engine state, current batch, archive progress, INCOMING load, latest issues, log.

It subscribes to the app's ``snapshot``, ``incoming_history`` and ``log_lines`` and hands them to its
widgets; it reads nothing itself.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Footer

from horos_async.codes import EngineState
from horos_async.status import Snapshot
from tui.widgets.archive_progress import ArchiveProgress
from tui.widgets.engine_header import EngineHeader
from tui.widgets.incoming_gauge import IncomingGauge
from tui.widgets.issues_table import IssuesTable
from tui.widgets.job_table import JobTable
from tui.widgets.log_pane import LogPane
from tui.widgets.month_table import MonthTable


OLD_STATES = (EngineState.STALE, EngineState.UNREADABLE)
"""Engine states whose panels show last known values, faded, never as live."""


class MainScreen(Screen):
    """Everything at a glance; ``i`` opens the issues screen, ``l`` toggles the log pane."""

    BINDINGS = [
        Binding("i", "app.issues", "Issues"),
        Binding("l", "toggle_log", "Log"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.last_good: Optional[Snapshot] = None
        """The latest readable Snapshot (panels keep showing it while the state is unreadable)."""

    def compose(self) -> ComposeResult:
        zone = self.app.zone
        yield EngineHeader(zone=zone, id="engine")
        with Horizontal(id="top"):
            yield JobTable(id="jobs")
            yield MonthTable(id="months")
        with Horizontal(id="gauges"):
            yield ArchiveProgress(id="archive")
            yield IncomingGauge(id="incoming")
        yield IssuesTable(zone=zone, id="latest-issues")
        yield LogPane(id="log")
        yield Footer()

    def on_mount(self) -> None:
        self.watch(self.app, "snapshot", self.show_snapshot)
        self.watch(self.app, "incoming_history", self.show_history)
        self.watch(self.app, "log_lines", self.show_log)
        self.query_one(JobTable).focus()

    def show_snapshot(self, snapshot: Optional[Snapshot]) -> None:
        """Hand one Snapshot to every widget; while it is unreadable the panels keep the last good one."""
        self.query_one(EngineHeader).snapshot = snapshot
        if snapshot is not None and snapshot.engine != EngineState.UNREADABLE:
            self.last_good = snapshot
        data = self.last_good
        old = snapshot is not None and snapshot.engine in OLD_STATES
        self.set_class(old, "-data-stale")
        jobs = self.query_one(JobTable)
        jobs.border_subtitle = "last known state, not live" if old and data is not None else ""
        jobs.snapshot = data
        self.query_one(MonthTable).snapshot = data
        self.query_one(ArchiveProgress).snapshot = data
        self.query_one(IncomingGauge).snapshot = data
        issues = self.query_one("#latest-issues", IssuesTable)
        if data is not None:
            issues.now = data.taken
            issues.issues = data.issues

    def show_history(self, history: Sequence[float]) -> None:
        """INCOMING counts seen so far."""
        self.query_one(IncomingGauge).history = history

    def show_log(self, lines: Tuple[str, ...]) -> None:
        """The engine log tail (only read while the pane is open)."""
        self.query_one(LogPane).tail_lines = lines

    def action_toggle_log(self) -> None:
        """Show or hide the log pane; the app reads the log only while it is shown."""
        self.toggle_class("-log-open")
        self.app.log_wanted = self.has_class("-log-open")
        if self.app.log_wanted:
            self.app.refresh_now()
