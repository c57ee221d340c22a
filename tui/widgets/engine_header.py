"""Engine state at a glance: running, paused by a guard, idle, stale, never run or unreadable.

Two lines: a badge with the state and what matters for it (since when and which batch; last and next
run; which guard); below, the engine's own one-line explanation and the host name on the right. The
state class (``-ok``, ``-warning``, ``-error``, ``-stale``) colours the badge through app.tcss. Stale
and unreadable are never shown as idle.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Optional

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Label

from horos_async.codes import EngineState, GuardCode
from horos_async.status import RunRow, Snapshot
from tui import formatting as fmt
from tui.widgets.state import set_state, set_text

GUARDS = {code.value: code.meaning for code in GuardCode}
"""Friendly names of the guards that stop or pause a run, from the registry; unknown codes (a newer
engine's) are shown as they are."""


@dataclass(frozen=True)
class HeaderView:
    """What the header shows for one Snapshot."""

    badge: str
    summary: str
    detail: str
    state_class: str


def last_run(snapshot: Snapshot) -> Optional[RunRow]:
    """The most recent run the ledger knows about."""
    return max(snapshot.runs, key=lambda r: r.started) if snapshot.runs else None


def describe(snapshot: Optional[Snapshot], zone: Optional[dt.tzinfo]) -> HeaderView:
    """Turn a Snapshot into the header's text and state class (pure: tested without a terminal)."""
    if snapshot is None:
        return HeaderView("… STARTING", "reading engine status", "", "-stale")
    s, now = snapshot, snapshot.taken
    state = s.engine
    if state == EngineState.RUNNING:
        parts = [f"since {fmt.clock_time(s.run_started, zone, now)} ({fmt.duration(now - s.run_started)})"
                 if s.run_started else "started just now"]
        if s.batch_index:
            parts.append(f"batch {s.batch_index}")
        if s.phase:
            parts.append(s.phase)
        if s.pid:
            parts.append(f"pid {s.pid}")
        return HeaderView("▶ RUNNING", " · ".join(parts), s.detail, "-ok")
    if state == EngineState.PAUSED:
        guard = GUARDS.get(s.guard_code, s.guard_code or "a guard stopped the run")
        return HeaderView("‖ PAUSED", f"by guard: {guard}", s.guard_detail or s.detail, "-warning")
    if state == EngineState.STALE:
        parts = ["engine stopped publishing"]
        if s.pid:
            parts.append(f"pid {s.pid}")
        return HeaderView("✖ STALE", " · ".join(parts), s.detail or "state is old; the engine died or hung",
                          "-stale")
    if state == EngineState.UNREADABLE:
        return HeaderView("? UNREADABLE", "cannot read the engine's state", s.detail, "-error")
    schedule = _schedule(s, zone)
    if state == EngineState.NEVER_RUN:
        return HeaderView("○ NEVER RUN", schedule, s.detail or "no run has been recorded yet", "-warning")
    if state == EngineState.IDLE:
        run = last_run(s)
        parts, detail = [], s.detail
        if run is not None and run.ended is None:  # killed without a trace: say so, do not guess
            parts.append(f"last run started {fmt.clock_time(run.started, zone, now)}, no end recorded")
        elif run is not None:
            parts.append(f"last run {run.outcome or '?'} {fmt.clock_time(run.ended, zone, now)}")
        if run is not None:
            counts = f"last run: {run.studies_done} done, {run.studies_failed} failed"
            detail = f"{counts} · {detail}" if detail else counts
        parts.append(schedule)
        failed_run = run is not None and run.exit_code not in (None, 0)
        cls = "-warning" if failed_run or not s.launchd_installed else "-ok"
        return HeaderView("○ IDLE", " · ".join(parts), detail, cls)
    return HeaderView(f"? {state.upper()}", "unknown engine state", s.detail, "-warning")


def _schedule(s: Snapshot, zone: Optional[dt.tzinfo]) -> str:
    if not s.launchd_installed:
        return "not scheduled: no launchd agent"  # short: it shares an 80-column line with the last run
    if s.next_run is None:
        return "next run: when launchd starts it"
    return f"next ≈ {fmt.clock_time(s.next_run, zone, s.taken)} ({fmt.ago(s.next_run, s.taken)})"


class EngineHeader(Widget):
    """The two header lines; set ``snapshot`` to update."""

    snapshot: reactive[Optional[Snapshot]] = reactive(None)

    def __init__(self, zone: Optional[dt.tzinfo] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.zone = zone
        self.view = describe(None, zone)

    def compose(self) -> ComposeResult:
        with Horizontal(id="engine-line"):
            yield Label(id="engine-badge", markup=False)
            yield Label(id="engine-summary", markup=False)
        with Horizontal(id="engine-detail-line"):
            yield Label(id="engine-detail", markup=False)
            yield Label(id="engine-host", markup=False)

    def on_mount(self) -> None:
        self._show(self.snapshot)

    def watch_snapshot(self, snapshot: Optional[Snapshot]) -> None:
        if self.is_mounted:
            self._show(snapshot)

    def _show(self, snapshot: Optional[Snapshot]) -> None:
        view = self.view = describe(snapshot, self.zone)
        set_text(self.query_one("#engine-badge", Label), f" {view.badge} ")
        set_text(self.query_one("#engine-summary", Label), view.summary)
        set_text(self.query_one("#engine-host", Label), snapshot.host if snapshot else "")
        set_text(self.query_one("#engine-detail", Label), view.detail)
        set_state(self, view.state_class)
