"""One issue in full: time, code, study, ZIP path and the whole detail text."""

from __future__ import annotations

import datetime as dt
from typing import Optional

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from horos_async.status import IssueRow
from tui import formatting as fmt


class IssueDetailScreen(ModalScreen[None]):
    """A modal with every field of one issue; any of escape, enter or q closes it."""

    BINDINGS = [Binding("escape,enter,q", "dismiss", "Close")]

    def __init__(self, issue: IssueRow, zone: Optional[dt.tzinfo]) -> None:
        super().__init__()
        self.issue = issue
        self.zone = zone

    def compose(self) -> ComposeResult:
        i = self.issue
        with Vertical(id="detail-box"):
            yield Label(f"{i.code}", id="detail-code", markup=False)
            yield Static(f"time    {fmt.clock_time(i.ts, self.zone)}\n"
                         f"study   {i.uid or fmt.DASH}\n"
                         f"zip     {i.zip_path or fmt.DASH}", id="detail-fields", markup=False)
            with VerticalScroll(id="detail-scroll"):
                yield Static(i.detail or "(no detail)", id="detail-text", markup=False)
            yield Label("escape / enter: close", id="detail-hint", markup=False)

    def on_mount(self) -> None:
        self.query_one("#detail-box").border_title = "Issue"
