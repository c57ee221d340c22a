"""The live status file and the read-only snapshot: running, idle, stale, never-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from horos_async import cli, config as config_mod, status
from horos_async.errors import EXIT_CHECK, EXIT_LEDGER, EXIT_VOLUME, LedgerError

from helpers import backed_up_library, make_config, read_only, run, zips


def write_config(cfg) -> "os.PathLike":
    """``cfg`` as a TOML file beside the Horos library (the backup folder may be "unmounted"), for the CLI."""
    path = cfg.horos_data.parent / "cfg.toml"
    path.write_text(config_mod.render_toml(cfg), encoding="utf-8")
    return path


def test_snapshot_follows_a_real_run(demo_lib_factory, tmp_path):
    lib = demo_lib_factory(studies=4, images_per_series=12, ct_size=512, mr_size=256)
    cfg = make_config(lib, tmp_path / "Backup", sleep_between_studies=0.2, concurrency=1)
    assert status.read_snapshot(cfg).engine == "never-run"
    t = threading.Thread(target=run, args=(cfg,), kwargs={"until_done": True})
    t.start()
    seen = []
    while t.is_alive():
        snap = status.read_snapshot(cfg)
        seen.append(snap)
        time.sleep(0.1)
    t.join()
    running = [s for s in seen if s.engine == "running"]
    assert running, [s.engine for s in seen]
    assert any(s.jobs for s in running)
    assert any(s.eligible for s in running)
    done_counts = [len(s.finished) for s in running]
    assert max(done_counts) > 0
    final = status.read_snapshot(cfg)
    assert final.engine == "idle" and final.done > 0 and final.pending == final.eligible - final.done
    assert final.incoming_count == 0 and final.runs[0].outcome == "ok"


def test_dead_engine_is_stale_not_idle(tmp_path, demo_lib):
    cfg = make_config(demo_lib, tmp_path / "Backup")
    cfg.work_dir.mkdir(parents=True)
    dead = 2 ** 22 + 12345  # above pid_max defaults: no such process
    (cfg.live_status_path).write_text(json.dumps(
        {"version": 1, "pid": dead, "host": os.uname().nodename, "state": "running",
         "heartbeat": time.time() - 120, "started": time.time() - 200}), encoding="utf-8")
    snap = status.read_snapshot(cfg)
    assert snap.engine == "stale" and "gone" in snap.detail


def test_unreadable_state_is_reported(tmp_path, demo_lib):
    cfg = make_config(demo_lib, tmp_path / "Backup")
    cfg.work_dir.mkdir(parents=True)
    (cfg.live_status_path).write_text("{not json", encoding="utf-8")
    assert status.read_snapshot(cfg).engine == "unreadable"


# -- state that cannot be read is an error with an exit code, never "0 backed up" --------------------------
def test_ledger_on_a_readonly_volume_is_read(tmp_path):
    lib, cfg = backed_up_library(tmp_path, studies=2)
    before = status.read_snapshot(cfg)
    for side in ("-wal", "-shm"):  # as a clean close leaves it: SQLite would want to create -shm to read
        f = cfg.ledger_path.with_name(cfg.ledger_path.name + side)
        assert not f.exists() or side == "-shm" or f.stat().st_size == 0
        f.unlink(missing_ok=True)
    with read_only(cfg.backup_dir):
        snap = status.read_snapshot(cfg)
    assert snap.engine == "idle" and snap.exit_code == 0, snap.detail
    assert (snap.done, snap.eligible, snap.pending) == (before.done, before.eligible, before.pending)
    assert snap.done == len(zips(cfg.backup_dir)) > 0


def test_damaged_ledger_is_an_error_with_the_ledger_exit_code(tmp_path, capsys):
    lib, cfg = backed_up_library(tmp_path, studies=2)
    with open(cfg.ledger_path, "r+b") as f:  # pages past the first overwritten: "malformed"
        f.seek(4096 * 2)
        f.write(os.urandom(4096 * 4))
    snap = status.read_snapshot(cfg)
    assert snap.engine == "unreadable" and snap.exit_code == EXIT_LEDGER
    assert "damaged" in snap.detail and "rebuild-ledger" in snap.detail and str(cfg.ledger_path) in snap.detail
    path = write_config(cfg)
    assert cli.main(["status", "--config", str(path)]) == EXIT_LEDGER
    out, err = capsys.readouterr()
    assert "0 studies" not in out and "NEVER" not in out and "damaged" in err
    assert cli.main(["status", "--config", str(path), "--json"]) == EXIT_LEDGER
    assert json.loads(capsys.readouterr().out)["engine"] == "unreadable"
    with pytest.raises(LedgerError):  # the same verdict as 'run'
        run(cfg)


def test_unmounted_backup_volume_is_named_with_exit_7(tmp_path, demo_lib, capsys):
    cfg = make_config(demo_lib, tmp_path / "BackupDisk" / "Horos")  # the disk (parent) is not there
    snap = status.read_snapshot(cfg)
    assert snap.engine == "unreadable" and snap.exit_code == EXIT_VOLUME
    assert str(cfg.backup_dir) in snap.detail and "mounted" in snap.detail
    path = write_config(cfg)
    assert cli.main(["status", "--config", str(path)]) == EXIT_VOLUME
    out, err = capsys.readouterr()
    assert "0 studies" not in out and "NEVER" not in out and str(cfg.backup_dir) in err


def test_counts_add_up_when_the_ledger_moved_on_since_the_last_scan(tmp_path, capsys):
    """A ZIP goes missing, verify takes it off the ledger: pending must grow with it (was "24/28, 3 pending")."""
    lib, cfg = backed_up_library(tmp_path, studies=2)
    before = status.read_snapshot(cfg)
    zips(cfg.backup_dir)[0].unlink()
    assert cli.main(["verify", "--config", str(write_config(cfg))]) == EXIT_CHECK
    snap = status.read_snapshot(cfg)
    assert snap.done == before.done - 1
    assert snap.pending == snap.eligible - snap.done == before.pending + 1
    assert sum(done for _, _, done in snap.months) == snap.done  # the month table agrees too
    capsys.readouterr()
    cli.main(["status", "--config", str(write_config(cfg))])
    assert f"{snap.done}/{snap.eligible} studies backed up, {snap.pending} pending" in capsys.readouterr().out


def test_counts_add_up_after_kill_9_mid_run(tmp_path):
    """The live file keeps the totals of the batch's scan; the ledger goes on. Was "5/28, 28 pending"."""
    from horos_async import demo

    lib = demo.build_demo(tmp_path / "lib", studies=6)
    cfg = make_config(lib, tmp_path / "Backup", sleep_between_studies=0.3, concurrency=1, batch_size=50)
    proc = subprocess.Popen([sys.executable, "-m", "horos_async", "run", "--config", str(write_config(cfg)),
                             "--until-done"], env=dict(os.environ, HOROS_BACKUP_CONFIG=""),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            snap = status.read_snapshot(cfg)
            if snap.engine == "running" and snap.eligible and snap.done >= 2:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the run ended before two studies were done")
        assert snap.pending == snap.eligible - snap.done  # while running
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    snap = status.read_snapshot(cfg)
    assert snap.engine == "stale" and snap.done >= 2
    assert snap.pending == snap.eligible - snap.done


# -- the live file: one module writes and parses it ----------------------------------------------------------
def _busy_live_state(path):
    """A LiveState filled the way the engine fills it (plain dicts and lists, a running job)."""
    from horos_async.state.live import JobProgress, LiveState

    live = LiveState(path, run_id=7, incoming_limit=25000)
    live.phase, live.batch_index, live.message = "export", 3, "exporting"
    live.guard_code, live.guard_detail = "INCOMING_OVER_LIMIT", "31,204 files"
    live.incoming = {"count": 1204, "limit": 25000, "capped": False, "checked": 1717236000.5}
    job = JobProgress(uid="1.2.3", label="A_1.2.3.zip", files_total=980, bytes_total=512_000_000)
    job.update(412, 215_000_000)
    live.jobs["1.2.3|p"] = job
    live.queued = ["B_4.5.zip"]
    live.finished.append({"uid": "9.9", "label": "C_9.9.zip", "status": "failed", "code": "MISSING_FILES",
                          "seconds": 3.1, "bytes": 0})
    live.totals = {"eligible": 1250, "done": 412, "pending": 838, "due": 30, "waiting": 2, "backoff": 1}
    live.months = {"2019_01": [40, 20], "2018_12": [12, 12]}
    live.run["studies_done"], live.run["bytes_in"] = 412, 182_300_000_000
    live.sample()
    return live


def test_the_live_document_reads_back_as_it_was_written(tmp_path):
    from horos_async.state.live import LiveStatus

    doc = json.loads(json.dumps(_busy_live_state(tmp_path / "status.json").to_dict()))
    assert set(doc) == {"version", "pid", "host", "state", "heartbeat", "run_id", "started", "phase", "guard",
                        "incoming", "batch", "jobs", "totals", "months", "run", "throughput", "message"}
    parsed = LiveStatus.parse(doc)
    assert parsed.to_json() == doc
    assert parsed.jobs[0].files_done == 412 and parsed.batch.finished[0].code == "MISSING_FILES"
    assert parsed.months == (("2018_12", 12, 12), ("2019_01", 40, 20)) and parsed.totals.eligible == 1250
    assert doc["totals"] and LiveStatus().to_json()["totals"] == {}  # no scan yet: no counts, as before


def test_a_damaged_or_older_live_file_never_raises(tmp_path, demo_lib):
    """Mistyped values (a damaged file, another version) read as defaults; status still answers."""
    from horos_async.state.live import LiveStatus

    assert LiveStatus.parse({}) == LiveStatus()
    cfg = make_config(demo_lib, tmp_path / "Backup")
    cfg.live_status_path.parent.mkdir(parents=True)
    cfg.live_status_path.write_text(json.dumps(
        {"version": "1", "pid": "x", "state": "running", "heartbeat": "soon", "started": [1],
         "guard": "DISK_FULL", "incoming": {"count": "many", "limit": None}, "batch": {"index": "3",
         "queued": "B.zip", "finished": [{"uid": 5, "seconds": "x"}, "junk"]}, "jobs": [None, {"files_done": "2"}],
         "totals": {"eligible": "12"}, "months": {"2019_01": "x", "2019_02": [3, "1"]},
         "throughput": {"samples": [[1, 2], "x", [1.5, "2", 3]]}, "message": None}), encoding="utf-8")
    snap = status.read_snapshot(cfg)
    assert snap.engine == "stale" and snap.batch_index == 3 and snap.eligible == 12
    assert snap.incoming_count is None and snap.incoming_limit == cfg.incoming_max_files
    assert [j.files_done for j in snap.jobs] == [0, 2] and snap.finished[1].uid == ""
    assert snap.months == (("2019_02", 3, 1),) and snap.throughput == ((1.5, 2, 3),)
    assert "Engine: STALE" in status.render(snap)


def test_status_text_fits_an_80_column_terminal(tmp_path, capsys, monkeypatch):
    """Hardening 23: issue lines were ~200 columns, the detail cut at 90 characters without a '…'."""
    uid = "1.2.826.0.1.3680043.10.1234.1.123456789012345678901234567890"
    long_detail = "12 of 388 files missing, e.g. " + "/Volumes/PACS/Database/Horos Data/DATABASE.noindex/10000/" * 4
    snap = status.Snapshot(taken=time.time(), engine="idle", detail="last run ok " + "and a long explanation " * 6,
                           issues=(status.IssueRow(time.time(), "MISSING_FILES", uid, "", long_detail),
                                   status.IssueRow(time.time(), "INCOMING_OVER_LIMIT", "", "", "short")))
    text = status.render(snap, width=80)
    lines = text.splitlines()
    assert max(columns(line) for line in lines) <= 80, max(lines, key=columns)
    uid_line = next(line for line in lines if "MISSING_FILES" in line)
    assert uid_line.endswith(uid[-18:]) and "…" in uid_line  # the UID's end is what tells studies apart
    detail = lines[lines.index(uid_line) + 1: lines.index(uid_line) + 3]
    assert detail[0].strip().startswith("12 of 388 files missing") and detail[1].endswith("…")
    assert "      short" in lines
    lib, cfg = backed_up_library(tmp_path, studies=1)  # a real run leaves MISSING_FILES / NO_FILES issues
    monkeypatch.setenv("COLUMNS", "80")
    assert cli.main(["status", "--config", str(write_config(cfg))]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "Recent issues:" in out and max(columns(line) for line in out) <= 80, max(out, key=columns)


def columns(line: str) -> int:
    """Terminal columns of ``line`` (wide CJK/emoji characters take two), measured independently of the code."""
    import unicodedata

    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in line)
