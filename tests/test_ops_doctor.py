"""doctor: each check passing and failing on real folders, databases and an injected mount table."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from pathlib import Path

import pytest

from horos_async import cli, demo
from horos_async.ops import doctor, launchd
from horos_async.ops.doctor import FAIL, INFO, PASS, WARN
from horos_async.guards import RunLock

from helpers import backed_up_library, make_config

JOURNAL_MAGIC = b"\xd9\xd5\x05\xf9\x20\xa1\x63\xd7"


@pytest.fixture(scope="module")
def backed_up(tmp_path_factory):
    """A demo library with one completed backup (shared: the checks only read it)."""
    lib, cfg = backed_up_library(tmp_path_factory.mktemp("doctor"), studies=1)
    return lib, cfg


@pytest.fixture
def lib(tmp_path):
    return demo.build_demo(tmp_path / "lib", studies=0)


def by_name(checks, name):
    found = [c for c in checks if c.name == name]
    assert found, f"no check {name!r} in {[c.name for c in checks]}"
    return found[0]


def quiet(cfg, **kw):
    kw.setdefault("macos", False)
    kw.setdefault("mounts", [("/", "ext4")])
    return doctor.run_checks(cfg, **kw)


def test_healthy_backup_has_no_fail(backed_up):
    lib, cfg = backed_up
    checks = quiet(cfg)
    assert not doctor.exit_failed(checks), doctor.render(checks)
    for name in ("config", "horos data", "database", "journal mode", "schema", "DATABASE.noindex", "INCOMING",
                 "backup folder", "filesystem", "run lock", "ledger", "disk access"):
        assert by_name(checks, name).status == PASS, name
    assert " studies done" in by_name(checks, "ledger").message
    assert by_name(checks, "launchd agent").status == INFO
    assert not list(cfg.backup_dir.glob(".*partial")), "the write probe was left behind"


def test_sentinel_missing_disabled_present(lib, tmp_path):
    sentinel = tmp_path / ".pacs_sentinel"
    cfg = make_config(lib, tmp_path / "Backup", sentinel=str(sentinel))
    c = doctor.check_sentinel(cfg)
    assert c.status == FAIL and "touch" in c.fix
    sentinel.touch()
    assert doctor.check_sentinel(cfg).status == PASS
    assert doctor.check_sentinel(make_config(lib, tmp_path / "Backup")).status == WARN


def test_garbage_database_fails(tmp_path):
    db = tmp_path / "Database.sql"
    db.write_bytes(b"this is not an sqlite database at all" * 100)
    (c,) = doctor.check_database(db)
    assert c.status == FAIL and "cannot be read" in c.message
    assert db.read_bytes().startswith(b"this is not")  # never written
    (c,) = doctor.check_database(tmp_path / "absent.sql")
    assert c.status == FAIL and "not found" in c.message


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_journal_modes(tmp_path, mode):
    lib = demo.build_demo(tmp_path / "lib", studies=0, journal_mode=mode)
    checks = doctor.check_database(lib.database)
    assert [c.status for c in checks] == [PASS, PASS, PASS]
    assert by_name(checks, "journal mode").message.startswith(mode)


def test_missing_table_and_column_fail_the_schema(tmp_path):
    db = tmp_path / "Database.sql"
    con = sqlite3.connect(db)
    con.executescript("CREATE TABLE ZSTUDY (Z_PK INTEGER PRIMARY KEY, ZSTUDYINSTANCEUID VARCHAR);"
                      "CREATE TABLE ZSERIES (Z_PK INTEGER PRIMARY KEY, ZSTUDY INTEGER);")
    con.close()
    schema = by_name(doctor.check_database(db), "schema")
    assert schema.status == FAIL
    assert "table ZIMAGE missing" in schema.message and "ZSERIES.ZMODALITY missing" in schema.message


def test_hot_journal_warns_and_nothing_is_rolled_back(lib, tmp_path):
    journal = Path(str(lib.database) + "-journal")
    journal.write_bytes(JOURNAL_MAGIC + os.urandom(1000))
    before = lib.database.read_bytes()
    checks = quiet(make_config(lib, tmp_path / "Backup"))
    hot = by_name(checks, "hot journal")
    assert hot.status == WARN and "open Horos" in hot.fix
    assert by_name(checks, "database").status in (WARN, PASS)
    assert journal.exists() and lib.database.read_bytes() == before
    journal.write_bytes(b"")  # an empty journal is not hot
    assert not [c for c in quiet(make_config(lib, tmp_path / "Backup")) if c.name == "hot journal"]


def test_database_noindex_must_be_a_real_folder(lib, tmp_path):
    cfg = make_config(lib, tmp_path / "Backup")
    noindex = lib.horos_data / "DATABASE.noindex"
    noindex.rename(lib.horos_data / "moved")
    assert by_name(quiet(cfg), "DATABASE.noindex").status == FAIL
    noindex.write_bytes(b"book\x00\x00\x00\x00mark")  # what a Finder alias looks like: a file
    c = by_name(quiet(cfg), "DATABASE.noindex")
    assert c.status == FAIL and "alias" in c.message


def test_horos_folder_missing(tmp_path):
    cfg = make_config(type("L", (), {"horos_data": tmp_path / "nope", "timezone": ""})(), tmp_path / "Backup")
    c = by_name(quiet(cfg), "horos data")
    assert c.status == FAIL


def test_backup_folder_states(lib, tmp_path):
    cfg = make_config(lib, tmp_path / "Backup")
    assert by_name(quiet(cfg), "backup folder").status == WARN  # not created yet, parent exists
    cfg = make_config(lib, tmp_path / "no" / "such" / "Backup")
    assert by_name(quiet(cfg), "backup folder").status == FAIL


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc (unwritable even for root)")
def test_unwritable_backup_folder_fails():
    c = doctor.check_writable(Path("/proc/self"))
    assert c.status == FAIL and "cannot write" in c.message


def test_same_disk_warns_and_free_space_floor(lib, tmp_path):
    backup = tmp_path / "Backup"
    backup.mkdir()
    checks = quiet(make_config(lib, backup, min_free_gb=10 ** 7))
    assert by_name(checks, "same disk").status == WARN and "auto-clean" in by_name(checks, "same disk").message
    assert by_name(checks, "free space").status == WARN


def test_other_disk_passes(lib, tmp_path):
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)) or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem to write to")
    backup = shm / f"doctor-test-{os.getpid()}"
    backup.mkdir()
    try:
        checks = quiet(make_config(lib, backup))
        assert by_name(checks, "same disk").status == PASS
    finally:
        backup.rmdir()


def test_volume_mount_point(tmp_path):
    volumes = tmp_path / "Volumes"
    c = doctor.check_mount_point(volumes / "PACS" / "Backup", volumes)
    assert c.status == FAIL and "not mounted" in c.message
    (volumes / "PACS").mkdir(parents=True)
    c = doctor.check_mount_point(volumes / "PACS" / "Backup", volumes)
    assert c.status == FAIL and "boot disk" in c.message and "PACS 1" in c.fix
    assert doctor.check_mount_point(tmp_path / "elsewhere", volumes).status == PASS
    if os.path.ismount("/proc"):
        assert doctor.check_mount_point(Path("/proc/Backup"), Path("/")).status == PASS


def test_volume_check_runs_on_the_configured_root(lib, tmp_path):
    volumes = tmp_path / "Volumes"
    backup = volumes / "PACS" / "Backup"
    backup.mkdir(parents=True)
    checks = quiet(make_config(lib, backup), volumes_root=volumes)
    assert by_name(checks, "backup volume").status == FAIL
    assert doctor.exit_failed(checks)


def test_filesystem_types_from_an_injected_mount_table(tmp_path):
    fat, exfat, apfs, nas = (tmp_path / n for n in ("fat", "exfat", "apfs", "nas"))
    mounts = [("/", "ext4"), (str(fat), "msdos"), (str(exfat), "exfat"), (str(apfs), "apfs"), (str(nas), "smbfs")]
    c = doctor.check_filesystem(fat / "Backup", mounts)
    assert c.status == WARN and "4 GiB" in c.message
    c = doctor.check_filesystem(exfat / "Backup", mounts)
    assert c.status == WARN and "journal" in c.message
    assert doctor.check_filesystem(apfs / "Backup", mounts).status == PASS
    assert doctor.check_filesystem(nas, mounts).status == WARN
    assert doctor.check_filesystem(tmp_path / "other", mounts).message == "ext4"
    assert doctor.filesystem_type(Path(str(fat) + "x"), mounts) == "ext4"  # prefix of a name is not a parent


def test_mount_table_parsers():
    mac = ("/dev/disk3s1s1 on / (apfs, sealed, local, read-only, journaled)\n"
           "/dev/disk4s1 on /Volumes/PACS BACKUP (exfat, local, nodev, nosuid, noowners)\n"
           "/dev/disk5s1 on /Volumes/OLD (msdos, local, nodev, nosuid, noowners)\n")
    assert doctor.parse_mount_output(mac) == [("/", "apfs"), ("/Volumes/PACS BACKUP", "exfat"), ("/Volumes/OLD", "msdos")]
    proc = "/dev/sdb1 /media/PACS\\040BACKUP vfat rw,relatime 0 0\nproc /proc proc rw 0 0\n"
    assert doctor.parse_proc_mounts(proc) == [("/media/PACS BACKUP", "vfat"), ("/proc", "proc")]
    assert doctor.read_mounts()  # this machine's own table parses


def test_lock_free_held_and_never_blocking(backed_up):
    lib, cfg = backed_up
    assert doctor.check_lock(cfg).status == PASS
    with RunLock(cfg.lock_path):
        c = doctor.check_lock(cfg)
        assert c.status == PASS and f"held by pid {os.getpid()}" in c.message
    with RunLock(cfg.lock_path):  # doctor released its probe: the lock can be taken
        pass
    assert "free" in doctor.check_lock(cfg).message


def test_ledger_readable_and_damaged(backed_up, tmp_path):
    lib, cfg = backed_up
    assert doctor.check_ledger(cfg).status == PASS
    damaged = make_config(lib, tmp_path / "B2")
    damaged.backup_dir.mkdir()
    damaged.ledger_path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 5000)
    c = doctor.check_ledger(damaged)
    assert c.status == FAIL and "rebuild-ledger" in c.fix
    assert doctor.check_ledger(make_config(lib, tmp_path / "B3")).status == INFO


def test_launchd_agent_on_macos_with_fake_launchctl(backed_up, tmp_path):
    lib, cfg = backed_up
    calls = []

    def loaded(argv):
        calls.append(argv)
        return 0, "state = not running\n\tlast exit code = 0\n"

    c = doctor.check_launchd(cfg, macos=True, runner=loaded, home=tmp_path, uid=501)
    assert c.status == WARN and "launchd install" in c.fix
    program = tmp_path / "bin" / "horos-backup"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    cfg_file = tmp_path / "agent.toml"
    cfg_file.write_text(f'horos_data = "{lib.horos_data}"\nbackup_dir = "{cfg.backup_dir}"\nsentinel = ""\n')
    from horos_async import config as config_mod

    agent_cfg = config_mod.load(cfg_file)
    launchd.install(agent_cfg, home=tmp_path, program=program, runner=lambda a: (0, ""), uid=501, out=lambda s: None)
    c = doctor.check_launchd(agent_cfg, macos=True, runner=loaded, home=tmp_path, uid=501)
    assert c.status == PASS and "last exit code 0" in c.message
    assert calls[-1] == ["launchctl", "print", f"gui/501/{launchd.LABEL}"]
    c = doctor.check_launchd(agent_cfg, macos=True, runner=lambda a: (113, "Could not find service"), home=tmp_path,
                             uid=501)
    assert c.status == WARN and "not loaded" in c.message
    c = doctor.check_launchd(cfg, macos=True, runner=loaded, home=tmp_path, uid=501)
    assert c.status == WARN and "not" in c.message  # installed for another config file
    program.unlink()
    assert doctor.check_launchd(agent_cfg, macos=True, runner=loaded, home=tmp_path, uid=501).status == FAIL


def test_full_disk_access_denied(backed_up):
    lib, cfg = backed_up

    def denied(path):
        raise PermissionError(1, "Operation not permitted", str(path))

    c = doctor.check_access(cfg, macos=True, lister=denied)
    assert c.status == FAIL and "Operation not permitted" in c.message
    assert "Full Disk Access" in c.fix and os.path.realpath(sys.executable) in c.fix
    assert doctor.check_access(cfg, macos=False, lister=denied).status == FAIL
    assert doctor.check_access(cfg, macos=False).status == PASS


def test_cli_exit_codes_and_json(backed_up, tmp_path, capsys):
    lib, cfg = backed_up
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(f'horos_data = "{lib.horos_data}"\nbackup_dir = "{cfg.backup_dir}"\nsentinel = ""\n'
                        f'min_free_gb = 0.0\nhoros_free_gb = 0.0\n')
    assert cli.main(["doctor", "--config", str(cfg_file), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["summary"]["FAIL"] == 0
    assert {"name", "status", "message", "fix"} <= set(doc["checks"][0])
    cfg_file.write_text(cfg_file.read_text().replace('sentinel = ""', f'sentinel = "{tmp_path / "absent"}"'))
    assert cli.main(["doctor", "--config", str(cfg_file)]) == 9
    out = capsys.readouterr().out
    assert "FAIL  sentinel" in out and "fix: mount the volume" in out
    cfg_file.write_text("batch_size = 0\n")
    assert cli.main(["doctor", "--config", str(cfg_file)]) == 9
    assert "FAIL  config" in capsys.readouterr().out


def test_checks_that_could_not_run_say_skip_not_pass(tmp_path, capsys):
    """Hardening 20: with both folders missing, 'same disk' and 'disk access' used to PASS."""
    nowhere = tmp_path / "unmounted"
    cfg = make_config(type("L", (), {"horos_data": nowhere / "Horos Data", "timezone": ""})(),
                      nowhere / "BACKUP" / "Horos")
    checks = quiet(cfg)
    for name in ("same disk", "free space", "filesystem", "disk access", "run lock"):
        c = by_name(checks, name)
        assert c.status == doctor.SKIP and "not checked" in c.message, (name, c)
    assert by_name(checks, "horos data").status == FAIL and by_name(checks, "backup folder").status == FAIL
    assert doctor.exit_failed(checks)
    passed = {c.name for c in checks if c.status == PASS}
    assert passed <= {"config", "backup volume"}, doctor.render(checks)  # loaded; "not under /Volumes": true
    text = doctor.render(checks)
    assert "SKIP  same disk" in text and " SKIP" in text.splitlines()[-1]
    assert doctor.to_json(checks)["summary"]["SKIP"] == 5


def test_same_disk_is_skipped_when_only_the_horos_folder_is_missing(tmp_path):
    backup = tmp_path / "Backup"
    backup.mkdir()
    cfg = make_config(type("L", (), {"horos_data": tmp_path / "nope", "timezone": ""})(), backup)
    checks = quiet(cfg)
    assert by_name(checks, "same disk").status == doctor.SKIP
    access = by_name(checks, "disk access")
    assert access.status == PASS and str(backup) in access.message and "not checked" in access.message
