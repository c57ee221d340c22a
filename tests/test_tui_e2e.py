"""End to end: the monitor, with its real Source, follows a real engine run on the demo library.

The engine runs as its own process (``python -m horos_async run``), exactly as launchd would start it;
the TUI only reads what that process publishes.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")

from horos_async import status
from horos_async.config import load
from tui.app import make_app
from tui.widgets.archive_progress import ArchiveProgress
from tui.widgets.engine_header import EngineHeader
from tui.widgets.issues_table import IssuesTable

ENGINE_READY = (importlib.util.find_spec("horos_async.backup.engine") is not None
                and importlib.util.find_spec("horos_async.demo") is not None
                and hasattr(status, "read_snapshot"))
RUN_TIMEOUT = 60.0


def write_config(tmp_path: Path, horos_data: Path) -> Path:
    path = tmp_path / "cfg.toml"
    path.write_text(
        f'horos_data = "{horos_data}"\n'
        f'backup_dir = "{tmp_path / "backup"}"\n'
        'sentinel = ""\n'
        "stability_minutes = 0\n"
        "sleep_between_studies = 0.1\n"  # slow enough for the monitor to see the run going
        'timezone = "America/Sao_Paulo"\n', encoding="utf-8")
    return path


async def refresh(pilot) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    pilot.app.refresh_now()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


@pytest.mark.skipif(not ENGINE_READY, reason="needs horos_async.backup.engine, .demo and status.read_snapshot")
async def test_monitor_follows_a_real_run(tmp_path):
    from horos_async.demo import build_demo

    lib = build_demo(tmp_path / "lib", studies=2)
    cfg_path = write_config(tmp_path, lib.horos_data)
    cfg = load(cfg_path)
    app = make_app(cfg, refresh=3600)  # the real StatusSource; the test decides when to read
    async with app.run_test(size=(80, 24)) as pilot:
        await refresh(pilot)
        header = app.screen.query_one(EngineHeader)
        assert header.view.badge == "○ NEVER RUN"

        env = dict(os.environ, HOROS_BACKUP_CONFIG="")
        proc = subprocess.Popen([sys.executable, "-m", "horos_async", "run", "--config", str(cfg_path),
                                 "--until-done"], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        badges = []
        deadline = time.monotonic() + RUN_TIMEOUT
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                await refresh(pilot)
                badges.append(header.view.badge)
                assert header.view.badge not in ("? UNREADABLE", "✖ STALE"), header.view.detail
                await asyncio.sleep(0.1)
        finally:
            if proc.poll() is None:
                proc.kill()
            output = proc.communicate()[0].decode("utf-8", "replace")
        assert proc.returncode == 0, output
        assert "▶ RUNNING" in badges, badges

        await refresh(pilot)
        snap = app.snapshot
        assert header.view.badge == "○ IDLE", header.view
        # Every eligible study is accounted for: exported, or failed with a recorded issue (the demo
        # library deliberately holds studies whose files are missing).
        assert snap.eligible and snap.done + snap.failed == snap.eligible
        counts = str(app.screen.query_one(ArchiveProgress).query_one("#archive-counts").render())
        assert counts.startswith(f"{snap.done} / {snap.eligible} studies")
        issues = app.screen.query_one("#latest-issues", IssuesTable)
        assert issues.row_count == len(snap.issues) >= snap.failed
        assert {i.code for i in issues.shown} >= {"MISSING_FILES"}


@pytest.mark.skipif(not ENGINE_READY, reason="needs horos_async.backup.engine, .demo and status.read_snapshot")
@pytest.mark.parametrize("fault", ["unmounted", "damaged"])
async def test_unreadable_backup_state_is_an_error_not_zero_progress(tmp_path, fault):
    """An unmounted backup volume or a damaged ledger: the header says UNREADABLE with the reason,
    the archive panel "unknown"; never NEVER RUN or 0 studies."""
    from horos_async.demo import build_demo

    lib = build_demo(tmp_path / "lib", studies=1)
    cfg = load(write_config(tmp_path, lib.horos_data))
    if fault == "unmounted":
        cfg = cfg.with_overrides(backup_dir=tmp_path / "NotMounted" / "backup")
    else:
        cfg.backup_dir.mkdir()
        cfg.ledger_path.write_bytes(b"SQLite format 3\0" + os.urandom(8192))
    app = make_app(cfg, refresh=3600)
    async with app.run_test(size=(80, 24)) as pilot:
        await refresh(pilot)
        header = app.screen.query_one(EngineHeader)
        assert header.has_class("-error") and header.view.badge == "? UNREADABLE", header.view
        assert (str(cfg.backup_dir) if fault == "unmounted" else "damaged") in header.view.detail
        counts = str(app.screen.query_one(ArchiveProgress).query_one("#archive-counts").render())
        assert counts == "archive state unknown"
