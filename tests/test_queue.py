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

from helpers import horos_sql as sql, assert_backup_complete, exportable, key_of, make_config, member_hashes, run, sha, study_members, zips, zips_by_key
from horos_async.state.ledger import SCHEMA_VERSION


@pytest.fixture
def lib(tmp_path):
    return demo.build_demo(tmp_path / "lib", studies=2)


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
        return len(study_members(zf))


def restore_missing(study) -> None:
    """Put the study's deleted files back (a copy of one of its present files: real DICOM bytes)."""
    present = next(p for p in study.files if p not in study.missing)
    for p in study.missing:
        shutil.copyfile(present, p)


# -- 1. allow_partial: a partial study is exported again only when its files changed ----------------

def test_partial_study_is_not_reexported_while_its_files_stay_the_same(lib, tmp_path):
    backup = tmp_path / "Backup"
    cfg = make_config(lib, backup, allow_partial=True)
    s = lib.study("missing-file")
    for _ in range(4):
        assert run(cfg, until_done=True).exit_code == EXIT_OK
    (only,) = zips_by_key(backup)[key_of(s)]
    assert members(only) == len(set(s.files)) - len(s.missing)
    assert len(issues(backup, "PARTIAL")) == 1
    assert ledger_row(backup, key_of(s))[0] == "partial"
    # the missing file comes back: one new version, now complete and done
    restore_missing(s)
    run(cfg, until_done=True)
    found = sorted(zips_by_key(backup)[key_of(s)])
    assert len(found) == 2 and only in found
    v2 = next(p for p in found if p != only)
    assert "_v2" in v2.name and members(v2) == len(set(s.files))
    assert ledger_row(backup, key_of(s))[0] == "done"
    run(cfg, until_done=True)
    assert len(zips_by_key(backup)[key_of(s)]) == 2


def test_partial_study_that_gains_a_series_gets_one_new_partial_version(lib, tmp_path):
    backup = tmp_path / "Backup"
    cfg = make_config(lib, backup, allow_partial=True, stability_minutes=0)
    s = lib.study("missing-file")
    run(cfg, until_done=True)
    grown = demo.add_images(lib, s, 2)
    run(cfg, until_done=True)
    run(cfg, until_done=True)
    found = zips_by_key(backup)[key_of(s)]
    assert len(found) == 2
    assert max(members(p) for p in found) == len(set(grown.files)) - len(s.missing)
    assert len(issues(backup, "PARTIAL")) == 2


# -- 3. one malformed Horos row affects its own study only ----------------------------------------

def _first_image_pk(lib, study):
    return sql(lib, "SELECT MIN(im.Z_PK) FROM ZIMAGE im JOIN ZSERIES se ON im.ZSERIES = se.Z_PK "
                    "WHERE se.ZSTUDY = ?", study.pk)[0][0]


def test_malformed_rows_stop_only_their_own_study(tmp_path):
    lib = demo.build_demo(tmp_path / "lib", studies=6)
    inf_date, nan_date, bad_name, bad_uid, nul_path, blob_path = (lib.study(f"ordinary-{i}") for i in range(1, 7))
    bad_link = lib.study("linked")
    sql(lib, "UPDATE ZSTUDY SET ZDATE = 9e999 WHERE Z_PK = ?", inf_date.pk)  # +infinity
    sql(lib, "UPDATE ZSTUDY SET ZDATE = 'NaN', ZDATEADDED = -9e999 WHERE Z_PK = ?", nan_date.pk)
    sql(lib, "UPDATE ZSTUDY SET ZNAME = CAST(X'536F757A61FF5E4A6FE3' AS TEXT) WHERE Z_PK = ?", bad_name.pk)
    sql(lib, "UPDATE ZSTUDY SET ZSTUDYINSTANCEUID = ZSTUDYINSTANCEUID || CAST(X'2EFF' AS TEXT) WHERE Z_PK = ?",
        bad_uid.pk)
    nul_pk, blob_pk = _first_image_pk(lib, nul_path), _first_image_pk(lib, blob_path)
    sql(lib, "UPDATE ZIMAGE SET ZPATHNUMBER = NULL, ZPATHSTRING = '/tmp/a' || char(0) || 'b' WHERE Z_PK = ?", nul_pk)
    sql(lib, "UPDATE ZIMAGE SET ZPATHNUMBER = NULL, ZPATHSTRING = X'2F746D702F78' WHERE Z_PK = ?", blob_pk)
    link_pk = _first_image_pk(lib, bad_link)
    sql(lib, "UPDATE ZIMAGE SET ZPATHSTRING = ZPATHSTRING || CAST(X'FF' AS TEXT) WHERE Z_PK = ?", link_pk)
    backup = tmp_path / "Backup"
    cfg = make_config(lib, backup)
    doc = asyncio.run(plan_view.build(cfg, limit=100))  # `plan` reads every row without failing
    assert any(p["code"] == "BAD_ROW" for p in doc["problems"])
    result = run(cfg, until_done=True)
    assert result.exit_code == EXIT_OK
    by_key = zips_by_key(backup)
    # every other study is backed up
    spoiled = {key_of(s) for s in (nul_path, blob_path, bad_link)}
    for s in exportable(lib):
        if key_of(s) not in spoiled and s != bad_uid:
            assert len(by_key.get(key_of(s), [])) == 1, s.note
    # unusable dates: the study is exported as undated
    for s in (inf_date, nan_date):
        (z,) = by_key[key_of(s)]
        assert z.parent.name == "undated" and member_hashes(z) == sorted(sha(p) for p in set(s.files))
    # undecodable text is read with replacement, the study exported
    (z,) = by_key[key_of(bad_name)]
    assert z.name.startswith("Souza_")
    uid_keys = [k for k in by_key if k.startswith(bad_uid.uid + ".\ufffd|")]
    assert len(uid_keys) == 1 and member_hashes(by_key[uid_keys[0]][0]) == sorted(sha(p) for p in set(bad_uid.files))
    # rows naming no usable file keep their study from done, and say which row
    for s in (nul_path, blob_path, bad_link):
        assert key_of(s) not in by_key, s.note
        assert ledger_row(backup, key_of(s))[0] == "failed"
    bad = issues(backup, "BAD_ROW")
    details = " ".join(r["detail"] for r in bad)
    for pk in (nul_pk, blob_pk, link_pk):
        assert f"ZIMAGE Z_PK={pk}" in details
    for s in (inf_date, nan_date, bad_name):
        assert f"ZSTUDY Z_PK={s.pk}" in details
    # reported once, not every run
    n = len(bad)
    run(make_config(lib, backup, retry_backoff_minutes=0), until_done=True)
    assert len(issues(backup, "BAD_ROW")) == n


def test_a_path_that_is_not_utf8_is_a_bad_row_not_exit_5(lib, tmp_path):
    """Undecodable bytes in ZPATHSTRING: `plan` and `run` go on (exit 0); the row is named."""
    s = lib.study("relative-pathstring")
    sql(lib, "UPDATE ZIMAGE SET ZPATHSTRING = CAST(X'C328' AS TEXT) WHERE Z_PK = ?", _first_image_pk(lib, s))
    backup = tmp_path / "Backup"
    assert run(make_config(lib, backup), until_done=True).exit_code == EXIT_OK
    assert key_of(s) not in zips_by_key(backup)
    assert any(f"ZIMAGE Z_PK={_first_image_pk(lib, s)}" in r["detail"] for r in issues(backup, "BAD_ROW"))


# -- 4. growth without a new ZDATEADDED (Horos does not refresh it for DICOM SR) --------------------

def _grow_silently(lib, study, images):
    """Add a series as Horos does for an SR object: image rows and files, ZDATEADDED left as it was."""
    (added,) = sql(lib, "SELECT ZDATEADDED FROM ZSTUDY WHERE Z_PK = ?", study.pk)[0]
    grown = demo.add_images(lib, study, images)
    sql(lib, "UPDATE ZSTUDY SET ZDATEADDED = ? WHERE Z_PK = ?", added, study.pk)
    return grown


def test_study_that_grows_without_a_new_date_added_gets_a_new_version(lib, tmp_path):
    backup = tmp_path / "Backup"
    cfg = make_config(lib, backup)
    run(cfg, until_done=True)
    s = lib.study("ordinary-1")
    (v1,) = zips_by_key(backup)[key_of(s)]
    grown = _grow_silently(lib, s, 3)
    run(cfg, until_done=True)
    found = sorted(zips_by_key(backup)[key_of(s)])
    assert len(found) == 2 and v1 in found
    v2 = next(p for p in found if p != v1)
    assert member_hashes(v2) == sorted(sha(p) for p in set(grown.files))
    # one more image in an existing series (a second ROI SR goes into Horos's one "OsiriX ROI SR" series)
    series, path_number, pk = sql(lib, "SELECT ZSERIES, ZPATHNUMBER, Z_PK FROM ZIMAGE WHERE Z_PK = "
                                       "(SELECT MAX(im.Z_PK) FROM ZIMAGE im JOIN ZSERIES se ON im.ZSERIES = se.Z_PK "
                                       "WHERE se.ZSTUDY = ?)", s.pk)[0]
    (top,) = sql(lib, "SELECT MAX(Z_PK) FROM ZIMAGE")[0]
    (number,) = sql(lib, "SELECT MAX(ZPATHNUMBER) FROM ZIMAGE")[0]
    new_file = lib.horos_data / "DATABASE.noindex" / str((number + 1) // 10000 * 10000 + 10000) / f"{number + 1}.dcm"
    new_file.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(grown.files[-1], new_file)
    sql(lib, "INSERT INTO ZIMAGE (Z_PK, Z_ENT, Z_OPT, ZSERIES, ZPATHNUMBER, ZINSTANCENUMBER) "
             "VALUES (?, 2, 1, ?, ?, 99)", top + 1, series, number + 1)
    run(cfg, until_done=True)
    found = zips_by_key(backup)[key_of(s)]
    assert len(found) == 3
    assert max(members(p) for p in found) == len(set(grown.files)) + 1
    before = {p: p.stat().st_mtime_ns for p in zips(backup)}
    run(cfg, until_done=True)  # and then nothing more
    assert {p: p.stat().st_mtime_ns for p in zips(backup)} == before


def _as_schema_1(backup) -> None:
    """Turn the ledger back into what horos-backup wrote before schema 3 (no counts, no missing paths)."""
    con = sqlite3.connect(str(backup / "export_state.sqlite"))
    for column in ("image_rows", "series", "grown"):
        con.execute(f"ALTER TABLE studies DROP COLUMN {column}")
    con.execute("DROP TABLE missing_files")
    con.execute("DELETE FROM meta WHERE key = 'horos_rows_mark'")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")
    con.commit()
    con.close()


def test_a_ledger_from_before_the_counts_still_notices_growth(lib, tmp_path):
    """Upgrade: a schema-1 ledger holds no image counts and no high-water mark; one full count finds
    the growth, and exports nothing for studies that did not grow (multi-frame ones included)."""
    backup = tmp_path / "Backup"
    cfg = make_config(lib, backup)
    run(cfg, until_done=True)
    before = {p: p.stat().st_mtime_ns for p in zips(backup)}
    _as_schema_1(backup)
    s = lib.study("accented")
    doc = asyncio.run(plan_view.build(cfg, limit=100))  # `plan` reads the old ledger as it is
    assert doc["totals"]["done"] == doc["totals"]["eligible"] - doc["totals"]["pending"]
    run(cfg, until_done=True)
    assert {p: p.stat().st_mtime_ns for p in zips(backup)} == before
    con = sqlite3.connect(str(backup / "export_state.sqlite"))
    assert con.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (str(SCHEMA_VERSION),)
    con.close()
    _as_schema_1(backup)
    _grow_silently(lib, s, 1)
    run(cfg, until_done=True)
    assert len(zips_by_key(backup)[key_of(s)]) == 2


def test_a_schema_2_ledger_with_another_changes_column_migrates_to_3(lib, tmp_path):
    """Schema 2 is another change's step (``studies.last_seen``): a ledger that took it migrates to 3
    as one that did not, keeping that column and its values, and still notices growth."""
    backup = tmp_path / "Backup"
    cfg = make_config(lib, backup)
    run(cfg, until_done=True)
    before = {p: p.stat().st_mtime_ns for p in zips(backup)}
    _as_schema_1(backup)
    con = sqlite3.connect(str(backup / "export_state.sqlite"))
    if "last_seen" not in {r[1] for r in con.execute("PRAGMA table_info(studies)")}:
        con.execute("ALTER TABLE studies ADD COLUMN last_seen REAL")
    con.execute("UPDATE studies SET last_seen = 1234.5")
    con.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
    con.commit()
    con.close()
    run(cfg, until_done=True)
    assert {p: p.stat().st_mtime_ns for p in zips(backup)} == before
    con = sqlite3.connect(str(backup / "export_state.sqlite"))
    assert con.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (str(SCHEMA_VERSION),)
    assert {r[0] for r in con.execute("SELECT DISTINCT last_seen FROM studies")} == {1234.5}
    assert {"image_rows", "series", "grown"} <= {r[1] for r in con.execute("PRAGMA table_info(studies)")}
    con.close()
    s = lib.study("accented")
    _grow_silently(lib, s, 1)
    run(cfg, until_done=True)
    assert len(zips_by_key(backup)[key_of(s)]) == 2


# -- 5. a study waiting for missing files is retried as soon as they are back -----------------------

def test_study_waiting_for_missing_files_is_retried_when_they_come_back(lib, tmp_path):
    backup = tmp_path / "Backup"
    cfg = make_config(lib, backup, retry_backoff_minutes=600)
    s = lib.study("missing-file")
    run(cfg, until_done=True)
    state, code, _v, _f, next_attempt = ledger_row(backup, key_of(s))
    assert (state, code) == ("failed", "MISSING_FILES") and next_attempt > time.time() + 3600
    run(cfg, until_done=True)
    assert key_of(s) not in zips_by_key(backup)  # still missing: still waiting, nothing new
    restore_missing(s)
    run(cfg, until_done=True)
    (z,) = zips_by_key(backup)[key_of(s)]
    assert members(z) == len(set(s.files))
    assert ledger_row(backup, key_of(s))[0] == "done"


def test_plan_lists_the_missing_paths_of_waiting_studies(lib, tmp_path, capsys):
    backup = tmp_path / "Backup"
    cfg = make_config(lib, backup, retry_backoff_minutes=600)
    run(cfg, until_done=True)
    path = tmp_path / "cfg.toml"
    path.write_text(config_mod.render_toml(cfg), encoding="utf-8")
    assert cli.main(["plan", "--json", "--config", str(path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    by_uid = {p["uid"]: p for p in doc["problems"]}
    s, none = lib.study("missing-file"), lib.study("no-files")
    assert by_uid[s.uid]["code"] == "MISSING_FILES"
    assert by_uid[s.uid]["first_missing"] == [str(p) for p in s.missing]
    assert by_uid[none.uid]["code"] == "NO_FILES"
    shown = by_uid[none.uid]["first_missing"]
    assert len(shown) == min(5, len(set(none.files))) and set(shown) <= {str(p) for p in none.files}
    assert cli.main(["plan", "--config", str(path)]) == 0
    text = capsys.readouterr().out
    assert str(s.missing[0]) in text and "waiting" in text


def test_run_retry_failed_retries_every_waiting_study_now(lib, tmp_path, capsys):
    backup = tmp_path / "Backup"
    cfg = make_config(lib, backup, retry_backoff_minutes=600)
    run(cfg, until_done=True)
    s = lib.study("no-files")
    attempts = sqlite3.connect(str(backup / "export_state.sqlite")).execute(
        "SELECT attempts FROM studies WHERE key = ?", (key_of(s),)).fetchone()[0]
    path = tmp_path / "cfg.toml"
    path.write_text(config_mod.render_toml(cfg), encoding="utf-8")
    assert cli.main(["run", "--config", str(path)]) == 0  # waiting: not tried
    con = sqlite3.connect(str(backup / "export_state.sqlite"))
    assert con.execute("SELECT attempts FROM studies WHERE key = ?", (key_of(s),)).fetchone()[0] == attempts
    assert cli.main(["run", "--retry-failed", "--until-done", "--config", str(path)]) == 0
    assert con.execute("SELECT attempts FROM studies WHERE key = ?", (key_of(s),)).fetchone()[0] == attempts + 1
    con.close()


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
