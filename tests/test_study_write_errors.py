"""Whose error is it (hardening 2; docs/design/durability.md §7)? A file too big for the backup
filesystem, a name too long for it, one unreadable source: that study's failure (an issue, a backoff,
the queue moves on, even with ``concurrency = 1``). Real errors from the kernel, in a real process."""

from __future__ import annotations

import csv
import datetime
import os
import sqlite3

import pytest

from horos_async import config as config_mod, demo

from helpers import cli_process, exportable, horos_sql, key_of, limited, make_config, zips_by_key


def issues(cfg):
    with open(cfg.issues_csv, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def ledger_row(cfg, key):
    con = sqlite3.connect(cfg.ledger_path)
    try:
        return con.execute("SELECT state, code, next_attempt FROM studies WHERE key=?", (key,)).fetchone()
    finally:
        con.close()


def write(cfg, path):
    path.write_text(config_mod.render_toml(cfg), encoding="utf-8")
    return path


def others_done(lib, cfg, *but):
    done = zips_by_key(cfg.backup_dir)
    return all(key_of(s) in done for s in exportable(lib) if s not in but)


def test_a_zip_too_big_for_the_filesystem_fails_its_study_only(demo_lib_factory, tmp_path):
    """EFBIG (FAT32's 4 GiB cap, here a real file-size limit on the process) stopped the whole run as
    "backup volume failed", every run: with concurrency = 1 the archive never got past that study."""
    lib = demo_lib_factory(studies=3)
    big = demo.add_study(lib, modality="CT", images=40, size=256, date_added=1e9, note="too-big",
                         study_date=datetime.datetime(1990, 1, 1))  # first in the queue
    cfg = write(make_config(lib, tmp_path / "Backup", concurrency=1, compression="store",
                            retry_backoff_minutes=60), tmp_path / "cfg.toml")
    config = config_mod.load(cfg)
    for attempt in (1, 2):
        proc = cli_process(["run", "--config", str(cfg)], preexec_fn=limited(file_size=2 << 20))
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        assert others_done(lib, config, big)
    assert key_of(big) not in zips_by_key(config.backup_dir)
    rows = [r for r in issues(config) if r["study_uid"] == big.uid]
    assert [r["code"] for r in rows] == ["FILE_TOO_BIG"]  # once: the second run left it in its backoff
    assert "FAT32" in rows[0]["detail"]
    state, code, retry_at = ledger_row(config, key_of(big))
    assert (state, code) == ("failed", "FILE_TOO_BIG") and retry_at
    assert not list(config.backup_dir.rglob("*.partial"))
    proc = cli_process(["run", "--config", str(cfg), "--retry-failed"])  # a disk without the limit
    assert proc.returncode == 0 and key_of(big) in zips_by_key(config.backup_dir), proc.stderr


def test_a_300_character_study_uid_fails_its_study_only(demo_lib_factory, tmp_path):
    """ENAMETOOLONG: the first run ended as "backup volume failed", the second crashed in Path.exists()."""
    lib = demo_lib_factory(studies=2)
    victim = exportable(lib)[0]
    long_uid = "1.2.826.0.1." + "9" * 288
    horos_sql(lib, "UPDATE ZSTUDY SET ZSTUDYINSTANCEUID = ? WHERE Z_PK = ?", long_uid, victim.pk)
    cfg = write(make_config(lib, tmp_path / "Backup", concurrency=1, retry_backoff_minutes=0), tmp_path / "cfg.toml")
    config = config_mod.load(cfg)
    for attempt in (1, 2):  # retry_backoff_minutes = 0: the second run tries it again, and says so again
        proc = cli_process(["run", "--config", str(cfg)])
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
    assert others_done(lib, config, victim)
    codes = [r["code"] for r in issues(config) if r["study_uid"] == long_uid]
    assert codes and set(codes) == {"NAME_TOO_LONG"}, issues(config)
    for cmd in (["plan"], ["status"], ["verify"]):
        proc = cli_process([*cmd, "--config", str(cfg)])
        assert "Traceback" not in proc.stderr, (cmd, proc.stderr)


def test_one_unreadable_source_fails_its_study_only(demo_lib_factory, tmp_path):
    """EACCES on one image (a real permission error: the run has no power to override file modes)."""
    lib = demo_lib_factory(studies=2)
    victim = exportable(lib)[0]
    locked = sorted(victim.files)[0]
    locked.chmod(0)
    cfg = write(make_config(lib, tmp_path / "Backup", concurrency=1), tmp_path / "cfg.toml")
    config = config_mod.load(cfg)
    proc = cli_process(["run", "--config", str(cfg)], preexec_fn=limited(dac=False))
    assert proc.returncode == 0, proc.stderr
    assert others_done(lib, config, victim) and key_of(victim) not in zips_by_key(config.backup_dir)
    rows = [r for r in issues(config) if r["study_uid"] == victim.uid]
    assert len(rows) == 1 and str(locked) in rows[0]["detail"], rows
