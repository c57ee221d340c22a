"""The first line of the monitor: the backup's health (OK, FAILING, STALLED, NO PROGRESS, NOT SCHEDULED).

The verdict is ``Snapshot.health`` (``horos_async.health``, read through ``status``): the same words
``horos-backup status`` leads with. The badge names the state; beside it the one-line reason, the
fix when there is one, and the ledger's warnings (``Snapshot.warnings``: an index snapshot overdue). The state class colours the badge through app.tcss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from textual.app import ComposeResult
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Label

from horos_async.codes import HealthState
from horos_async.status import Snapshot
from tui.widgets.state import set_state, set_text

BADGES = {HealthState.OK: "✔ OK", HealthState.FAILING: "✖ FAILING", HealthState.STALLED: "⏸ STALLED",
          HealthState.NO_PROGRESS: "… NO PROGRESS", HealthState.NOT_SCHEDULED: "○ NOT SCHEDULED"}
CLASSES = {HealthState.OK: "-ok", HealthState.FAILING: "-error", HealthState.STALLED: "-error",
           HealthState.NO_PROGRESS: "-warning", HealthState.NOT_SCHEDULED: "-warning"}


@dataclass(frozen=True)
class HealthView:
    """What the health line shows for one Snapshot."""

    badge: str
    text: str
    state_class: str


def describe_health(snapshot: Optional[Snapshot]) -> HealthView:
    """The health line's text and state class (pure: tested without a terminal)."""
    if snapshot is None:
        return HealthView("… HEALTH", "reading", "-stale")
    h = snapshot.health
    if h is None:
        return HealthView("? HEALTH", "unknown", "-stale")
    text = h.summary
    for prefix in (h.label + " - ", h.label + " "):  # the badge already says it
        if text.startswith(prefix):
            text = text[len(prefix):]
            break
    if h.fix:
        text = f"{text} · fix: {h.fix}"
    state_class = CLASSES.get(h.state, "-warning")
    if snapshot.warnings:  # e.g. INDEX_SNAPSHOT_SKIPPED: the images are backed up, Horos's index is not
        text = f"{text} · warning: {', '.join(code for code, _since, _detail in snapshot.warnings)}"
        if state_class == "-ok":
            state_class = "-warning"
    return HealthView(BADGES.get(h.state, h.label), text, state_class)


class HealthLine(Widget):
    """One line; set ``snapshot`` to update."""

    snapshot: reactive[Optional[Snapshot]] = reactive(None)

    def compose(self) -> ComposeResult:
        yield Label(id="health-badge", markup=False)
        yield Label(id="health-text", markup=False)

    def on_mount(self) -> None:
        self._show(self.snapshot)

    def watch_snapshot(self, snapshot: Optional[Snapshot]) -> None:
        if self.is_mounted:
            self._show(snapshot)

    def _show(self, snapshot: Optional[Snapshot]) -> None:
        view = describe_health(snapshot)
        set_text(self.query_one("#health-badge", Label), f" {view.badge} ")
        set_text(self.query_one("#health-text", Label), view.text)
        set_state(self, view.state_class)
