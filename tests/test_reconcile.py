"""Resume and rebuild: what a run or ``rebuild-ledger`` does with every file in the month folders.

Real demo library, real ZIPs, real ledger. The cases a lost ledger exposes: a damaged ZIP of ours
(which no longer carries its identity), garbage at a future ZIP name, and someone else's valid ZIP.
Also the privacy of what reconcile writes: log lines and issue details name studies by UID.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import zipfile
from pathlib import Path

import pytest

from horos_async import durable
from horos_async.backup import job as job_mod
from horos_async.ops import rebuild

from helpers import assert_backup_complete, backed_up_library, make_config, run, sha, zips

NAME = re.compile(r"^(?P<patient>.+)_(?:\d{8}|NODOB)_(?:\d{8}|NODATE)_(?P<uid>[0-9.]+)(?:_v\d+)?(?:_d\d+)?\.zip$")


@pytest.fixture
def backed_up(tmp_path):
    """(lib, cfg) with a complete backup of a small demo library."""
    return backed_up_library(tmp_path, studies=2)


def rels(cfg):
    return {p.relative_to(cfg.backup_dir).as_posix() for p in zips(cfg.backup_dir)}


def lose_ledger(cfg) -> None:
    for suffix in ("", "-wal", "-shm"):
        p = cfg.backup_dir / f"export_state.sqlite{suffix}"
        if p.exists():
            p.unlink()


def issues(cfg, code=None):
    if not cfg.issues_csv.exists():
        return []
    with open(cfg.issues_csv, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if code is None or r["code"] == code]


def named_zips(cfg):
    """ZIPs of ours whose classic name carries a patient's name, largest first."""
    found = [p for p in zips(cfg.backup_dir) if NAME.match(p.name) and NAME.match(p.name)["patient"] != "UNKNOWN"]
    return sorted(found, key=lambda p: (-p.stat().st_size, p.name))


def big_zip(cfg) -> Path:
    return named_zips(cfg)[0]


def cut(path: Path) -> int:
    """Truncate to half (end of central directory and identity comment gone); return the new size."""
    size = path.stat().st_size // 2
    os.truncate(path, size)
    return size


def uid_of(path: Path) -> str:
    return NAME.match(path.name)["uid"]


def foreign_zip(path: Path, comment: bytes = b"") -> bytes:
    """Write a valid ZIP without our identity comment (someone else's file); return its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("notes/readme.txt", b"not a horos-backup file\n" * 200)
        zf.comment = comment
    return path.read_bytes()


# -- a damaged ZIP of ours found by a lost-ledger rebuild ------------------------------------------
def test_rebuild_ledger_quarantines_a_damaged_zip_and_the_study_keeps_its_name(backed_up):
    lib, cfg = backed_up
    before = rels(cfg)
    victim = big_zip(cfg)
    rel = victim.relative_to(cfg.backup_dir).as_posix()
    lose_ledger(cfg)
    size = cut(victim)

    stats = asyncio.run(rebuild.rebuild(cfg))
    assert (stats["adopted"], stats["invalid"]) == (len(before) - 1, 1)
    assert not victim.exists()
    assert (cfg.backup_dir / ".quarantine" / rel).stat().st_size == size  # moved, never deleted
    assert [r["study_uid"] for r in issues(cfg, "ZIP_INVALID")] == [uid_of(victim)]

    result = run(cfg, until_done=True)
    assert result.done == 1
    assert rels(cfg) == before  # exported again under its normal name, no _d2
    assert_backup_complete(lib, cfg.backup_dir)


def test_run_on_a_lost_ledger_quarantines_a_damaged_zip_and_reexports_it(backed_up):
    lib, cfg = backed_up
    before = {p: sha(p) for p in zips(cfg.backup_dir)}
    victim = big_zip(cfg)
    lose_ledger(cfg)
    cut(victim)

    result = run(cfg, until_done=True)
    assert result.done == 1
    assert set(zips(cfg.backup_dir)) == set(before)
    assert all(sha(p) == h for p, h in before.items() if p != victim)  # the good ones adopted, not rewritten
    assert list((cfg.backup_dir / ".quarantine").rglob("*.zip"))
    assert [r["study_uid"] for r in issues(cfg, "ZIP_INVALID")] == [uid_of(victim)]
    assert_backup_complete(lib, cfg.backup_dir)
    assert run(cfg, until_done=True).done == 0
    assert len(issues(cfg, "ZIP_INVALID")) == 1


def test_crc_damage_without_identity_is_quarantined(backed_up):
    """A file that opens as a ZIP but fails its CRC is not "someone else's": it is damage."""
    lib, cfg = backed_up
    before = rels(cfg)
    victim = big_zip(cfg)
    lose_ledger(cfg)
    data = bytearray(foreign_zip(victim))
    data[200] ^= 0xFF  # inside the stored member's data
    victim.write_bytes(bytes(data))

    run(cfg, until_done=True)
    assert rels(cfg) == before
    assert [r["study_uid"] for r in issues(cfg, "ZIP_INVALID")] == [uid_of(victim)]
    assert not issues(cfg, "FOREIGN_FILE")
    assert_backup_complete(lib, cfg.backup_dir)


# -- files at a future ZIP name on an empty backup -------------------------------------------------
def test_garbage_at_a_future_zip_name_is_quarantined(backed_up):
    lib, cfg = backed_up
    before = rels(cfg)
    victim = big_zip(cfg)
    shutil.rmtree(cfg.backup_dir)
    victim.parent.mkdir(parents=True)
    victim.write_bytes(b"garbage, not a ZIP\n" * 1000)

    result = run(cfg, until_done=True)
    assert result.done == len(before)
    assert rels(cfg) == before
    quarantined = list((cfg.backup_dir / ".quarantine").rglob("*.zip"))
    assert [p.read_bytes()[:7] for p in quarantined] == [b"garbage"]
    assert [r["study_uid"] for r in issues(cfg, "ZIP_INVALID")] == [uid_of(victim)]
    assert_backup_complete(lib, cfg.backup_dir)


def test_someone_elses_valid_zip_is_left_alone_reported_once_and_never_overwritten(backed_up):
    lib, cfg = backed_up
    before = rels(cfg)
    victim = big_zip(cfg)
    rel = victim.relative_to(cfg.backup_dir).as_posix()
    shutil.rmtree(cfg.backup_dir)
    theirs = foreign_zip(victim, comment=b"made by someone else")

    run(cfg, until_done=True)
    assert victim.read_bytes() == theirs
    assert not (cfg.backup_dir / ".quarantine").exists()
    d2 = rel[:-len(".zip")] + "_d2.zip"  # its name is taken: our copy goes beside it
    assert rels(cfg) == before | {d2}
    assert [r["study_uid"] for r in issues(cfg, "FOREIGN_FILE")] == [uid_of(victim)]
    assert not issues(cfg, "ZIP_INVALID")

    assert run(cfg, until_done=True).done == 0
    assert victim.read_bytes() == theirs
    assert len(issues(cfg, "FOREIGN_FILE")) == 1  # once, not every run
    victim.unlink()  # (assert_backup_complete reads every ZIP's identity)
    assert_backup_complete(lib, cfg.backup_dir)


def test_publish_never_overwrites_a_foreign_zip_even_when_the_name_is_chosen(backed_up, monkeypatch):
    """Last line of defence: were the name check skipped, the no-overwrite publish still refuses."""
    lib, cfg = backed_up
    victim = big_zip(cfg)
    shutil.rmtree(cfg.backup_dir)
    theirs = foreign_zip(victim)

    async def planned_name(self):
        return self.plan.zip_relpath

    monkeypatch.setattr(job_mod.StudyJob, "_target_path", planned_name)
    run(cfg, until_done=True)
    assert victim.read_bytes() == theirs
    fails = issues(cfg, "ZIP_FAIL")
    assert [r["study_uid"] for r in fails] == [uid_of(victim)]
    assert not list(cfg.backup_dir.rglob("*.partial"))
    # the engine's detail names the ZIP; issues.csv shows it without the patient's name
    assert f"…_{uid_of(victim)}.zip" in fails[0]["detail"]
    assert NAME.match(victim.name)["patient"] not in fails[0]["detail"]


# -- privacy: log lines and issue details ----------------------------------------------------------
def patient_parts(cfg):
    """The patient part of every classic ZIP name (what must not reach logs and issues)."""
    return {NAME.match(p.name)["patient"] for p in named_zips(cfg)}


def test_reconcile_names_studies_by_uid_in_logs_and_issues(backed_up, caplog):
    lib, cfg = backed_up
    names = patient_parts(cfg)
    assert names
    missing, shrunk, lost, other = named_zips(cfg)[:4]
    # a temp file left by a kill, a recorded ZIP gone, a recorded ZIP damaged, someone else's ZIP
    durable.temp_path_for(other, "4242-1").write_bytes(b"partial")
    missing.unlink()
    cut(shrunk)
    foreign_zip(other.with_name(NAME.match(other.name)["patient"] + "_copy.zip"))
    with caplog.at_level(logging.INFO, logger="horos_async"):  # what the log file gets without --verbose
        run(cfg, until_done=True)
        lose_ledger(cfg)  # then a lost ledger with a damaged ZIP: rebuild-ledger and a run
        cut(lost)
        asyncio.run(rebuild.rebuild(cfg))
        run(cfg, until_done=True)

    codes = {r["code"] for r in issues(cfg)}
    assert {"ZIP_MISSING", "ZIP_INVALID", "FOREIGN_FILE"} <= codes
    assert "removed temp file" in caplog.text
    text = caplog.text + cfg.issues_csv.read_text(encoding="utf-8-sig")
    con = sqlite3.connect(cfg.ledger_path)
    try:
        text += "\n".join(d or "" for (d,) in con.execute("SELECT detail FROM issues"))  # status, horos-tui
    finally:
        con.close()
    leaked = sorted(n for n in names if n in text)
    assert not leaked, leaked
    assert f"…_{uid_of(missing)}.zip" in text  # the study stays identifiable


def test_log_patient_names_true_shows_the_full_name(backed_up):
    lib, cfg = backed_up
    cfg = make_config(lib, cfg.backup_dir, log_patient_names=True)
    victim = big_zip(cfg)
    victim.unlink()
    run(cfg, until_done=True)
    assert any(victim.name in r["detail"] for r in issues(cfg, "ZIP_MISSING"))



# -- a recorded ZIP changed on disk -----------------------------------------------------------------
ZIP_TOOL = shutil.which("zip")


@pytest.mark.skipif(ZIP_TOOL is None, reason="the zip tool is not installed (CI installs it)")
def test_a_zip_that_lost_a_member_is_requeued_by_the_next_run(backed_up):
    """``zip -d`` leaves a valid ZIP with one member fewer: the next run's reconcile must not call it done."""
    lib, cfg = backed_up
    victim = next(p for p in named_zips(cfg) if len(zipfile.ZipFile(p).infolist()) >= 3)
    rel = victim.relative_to(cfg.backup_dir).as_posix()
    gone = zipfile.ZipFile(victim).infolist()[1].filename
    done = subprocess.run([ZIP_TOOL, "-q", "-d", str(victim), gone], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert gone not in zipfile.ZipFile(victim).namelist()

    result = run(cfg, until_done=True)
    assert result.done == 1  # exported again from Horos
    bad = issues(cfg, "ZIP_INVALID")
    assert [r["study_uid"] for r in bad] == [uid_of(victim)] and "members" in bad[0]["detail"]
    assert (cfg.backup_dir / ".quarantine" / rel).exists()  # the altered copy is kept aside, not deleted
    assert_backup_complete(lib, cfg.backup_dir)
    assert run(cfg, until_done=True).done == 0


def _ledger_rows(cfg, sql, *params):
    con = sqlite3.connect(cfg.ledger_path)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


@pytest.mark.parametrize("where", ["same month", "another month"])
def test_a_zip_renamed_by_the_user_keeps_its_new_name_and_is_not_exported_again(backed_up, where):
    lib, cfg = backed_up
    victim = big_zip(cfg)
    old = victim.relative_to(cfg.backup_dir).as_posix()
    folder = victim.parent if where == "same month" else next(
        p.parent for p in zips(cfg.backup_dir) if p.parent != victim.parent)
    renamed = folder / "exame do joelho (guardar).zip"
    new = renamed.relative_to(cfg.backup_dir).as_posix()
    data = victim.read_bytes()
    victim.rename(renamed)
    before = rels(cfg)

    result = run(cfg, until_done=True)
    assert result.done == 0  # no duplicate export
    assert rels(cfg) == before and renamed.read_bytes() == data  # the user's name is kept, the file untouched
    assert not issues(cfg, "ZIP_MISSING") and not issues(cfg, "ZIP_INVALID")
    assert _ledger_rows(cfg, "SELECT zip_path, status FROM zips WHERE zip_path IN (?, ?)", old, new) == [(new, "ok")]
    assert _ledger_rows(cfg, "SELECT state FROM studies WHERE zip_path = ?", new) == [("done",)]
    assert run(cfg, until_done=True).done == 0
    from horos_async.ops import verify
    checked = asyncio.run(verify.Verifier(cfg, deep=True).run())
    assert checked.bad == 0 and checked.total == len(before)


def test_a_renamed_zip_that_verify_reported_missing_is_adopted_not_exported_again(backed_up):
    """verify before any run: the old name is ZIP_MISSING; the next run finds the renamed ZIP by its
    identity and takes it back instead of exporting the study again."""
    from horos_async.ops import verify

    lib, cfg = backed_up
    victim = big_zip(cfg)
    renamed = victim.with_name("meu nome.zip")
    victim.rename(renamed)
    assert asyncio.run(verify.Verifier(cfg).run()).missing == 1
    assert run(cfg, until_done=True).done == 0
    assert renamed.exists() and not victim.exists()
    new = renamed.relative_to(cfg.backup_dir).as_posix()
    assert _ledger_rows(cfg, "SELECT state, zip_path FROM studies WHERE zip_path = ?", new) == [("done", new)]


def test_quarantine_syncs_the_folders_it_creates(backed_up, monkeypatch):
    """``.quarantine/<month>`` made for the first time: its entries in ``.quarantine`` and ``backup_dir``
    are synced, or after a power cut the bad ZIP could be back in its month folder beside its re-export."""
    from horos_async import platform
    from horos_async.backup import reconcile

    lib, cfg = backed_up
    victim = big_zip(cfg)
    rel = victim.relative_to(cfg.backup_dir).as_posix()
    synced = []
    real = platform.sync_dir
    monkeypatch.setattr(platform, "sync_dir", lambda p: (real(p), synced.append(Path(p)))[0])
    moved = reconcile.quarantine(cfg, rel)
    assert moved == cfg.backup_dir / ".quarantine" / rel
    assert {cfg.backup_dir, cfg.backup_dir / ".quarantine", moved.parent, victim.parent} <= set(synced)


def test_zips_adopted_without_a_crc_pass_are_not_stamped_verified(backed_up):
    lib, cfg = backed_up
    lose_ledger(cfg)
    asyncio.run(rebuild.rebuild(cfg))  # central directories only
    assert _ledger_rows(cfg, "SELECT COUNT(*) FROM zips WHERE verified_at IS NOT NULL") == [(0,)]
    from horos_async.ops import verify
    asyncio.run(verify.Verifier(cfg).run())  # a quick pass reads no member either
    assert _ledger_rows(cfg, "SELECT COUNT(*) FROM zips WHERE verified_at IS NOT NULL") == [(0,)]
    asyncio.run(verify.Verifier(cfg, deep=True).run())
    assert _ledger_rows(cfg, "SELECT COUNT(*) FROM zips WHERE verified_at IS NULL") == [(0,)]
    lose_ledger(cfg)
    asyncio.run(rebuild.rebuild(cfg, deep=True))  # every CRC read: stamped
    assert _ledger_rows(cfg, "SELECT COUNT(*) FROM zips WHERE verified_at IS NULL") == [(0,)]


def test_a_clean_run_reports_no_temp_file_left_by_an_interrupted_run(backed_up, caplog):
    """Hardening 24: each run logged the removal of its own live-status temp file as a crash's leftover."""
    lib, cfg = backed_up
    dead = durable.temp_path_for(cfg.work_dir / "status.json", "999999999")  # what a killed run leaves
    dead.write_bytes(b"{}")
    with caplog.at_level(logging.INFO, logger="horos_async"):
        for _ in range(5):
            run(cfg, until_done=True)
    removed = [r.getMessage() for r in caplog.records if "removed temp file" in r.getMessage()]
    assert len(removed) == 1 and "999999999" in removed[0], removed
    assert not dead.exists()


def test_rebuild_ledger_on_a_healthy_ledger_says_nothing_to_rebuild(backed_up, capsys):
    """Hardening 24: it printed "ledger rebuilt: 0 ZIPs adopted" for a ledger that needed nothing."""
    from horos_async import cli, config as config_mod

    lib, cfg = backed_up
    cfg.source.write_text(config_mod.render_toml(cfg), encoding="utf-8")
    n = len(zips(cfg.backup_dir))
    assert cli.main(["rebuild-ledger", "--config", str(cfg.source)]) == 0
    out = capsys.readouterr().out
    assert f"nothing to rebuild: the ledger already records every ZIP on disk ({n} ZIPs)" in out
    assert "rebuilt" not in out
    lose_ledger(cfg)
    assert cli.main(["rebuild-ledger", "--config", str(cfg.source)]) == 0
    assert f"ledger rebuilt: {n} ZIPs adopted" in capsys.readouterr().out
