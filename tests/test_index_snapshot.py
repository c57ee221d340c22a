"""Snapshots of Horos's index: consistent while Horos commits, within the lock budget, verified, or refused."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from horos_async import demo
from horos_async.ops import index_copy, index_snapshot, index_store

from helpers import make_config

BUDGET_MS = 150.0
WRITER_LIMIT_MS = 250.0


def start_writer(db: Path, seconds: float) -> subprocess.Popen:
    """A real process committing every 50 ms, as Horos would; returns once its commits are landing."""
    writer = subprocess.Popen([sys.executable, "-m", "horos_async.demo.writer_probe", str(db), str(seconds),
                               "0.05", "off"], stdout=subprocess.PIPE, text=True)
    watched = [Path(str(db) + "-wal"), db]
    first = [p.stat().st_mtime_ns if p.exists() else 0 for p in watched]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = [p.stat().st_mtime_ns if p.exists() else 0 for p in watched]
        if now != first:
            time.sleep(0.3)  # a few commits in: the writer is in its rhythm
            return writer
        time.sleep(0.02)
    writer.kill()
    raise AssertionError("the writer never committed")


def counts_of(db: Path) -> dict:
    con = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        return {name: con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                for name, table in (("studies", "ZSTUDY"), ("series", "ZSERIES"), ("images", "ZIMAGE"))}
    finally:
        con.close()


def large_library(root: Path, studies: int = 4000) -> Path:
    """A ``Horos Data`` holding a Database.sql of ``studies`` x 40 image rows (tens of MB), no files."""
    db = root / "Horos Data" / "Database.sql"
    demo.build_large_database(db, studies=studies, images_per_study=40)
    (db.parent / "DB_VERSION").write_text("2.5")
    return db.parent


def cfg_for(horos_data: Path, tmp_path: Path, **over):
    data = {"horos_data": str(horos_data), "backup_dir": str(tmp_path / "Backup"), "sentinel": "",
            "db_busy_seconds": 1.0}
    data.update(over)
    from horos_async import config as config_mod

    return config_mod.from_mapping(data)


def test_rollback_store_snapshot_while_a_writer_commits(tmp_path):
    horos = large_library(tmp_path / "lib")
    db = horos / "Database.sql"
    cfg = cfg_for(horos, tmp_path, index_lock_budget_ms=BUDGET_MS)
    writer = start_writer(db, 6)
    try:
        snap = index_snapshot.take(cfg)
    finally:
        figures = json.loads(writer.communicate(timeout=60)[0])
    m = snap.manifest
    assert snap.verified and m.journal_mode == "delete" and m.method in ("cache", "clone")
    assert m.lock_ms < BUDGET_MS, m
    assert figures["commits"] > 40 and figures["max_ms"] < WRITER_LIMIT_MS, figures
    assert m.counts == counts_of(db) == {"studies": 4000, "series": 8000, "images": 160000}
    assert m.integrity == "ok"
    # the stored copy is a real, consistent database with those rows
    raw = tmp_path / "copy.db"
    raw.write_bytes(gzip.decompress((snap.path / index_store.DB_FILE).read_bytes()))
    assert counts_of(raw) == m.counts
    assert sqlite3.connect(raw).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_wal_store_snapshot_while_a_writer_commits(demo_lib_factory, tmp_path):
    lib = demo_lib_factory(studies=40, journal_mode="wal")
    cfg = make_config(lib, tmp_path / "Backup")
    writer = start_writer(lib.database, 5)
    try:
        snap = index_snapshot.take(cfg)
    finally:
        figures = json.loads(writer.communicate(timeout=60)[0])
    assert snap.verified and snap.manifest.journal_mode == "wal" and snap.manifest.method == "wal-backup"
    assert figures["commits"] > 40 and figures["max_ms"] < WRITER_LIMIT_MS, figures
    assert snap.manifest.counts == counts_of(lib.database)
    # the copy holds what was committed in the -wal too, as a plain rollback-journal file
    raw = tmp_path / "copy.db"
    raw.write_bytes(gzip.decompress((snap.path / index_store.DB_FILE).read_bytes()))
    con = sqlite3.connect(raw)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert con.execute("SELECT COUNT(*) FROM ZSTUDY").fetchone()[0] == snap.manifest.counts["studies"]


def test_a_copy_that_needs_more_than_the_budget_waits_for_a_quiet_moment(tmp_path):
    horos = large_library(tmp_path / "lib", studies=1500)
    db = horos / "Database.sql"
    # a budget no copy can meet: only a moment without commits will do
    writer = start_writer(db, 10)  # longer than the 2 x 1 s + 5 s the copy waits for a quiet moment
    try:
        t0 = time.monotonic()
        with pytest.raises(index_copy.Busy, match="never stopped saving"):
            index_copy.consistent_copy(db, tmp_path / "busy.copy", budget_ms=0.001, quiet_seconds=1.0)
        assert time.monotonic() - t0 < 15
    finally:
        figures = json.loads(writer.communicate(timeout=60)[0])
    assert figures["max_ms"] < WRITER_LIMIT_MS, figures  # waiting never held the lock
    assert not (tmp_path / "busy.copy").exists()
    done = index_copy.consistent_copy(db, tmp_path / "quiet.copy", budget_ms=0.001, quiet_seconds=0.5)
    assert done.method == "quiet" and done.counts == counts_of(db)
    assert index_snapshot.verify_copy(tmp_path / "quiet.copy", done.counts) == "ok"
    with pytest.raises(index_copy.Busy, match="index_quiet_seconds = 0"):
        index_copy.consistent_copy(db, tmp_path / "never.copy", budget_ms=0.001, quiet_seconds=0)


@pytest.fixture
def xfs(tmp_path):
    """A small XFS filesystem (copy-on-write clones, as APFS has); skipped where it cannot be made."""
    if not shutil.which("mkfs.xfs") or os.geteuid() != 0:
        pytest.skip("needs mkfs.xfs and root to mount a loop filesystem with clones")
    image, mount = tmp_path / "xfs.img", tmp_path / "xfs"
    with open(image, "wb") as f:
        f.truncate(400 << 20)
    mount.mkdir()
    if subprocess.run(["mkfs.xfs", "-q", "-f", str(image)], capture_output=True).returncode or \
            subprocess.run(["mount", "-o", "loop", str(image), str(mount)], capture_output=True).returncode:
        pytest.skip("cannot make or mount an XFS loop filesystem here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_clone_is_taken_under_the_lock_where_the_volume_can_clone(xfs, tmp_path):
    horos = large_library(xfs / "data")
    subprocess.run(["sync"])
    cfg = cfg_for(horos, tmp_path)
    writer = start_writer(horos / "Database.sql", 5)
    try:
        snap = index_snapshot.take(cfg)
    finally:
        figures = json.loads(writer.communicate(timeout=60)[0])
    assert snap.verified and snap.manifest.method == "clone"
    assert figures["max_ms"] < WRITER_LIMIT_MS, figures
    assert snap.manifest.counts == counts_of(horos / "Database.sql")
    assert not [p for p in (xfs / "data").iterdir() if p.name.startswith(".horos-backup")]  # clone removed


def test_a_damaged_source_is_refused_and_nothing_is_kept(demo_lib, tmp_path):
    cfg = make_config(demo_lib, tmp_path / "Backup")
    con = sqlite3.connect(demo_lib.database)
    root = con.execute("SELECT rootpage FROM sqlite_master WHERE name='ZIMAGE'").fetchone()[0]
    page = con.execute("PRAGMA page_size").fetchone()[0]
    con.close()
    with open(demo_lib.database, "r+b") as f:  # scribble over the ZIMAGE table's root page
        f.seek((root - 1) * page + 8)
        f.write(b"\xff" * 64)
    with pytest.raises(index_snapshot.Refused, match="failed its check"):
        index_snapshot.take(cfg)
    assert list(cfg.index_dir.iterdir()) == []  # no snapshot, no temp folder


def test_side_files_are_kept_or_recorded_absent_and_no_file_is_a_bare_sql(demo_lib, tmp_path):
    home = tmp_path / "home"
    prefs = home / "Library" / "Preferences" / "org.horosproject.horos.plist"
    prefs.parent.mkdir(parents=True)
    import plistlib

    prefs.write_bytes(plistlib.dumps({"AUTOCLEANINGSPACE": False, "DATABASELOCATION": 0}, fmt=plistlib.FMT_BINARY))
    momd = demo_lib.horos_data / "Database.momd"
    momd.mkdir()
    (momd / "OsiriXDB_DataModel.mom").write_bytes(b"model")
    (demo_lib.horos_data / "REPORTS" / "report 1.rtf").write_text("{\\rtf1 laudo}")
    cfg = make_config(demo_lib, tmp_path / "Backup")
    snap = index_snapshot.take(cfg, home=home)
    m = snap.manifest
    assert set(m.side_present) == {"DB_VERSION", "Database.momd", "REPORTS", "ROIs",
                                   "Preferences/org.horosproject.horos.plist"}
    assert m.side_absent == ["DBFOLDER_LOCATION"]
    assert sorted(p.name for p in snap.path.iterdir()) == sorted([index_store.DB_FILE, index_store.SIDE_FILE,
                                                                  index_store.MANIFEST])
    assert not [p for p in snap.path.rglob("*") if p.name.endswith(".sql")]
    assert set(m.files) == {index_store.DB_FILE, index_store.SIDE_FILE}
    assert index_store.read_snapshot(snap.path, check=True).verified


def test_a_snapshot_damaged_later_is_shown_and_never_counts(demo_lib, tmp_path):
    cfg = make_config(demo_lib, tmp_path / "Backup")
    snap = index_snapshot.take(cfg)
    target = snap.path / index_store.DB_FILE
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x40  # bit rot, same size
    target.write_bytes(bytes(data))
    assert index_store.read_snapshot(snap.path).verified  # the quick look sees the right size...
    checked = index_store.read_snapshot(snap.path, check=True)  # ...the SHA-256 does not match
    assert not checked.verified and "SHA-256" in checked.problem
    with pytest.raises(LookupError):
        index_store.find(cfg.index_dir, "no-such-snapshot")
    assert not index_store.find(cfg.index_dir, "latest").verified
