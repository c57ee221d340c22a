"""What the operator sees as the engine's state changes: the monitor driven headless by Pilot.

A scripted Source stands in for the engine; each ``step`` is one refresh (timer → worker → message →
widgets). The timer is set to an hour so only the test decides when a read happens.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path
from typing import List

os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")

from textual.widgets import Label

from horos_async.config import Config
from horos_async.status import IssueRow, Job
from tui.app import HUNG_SECONDS, make_app
from tui.launcher import Launch
from tui.scripted import SAMPLE_NOW, SAMPLE_UIDS, ScriptedSource, sample_log, sample_snapshot
from tui.screens.confirm_run import ConfirmRunScreen
from tui.screens.help import HelpScreen
from tui.screens.issue_detail import IssueDetailScreen
from tui.screens.issues import IssuesScreen
from tui.screens.main import MainScreen
from tui.widgets.archive_progress import ArchiveProgress
from tui.widgets.engine_header import EngineHeader
from tui.widgets.incoming_gauge import IncomingGauge
from tui.widgets.issues_table import IssuesTable
from tui.widgets.job_table import JobTable
from tui.widgets.log_pane import LogPane


class Clock:
    """A settable clock."""

    def __init__(self, now: float = SAMPLE_NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def config(tmp_path: Path) -> Config:
    return Config(horos_data=tmp_path / "horos", backup_dir=tmp_path / "backup", timezone="America/Sao_Paulo")


def app_for(tmp_path, steps, clock=None, **kwargs):
    src = steps if isinstance(steps, ScriptedSource) else ScriptedSource(steps, log=sample_log())
    return make_app(config(tmp_path), source=src, clock=clock or Clock(), refresh=3600, **kwargs), src


async def settle(pilot) -> None:
    """Let the pending read finish and its message reach the widgets."""
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def step(pilot) -> None:
    """One refresh, as the timer would do it."""
    await settle(pilot)
    pilot.app.refresh_now()
    await settle(pilot)


def text(widget: Label) -> str:
    return str(widget.render())


def job(progress: float, uid: str = SAMPLE_UIDS[0]) -> Job:
    total = 500_000_000
    return Job(uid, f"STUDY_{uid}.zip", int(980 * progress), 980, int(total * progress), total, SAMPLE_NOW - 60)


async def test_job_progress_advances(tmp_path):
    steps = [sample_snapshot(jobs=(job(0.10),)), sample_snapshot(jobs=(job(0.60),)),
             sample_snapshot(jobs=(), finished=sample_snapshot().finished)]
    app, _ = app_for(tmp_path, steps)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        table = app.screen.query_one(JobTable)
        assert table.row_for(SAMPLE_UIDS[0]).progress == "█░░░░░░░░░  10%"
        assert str(table.get_cell(f"job:{SAMPLE_UIDS[0]}", "progress")) == "█░░░░░░░░░  10%"
        assert table.row_for(SAMPLE_UIDS[0]).files == "98/980"
        await step(pilot)
        assert table.row_for(SAMPLE_UIDS[0]).progress == "██████░░░░  60%"
        assert str(table.get_cell(f"job:{SAMPLE_UIDS[0]}", "files")) == "588/980"
        await step(pilot)
        assert table.row_for(SAMPLE_UIDS[0]) is None
        assert table.border_title.startswith("Batch 3 · 0 running")


async def test_cursor_stays_on_the_same_study_across_refreshes(tmp_path):
    one = sample_snapshot()
    two = dataclasses.replace(one, queued=one.queued[1:], jobs=one.jobs + (job(0.01, SAMPLE_UIDS[2]),))
    app, _ = app_for(tmp_path, [one, two])
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("down")  # second running job
        table = app.screen.query_one(JobTable)
        assert table.rows_shown[table.cursor_row].key == f"job:{SAMPLE_UIDS[1]}"
        await step(pilot)  # rows were rebuilt (a queued study started)
        assert table.rows_shown[table.cursor_row].key == f"job:{SAMPLE_UIDS[1]}"


async def test_an_issue_appears_and_opens_in_the_issues_screen(tmp_path):
    new = IssueRow(SAMPLE_NOW - 5, "ZIP_FAIL", SAMPLE_UIDS[3], "2019_01/x.zip",
                   "3 attempts produced no valid ZIP; last: CRC mismatch in 00012/IM-0001-0044.dcm")
    before = sample_snapshot()
    after = sample_snapshot(issues=before.issues + (new,))
    app, _ = app_for(tmp_path, [before, after])
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        latest = app.screen.query_one("#latest-issues", IssuesTable)
        assert latest.row_count == 3 and latest.border_title == "Issues · 3"
        await step(pilot)
        assert latest.row_count == 4 and latest.border_title == "Issues · 4"
        assert latest.shown[0] == new  # newest first
        assert str(latest.get_row_at(0)[1]) == "ZIP_FAIL"

        await pilot.press("i")
        assert isinstance(app.screen, IssuesScreen)
        table = app.screen.query_one(IssuesTable)
        assert table.row_count == 4
        await pilot.press("c")  # first code alphabetically: INCOMING_OVER_LIMIT
        assert table.code_filter == "INCOMING_OVER_LIMIT" and table.row_count == 1
        await pilot.press("c", "c")
        assert table.code_filter == "ZIP_FAIL" and table.row_count == 2
        await pilot.press("enter")
        assert isinstance(app.screen, IssueDetailScreen)
        assert app.screen.issue == new
        detail = str(app.screen.query_one("#detail-text").render())
        assert "CRC mismatch in 00012/IM-0001-0044.dcm" in detail
        await pilot.press("escape")
        assert isinstance(app.screen, IssuesScreen)
        await pilot.press("a")
        assert table.code_filter == "" and table.row_count == 4
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)


async def test_incoming_gauge_crosses_the_limit(tmp_path):
    counts = [5000, 21000, 26000, 3000]
    app, _ = app_for(tmp_path, [sample_snapshot(incoming_count=n, incoming_limit=25000) for n in counts])
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        gauge = app.screen.query_one(IncomingGauge)
        seen: List[str] = []
        for n in counts:
            if n != counts[0]:
                await step(pilot)
            cls = next(c for c in ("-ok", "-warning", "-error", "-stale") if gauge.has_class(c))
            seen.append(cls)
            assert text(gauge.query_one("#incoming-count")).startswith(f"{n:,} / 25,000 files")
        assert seen == ["-ok", "-warning", "-error", "-ok"]
        assert app.incoming_history == (5000.0, 21000.0, 26000.0, 3000.0)
        assert text(gauge.query_one("#incoming-spark")) == "▂▇█▁"  # 26,000 is over the limit: a full cell


async def test_stale_state_is_shown_as_stale_never_idle(tmp_path):
    stale = sample_snapshot(engine="stale", detail="the engine stopped updating 130s ago and its process is gone")
    app, _ = app_for(tmp_path, [sample_snapshot(), stale])
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        header = app.screen.query_one(EngineHeader)
        assert header.has_class("-ok") and header.view.badge == "▶ RUNNING"
        await step(pilot)
        assert header.has_class("-stale") and not header.has_class("-ok")
        assert "STALE" in text(header.query_one("#engine-badge"))
        assert "IDLE" not in text(header.query_one("#engine-badge"))
        assert "process is gone" in text(header.query_one("#engine-detail"))
        assert app.screen.has_class("-data-stale")
        assert app.screen.query_one(JobTable).border_subtitle == "last known state, not live"


async def test_unreadable_state_keeps_last_known_values(tmp_path):
    err = PermissionError(13, "Permission denied", "/Volumes/PACS/Backup/.tmp/status.json")
    app, _ = app_for(tmp_path, [sample_snapshot(), err, sample_snapshot()])
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await step(pilot)
        header = app.screen.query_one(EngineHeader)
        assert header.has_class("-error")
        assert "UNREADABLE" in text(header.query_one("#engine-badge"))
        assert text(header.query_one("#engine-detail")) == \
            "Permission denied: /Volumes/PACS/Backup/.tmp/status.json"
        assert text(header.query_one("#engine-host")) == "pacs-mac.local"  # from the last good read
        counts = app.screen.query_one(ArchiveProgress).query_one("#archive-counts")
        assert text(counts).startswith("412 / 1,250 studies")  # last known, faded
        assert app.screen.has_class("-data-stale")
        await step(pilot)  # readable again
        assert header.has_class("-ok") and not app.screen.has_class("-data-stale")


async def test_unreadable_from_the_start(tmp_path):
    app, _ = app_for(tmp_path, [OSError(5, "Input/output error", "/Volumes/PACS/Backup/export_state.sqlite")])
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        header = app.screen.query_one(EngineHeader)
        assert header.has_class("-error") and header.view.badge == "? UNREADABLE"
        archive = app.screen.query_one(ArchiveProgress)
        assert text(archive.query_one("#archive-counts")) == "archive state unknown"


async def test_a_hung_read_is_reported_not_waited_for(tmp_path):
    gate = threading.Event()

    class Hanging(ScriptedSource):
        def read(self):
            snap = super().read()
            if self.reads >= 2:
                gate.wait(30)
            return snap

    clock = Clock()
    app, src = app_for(tmp_path, Hanging([sample_snapshot()]), clock=clock)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        app.refresh_now()  # this read hangs
        await pilot.pause()
        app.refresh_now()  # still reading, not long yet: nothing happens, no second read piles up
        await pilot.pause()
        assert src.reads == 2
        header = app.screen.query_one(EngineHeader)
        assert header.has_class("-ok")
        clock.now += HUNG_SECONDS + 5
        app.refresh_now()
        await pilot.pause()
        assert header.has_class("-error")
        assert "has not finished for 15s" in text(header.query_one("#engine-detail"))
        gate.set()
        await settle(pilot)
        assert header.has_class("-ok")


async def test_quit_is_not_held_up_by_a_hung_read(tmp_path):
    gate = threading.Event()

    class Hanging(ScriptedSource):
        def read(self):
            gate.wait(30)
            return super().read()

    app, _ = app_for(tmp_path, Hanging([sample_snapshot()]))
    started = time.monotonic()
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            await pilot.press("q")
        assert time.monotonic() - started < 10
    finally:
        gate.set()


async def test_log_pane_toggles_and_reads_the_log_only_when_open(tmp_path):
    calls = []

    class Counting(ScriptedSource):
        def read_log(self, lines=200):
            calls.append(lines)
            return super().read_log(lines)

    app, _ = app_for(tmp_path, Counting([sample_snapshot()], log=sample_log()))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        pane = app.screen.query_one(LogPane)
        assert not pane.display and calls == []
        await pilot.press("l")
        await settle(pilot)
        assert pane.display and calls
        assert pane.tail_lines == tuple(sample_log())
        assert pane.lines[-1] == sample_log()[-1]
        await pilot.press("l")
        n = len(calls)
        await step(pilot)
        assert not pane.display and len(calls) == n


async def test_run_now_asks_first_then_starts_through_the_launcher(tmp_path):
    started: List[Launch] = []

    def starter(plan: Launch) -> str:
        started.append(plan)
        return "started a backup run (pid 999)"

    app, _ = app_for(tmp_path, [sample_snapshot(engine="idle", jobs=(), pid=None)], starter=starter)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("r")
        assert isinstance(app.screen, ConfirmRunScreen)
        assert not app.screen.query("#confirm-warning")  # nothing is running
        await pilot.press("n")
        await settle(pilot)
        assert isinstance(app.screen, MainScreen) and started == []
        await pilot.press("r", "y")
        await settle(pilot)
        assert isinstance(app.screen, MainScreen)
        assert len(started) == 1 and started[0].argv[1:4] == ["-m", "horos_async", "run"]
        assert any("pid 999" in str(n.message) for n in app._notifications)


async def test_run_now_warns_when_a_run_is_in_progress_and_reports_failure(tmp_path):
    def starter(plan: Launch) -> str:
        raise RuntimeError("launchctl could not start org.horos-backup.agent: not loaded")

    app, _ = app_for(tmp_path, [sample_snapshot()], starter=starter)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("r")
        warning = app.screen.query_one("#confirm-warning")
        assert "already in progress (pid 4242)" in str(warning.render())
        await pilot.click("#confirm-yes")
        await settle(pilot)
        assert any("could not start a run" in str(n.message) for n in app._notifications)


async def test_help_tab_navigation_and_quit(tmp_path):
    app, _ = app_for(tmp_path, [sample_snapshot()])
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert app.screen.has_class("-wide") and app.screen.query_one("#months").display
        assert app.focused.id == "jobs"
        await pilot.press("tab")
        assert app.focused.id == "months"
        await pilot.press("tab")
        assert app.focused.id == "latest-issues"
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        assert "INCOMING" in str(app.screen.query_one("#help-text").render())
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)
        await pilot.press("q")
    assert app.return_code == 0


async def test_narrow_terminal_hides_the_month_table(tmp_path):
    app, _ = app_for(tmp_path, [sample_snapshot()])
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert app.screen.has_class("-narrow") and not app.screen.query_one("#months").display


async def test_header_fits_an_80_column_terminal_when_launchd_is_not_installed(tmp_path):
    """Hardening 23: it was cut to "launchd agent not installed: no" (the rest wrapped out of sight)."""
    idle = sample_snapshot(engine="idle", launchd_installed=False, runs=sample_snapshot().runs[:1])
    app, _ = app_for(tmp_path, [idle])
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        summary = app.screen.query_one("#engine-summary", Label)
        shown = text(summary)
        assert shown.endswith("not scheduled: no launchd agent")
        assert len(shown) <= summary.content_region.width and summary.region.height == 1
