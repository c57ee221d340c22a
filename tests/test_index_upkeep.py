"""What a scheduled run does for Horos's index: one snapshot per index_snapshot_hours, studies Horos deleted
kept and shown as "only in the backup", and INDEX_SNAPSHOT_SKIPPED after a day without a consistent copy."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sqlite3
import subprocess
import sys
import time

from horos_async import cli, config as config_mod, status
from horos_async.errors import EXIT_OK
from horos_async.ops import catalog, index_store, index_upkeep
from horos_async.state import ledger as ledger_mod
from horos_async.state.ledger import Ledger

from helpers import key_of, make_config, zips


def cli_config(lib, tmp_path, **over):
    cfg = make_config(lib, tmp_path / "Backup", stability_minutes=0, **over)
    cfg.source.parent.mkdir(parents=True, exist_ok=True)
    cfg.source.write_text(config_mod.render_toml(cfg), encoding="utf-8")
    return cfg


def run(cfg) -> int:
    return cli.main(["run", "--now", "--until-done", "--config", str(cfg.source)])


def delete_study(db, pk: int) -> None:
    """What Horos's auto-cleaning does to the index (its files go too, but the backup does not care)."""
    con = sqlite3.connect(db)
    con.execute("DELETE FROM ZIMAGE WHERE ZSERIES IN (SELECT Z_PK FROM ZSERIES WHERE ZSTUDY = ?)", (pk,))
    con.execute("DELETE FROM ZSERIES WHERE ZSTUDY = ?", (pk,))
    con.execute("DELETE FROM ZSTUDY WHERE Z_PK = ?", (pk,))
    con.commit()
    con.close()


def ledger_row(cfg, key: str):
    con = sqlite3.connect(cfg.ledger_path)
    try:
        return con.execute("SELECT state, zip_path, last_seen FROM studies WHERE key = ?", (key,)).fetchone()
    finally:
        con.close()


def test_the_scheduled_run_takes_one_snapshot_per_period(demo_lib_factory, tmp_path):
    lib = demo_lib_factory(studies=2)
    cfg = cli_config(lib, tmp_path)
    assert run(cfg) == EXIT_OK
    first = index_store.list_snapshots(cfg.index_dir)
    assert len(first) == 1 and first[0].verified
    assert run(cfg) == EXIT_OK  # minutes later: not due again
    assert [s.name for s in index_store.list_snapshots(cfg.index_dir)] == [first[0].name]
    off = cli_config(lib, tmp_path / "off", index_snapshot_hours=0)
    assert run(off) == EXIT_OK and not off.index_dir.exists()


def test_a_study_horos_deleted_is_kept_and_shown_only_in_the_backup(demo_lib_factory, tmp_path, capsys):
    lib = demo_lib_factory(studies=3)
    cfg = cli_config(lib, tmp_path)
    assert run(cfg) == EXIT_OK
    gone = lib.study("ordinary-1")
    zip_files = zips(cfg.backup_dir)
    state, zip_path, last_seen = ledger_row(cfg, key_of(gone))
    assert state == "done" and last_seen is None
    seen_at = time.time()
    delete_study(lib.database, gone.pk)
    assert run(cfg) == EXIT_OK
    state, same_zip, last_seen = ledger_row(cfg, key_of(gone))
    assert state == "done" and same_zip == zip_path and last_seen is not None and last_seen <= seen_at
    assert zips(cfg.backup_dir) == zip_files  # its ZIP stays, nothing exported again
    assert (cfg.backup_dir / zip_path).is_file()
    rows = catalog.from_ledger(cfg, only_in_backup=True)
    assert [r.study_uid for r in rows] == [gone.uid]
    day = dt.datetime.fromtimestamp(last_seen).strftime("%Y-%m-%d")
    assert rows[0].only_in_backup_since == day
    capsys.readouterr()
    assert cli.main(["catalog", "--config", str(cfg.source)]) == EXIT_OK
    assert f"only in the backup since {day}" in capsys.readouterr().out
    snap = status.read_snapshot(cfg)
    assert snap.only_in_backup == 1 and "Only in the backup: 1 studies" in status.render(snap)


def test_a_study_back_in_horos_is_no_longer_only_in_the_backup(demo_lib_factory, tmp_path):
    lib = demo_lib_factory(studies=1)
    cfg = cli_config(lib, tmp_path)
    assert run(cfg) == EXIT_OK
    study = lib.study("ordinary-1")
    backup = tmp_path / "db-copy.sql"
    backup.write_bytes(lib.database.read_bytes())
    delete_study(lib.database, study.pk)
    assert run(cfg) == EXIT_OK and ledger_row(cfg, key_of(study))[2] is not None
    lib.database.write_bytes(backup.read_bytes())  # the index came back (index restore)
    assert run(cfg) == EXIT_OK and ledger_row(cfg, key_of(study))[2] is None
    assert status.read_snapshot(cfg).only_in_backup == 0


def hot_journal(db) -> None:
    """A crashed Horos: a hot journal no read-only reader may roll back (as in test_horos_db)."""
    code = (f"import sqlite3, os\nc = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
            "c.execute('PRAGMA cache_size=1')\nc.execute('BEGIN')\n"
            "for i in range(3000): c.execute(\"UPDATE ZSTUDY SET ZCOMMENT=? \", ('x'*500,))\n"
            "os.kill(os.getpid(), 9)\n")
    subprocess.run([sys.executable, "-c", code])
    assert os.path.getsize(str(db) + "-journal") > 0


def issues(cfg, code: str):
    con = sqlite3.connect(cfg.ledger_path)
    try:
        return con.execute("SELECT detail FROM issues WHERE code = ?", (code,)).fetchall()
    finally:
        con.close()


def conditions(cfg):
    con = sqlite3.connect(cfg.ledger_path)
    try:
        return {r[0] for r in con.execute("SELECT code FROM conditions")}
    finally:
        con.close()


def test_a_day_without_a_consistent_copy_is_an_issue_once(demo_lib, tmp_path):
    cfg = make_config(demo_lib, tmp_path / "Backup")
    journal = str(demo_lib.database) + "-journal"
    hot_journal(demo_lib.database)
    t0 = time.time()
    done = asyncio.run(index_upkeep.after_run(cfg, now=t0))
    assert "hot journal" in done.skipped and done.snapshot is None
    assert issues(cfg, "INDEX_SNAPSHOT_SKIPPED") == [] and "INDEX_SNAPSHOT_FAILING" in conditions(cfg)
    assert asyncio.run(index_upkeep.after_run(cfg, now=t0 + 12 * 3600)).skipped
    assert issues(cfg, "INDEX_SNAPSHOT_SKIPPED") == []  # half a day: not yet
    asyncio.run(index_upkeep.after_run(cfg, now=t0 + 25 * 3600))
    asyncio.run(index_upkeep.after_run(cfg, now=t0 + 26 * 3600))
    rows = issues(cfg, "INDEX_SNAPSHOT_SKIPPED")
    assert len(rows) == 1 and "hot journal" in rows[0][0]  # once per episode
    assert "INDEX_SNAPSHOT_SKIPPED" in conditions(cfg)
    assert index_upkeep.snapshot_gap(cfg, t0) is not None
    # Horos recovers its database (a writable open rolls the journal back): the next run snapshots
    sqlite3.connect(demo_lib.database).execute("SELECT COUNT(*) FROM ZSTUDY").fetchone()
    assert not os.path.exists(journal) or os.path.getsize(journal) == 0
    done = asyncio.run(index_upkeep.after_run(cfg, now=t0 + 27 * 3600))
    assert done.snapshot is not None and done.snapshot.verified
    assert conditions(cfg) == set() and index_upkeep.snapshot_gap(cfg) is None


def test_a_refused_copy_is_an_issue_at_once(demo_lib, tmp_path):
    cfg = make_config(demo_lib, tmp_path / "Backup")
    con = sqlite3.connect(demo_lib.database)
    root = con.execute("SELECT rootpage FROM sqlite_master WHERE name='ZSERIES'").fetchone()[0]
    page = con.execute("PRAGMA page_size").fetchone()[0]
    con.close()
    with open(demo_lib.database, "r+b") as f:
        f.seek((root - 1) * page + 8)
        f.write(b"\xff" * 64)
    done = asyncio.run(index_upkeep.after_run(cfg))
    assert "failed its check" in done.skipped
    assert len(issues(cfg, "INDEX_SNAPSHOT_SKIPPED")) == 1


def test_an_old_ledger_gains_last_seen(demo_lib, tmp_path):
    cfg = make_config(demo_lib, tmp_path / "Backup")
    cfg.backup_dir.mkdir()

    async def make_v1():
        async with Ledger(cfg.ledger_path):
            pass

    asyncio.run(make_v1())
    con = sqlite3.connect(cfg.ledger_path)
    con.execute("ALTER TABLE studies DROP COLUMN last_seen")  # what schema 1 looked like
    con.execute("UPDATE meta SET value='1' WHERE key='schema'")
    con.commit()
    con.close()
    assert status.read_snapshot(cfg).only_in_backup == 0  # readers cope with the old schema
    assert catalog.from_ledger(cfg, include_all=True) == []
    asyncio.run(make_v1())
    con = sqlite3.connect(cfg.ledger_path)
    assert "last_seen" in {r[1] for r in con.execute("PRAGMA table_info(studies)")}
    assert con.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0] == str(ledger_mod.SCHEMA_VERSION)
    con.close()
