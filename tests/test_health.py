"""Health: every run attempt leaves a trace off the backup volume, and ``status`` tells the truth.

Real runs of the real CLI on demo libraries; the health file is in the test's own XDG_STATE_HOME
(tests/conftest.py ``private_home``), never the real user's.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import sqlite3
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from horos_async import cli, config as config_mod, health, platform, status
from horos_async.errors import (EXIT_DATABASE, EXIT_HEALTH_FAILING, EXIT_HEALTH_NO_PROGRESS,
                                EXIT_HEALTH_NOT_SCHEDULED, EXIT_HEALTH_STALLED, EXIT_OK, EXIT_SENTINEL,
                                EXIT_VOLUME)
from horos_async.health import Attempt, HealthRecord, Observed
from horos_async.state import attempts
from tui.widgets.engine_header import describe

from helpers import backed_up_library, make_config, zips


def write_config(cfg, where: Path) -> Path:
    path = where / "cfg.toml"
    path.write_text(config_mod.render_toml(cfg), encoding="utf-8")
    return path


@pytest.fixture
def setup(demo_lib_factory, tmp_path):
    lib = demo_lib_factory(studies=2)
    sentinel = tmp_path / "disk" / ".pacs_sentinel"
    cfg = make_config(lib, tmp_path / "disk" / "Backup", sentinel=str(sentinel))
    return lib, cfg, write_config(cfg, tmp_path), sentinel


def status_json(path, capsys):
    capsys.readouterr()
    code = cli.main(["status", "--config", str(path), "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_health_file_is_off_the_backup_volume_in_the_platform_place(tmp_path, private_home, monkeypatch):
    cfg = config_mod.Config()
    assert cfg.health_dir == private_home / ".local" / "state" / "horos-backup"  # XDG_STATE_HOME (conftest)
    monkeypatch.delenv("XDG_STATE_HOME")
    assert platform.state_home() == private_home / ".local" / "state" / "horos-backup"  # the XDG default
    monkeypatch.setattr(platform, "is_macos", lambda: True)
    assert platform.state_home() == private_home / "Library" / "Application Support" / "horos-backup"
    cfg = config_mod.from_mapping({"state_dir": "state"}, source=tmp_path / "cfg.toml")
    assert cfg.health_dir == tmp_path / "state"
    assert config_mod.from_mapping({"state_dir": ""}).state_dir is None  # "" = the default


def test_refused_runs_are_recorded_and_status_says_failing_with_the_fix(setup, capsys, launchd_installed):
    lib, cfg, path, sentinel = setup
    for _ in range(3):
        assert cli.main(["run", "--config", str(path)]) == EXIT_SENTINEL
    assert not cfg.backup_dir.exists()  # refused before anything was written on the volume
    rec = health.read(cfg)
    assert [a.exit_code for a in rec.attempts] == [EXIT_SENTINEL] * 3
    assert {a.code for a in rec.attempts} == {"SENTINEL_MISSING"} and str(sentinel) in rec.attempts[0].message
    assert rec.failing.count == 3 and rec.failing.since == rec.attempts[0].started
    assert oct(cfg.health_path.stat().st_mode & 0o777) == "0o600"

    # the backup folder is not there (its disk is unmounted): the state is unreadable (exit 7), and the
    # health file off that disk still says why every run was refused
    capsys.readouterr()
    assert cli.main(["status", "--config", str(path)]) == EXIT_VOLUME
    out = capsys.readouterr().out
    since = health.stamp(rec.failing.since, dt.timezone(dt.timedelta(hours=-3)), time.time())
    assert f"Health: FAILING since {since}, 3 refused runs: sentinel file {sentinel} is missing" in out
    assert "Fix: mount the backup volume, or create the sentinel" in out

    # the disk is back but the sentinel is still missing: the state reads; status exits 20 (FAILING)
    cfg.backup_dir.mkdir(parents=True)
    code, snap = status_json(path, capsys)
    assert code == EXIT_HEALTH_FAILING == snap["status_code"]
    assert snap["health"]["state"] == "failing" and snap["health"]["count"] == 3
    assert snap["health"]["code"] == "SENTINEL_MISSING" and "sentinel" in snap["health"]["fix"]
    assert list(snap)[0] == "health"  # health leads the JSON too

    # recovery: the sentinel is back, the next run succeeds, status says OK with the last success
    sentinel.touch()
    assert cli.main(["run", "--config", str(path), "--until-done"]) == EXIT_OK
    code, snap = status_json(path, capsys)
    assert code == EXIT_OK and snap["health"]["state"] == "ok"
    assert snap["health"]["summary"].startswith("OK - last success 0 min ago")
    last = health.read(cfg).attempts[-1]
    assert last.outcome == "ok" and last.studies_done == len(zips(cfg.backup_dir)) > 0 and last.bytes > 0


def test_database_unavailable_and_unknown_schema_are_recorded(setup, capsys, launchd_installed):
    lib, cfg, path, sentinel = setup
    sentinel.parent.mkdir(parents=True)
    sentinel.touch()
    with sqlite3.connect(lib.database) as db:  # an unknown schema: a Horos version we do not know
        db.execute("ALTER TABLE ZIMAGE RENAME COLUMN ZPATHNUMBER TO ZPATHNUMBER2")
    assert cli.main(["run", "--config", str(path)]) == EXIT_DATABASE
    a = health.read(cfg).attempts[-1]
    assert a.code == "DATABASE_UNAVAILABLE" and "lacks column(s) ZPATHNUMBER" in a.message
    code, snap = status_json(path, capsys)
    assert code == EXIT_HEALTH_FAILING and "1 refused run:" in snap["health"]["summary"]


def test_status_exit_codes_for_each_state(setup, capsys, launchd_installed):
    lib, cfg, path, sentinel = setup
    cfg.backup_dir.parent.mkdir(parents=True)  # a first install: the disk is there, the folder not yet
    code, snap = status_json(path, capsys)
    assert code == EXIT_OK and snap["health"]["summary"].startswith("OK - no run recorded yet")
    launchd_installed.unlink()
    code, snap = status_json(path, capsys)
    assert code == EXIT_HEALTH_NOT_SCHEDULED and snap["health"]["state"] == "not-scheduled"
    assert snap["health"]["fix"] == f"horos-backup launchd install --config '{path}'"


def test_bounded_file_keeps_the_episode(tmp_path):
    cfg = config_mod.from_mapping({"state_dir": str(tmp_path / "state")})
    t0 = time.time() - 10_000
    for i in range(health.KEEP_ATTEMPTS + 50):
        attempts.record(cfg, Attempt(started=t0 + i, ended=t0 + i + 1, outcome="SENTINEL_MISSING", exit_code=3,
                                     code="SENTINEL_MISSING", message=f"refused {i}"))
    rec = health.read(cfg)
    assert len(rec.attempts) == health.KEEP_ATTEMPTS and rec.attempts[-1].message == "refused 249"
    assert rec.failing.count == 250 and rec.failing.since == t0  # survives the trimming
    assert cfg.health_path.stat().st_size < 80_000


def test_damaged_health_file_is_replaced_not_fatal(tmp_path):
    cfg = config_mod.from_mapping({"state_dir": str(tmp_path / "state")})
    cfg.health_dir.mkdir()
    cfg.health_path.write_text("{half", encoding="utf-8")
    with pytest.raises(ValueError):
        health.read(cfg)
    rec = attempts.record(cfg, Attempt(started=1.0, ended=2.0, outcome="ok", exit_code=0))
    assert health.read(cfg) == rec and rec.last_success == 2.0


def _live(cfg, **fields):
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    doc = {"version": 1, "pid": os.getpid(), "host": os.uname().nodename, "state": "running",
           "heartbeat": time.time(), "started": time.time() - 3600, "totals": {"eligible": 10, "due": 4}}
    doc.update(fields)
    cfg.live_status_path.write_text(json.dumps(doc), encoding="utf-8")


def test_a_live_run_without_progress_for_30_minutes_is_stalled(setup, capsys, launchd_installed):
    lib, cfg, path, sentinel = setup
    _live(cfg, progress_at=time.time() - 31 * 60)  # this process plays the hung run: alive, heartbeat fresh
    code, snap = status_json(path, capsys)
    assert snap["engine"] == "running"
    assert code == EXIT_HEALTH_STALLED and snap["health"]["state"] == "stalled"
    assert f"(pid {os.getpid()}) has made no progress for 31 min" in snap["health"]["summary"]
    _live(cfg, progress_at=time.time() - 60)
    code, snap = status_json(path, capsys)
    assert code == EXIT_OK and snap["health"]["summary"].startswith("OK - a run is going")


def test_no_run_ended_for_three_intervals_is_stalled(setup, capsys, launchd_installed):
    lib, cfg, path, sentinel = setup
    cfg.backup_dir.mkdir(parents=True)
    old = time.time() - 3 * cfg.start_interval - 60
    attempts.record(cfg, Attempt(started=old - 5, ended=old, outcome="ok", exit_code=0, studies_done=1))
    os.utime(launchd_installed, (old - 100, old - 100))
    code, snap = status_json(path, capsys)
    assert code == EXIT_HEALTH_STALLED and "no run has ended since" in snap["health"]["summary"]
    # a start that found a run going does not count as a run that ended
    attempts.record(cfg, Attempt(started=time.time(), ended=time.time(), outcome="lock-held", exit_code=4))
    assert status_json(path, capsys)[0] == EXIT_HEALTH_STALLED
    attempts.record(cfg, Attempt(started=time.time(), ended=time.time(), outcome="outside-window", exit_code=0))
    assert status_json(path, capsys)[0] == EXIT_OK


def test_nothing_exported_for_a_day_while_studies_are_due_is_no_progress():
    now = 1_717_250_400.0
    rec = HealthRecord()
    for i in range(3):  # runs go on (so not STALLED) and succeed (so not FAILING), yet export nothing
        rec = health.add(rec, Attempt(started=now - 90_000 + i * 44_000, ended=now - 90_000 + i * 44_000 + 5,
                                      outcome="nothing-to-do", exit_code=0))
    seen = Observed(now=now, engine="idle", due=7, scheduled=True, interval=1000)
    h = health.evaluate(rec, seen)
    assert h.state == health.NO_PROGRESS and h.exit_code == EXIT_HEALTH_NO_PROGRESS
    assert "nothing exported since the first run" in h.summary and "while 7 studies are due" in h.summary
    rec = health.add(rec, Attempt(started=now - 100, ended=now - 90, outcome="ok", exit_code=0, studies_done=2))
    assert health.evaluate(rec, seen).state == health.OK
    assert health.evaluate(rec, Observed(now=now + 86_400, engine="idle", due=0, scheduled=True,
                                         interval=86_400)).state == health.OK  # nothing due: nothing to export


def test_worst_state_leads_and_a_good_run_suppresses_failing():
    now = 1_717_250_400.0
    rec = health.add(HealthRecord(), Attempt(started=now - 60, ended=now - 59, outcome="DISK_FULL", exit_code=6,
                                             code="DISK_FULL", message="backup volume full"))
    idle = Observed(now=now, engine="idle", scheduled=False)
    h = health.evaluate(rec, idle)
    assert h.state == health.FAILING and [p[0] for p in h.problems] == ["DISK_FULL"] and "1 failed run" in h.summary
    going = Observed(now=now, engine="running", run_alive=True, progress_at=now - 5, scheduled=True)
    assert health.evaluate(rec, going).state == health.OK  # a run past the guards is exporting


def test_times_are_in_the_configured_zone_and_the_tui_lines_agree(demo_lib, tmp_path):
    """The TUI's first two lines disagreed by three hours when ``timezone`` was not the system's."""
    cfg = make_config(demo_lib, tmp_path / "Backup", timezone="Asia/Tokyo")
    started = 1_717_250_400.0  # 23:00 in Tokyo, 14:00 UTC
    _live(cfg, started=started, heartbeat=time.time(), progress_at=time.time())
    snap = status.read_snapshot(cfg)
    assert snap.detail.startswith("running since 2024-06-01 23:00 JST")
    header = describe(snap, ZoneInfo("Asia/Tokyo"))
    assert "since 2024-06-01 23:00" in header.summary
    assert status.render(snap).splitlines()[-1] == "Times: Asia/Tokyo (JST)"


def test_logs_issues_csv_and_run_window_follow_the_configured_zone(demo_lib, tmp_path, capsys):
    zone = "Asia/Kathmandu"  # +05:45: no test machine runs in it
    cfg = make_config(demo_lib, tmp_path / "Backup", timezone=zone)
    path = write_config(cfg, tmp_path)
    assert cli.main(["run", "--config", str(path), "--until-done"]) == 0
    rows = list(csv.reader(cfg.issues_csv.open(encoding="utf-8-sig")))[1:]
    assert rows and all(r[0].endswith("+05:45") for r in rows)
    log_lines = (cfg.log_dir / "horos-backup.log").read_text(encoding="utf-8").splitlines()
    assert log_lines and all(" +0545 " in line[:40] for line in log_lines if line[:4].isdigit())
    # a run_window that holds "now" in UTC but not in Kathmandu: the zone's wall clock decides
    utc_now = dt.datetime.now(dt.timezone.utc)
    window = f"{(utc_now - dt.timedelta(minutes=30)):%H:%M}-{(utc_now + dt.timedelta(minutes=30)):%H:%M}"
    cfg2 = make_config(demo_lib, tmp_path / "Backup", timezone=zone, run_window=window)
    capsys.readouterr()
    assert cli.main(["run", "--config", str(write_config(cfg2, tmp_path))]) == 0
    assert "outside run_window" in capsys.readouterr().out
    assert health.read(cfg2).attempts[-1].outcome == "outside-window"


def test_eta_comes_from_the_rate_achieved_over_the_last_days(tmp_path):
    lib, cfg = backed_up_library(tmp_path, studies=2)
    snap = status.read_snapshot(cfg)
    hours, studies = snap.achieved
    assert studies == snap.done > 0 and 0 < hours < 0.1
    with sqlite3.connect(cfg.ledger_path) as db:  # the same studies spread over two days of runs
        db.execute("UPDATE runs SET started = started - 172800")
    slow = status.read_snapshot(cfg)
    assert 47.9 < slow.achieved[0] < 48.1 and slow.achieved_per_hour == pytest.approx(snap.done / 48, rel=0.01)
    assert "MB/s" not in status.rate_line(slow)  # idle: no live rate shown as if current
