"""doctor's warnings about what makes Horos lose studies or its index, each on real files."""

from __future__ import annotations

import os
import plistlib
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from horos_async import demo
from horos_async.ops import doctor, index_snapshot
from horos_async.ops.doctor import INFO, PASS, WARN

from helpers import make_config, run


def checks(cfg, home):
    return doctor.run_checks(cfg, macos=False, mounts=[("/", "ext4")], home=home)


def by_name(found, name):
    hits = [c for c in found if c.name == name]
    assert hits, f"no check {name!r} in {[c.name for c in found]}"
    return hits[0]


def write_prefs(home: Path, prefs: dict) -> None:
    path = home / "Library" / "Preferences" / "org.horosproject.horos.plist"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(plistlib.dumps(prefs, fmt=plistlib.FMT_BINARY))  # as macOS writes them


@pytest.fixture
def lib(tmp_path):
    return demo.build_demo(tmp_path / "lib", studies=4)


def test_auto_cleaning_on_by_default_off_and_by_date(lib, tmp_path):
    cfg = make_config(lib, tmp_path / "Backup")
    home = tmp_path / "home"
    assert by_name(checks(cfg, home), "auto-cleaning").status == INFO  # no preferences: cannot tell
    write_prefs(home, {"DATABASELOCATION": 0})  # Horos ran, the defaults untouched: auto-cleaning is on
    c = by_name(checks(cfg, home), "auto-cleaning")
    assert c.status == WARN and "1024 MB" in c.message and "least recently added" in c.message
    assert "AUTOCLEANINGSPACE -bool NO" in c.fix
    write_prefs(home, {"AUTOCLEANINGSPACE": "1", "AUTOCLEANINGSPACESIZE": "-10", "AutocleanSpaceMode": 0})
    c = by_name(checks(cfg, home), "auto-cleaning")
    assert c.status == WARN and "10 % of the disk" in c.message and "oldest studies" in c.message
    write_prefs(home, {"AUTOCLEANINGSPACE": False})
    assert by_name(checks(cfg, home), "auto-cleaning").status == PASS
    write_prefs(home, {"AUTOCLEANINGSPACE": False, "AUTOCLEANINGDATE": True, "AUTOCLEANINGDATEPRODUCED": True,
                       "AUTOCLEANINGDATEPRODUCEDDAYS": "30"})
    c = by_name(checks(cfg, home), "auto-cleaning")
    assert c.status == WARN and "30 days" in c.message


def test_a_horos_rebuild_offers_the_snapshot_from_before_it(lib, tmp_path):
    cfg = make_config(lib, tmp_path / "Backup")
    home = tmp_path / "home"
    assert by_name(checks(cfg, home), "Horos rebuild").status == PASS
    snap = index_snapshot.take(cfg, clock=lambda: time.time() - 3600)
    old = lib.horos_data / "Database.sql - old"
    shutil.copy(lib.database, old)  # what Horos's "Rebuild Database" leaves
    c = by_name(checks(cfg, home), "Horos rebuild")
    assert c.status == WARN and "rebuilt its index" in c.message and "linked" in c.message
    assert f"index restore {snap.name} --to" in c.fix
    os.utime(old, (time.time() - 7200, time.time() - 7200))  # a rebuild before any snapshot
    c = by_name(checks(cfg, home), "Horos rebuild")
    assert c.status == WARN and "no snapshot from before it" in c.fix


@pytest.mark.parametrize("where", ["Library/Mobile Documents/com~apple~CloudDocs/Horos",
                                   "Library/CloudStorage/OneDrive-Clinica/PACS", "Dropbox/PACS"])
def test_horos_data_in_a_cloud_synced_folder(tmp_path, where):
    home = tmp_path / "home"
    lib = demo.build_demo(home / where, studies=0)
    cfg = make_config(lib, tmp_path / "Backup")
    c = by_name(checks(cfg, home), "cloud folder")
    assert c.status == WARN and "synced" in c.message and "move the Horos Data folder" in c.fix


def test_documents_synced_by_icloud_counts_as_cloud(tmp_path):
    home = tmp_path / "home"
    lib = demo.build_demo(home / "Documents" / "PACS", studies=0)
    cfg = make_config(lib, tmp_path / "Backup")
    assert by_name(checks(cfg, home), "cloud folder").status == PASS
    (home / "Library" / "Mobile Documents" / "com~apple~CloudDocs" / "Documents").mkdir(parents=True)
    c = by_name(checks(cfg, home), "cloud folder")
    assert c.status == WARN and "Desktop & Documents" in c.message


def test_studies_auto_cleaning_would_delete_first_that_are_not_backed_up(lib, tmp_path):
    cfg = make_config(lib, tmp_path / "Backup", stability_minutes=0)
    home = tmp_path / "home"
    write_prefs(home, {"AUTOCLEANINGSPACE": True})
    c = by_name(checks(cfg, home), "oldest studies")
    assert c.status == WARN and "not backed up yet" in c.message and 'order_by = "date_added"' in c.fix
    run(cfg, until_done=True)
    # the studies whose files are missing could not be backed up: they are still at risk...
    c = by_name(checks(cfg, home), "oldest studies")
    assert c.status == WARN
    done = {r[0] for r in sqlite3.connect(cfg.ledger_path).execute("SELECT key FROM studies WHERE state='done'")}
    con = sqlite3.connect(lib.database)
    rows = con.execute("SELECT Z_PK, ZSTUDYINSTANCEUID, ZPATIENTUID FROM ZSTUDY").fetchall()
    undone = [pk for pk, uid, puid in rows if f"{(uid or '').strip()}|{puid or ''}" not in done]
    assert undone
    # ...until they are locked in Horos, which auto-cleaning never deletes
    con.executemany("UPDATE ZSTUDY SET ZLOCKEDSTUDY = 1 WHERE Z_PK = ?", [(pk,) for pk in undone])
    con.commit()
    con.close()
    c = by_name(checks(cfg, home), "oldest studies")
    assert c.status == PASS and "are backed up" in c.message
    write_prefs(home, {"AUTOCLEANINGSPACE": False})
    assert not [x for x in checks(cfg, home) if x.name == "oldest studies"]


def test_the_age_of_the_newest_index_snapshot(lib, tmp_path):
    cfg = make_config(lib, tmp_path / "Backup")
    home = tmp_path / "home"
    c = by_name(checks(cfg, home), "index snapshots")
    assert c.status == WARN and "index snapshot" in c.fix
    index_snapshot.take(cfg, clock=lambda: time.time() - 3 * 86400)
    c = by_name(checks(cfg, home), "index snapshots")
    assert c.status == WARN and "hours old" in c.message
    index_snapshot.take(cfg)
    c = by_name(checks(cfg, home), "index snapshots")
    assert c.status == PASS and "2 kept" in c.message
