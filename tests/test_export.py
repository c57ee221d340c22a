"""export: chosen studies out of the backup (by MRN list, name, accession, dates), every hash checked.

Real demo backups, real folders written and read back (pydicom, and DCMTK where installed); the
command is run through ``cli.main`` as a person runs it.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
import zipfile
from pathlib import Path

import pytest
from pydicom.fileset import FileSet

from horos_async import cli, config as config_mod
from horos_async.backup import dicom_media, zip_manifest
from horos_async.errors import EXIT_CHECK, EXIT_CONFIG, EXIT_DISK, EXIT_OK

from helpers import backed_up_library, key_of, make_config, sha, small_tmpfs, zips_by_key

MRNS = {"P-ACC-001": "accented", "P-MON-006": "month-boundary"}


@pytest.fixture(scope="module")
def backed_up(tmp_path_factory):
    lib, cfg = backed_up_library(tmp_path_factory.mktemp("export"), studies=1)
    cfg.source.write_text(config_mod.render_toml(cfg), encoding="utf-8")
    return lib, cfg


def export(cfg, *args) -> int:
    return cli.main(["export", "--config", str(cfg.source), *map(str, args)])


def study_by_id(lib, cfg, pid):
    con = sqlite3.connect(cfg.ledger_path)
    try:
        (key,), = con.execute("SELECT key FROM studies WHERE patient_id=?", (pid,)).fetchall()
    finally:
        con.close()
    return next(s for s in lib.studies if key_of(s) == key)


def test_export_by_mrn_list_writes_each_study_byte_for_byte_and_never_overwrites(backed_up, tmp_path, capsys):
    lib, cfg = backed_up
    listing = tmp_path / "mrns.txt"
    listing.write_text("\ufeff# patients asked for by the clinic\nP-ACC-001\n\n  p-mon-006 \nNO-SUCH-MRN\n",
                       encoding="utf-8")
    dest = tmp_path / "stick"
    assert export(cfg, "--to", dest, "--list", listing) == EXIT_CHECK  # one line matched nothing
    out, errs = capsys.readouterr()
    assert "line 5" in errs and "NO-SUCH-MRN" in errs
    assert "[2/2]" in out and "SHA-256 checked" in out
    folders = sorted(p for p in dest.iterdir() if p.is_dir())
    assert len(folders) == 2
    for pid in MRNS:
        s = study_by_id(lib, cfg, pid)
        (zip_path,) = zips_by_key(cfg.backup_dir)[key_of(s)]
        root = dest / zip_path.stem
        written = sorted(sha(p) for p in root.rglob("*") if p.is_file() and p.name != zip_manifest.MANIFEST_NAME)
        assert written == sorted(sha(p) for p in set(s.files))
        doc = zip_manifest.parse((root / zip_manifest.MANIFEST_NAME).read_bytes())
        for m in doc["members"]:
            assert hashlib.sha256((root / m["path"]).read_bytes()).hexdigest() == m["sha256"]
    stamps = {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()}
    assert export(cfg, "--to", dest, "--patient-id", "P-ACC-001") == EXIT_OK
    assert "already there (never overwritten)" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()} == stamps
    assert not [p for p in dest.rglob(".*")], "a temp file was left behind"


def test_export_dicom_media_writes_one_dicomdir_for_the_whole_stick(backed_up, tmp_path):
    lib, cfg = backed_up
    dest = tmp_path / "usb"
    assert export(cfg, "--to", dest, "--layout", "dicom-media", "--date-from", "2024-01-01",
                  "--date-to", "2024-12-31") == EXIT_OK
    fs = FileSet(dest / "DICOMDIR")
    files = [p for p in dest.rglob("*") if p.is_file() and p.name != "DICOMDIR"]
    assert len(fs) == len(files) > 0, "every file is referenced"
    for p in files:
        assert dicom_media.conformant(p.relative_to(dest).as_posix())
    patients = {i.PatientID for i in fs}
    assert len(patients) >= 3  # several studies share one File-set
    for inst in fs:
        assert inst.load().SOPInstanceUID == inst.SOPInstanceUID
    con = sqlite3.connect(cfg.ledger_path)
    try:
        rows = con.execute("SELECT key FROM studies WHERE state='done' AND study_date >= '2024-01-01' "
                           "AND study_date < '2025'").fetchall()
    finally:
        con.close()
    wanted = sorted(sha(p) for s in lib.studies if (key_of(s),) in rows for p in set(s.files) if p.exists())
    assert sorted(sha(p) for p in files) == wanted
    if shutil.which("dcmdump"):
        dump = subprocess.run(["dcmdump", "DICOMDIR"], cwd=dest, capture_output=True, text=True)
        assert dump.returncode == 0 and "CS [IMAGE]" in dump.stdout, dump.stderr
    # A second export onto the same stick is refused: its DICOMDIR would be replaced.
    assert export(cfg, "--to", dest, "--layout", "dicom-media", "--patient-id", "P-ACC-001") == EXIT_CONFIG


def test_export_zip_copies_verified_portable_zips(backed_up, tmp_path):
    lib, cfg = backed_up
    dest = tmp_path / "zips"
    assert export(cfg, "--to", dest, "--zip", "--name", "jose conceicao") == EXIT_OK  # accents ignored
    (copy,) = dest.glob("*.zip")
    s = lib.study("accented")
    (orig,) = zips_by_key(cfg.backup_dir)[key_of(s)]
    assert copy.name == orig.name and sha(copy) == sha(orig)
    with zipfile.ZipFile(copy) as zf:
        assert zf.testzip() is None


def test_a_damaged_zip_is_refused_and_the_others_are_exported(tmp_path, capsys):
    lib, cfg = backed_up_library(tmp_path / "b", studies=1)
    cfg.source.write_text(config_mod.render_toml(cfg), encoding="utf-8")
    s = lib.study("accented")
    (victim,) = zips_by_key(cfg.backup_dir)[key_of(s)]
    data = bytearray(victim.read_bytes())
    data[len(data) // 3] ^= 0xFF
    victim.write_bytes(bytes(data))
    dest = tmp_path / "out"
    assert export(cfg, "--to", dest, "--name", "a") == EXIT_CHECK
    out, errs = capsys.readouterr()
    assert "REFUSED" in out and "not exported" in errs
    assert not (dest / victim.stem).exists()
    assert len([p for p in dest.iterdir() if p.is_dir()]) >= 2


def test_studies_exported_before_schema_4_are_found_by_patient_id_through_their_zip(backed_up, tmp_path):
    lib, cfg = backed_up
    copy = tmp_path / "old-ledger"
    shutil.copytree(cfg.backup_dir, copy)
    cfg2 = make_config(lib, copy)
    cfg2.source.write_text(config_mod.render_toml(cfg2), encoding="utf-8")
    con = sqlite3.connect(cfg2.ledger_path)
    con.execute("UPDATE studies SET patient_id=NULL, accession=NULL")
    con.commit()
    con.close()
    assert export(cfg2, "--to", tmp_path / "o", "--patient-id", "P-ACC-001", "--dry-run") == EXIT_OK
    assert export(cfg2, "--to", tmp_path / "o2", "--accession", "ACC000006") == EXIT_OK
    assert len([p for p in (tmp_path / "o2").iterdir()]) == 1


def test_export_checks_free_space_first(backed_up, tmp_path, capsys):
    lib, cfg = backed_up
    with small_tmpfs(tmp_path / "tiny", 1) as tiny:
        (tiny / "filler").write_bytes(b"x" * (1024 * 1024 - 64 * 1024))  # 64 KB left: too little
        assert export(cfg, "--to", tiny / "out", "--date-from", "1900-01-01") == EXIT_DISK
        assert "nothing was written" in capsys.readouterr().err
        assert [p.name for p in tiny.iterdir()] == ["filler"]


def test_bad_selections_are_clear_errors(backed_up, tmp_path, capsys):
    lib, cfg = backed_up
    assert export(cfg, "--to", tmp_path / "x") == EXIT_CONFIG
    assert "needs a selection" in capsys.readouterr().err
    assert export(cfg, "--to", tmp_path / "x", "--date-from", "2024-31-01") == EXIT_CONFIG
    assert "--date-from" in capsys.readouterr().err
    assert export(cfg, "--to", tmp_path / "x", "--patient-id", "NOBODY") == EXIT_CONFIG
    assert "no backed-up study matches" in capsys.readouterr().err
    assert export(cfg, "--to", tmp_path / "x", "--list", tmp_path / "absent.txt") == EXIT_CONFIG
    assert not (tmp_path / "x").exists()
