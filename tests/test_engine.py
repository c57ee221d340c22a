"""The export engine end to end on a real demo library: ZIPs read back and compared with the sources."""

from __future__ import annotations

import csv
import json
import errno
import os
import sqlite3
import stat

import pytest

from horos_async.backup import archive, zipcheck
from horos_async import demo
from horos_async.state import ledger as ledger_mod
from horos_async.errors import (DatabaseUnavailable, DiskFull, LedgerError, LockHeld, SentinelMissing,
                                VolumeError)
from horos_async.guards import RunLock
from horos_async.backup.months import MONTH_MARKER

from helpers import (assert_backup_complete, exportable, key_of, make_config, member_hashes, run, sha, zips,
                     small_tmpfs, zips_by_key)


@pytest.fixture
def lib(tmp_path):
    return demo.build_demo(tmp_path / "lib", studies=2)


@pytest.fixture
def backup(tmp_path):
    return tmp_path / "Backup"


def issues_rows(backup):
    with open(backup / "issues.csv", encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def ledger_state(backup, key):
    con = sqlite3.connect(backup / "export_state.sqlite")
    try:
        return con.execute("SELECT state, code, version, zip_path FROM studies WHERE key=?", (key,)).fetchone()
    finally:
        con.close()


def test_full_run_backs_up_every_due_study_exactly_once(lib, backup):
    cfg = make_config(lib, backup, concurrency=2)
    result = run(cfg, until_done=True)
    assert result.exit_code == 0
    assert_backup_complete(lib, backup)
    by_key = zips_by_key(backup)
    # not due: PET only, SR only; not stable yet: arriving; incomplete: missing files
    for note in ("pet-only", "sr-only", "arriving", "missing-file", "no-files"):
        assert key_of(lib.study(note)) not in by_key, note
    # the PET/CT ZIP holds its PT series too; the MR study its SR
    for note in ("pet-ct", "mr-with-sr"):
        s = lib.study(note)
        assert len(member_hashes(by_key[key_of(s)][0])) == len(set(s.files))
    # two ZSTUDY rows sharing a UID are two studies, two ZIPs
    a, b = lib.study("duplicate-uid-a"), lib.study("duplicate-uid-b")
    assert a.uid == b.uid and by_key[key_of(a)] != by_key[key_of(b)]
    # month folder from the local date: 22:30 on 31 March in São Paulo is March
    assert by_key[key_of(lib.study("month-boundary"))][0].parent.name == "2024_03"
    assert by_key[key_of(lib.study("undated"))][0].parent.name == "undated"
    # partial studies are never done, and they are explained in issues.csv
    state = ledger_state(backup, key_of(lib.study("missing-file")))
    assert state[0] == "failed" and state[1] == "MISSING_FILES"
    assert ledger_state(backup, key_of(lib.study("no-files")))[1] == "NO_FILES"
    codes = [r["code"] for r in issues_rows(backup)]
    assert codes.count("MISSING_FILES") == 1 and codes.count("NO_FILES") == 1
    # not world-readable
    for p in zips(backup) + [backup / "export_state.sqlite", backup / "issues.csv"]:
        assert not stat.S_IMODE(p.stat().st_mode) & 0o007, p
    # every ZIP passes a full verification
    for p in zips(backup):
        zipcheck.verify_zip(p, None, deep=True)


def test_rerun_does_nothing_and_failures_are_not_repeated(lib, backup):
    cfg = make_config(lib, backup)
    run(cfg, until_done=True)
    before = {p: p.stat().st_mtime_ns for p in zips(backup)}
    rows_before = len(issues_rows(backup))
    result = run(cfg, until_done=True)
    assert result.exit_code == 0
    assert {p: p.stat().st_mtime_ns for p in zips(backup)} == before
    assert len(issues_rows(backup)) == rows_before  # same problem, same study: no new row


def test_partial_export_when_allowed_is_recorded_partial(lib, backup):
    cfg = make_config(lib, backup, allow_partial=True)
    run(cfg, until_done=True)
    s = lib.study("missing-file")
    (zip_path,) = zips_by_key(backup)[key_of(s)]
    assert len(member_hashes(zip_path)) == len(set(s.files)) - len(s.missing)
    assert ledger_state(backup, key_of(s))[0] == "partial"


def test_study_that_grows_gets_a_new_version_and_keeps_the_old(lib, backup):
    cfg = make_config(lib, backup)
    run(cfg, until_done=True)
    s = lib.study("accented")
    (v1,) = zips_by_key(backup)[key_of(s)]
    v1_bytes = v1.read_bytes()
    grown = demo.add_images(lib, s, 2, now=(s.study_date_local.timestamp() if s.study_date_local else None))
    result = run(make_config(lib, backup, stability_minutes=0), until_done=True)
    assert result.exit_code == 0
    found = sorted(zips_by_key(backup)[key_of(s)])
    assert len(found) == 2 and v1 in found and v1.read_bytes() == v1_bytes
    v2 = [p for p in found if p != v1][0]
    assert "_v2" in v2.name
    assert member_hashes(v2) == sorted(sha(p) for p in set(grown.files))
    assert ledger_state(backup, key_of(s))[2] == 2


def _month(s):
    return s.study_date_local.strftime("%Y_%m") if s.study_date_local else "undated"


def test_month_marker_means_every_eligible_study_is_done(lib, backup):
    cfg = make_config(lib, backup)
    run(cfg, until_done=True)
    blocked = {_month(s) for s in lib.studies if s.due and (s.missing or s.note == "arriving")}
    marked = {p.parent.name for p in backup.glob("*/" + MONTH_MARKER)}
    exported = {_month(s) for s in exportable(lib)}
    assert marked == exported - blocked and marked
    month_study = next(s for s in exportable(lib) if _month(s) in marked)
    month = _month(month_study)
    marker = backup / month / MONTH_MARKER
    # a new study of that month appears (still arriving): the month is no longer complete
    new = demo.add_study(lib, modality="MR", images=2, study_date=month_study.study_date_local)
    run(cfg)
    assert not marker.exists()
    # once it is exported, the marker comes back
    run(make_config(lib, backup, stability_minutes=0), until_done=True)
    assert key_of(new) in zips_by_key(backup) and marker.exists()


def test_sentinel_missing_writes_nothing(lib, tmp_path):
    backup = tmp_path / "Backup"
    cfg = make_config(lib, backup, sentinel=str(tmp_path / ".pacs_sentinel"))
    with pytest.raises(SentinelMissing, match="sentinel"):
        run(cfg)
    assert not backup.exists()


def test_unmounted_backup_volume_is_refused(lib, tmp_path):
    cfg = make_config(lib, tmp_path / "Volumes" / "PACS" / "Backup")
    with pytest.raises(VolumeError, match="mounted"):
        run(cfg)
    assert not (tmp_path / "Volumes").exists()


def test_second_run_exits_when_lock_is_held(lib, backup):
    cfg = make_config(lib, backup)
    (backup / ".tmp").mkdir(parents=True)
    with RunLock(backup / ".tmp" / "run.lock"):
        with pytest.raises(LockHeld):
            run(cfg)
    assert not zips(backup)
    assert run(cfg).exit_code == 0  # released lock (as after a dead process) never blocks


def test_incoming_over_limit_pauses_and_reports_once(lib, backup):
    incoming = lib.horos_data / "INCOMING.noindex"
    for i in range(6):
        (incoming / f"{i}.dcm").write_bytes(b"x")
    (incoming / ".hidden").write_bytes(b"x")
    cfg = make_config(lib, backup, incoming_max_files=5)
    for _ in range(2):
        result = run(cfg)
        assert result.exit_code == 0 and result.outcome == "paused"
    assert not zips(backup)
    assert [r["code"] for r in issues_rows(backup)] == ["INCOMING_OVER_LIMIT"]
    for p in incoming.iterdir():
        p.unlink()
    assert run(cfg).done > 0


def test_locked_database_is_unavailable_not_empty(lib, backup):
    holder = sqlite3.connect(lib.database, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(DatabaseUnavailable, match="retry"):
            run(make_config(lib, backup, db_busy_seconds=0.5))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert not zips(backup)
    con = sqlite3.connect(backup / "export_state.sqlite")
    assert con.execute("SELECT outcome, exit_code FROM runs").fetchall() == [("DatabaseUnavailable", 5)]
    con.close()


def test_disk_full_mid_zip_loses_nothing_and_resumes(lib, backup, monkeypatch):
    real = archive.build_zip
    written = {"n": 0}

    class Full:
        def __init__(self, path):
            self.f = open(path, "xb")

        def write(self, data):
            written["n"] += len(data)
            if written["n"] > 200_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

    def full_build(out_path, members, **kw):
        return real(out_path, members, opener=Full, **kw)

    monkeypatch.setattr(archive, "build_zip", full_build)
    cfg = make_config(lib, backup)
    with pytest.raises(DiskFull) as err:
        run(cfg, until_done=True)
    assert not list(backup.rglob("*.partial"))
    assert "…_1." in str(err.value)  # the ZIP is named by its Study UID only: no patient name in logs
    assert [r["code"] for r in issues_rows(backup)].count("DISK_FULL") == 1
    with pytest.raises(DiskFull):
        run(cfg, until_done=True)  # the same episode: not written again
    assert [r["code"] for r in issues_rows(backup)].count("DISK_FULL") == 1
    done_before = {p: sha(p) for p in zips(backup)}
    monkeypatch.setattr(archive, "build_zip", real)
    assert run(cfg, until_done=True).exit_code == 0
    assert_backup_complete(lib, backup)
    assert all(sha(p) == h for p, h in done_before.items())


def test_job_cut_off_mid_verify_by_another_jobs_disk_full_leaves_no_temp(lib, backup, monkeypatch):
    """Concurrency 2: one job is verifying its built ZIP when the other hits ENOSPC and stops the run."""
    real_build, real_verify = archive.build_zip, zipcheck.verify_zip
    calls = {"build": 0}

    def build(out_path, members, **kw):
        calls["build"] += 1
        if calls["build"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_build(out_path, members, **kw)

    def verify(path, expected=None, **kw):
        assert kw["cancel"].wait(10), "the other job never stopped the run"
        return real_verify(path, expected, **kw)

    monkeypatch.setattr(archive, "build_zip", build)
    monkeypatch.setattr(zipcheck, "verify_zip", verify)
    cfg = make_config(lib, backup, concurrency=2)
    with pytest.raises(DiskFull):
        run(cfg, until_done=True)
    assert not list(backup.rglob("*.partial"))
    assert not zips(backup)
    monkeypatch.setattr(archive, "build_zip", real_build)
    monkeypatch.setattr(zipcheck, "verify_zip", real_verify)
    assert run(cfg, until_done=True).exit_code == 0
    assert_backup_complete(lib, backup)


def test_free_space_floor_stops_before_starting(lib, backup):
    cfg = make_config(lib, backup, min_free_gb=10 ** 6)
    with pytest.raises(DiskFull, match="free"):
        run(cfg)
    assert not zips(backup)
    assert "DISK_LOW" in [r["code"] for r in issues_rows(backup)]


def test_source_vanishing_between_plan_and_zip(lib, backup, monkeypatch):
    from horos_async.backup import planner

    real = planner.plan_batch
    victim = lib.study("accented")

    async def plan_then_delete(*a, **kw):
        plans = await real(*a, **kw)
        for p in plans:
            if p.study.key == key_of(victim):
                p.files[0].source.path.unlink()
        return plans

    monkeypatch.setattr(planner, "plan_batch", plan_then_delete)
    run(make_config(lib, backup), until_done=True)
    assert key_of(victim) not in zips_by_key(backup)
    assert ledger_state(backup, key_of(victim))[1] == "MISSING_FILES"
    others = [s for s in exportable(lib) if s.note != "accented"]
    assert all(key_of(s) in zips_by_key(backup) for s in others)


def test_crash_between_rename_and_commit_adopts_instead_of_duplicating(lib, backup, monkeypatch):
    calls = {"n": 0}
    real = ledger_mod.Ledger.record_zip

    async def crash(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the process dies after the rename, before the commit
        return await real(self, *a, **kw)

    monkeypatch.setattr(ledger_mod.Ledger, "record_zip", crash)
    with pytest.raises(KeyboardInterrupt):
        run(make_config(lib, backup, concurrency=1), until_done=True)
    monkeypatch.setattr(ledger_mod.Ledger, "record_zip", real)
    on_disk = {p: p.stat().st_mtime_ns for p in zips(backup)}
    assert len(on_disk) == 2
    run(make_config(lib, backup), until_done=True)
    assert_backup_complete(lib, backup)
    assert all(p.stat().st_mtime_ns == m for p, m in on_disk.items())


def test_lost_ledger_is_rebuilt_without_reexporting(lib, backup):
    cfg = make_config(lib, backup)
    run(cfg, until_done=True)
    mtimes = {p: p.stat().st_mtime_ns for p in zips(backup)}
    for suffix in ("", "-wal", "-shm"):
        p = backup / f"export_state.sqlite{suffix}"
        if p.exists():
            p.unlink()
    result = run(cfg, until_done=True)
    assert result.done == 0
    assert {p: p.stat().st_mtime_ns for p in zips(backup)} == mtimes
    assert_backup_complete(lib, backup)


def test_corrupt_ledger_is_refused_and_left_alone(lib, backup):
    cfg = make_config(lib, backup)
    run(cfg)
    for suffix in ("-wal", "-shm"):
        p = backup / f"export_state.sqlite{suffix}"
        if p.exists():
            p.unlink()
    path = backup / "export_state.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    before = path.read_bytes()
    with pytest.raises(LedgerError, match="rebuild-ledger"):
        run(cfg)
    assert path.read_bytes() == before


def test_missing_recorded_zip_is_reported_and_requeued(lib, backup):
    cfg = make_config(lib, backup)
    run(cfg, until_done=True)
    victim = zips(backup)[0]
    victim.unlink()
    run(cfg, until_done=True)
    assert "ZIP_MISSING" in [r["code"] for r in issues_rows(backup)]
    assert_backup_complete(lib, backup)


def test_truncated_recorded_zip_is_quarantined_and_reexported(lib, backup):
    cfg = make_config(lib, backup)
    run(cfg, until_done=True)
    victim = zips(backup)[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    run(cfg, until_done=True)
    assert "ZIP_INVALID" in [r["code"] for r in issues_rows(backup)]
    assert list((backup / ".quarantine").rglob("*.zip"))
    assert_backup_complete(lib, backup)


def test_durable_order_fsync_rename_dirsync_then_commit(lib, backup, monkeypatch):
    from horos_async import platform

    events = []
    real_fsync, real_sync_dir, real_link = platform.full_fsync, platform.sync_dir, os.link
    real_commit = ledger_mod.Ledger.record_zip

    monkeypatch.setattr(platform, "full_fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(platform, "sync_dir", lambda p: (events.append("dirsync"), real_sync_dir(p))[1])
    monkeypatch.setattr(os, "link", lambda a, b, **kw: (events.append("link"), real_link(a, b, **kw))[1])

    async def commit(self, *a, **kw):
        events.append("commit")
        return await real_commit(self, *a, **kw)

    monkeypatch.setattr(ledger_mod.Ledger, "record_zip", commit)
    run(make_config(lib, backup, concurrency=1, batch_size=1))
    seq = [e for e in events if e in ("fsync", "link", "dirsync", "commit")]
    i = seq.index("commit")
    before = seq[:i]
    # the file is synced, then linked into place, then its directory synced; only then the commit
    assert "link" in before, seq
    li = len(before) - 1 - before[::-1].index("link")
    assert "fsync" in before[:li] and "dirsync" in before[li:], seq


def test_backup_volume_io_error_ends_the_run_and_records_nothing(lib, backup, monkeypatch):
    real = archive.build_zip

    class Vanishing:
        def __init__(self, path):
            self.f = open(path, "xb")

        def write(self, data):
            raise OSError(errno.EIO, "Input/output error")

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(archive, "build_zip", lambda out, members, **kw: real(out, members, opener=Vanishing, **kw))
    with pytest.raises(VolumeError, match="mounted"):
        run(make_config(lib, backup), until_done=True)
    con = sqlite3.connect(backup / "export_state.sqlite")
    assert con.execute("SELECT COUNT(*) FROM studies WHERE state='done'").fetchone() == (0,)
    assert con.execute("SELECT exit_code FROM runs").fetchall() == [(7,)]
    con.close()
    assert not zips(backup) and not list(backup.rglob("*.partial"))


def test_image_folder_missing_or_alias_refuses_instead_of_failing_every_study(lib, backup, tmp_path):
    (lib.horos_data / "DBFOLDER_LOCATION").write_text(str(tmp_path / "unmounted"), encoding="utf-8")
    with pytest.raises(VolumeError, match="DBFOLDER_LOCATION"):
        run(make_config(lib, backup))
    assert not backup.exists()
    (lib.horos_data / "DBFOLDER_LOCATION").unlink()
    noindex = lib.horos_data / "DATABASE.noindex"
    noindex.rename(tmp_path / "real.noindex")
    noindex.write_bytes(b"bookmark")  # what a Finder alias looks like to Python: a file
    with pytest.raises(VolumeError, match="alias"):
        run(make_config(lib, backup))


def test_two_studies_with_the_same_name_never_share_a_zip(lib, backup):
    a, b = lib.study("duplicate-uid-a"), lib.study("duplicate-uid-b")
    con = sqlite3.connect(lib.database)
    con.execute("UPDATE ZSTUDY SET ZNAME='Same^Name', ZDATEOFBIRTH=0, ZDATE=(SELECT MIN(ZDATE) FROM ZSTUDY "
                "WHERE Z_PK IN (?, ?)) WHERE Z_PK IN (?, ?)", (a.pk, b.pk, a.pk, b.pk))
    con.commit()
    con.close()
    run(make_config(lib, backup, concurrency=2, batch_size=40), until_done=True)
    by_key = zips_by_key(backup)
    za, zb = by_key[key_of(a)], by_key[key_of(b)]
    assert len(za) == len(zb) == 1 and za != zb
    assert sorted(p.name.endswith("_d2.zip") for p in za + zb) == [False, True]
    assert_backup_complete(lib, backup)


@pytest.fixture
def small_volume(tmp_path):
    """A real 34 MB filesystem (tmpfs) for the backup."""
    with small_tmpfs(tmp_path / "small", 34) as mnt:
        yield mnt


def test_two_jobs_never_start_together_when_only_one_fits(tmp_path, small_volume):
    """Real ENOSPC territory: each big study fits alone, not both. Without space claims the second job
    hit ENOSPC and stopped the run every time, and neither study was ever exported."""
    lib = demo.build_demo(tmp_path / "lib", studies=0)
    big = [demo.add_study(lib, modality="CT", images=40, size=512, date_added=1e9) for _ in range(2)]
    cfg = make_config(lib, small_volume / "Backup", concurrency=2, compression="store")
    with pytest.raises(DiskFull, match="free on the backup volume"):
        run(cfg, until_done=True)
    assert not list(small_volume.rglob("*.partial"))
    done = zips_by_key(small_volume / "Backup")
    assert sum(key_of(s) in done for s in big) == 1  # one exported; the other waits for space
    assert all(key_of(s) in done for s in exportable(lib) if s not in big)
    rows = issues_rows(small_volume / "Backup")
    assert [r["code"] for r in rows].count("DISK_LOW") == 1


def test_a_completely_full_volume_is_disk_full_not_a_damaged_ledger(tmp_path, small_volume):
    lib = demo.build_demo(tmp_path / "lib", studies=0)
    backup = small_volume / "Backup"
    cfg = make_config(lib, backup)
    assert run(cfg, until_done=True).exit_code == 0
    demo.add_study(lib, modality="CT", images=4, date_added=1e9)
    fd = os.open(small_volume / "fill.bin", os.O_WRONLY | os.O_CREAT)
    try:  # fill the volume to the last block
        for block in (1 << 20, 4096, 1):
            try:
                while os.write(fd, b"\0" * block):
                    pass
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    for _ in range(3):  # whatever the ledger's -wal/-shm were left as: the same clear answer each time
        with pytest.raises(DiskFull, match="full") as err:
            run(cfg, until_done=True)
        assert "damaged" not in str(err.value)
    (small_volume / "fill.bin").unlink()
    assert run(cfg, until_done=True).exit_code == 0
    assert_backup_complete(lib, backup)


def test_no_status_temp_file_is_left_when_a_run_ends_mid_publish(lib, backup, monkeypatch):
    """The live status is written to a temp file and renamed; a run ending while the publisher is
    between the two must neither leave the temp file nor let an older state overwrite the final one."""
    import asyncio

    from horos_async.state import live as progress

    real = progress.LiveState.publish
    calls = iter(range(10 ** 6))

    async def slow_publish(self):
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}-{next(calls)}.partial")
        tmp.write_bytes(b"{}")  # the temp file exists ...
        await asyncio.sleep(1.0)  # ... while the write is still going on
        tmp.unlink()
        await real(self)

    monkeypatch.setattr(progress.LiveState, "publish", slow_publish)
    for _ in range(3):
        run(make_config(lib, backup), until_done=True)
        assert not list(backup.rglob("*.partial"))
        assert json.loads((backup / ".tmp" / "status.json").read_text())["phase"] == "finished"
