"""No run hangs (unattended operation §4; hardening 9 and 10): whatever the Horos side holds, a real
``horos-backup`` process ends on its own with its documented code, and SIGTERM ends it within seconds."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time

import pytest

from horos_async import config as config_mod, demo
from horos_async.errors import EXIT_DATABASE, EXIT_INTERRUPTED
from horos_async.guards import RunLock

from helpers import (assert_backup_complete, cli_process, exportable, horos_sql, key_of, make_config,
                     zips_by_key)


@pytest.fixture
def setup(demo_lib_factory, tmp_path):
    lib = demo_lib_factory(studies=2)
    cfg = make_config(lib, tmp_path / "Backup")
    path = tmp_path / "cfg.toml"
    path.write_text(config_mod.render_toml(cfg), encoding="utf-8")
    return lib, cfg, path


def _drop_column(db) -> None:
    con = sqlite3.connect(db)
    con.execute("ALTER TABLE ZIMAGE DROP COLUMN ZPATHSTRING")
    con.commit()
    con.close()


@pytest.mark.parametrize("damage", ["zero-byte", "dropped-column"])
@pytest.mark.parametrize("command", ["run", "plan"])
def test_an_unrecognised_schema_exits_5_at_once(setup, command, damage):
    """Hardening 10: the connection opened before the schema check failed was never closed, and its
    thread kept the process alive after the right message: launchd then started no new run."""
    lib, cfg, path = setup
    if damage == "zero-byte":
        lib.database.write_bytes(b"")
    else:
        _drop_column(lib.database)
    proc = cli_process([command, "--config", str(path)], timeout=30)
    assert proc.returncode == EXIT_DATABASE, proc.stderr
    assert "Traceback" not in proc.stderr
    assert ("table ZSTUDY is missing" if damage == "zero-byte" else "lacks column(s) ZPATHSTRING") in proc.stderr


# -- hardening 9: a FIFO, a stuck read, SIGTERM --------------------------------------------------------

def issue_codes(cfg, key=None):
    import csv

    with open(cfg.issues_csv, encoding="utf-8-sig", newline="") as f:
        return [r["code"] for r in csv.DictReader(f) if key is None or r["study_uid"] == key.split("|", 1)[0]]


def test_a_fifo_as_a_horos_image_path_is_never_opened(setup):
    """A named pipe where Horos lists an image: opening it for reading would wait for a writer for ever."""
    lib, cfg, path = setup
    victim = exportable(lib)[0]
    fifo = sorted(victim.files)[0]
    fifo.unlink()
    os.mkfifo(fifo)
    proc = cli_process(["run", "--config", str(path)], timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert key_of(victim) not in zips_by_key(cfg.backup_dir)
    assert issue_codes(cfg, key_of(victim)) == ["MISSING_FILES"]  # named as not there: it is no file
    assert all(key_of(s) in zips_by_key(cfg.backup_dir) for s in exportable(lib) if s is not victim)


# Between the plan's stat (a regular file) and the job's open, the file becomes a FIFO: only the check on
# the open descriptor can see it. The process is real; only the moment of the swap is arranged.
SWAP_TO_FIFO = """
import os, sys
from horos_async import cli
from horos_async.backup import planner
victim = sys.argv.pop(1)
real = planner.stat_files
def stat_then_swap(files):
    present, missing = real(files)
    for f, _size in present:
        if str(f.path) == victim and os.path.isfile(victim):
            os.unlink(victim)
            os.mkfifo(victim)
    return present, missing
planner.stat_files = stat_then_swap
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("compression", ["auto", "store"])
def test_a_source_that_became_a_fifo_after_planning_is_not_a_file(setup, compression):
    """Hardening 9: the run hung for ever in os.open, and SIGTERM could not end it."""
    lib, cfg, path = setup
    path.write_text(config_mod.render_toml(make_config(lib, cfg.backup_dir, compression=compression)),
                    encoding="utf-8")
    victim = exportable(lib)[0]
    fifo = str(sorted(victim.files)[0])
    proc = cli_process(["run", "--config", str(path)], timeout=60, script=SWAP_TO_FIFO, script_args=[fifo])
    assert proc.returncode == 0, proc.stderr
    assert os.path.exists(fifo) and stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert key_of(victim) not in zips_by_key(cfg.backup_dir)
    assert issue_codes(cfg, key_of(victim)) == ["NOT_A_FILE"]
    assert all(key_of(s) in zips_by_key(cfg.backup_dir) for s in exportable(lib) if s is not victim)
    assert not list(cfg.backup_dir.rglob("*.partial"))


@pytest.fixture
def stuck_volume(tmp_path):
    """A real FUSE volume (tests/stuck_fs.py) holding one DICOM file, mounted at tmp_path/stuck."""
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.skip("needs root and /dev/fuse to mount a stuck volume")
    from stuck_fs import StuckFS

    fs = StuckFS(tmp_path / "stuck", {})
    try:
        fs.mount()
    except OSError as exc:
        pytest.skip(f"cannot mount a FUSE volume here: {exc}")
    try:
        yield fs
    finally:
        fs.unmount()


def _link_study_to(lib, fs):
    """A new one-image study whose file is linked on the stuck volume (Horos keeps such files where they are)."""
    study = demo.add_study(lib, modality="CT", images=1, date_added=1e9, note="on-a-stuck-share")
    own = study.files[0]
    fs.names.append("image.dcm")
    fs.data.append(own.read_bytes())
    linked = fs.mountpoint / "image.dcm"
    horos_sql(lib, "UPDATE ZIMAGE SET ZPATHNUMBER = NULL, ZPATHSTRING = ? WHERE ZSERIES IN "
                   "(SELECT Z_PK FROM ZSERIES WHERE ZSTUDY = ?)", str(linked), study.pk)
    own.unlink()
    return study


def test_a_read_that_never_returns_is_abandoned_as_read_stalled(setup, stuck_volume):
    """Hardening 9: a stuck network volume held the run for ever; now the job is abandoned after
    read_stall_seconds, its temp removed, READ_STALLED recorded, and the other studies exported."""
    lib, cfg, path = setup
    stuck = _link_study_to(lib, stuck_volume)
    stuck_volume.stuck = True
    cfg = make_config(lib, cfg.backup_dir, read_stall_seconds=2, concurrency=1)
    path.write_text(config_mod.render_toml(cfg), encoding="utf-8")
    t0 = time.monotonic()
    proc = cli_process(["run", "--config", str(path)], timeout=90)
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    assert stuck_volume.reads_held >= 1  # the read really was held in the kernel
    assert issue_codes(cfg, key_of(stuck)) == ["READ_STALLED"]
    done = zips_by_key(cfg.backup_dir)
    assert key_of(stuck) not in done
    assert all(key_of(s) in done for s in exportable(lib))
    assert not list(cfg.backup_dir.rglob("*.partial"))
    assert took < 60, took
    stuck_volume.stuck = False  # the share answers again: the next --retry-failed run exports it
    proc = cli_process(["run", "--config", str(path), "--retry-failed"], timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert key_of(stuck) in zips_by_key(cfg.backup_dir)


@pytest.mark.parametrize("compression", ["auto", "store"])
def test_sigterm_ends_a_run_blocked_in_a_read_within_seconds(setup, stuck_volume, compression):
    """Hardening 9: shutdown waited for the blocked thread, the lock stayed held and every later run
    exited 4. SIGTERM now ends the run in seconds (exit 130), the lock is free, the attempt recorded."""
    lib, cfg, path = setup
    stuck = _link_study_to(lib, stuck_volume)
    stuck_volume.stuck = True
    cfg = make_config(lib, cfg.backup_dir, read_stall_seconds=3600, concurrency=1, compression=compression)
    path.write_text(config_mod.render_toml(cfg), encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "horos_async", "run", "--config", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, HOROS_BACKUP_CONFIG=""))
    try:
        deadline = time.monotonic() + 60
        while stuck_volume.reads_held == 0 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert stuck_volume.reads_held >= 1, "the run never reached the stuck file"
        time.sleep(0.5)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert took < 10, took
    assert "Traceback" not in err
    attempts = json.loads(cfg.health_path.read_text(encoding="utf-8"))["attempts"]
    assert attempts[-1]["outcome"] == "interrupted" and attempts[-1]["exit_code"] == EXIT_INTERRUPTED
    with RunLock(cfg.lock_path):  # free: launchd's next start runs
        pass
    stuck_volume.stuck = False
    proc2 = cli_process(["run", "--config", str(path)], timeout=90)
    assert proc2.returncode == 0, proc2.stderr
    assert key_of(stuck) in zips_by_key(cfg.backup_dir)
    assert_backup_complete(lib, cfg.backup_dir)
