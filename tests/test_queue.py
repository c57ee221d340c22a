"""The queue always moves: partial studies, malformed Horos rows, silent growth, returning files, a linked
month folder. Real demo libraries, real Database.sql edits (sqlite3), real engine runs, ZIPs read back.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import shutil
import sqlite3
import time
import zipfile

import pytest

from horos_async import cli, config as config_mod, demo
from horos_async.errors import EXIT_OK, EXIT_VOLUME, VolumeError
from horos_async.ops import plan_view

from helpers import assert_backup_complete, exportable, key_of, make_config, member_hashes, run, sha, zips, zips_by_key


@pytest.fixture
def lib(tmp_path):
    return demo.build_demo(tmp_path / "lib", studies=2)


def sql(lib, query, *args):
    con = sqlite3.connect(str(lib.database))
    try:
        rows = con.execute(query, args).fetchall()
        con.commit()
        return rows
    finally:
        con.close()


def issues(backup, code=None):
    path = backup / "issues.csv"
    if not path.exists():
        return []
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if code is None or r["code"] == code]


def ledger_row(backup, key):
    con = sqlite3.connect(str(backup / "export_state.sqlite"))
    try:
        return con.execute("SELECT state, code, version, files, next_attempt FROM studies WHERE key=?",
                           (key,)).fetchone()
    finally:
        con.close()


def members(path):
    with zipfile.ZipFile(path) as zf:
        return len(zf.infolist())


def restore_missing(study) -> None:
    """Put the study's deleted files back (a copy of one of its present files: real DICOM bytes)."""
    present = next(p for p in study.files if p not in study.missing)
    for p in study.missing:
        shutil.copyfile(present, p)


# -- 6. a month folder moved to another disk and replaced by a symlink ------------------------------

def test_a_month_folder_replaced_by_a_symlink_is_followed_everywhere(lib, tmp_path):
    backup = tmp_path / "Backup"
    cfg = make_config(lib, backup)
    run(cfg, until_done=True)
    month = next(p.parent for p in zips(backup))
    count = len(list(month.glob("*.zip")))
    elsewhere = tmp_path / "other-disk" / month.name
    elsewhere.parent.mkdir()
    shutil.move(str(month), str(elsewhere))
    month.symlink_to(elsewhere, target_is_directory=True)
    before = {p.name: p.stat().st_mtime_ns for p in zips(backup)}
    stale = elsewhere / ".leftover.zip.123-1.partial"
    stale.write_bytes(b"half a zip")
    for _ in range(3):
        assert run(cfg, until_done=True).exit_code == EXIT_OK
    assert {p.name: p.stat().st_mtime_ns for p in zips(backup)} == before
    assert len(list(elsewhere.glob("*.zip"))) == count
    assert not issues(backup, "ZIP_MISSING")
    assert not stale.exists()  # temp files behind the link are cleaned up too
    assert_backup_complete(lib, backup)


def test_a_month_folder_symlink_to_an_unmounted_disk_stops_the_run(lib, tmp_path):
    backup = tmp_path / "Backup"
    cfg = make_config(lib, backup)
    run(cfg, until_done=True)
    month = next(p.parent for p in zips(backup))
    elsewhere = tmp_path / "other-disk" / month.name
    elsewhere.parent.mkdir()
    shutil.move(str(month), str(elsewhere))
    month.symlink_to(tmp_path / "unmounted" / month.name, target_is_directory=True)
    with pytest.raises(VolumeError, match=month.name):
        run(cfg, until_done=True)
    assert not issues(backup, "ZIP_MISSING")  # nothing recorded as missing, nothing re-exported
    month.unlink()
    month.symlink_to(elsewhere, target_is_directory=True)
    assert run(cfg, until_done=True).done == 0
    assert not issues(backup, "ZIP_MISSING")
    assert EXIT_VOLUME == 7
