"""The look of the main screens, pinned as SVG pictures (pytest-textual-snapshot).

Everything variable is fixed: the scripted Snapshot (its own clock and host name), the injected clock,
the display zone from the config, animations off. After a deliberate change of look, review the new
pictures and accept them with ``pytest tests/test_tui_snapshots.py --snapshot-update``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")

pytest.importorskip("pytest_textual_snapshot")

from horos_async.config import Config
from tui.app import make_app
from tui.scripted import SAMPLE_NOW, ScriptedSource, sample_log, sample_snapshot


def app_with(snapshot, log=()):
    cfg = Config(horos_data=Path("/Volumes/PACS/Database/Horos Data"), backup_dir=Path("/Volumes/PACS/Backup"),
                 timezone="America/Sao_Paulo")
    return make_app(cfg, source=ScriptedSource([snapshot], log=list(log)), clock=lambda: SAMPLE_NOW, refresh=3600)


async def first_read(pilot) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def test_main_running_80x24(snap_compare):
    assert snap_compare(app_with(sample_snapshot()), terminal_size=(80, 24), run_before=first_read)


def test_main_running_120x40(snap_compare):
    assert snap_compare(app_with(sample_snapshot()), terminal_size=(120, 40), run_before=first_read)


def test_issues_screen_80x24(snap_compare):
    assert snap_compare(app_with(sample_snapshot()), press=["i"], terminal_size=(80, 24), run_before=first_read)


def test_stale_80x24(snap_compare):
    stale = sample_snapshot(engine="stale",
                            detail="the engine stopped updating 130s ago and its process is gone (killed or crashed)")
    assert snap_compare(app_with(stale), terminal_size=(80, 24), run_before=first_read)


def test_paused_incoming_over_limit_with_log_80x24(snap_compare):
    paused = sample_snapshot(engine="paused", jobs=(), queued=(), guard_code="INCOMING_OVER_LIMIT",
                             guard_detail="INCOMING.noindex holds 31,204 files (limit 25,000)",
                             incoming_count=31204)
    assert snap_compare(app_with(paused, sample_log()), press=["l"], terminal_size=(80, 24),
                        run_before=first_read)
