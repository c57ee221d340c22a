"""``index restore``: into a folder (then opened by SQLite), and into Horos only while Horos is not running."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from horos_async import cli, platform
from horos_async.errors import EXIT_CHECK, EXIT_OK
from horos_async.ops import index_restore, index_snapshot, index_store

from helpers import make_config


def table_digest(db: Path) -> dict:
    """Row counts and a digest of every row of the study, series and image tables."""
    con = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        out = {}
        for table in ("ZSTUDY", "ZSERIES", "ZIMAGE"):
            rows = con.execute(f"SELECT * FROM {table} ORDER BY Z_PK").fetchall()
            out[table] = (len(rows), hashlib.sha256(repr(rows).encode()).hexdigest())
        return out
    finally:
        con.close()


@pytest.fixture
def snapped(demo_lib, tmp_path):
    cfg = make_config(demo_lib, tmp_path / "Backup")
    cfg.source.write_text(f'horos_data = "{demo_lib.horos_data}"\nbackup_dir = "{cfg.backup_dir}"\nsentinel = ""\n')
    (demo_lib.horos_data / "REPORTS" / "laudo.rtf").write_text("{\\rtf1 laudo}")
    snap = index_snapshot.take(cfg)
    return demo_lib, cfg, snap


def test_restore_to_a_folder_gives_a_database_sqlite_opens_with_the_same_rows(snapped, tmp_path):
    lib, cfg, snap = snapped
    before = table_digest(lib.database)
    dest = tmp_path / "restored"
    code = cli.main(["index", "restore", snap.name, "--to", str(dest), "--config", str(cfg.source)])
    assert code == EXIT_OK
    assert table_digest(dest / "Database.sql") == before
    assert (dest / "DB_VERSION").read_text() == "2.5"
    assert (dest / "REPORTS" / "laudo.rtf").read_text() == "{\\rtf1 laudo}"
    con = sqlite3.connect(dest / "Database.sql")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    # never into a folder that holds something
    assert cli.main(["index", "restore", "latest", "--to", str(dest), "--config", str(cfg.source)]) == EXIT_CHECK


def test_a_damaged_snapshot_is_refused_and_nothing_is_written(snapped, tmp_path):
    lib, cfg, snap = snapped
    target = snap.path / index_store.DB_FILE
    data = bytearray(target.read_bytes())
    data[100] ^= 0x01
    target.write_bytes(bytes(data))
    dest = tmp_path / "restored"
    assert cli.main(["index", "restore", snap.name, "--to", str(dest), "--config", str(cfg.source)]) == EXIT_CHECK
    assert not dest.exists()
    live = hashlib.sha256(lib.database.read_bytes()).hexdigest()
    assert cli.main(["index", "restore", snap.name, "--into-horos", "--config", str(cfg.source)]) == EXIT_CHECK
    assert hashlib.sha256(lib.database.read_bytes()).hexdigest() == live
    assert cli.main(["index", "list", "--check", "--config", str(cfg.source)]) == EXIT_CHECK


@pytest.mark.parametrize("how", ["binary named Horos", "exec -a Horos"])
def test_into_horos_refuses_while_a_process_named_horos_runs(snapped, tmp_path, how, capsys):
    lib, cfg, snap = snapped
    if how == "binary named Horos":
        binary = tmp_path / "Horos"
        shutil.copy(shutil.which("sleep"), binary)
        horos = subprocess.Popen([str(binary), "30"])
    else:
        horos = subprocess.Popen(["bash", "-c", "exec -a Horos sleep 30"])
    try:
        deadline = time.monotonic() + 5
        while horos.pid not in platform.pids_named("Horos") and time.monotonic() < deadline:
            time.sleep(0.05)
        live = hashlib.sha256(lib.database.read_bytes()).hexdigest()
        code = cli.main(["index", "restore", snap.name, "--into-horos", "--config", str(cfg.source)])
        assert code == EXIT_CHECK
        assert f"Horos is running (pid {horos.pid}" in capsys.readouterr().err
        assert hashlib.sha256(lib.database.read_bytes()).hexdigest() == live
        assert not [p for p in lib.horos_data.iterdir() if p.name.startswith(("Index before", ".horos-backup"))]
    finally:
        horos.kill()
        horos.wait()


def test_into_horos_moves_the_live_index_aside_and_verifies_the_result(snapped, tmp_path):
    lib, cfg, snap = snapped
    before = table_digest(lib.database)
    # Horos then lost most of its index (a rebuild from an empty folder, say)
    con = sqlite3.connect(lib.database)
    con.execute("DELETE FROM ZIMAGE")
    con.execute("DELETE FROM ZSERIES")
    con.execute("DELETE FROM ZSTUDY")
    con.commit()
    con.close()
    broken = hashlib.sha256(lib.database.read_bytes()).hexdigest()
    (lib.horos_data / "REPORTS" / "laudo.rtf").unlink()
    (lib.horos_data / "REPORTS" / "newer.rtf").write_text("newer")
    done = index_restore.restore_into_horos(cfg, snap, horos_pids=lambda: [])
    assert table_digest(lib.database) == before
    aside = done.moved_aside
    assert aside.parent == lib.horos_data and aside.name.startswith("Index before restore ")
    assert hashlib.sha256((aside / "Database.sql").read_bytes()).hexdigest() == broken  # kept, never deleted
    assert (aside / "DB_VERSION").exists() and (lib.horos_data / "DB_VERSION").read_text() == "2.5"
    assert (lib.horos_data / "REPORTS" / "laudo.rtf").exists() and done.added == 1  # missing report back
    assert (lib.horos_data / "REPORTS" / "newer.rtf").read_text() == "newer"  # nothing overwritten
    assert not [p for p in lib.horos_data.iterdir() if p.name.startswith(".horos-backup")]
    assert any("start Horos" in n for n in done.notes)


def test_linux_process_list_sees_names_and_argv0(tmp_path):
    binary = tmp_path / "Horos"
    shutil.copy(shutil.which("sleep"), binary)
    p = subprocess.Popen([str(binary), "30"])
    try:
        deadline = time.monotonic() + 5
        while p.pid not in platform.pids_named("Horos") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.pid in platform.pids_named("Horos")
        assert os.getpid() not in platform.pids_named(os.path.basename(os.readlink("/proc/self/exe")))
    finally:
        p.kill()
        p.wait()
    assert p.pid not in platform.pids_named("Horos")
