"""Study identity on awkward Horos rows: duplicate study rows, odd UIDs, image rows naming no file.

Each test alters a real demo Database.sql the way such rows occur (docs/design/horos-database.md §4.5, §0) and
runs the real engine: ZIPs are read back, the ledger is queried.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import zipfile

import pytest

from horos_async import demo

from helpers import horos_sql as sql, make_config, run, study_members, zips, zips_by_key


@pytest.fixture
def lib(tmp_path):
    return demo.build_demo(tmp_path / "lib", studies=2)


def zip_mtimes(backup):
    """Every ZIP by name with its modification time: equal before and after means nothing rewritten."""
    return {p.name: p.stat().st_mtime_ns for p in zips(backup)}


def ledger(backup, key):
    con = sqlite3.connect(str(backup / "export_state.sqlite"))
    try:
        return con.execute("SELECT state, code, version FROM studies WHERE key=?", (key,)).fetchone()
    finally:
        con.close()


def test_second_row_of_a_study_added_later_is_exported_with_it(lib, tmp_path):
    """Rows sharing UID and patientUID are one study: a later row's images join a new version."""
    backup = tmp_path / "Backup"
    cfg = make_config(lib, backup)
    assert run(cfg, until_done=True).exit_code == 0
    a = lib.study("accented")
    extra = demo.add_study(lib, modality="CT", images=4, date_added=time.time() - 7200)
    sql(lib, "UPDATE ZSTUDY SET ZSTUDYINSTANCEUID=?, ZPATIENTUID=? WHERE Z_PK=?", a.uid, a.patient_uid, extra.pk)
    assert run(cfg, until_done=True).exit_code == 0
    key = f"{a.uid}|{a.patient_uid}"
    versions = sorted(zips_by_key(backup)[key])
    assert len(versions) == 2  # the first ZIP is kept; the new version holds both rows' files
    with zipfile.ZipFile(max(versions, key=lambda p: p.stat().st_mtime)) as zf:
        assert len(study_members(zf)) == len(set(a.files)) + len(set(extra.files))
    assert ledger(backup, key)[0] == "done" and ledger(backup, key)[2] == 2
    run(cfg, until_done=True)
    assert sorted(zips_by_key(backup)[key]) == versions  # done now: not exported a third time


@pytest.mark.parametrize("uid", ["  {uid}  ", None])
def test_study_uid_with_spaces_or_null_is_still_exported(lib, tmp_path, uid):
    backup = tmp_path / "Backup"
    victim = lib.study("accented")
    raw = uid.format(uid=victim.uid) if uid else None
    sql(lib, "UPDATE ZSTUDY SET ZSTUDYINSTANCEUID=? WHERE Z_PK=?", raw, victim.pk)
    cfg = make_config(lib, backup)
    assert run(cfg, until_done=True).exit_code == 0
    key = f"{(raw or '').strip()}|{victim.patient_uid}"
    assert ledger(backup, key)[0] == "done"
    (path,) = zips_by_key(backup)[key]
    with zipfile.ZipFile(path) as zf:
        assert len(study_members(zf)) == len(set(victim.files))
    run(cfg, until_done=True)
    assert zips_by_key(backup)[key] == [path]


def test_image_row_naming_no_file_keeps_the_study_from_done(lib, tmp_path):
    backup = tmp_path / "Backup"
    victim = lib.study("accented")
    rows = sql(lib, "SELECT im.Z_PK FROM ZIMAGE im JOIN ZSERIES se ON im.ZSERIES = se.Z_PK "
                    "WHERE se.ZSTUDY=? ORDER BY im.Z_PK", victim.pk)
    sql(lib, "UPDATE ZIMAGE SET ZPATHNUMBER=NULL, ZPATHSTRING=NULL WHERE Z_PK=?", rows[0][0])
    cfg = make_config(lib, backup)
    run(cfg, until_done=True)
    key = f"{victim.uid}|{victim.patient_uid}"
    assert ledger(backup, key)[:2] == ("failed", "MISSING_FILES")
    assert key not in zips_by_key(backup)
    issues = (backup / "issues.csv").read_text(encoding="utf-8-sig")
    assert f"image row {rows[0][0]}" in issues
    # with allow_partial the study is exported and recorded as partial, never as done
    run(make_config(lib, backup, allow_partial=True), until_done=True)
    assert ledger(backup, key)[0] == "partial"
    assert zips(backup)


def test_patient_uid_recomputed_by_horos_exports_nothing_again(lib, tmp_path):
    """A Horos upgrade (new patientUIDVersion) rewrites every ZPATIENTUID: the same rows, same UIDs."""
    backup = tmp_path / "Backup"
    cfg = make_config(lib, backup)
    run(cfg, until_done=True)
    before = zip_mtimes(backup)
    sql(lib, "UPDATE ZSTUDY SET ZPATIENTUID = ZPATIENTUID || '-M'")
    run(cfg, until_done=True)
    assert zip_mtimes(backup) == before  # no _d2 copies, nothing rewritten
    a = lib.study("accented")
    assert ledger(backup, f"{a.uid}|{a.patient_uid}-M")[0] == "done"
    assert ledger(backup, f"{a.uid}|{a.patient_uid}") is None
    con = sqlite3.connect(str(backup / "export_state.sqlite"))
    try:
        assert con.execute("SELECT COUNT(*) FROM zips WHERE key=?", (f"{a.uid}|{a.patient_uid}-M",)).fetchone()[0] == 1
    finally:
        con.close()
    # the moved record still works: new images for that study make a new version, as for any study
    extra = demo.add_study(lib, modality="CT", images=2, date_added=time.time() - 7200)
    sql(lib, "UPDATE ZSTUDY SET ZSTUDYINSTANCEUID=?, ZPATIENTUID=? WHERE Z_PK=?", a.uid, f"{a.patient_uid}-M", extra.pk)
    run(cfg, until_done=True)
    assert ledger(backup, f"{a.uid}|{a.patient_uid}-M")[2] == 2


def test_images_added_while_zipping_keep_the_study_from_done(lib, tmp_path, monkeypatch):
    """docs/design/horos-database.md §7: the image count is checked again just before "done"."""
    from horos_async.backup import archive

    backup = tmp_path / "Backup"
    real = archive.build_zip
    changed = {}

    first = threading.Lock()

    def build_while_horos_imports(out_path, members, **kw):
        built = real(out_path, members, **kw)
        if first.acquire(blocking=False):  # Horos files one more row into this study while it is zipped
            n = int(members[0].source.stem)
            (pk, series), = sql(lib, "SELECT Z_PK, ZSERIES FROM ZIMAGE WHERE ZPATHNUMBER=?", n)
            (top,), = sql(lib, "SELECT MAX(Z_PK) FROM ZIMAGE")
            sql(lib, "INSERT INTO ZIMAGE (Z_PK, Z_ENT, Z_OPT, ZSERIES, ZPATHNUMBER, ZFRAMEID) VALUES (?, "
                     "(SELECT Z_ENT FROM ZIMAGE WHERE Z_PK=?), 1, ?, ?, 1)", top + 1, pk, series, n)
            changed["series"] = series
        return built

    monkeypatch.setattr(archive, "build_zip", build_while_horos_imports)
    cfg = make_config(lib, backup)
    run(cfg, until_done=True)
    (study_pk,), = sql(lib, "SELECT ZSTUDY FROM ZSERIES WHERE Z_PK=?", changed["series"])
    study = next(s for s in lib.studies if s.pk == study_pk)
    key = f"{study.uid}|{study.patient_uid}"
    assert ledger(backup, key)[:2] == ("failed", "STUDY_CHANGED")
    assert key not in zips_by_key(backup)
    assert not list(backup.rglob("*.partial"))
    run(cfg, until_done=True)  # the next run sees the new count and exports the study
    assert ledger(backup, key)[0] == "done"


def test_a_sibling_row_without_ct_or_mr_still_goes_into_the_study_zip(lib, tmp_path):
    """Its own row holds only a PT series, but Horos filed it into the same study (same UID, patient)."""
    a = lib.study("accented")
    sibling = demo.add_study(lib, modality="PT", images=3, date_added=time.time() - 7200)
    sql(lib, "UPDATE ZSTUDY SET ZSTUDYINSTANCEUID=?, ZPATIENTUID=? WHERE Z_PK=?", a.uid, a.patient_uid, sibling.pk)
    backup = tmp_path / "Backup"
    run(make_config(lib, backup), until_done=True)
    (path,) = zips_by_key(backup)[f"{a.uid}|{a.patient_uid}"]
    with zipfile.ZipFile(path) as zf:
        assert len(study_members(zf)) == len(set(a.files)) + len(set(sibling.files))


def test_rebuild_then_patient_uid_recompute_exports_nothing_again(lib, tmp_path):
    """A Horos "rebuild database" renumbers Z_PK; a later upgrade recomputes patientUIDs."""
    backup = tmp_path / "Backup"
    cfg = make_config(lib, backup)
    run(cfg, until_done=True)
    before = zip_mtimes(backup)
    sql(lib, "UPDATE ZSERIES SET ZSTUDY = ZSTUDY + 1000")
    sql(lib, "UPDATE ZSTUDY SET Z_PK = Z_PK + 1000")
    run(cfg, until_done=True)
    sql(lib, "UPDATE ZSTUDY SET ZPATIENTUID = ZPATIENTUID || '-Y'")
    run(cfg, until_done=True)
    assert zip_mtimes(backup) == before
    a = lib.study("accented")
    assert ledger(backup, f"{a.uid}|{a.patient_uid}-Y")[0] == "done"
