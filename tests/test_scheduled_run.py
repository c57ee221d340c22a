"""The scheduled run clears the backlog: a run with no flags goes on, batch after batch, until nothing is
due, its time budget is spent or ``run_window`` closes (checked before every study, in the configured
``timezone``). The clock is injected; the studies, ZIPs and ledger are real."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from horos_async import cli, config as config_mod, demo
from horos_async.backup.engine import Engine
from horos_async.backup import zipcheck
from horos_async.codes import RunOutcome
from horos_async.ops import launchd
from horos_async.timezones import load_zone

from helpers import assert_backup_complete, exportable, make_config, zips, zips_by_key

SP = load_zone("America/Sao_Paulo")


class Clock:
    """A wall clock the test moves: ``tick`` minutes pass each time the engine records a study."""

    def __init__(self, start: float, tick_minutes: float = 0.0) -> None:
        self.now, self.tick = start, tick_minutes * 60

    def __call__(self) -> float:
        return self.now

    def study_recorded(self, _line: str) -> None:  # the engine's announce hook, called once per study
        self.now += self.tick


def run_engine(cfg, clock=None, **kw):
    engine = Engine(cfg, clock=clock or time.time, announce=clock.study_recorded if clock else None, **kw)
    return asyncio.run(engine.run())


def done_in_ledger(cfg) -> int:
    con = sqlite3.connect(cfg.ledger_path)
    try:
        return con.execute("SELECT COUNT(*) FROM studies WHERE state='done'").fetchone()[0]
    finally:
        con.close()


def assert_consistent(cfg) -> None:
    """Whatever stopped the run: no temp file, every ZIP valid, every done study's ZIP on disk."""
    assert not list(cfg.backup_dir.rglob("*.partial"))
    for z in zips(cfg.backup_dir):
        zipcheck.verify_zip(z, None, deep=True)
    assert done_in_ledger(cfg) == len(zips_by_key(cfg.backup_dir))


@pytest.fixture
def system_zone(monkeypatch):
    """Set this machine's zone ($TZ) for one test, as the engine and the C library read it."""
    def use(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()
    yield use
    monkeypatch.undo()
    time.tzset()


def sp_instant(hh: int, mm: int) -> float:
    """The most recent hh:mm on a São Paulo clock, as Unix seconds."""
    today = dt.datetime.now(SP).date()
    t = dt.datetime(today.year, today.month, today.day, hh, mm, tzinfo=SP)
    if t.timestamp() > time.time():
        t -= dt.timedelta(days=1)
    return t.timestamp()


def test_a_run_with_no_flags_clears_a_backlog_larger_than_batch_size(tmp_path):
    lib = demo.build_demo(tmp_path / "lib", studies=6)
    cfg = make_config(lib, tmp_path / "Backup", batch_size=2)
    assert len(exportable(lib)) > 3 * cfg.batch_size
    result = run_engine(cfg)  # what `horos-backup run` does: no --until-done
    assert result.exit_code == 0 and result.outcome == RunOutcome.OK
    assert result.done == len(exportable(lib)) > 3 * cfg.batch_size
    assert_backup_complete(lib, cfg.backup_dir)


def test_the_launchagent_command_clears_the_backlog(tmp_path):
    """The exact command and environment the rendered LaunchAgent runs, once: the whole backlog."""
    lib = demo.build_demo(tmp_path / "lib", studies=4)
    cfg = make_config(lib, tmp_path / "Backup", batch_size=2)
    path = tmp_path / "cfg.toml"
    path.write_text(config_mod.render_toml(cfg), encoding="utf-8")
    cfg = config_mod.load(path)
    program = tmp_path / "bin" / "horos-backup"
    program.parent.mkdir()
    program.write_text(f"#!{sys.executable}\nimport sys\nfrom horos_async.cli import main\nsys.exit(main())\n")
    program.chmod(0o755)
    agent = launchd.validate(launchd.render(cfg, program=program))
    env = dict(agent["EnvironmentVariables"], PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run(agent["ProgramArguments"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert_backup_complete(lib, cfg.backup_dir)
    assert f"{len(exportable(lib))}/" in done.stdout  # "archive: N/M studies backed up"


@pytest.mark.parametrize("config_budget, override, recorded", [
    (5, None, 3),      # max_run_minutes: studies start at 0, 2 and 4 minutes; none at 6
    (0, 3, 2),         # no budget in the config, --max-minutes 3
    (60, 3, 2),        # --max-minutes overrides the config's budget
])
def test_the_time_budget_stops_the_run_between_studies(tmp_path, config_budget, override, recorded):
    lib = demo.build_demo(tmp_path / "lib", studies=6)
    cfg = make_config(lib, tmp_path / "Backup", batch_size=2, concurrency=1, max_run_minutes=config_budget)
    first = run_engine(cfg, Clock(time.time(), tick_minutes=2), max_minutes=override)
    assert first.exit_code == 0 and first.done + first.failed == recorded
    assert "time budget" in first.message and ("--max-minutes" if override else "max_run_minutes") in first.message
    assert_consistent(cfg)
    assert first.done + run_engine(cfg).done == len(exportable(lib))  # the next run goes on where this one stopped
    assert_backup_complete(lib, cfg.backup_dir)


def test_run_window_closing_mid_run_stops_before_the_next_study(tmp_path, system_zone):
    system_zone("UTC")  # 05:50 in São Paulo is 08:50 here: only the configured zone says "inside"
    start = sp_instant(5, 50)
    lib = demo.build_demo(tmp_path / "lib", studies=6, now=start)
    cfg = make_config(lib, tmp_path / "Backup", batch_size=2, concurrency=1, run_window="20:00-06:00",
                      timezone="America/Sao_Paulo")
    result = run_engine(cfg, Clock(start, tick_minutes=4))  # studies start at 05:50, 05:54, 05:58; none at 06:02
    assert result.exit_code == 0 and result.outcome == RunOutcome.OK
    assert result.done + result.failed == 3
    assert "run_window 20:00-06:00 (America/Sao_Paulo) has closed" in result.message
    assert_consistent(cfg)
    # outside the window nothing starts; the next night the run finishes the backlog
    result = run_engine(cfg, Clock(start + 3600))
    assert result.outcome == RunOutcome.LIMIT_REACHED and result.done == 0
    assert run_engine(cfg, Clock(start + 15 * 3600)).exit_code == 0  # 20:50: the rest
    assert_backup_complete(lib, cfg.backup_dir)


@pytest.mark.parametrize("configured, machine, inside", [
    ("America/Sao_Paulo", "UTC", True),         # 02:00 in São Paulo, 05:00 UTC
    ("Asia/Tokyo", "America/Sao_Paulo", False),  # 14:00 in Tokyo, whatever this machine says
    ("", "America/Sao_Paulo", True),            # no timezone: this machine's zone
    ("", "UTC", False),
])
def test_run_window_is_read_in_the_configured_timezone(tmp_path, system_zone, configured, machine, inside):
    system_zone(machine)
    start = sp_instant(2, 0)
    lib = demo.build_demo(tmp_path / "lib", studies=1, now=start)
    cfg = make_config(lib, tmp_path / "Backup", run_window="00:00-04:00", timezone=configured)
    result = run_engine(cfg, Clock(start), max_studies=1)
    assert (result.done + result.failed == 1) is inside
    assert (result.outcome == RunOutcome.LIMIT_REACHED) is not inside
    assert bool(zips(cfg.backup_dir)) is (inside and result.done == 1)


def test_cli_start_check_reads_run_window_in_the_configured_timezone(tmp_path, system_zone, capsys):
    """`run` outside the window exits at once; inside it (in the configured zone, not this machine's) runs."""
    system_zone("UTC")
    lib = demo.build_demo(tmp_path / "lib", studies=1)
    hour = dt.datetime.now(load_zone("Asia/Tokyo")).hour  # UTC is 9 hours behind: outside both windows below
    for window, runs in ((f"{(hour - 1) % 24:02d}:00-{(hour + 2) % 24:02d}:00", True),
                         (f"{(hour + 2) % 24:02d}:00-{(hour + 4) % 24:02d}:00", False)):
        cfg = make_config(lib, tmp_path / f"Backup-{runs}", run_window=window, timezone="Asia/Tokyo")
        path = tmp_path / f"cfg-{runs}.toml"
        path.write_text(config_mod.render_toml(cfg), encoding="utf-8")
        assert cli.main(["run", "--config", str(path)]) == 0
        out = capsys.readouterr().out
        assert ("outside run_window" in out) is not runs, out
        assert bool(zips(cfg.backup_dir)) is runs
        if not runs:  # --now ignores the window
            assert cli.main(["run", "--config", str(path), "--now"]) == 0
            assert zips(cfg.backup_dir)



def test_a_run_keeps_an_idle_mac_awake_until_it_exits(tmp_path, monkeypatch):
    """macOS: `caffeinate -i -m -w <pid>` holds the Mac awake for the run's life; Linux: nothing starts."""
    from horos_async import platform

    assert platform.keep_awake(os.getpid(), macos=False) is None
    seen = tmp_path / "argv"
    fake = tmp_path / "bin" / "caffeinate"  # records its arguments, then waits as caffeinate -w does
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" > {seen}\nwhile kill -0 "$4" 2>/dev/null; do sleep 0.05; done\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    awake = platform.keep_awake(child.pid, macos=True)
    assert awake is not None
    child.wait()
    assert awake.wait(timeout=10) == 0  # it ends by itself with the process it watches
    assert seen.read_text().split() == ["-i", "-m", "-w", str(child.pid)]
