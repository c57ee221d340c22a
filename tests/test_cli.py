"""The command line as a user meets it: exit codes, messages on stderr, plan/status output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from horos_async import cli, config as config_mod
from horos_async.errors import (EXIT_BROKEN_PIPE, EXIT_CONFIG, EXIT_HEALTH_FAILING, EXIT_LOCKED, EXIT_SENTINEL,
                                EXIT_VOLUME)
from horos_async.guards import RunLock

from helpers import exportable, key_of, make_config, read_only, zips


@pytest.fixture
def setup(demo_lib_factory, tmp_path):
    lib = demo_lib_factory(studies=2)
    cfg = make_config(lib, tmp_path / "Backup", retry_backoff_minutes=60)
    path = tmp_path / "cfg.toml"
    path.write_text(config_mod.render_toml(cfg), encoding="utf-8")
    return lib, cfg, path


def test_plan_json_lists_due_studies_with_resolved_files(setup, capsys):
    lib, cfg, path = setup
    assert cli.main(["plan", "--config", str(path), "--json", "--limit", "100"]) == 0
    doc = json.loads(capsys.readouterr().out)
    keys = {s["key"] for s in doc["studies"]}
    assert key_of(lib.study("accented")) in keys and key_of(lib.study("pet-only")) not in keys
    s = next(s for s in doc["studies"] if s["key"] == key_of(lib.study("accented")))
    assert {f["path"] for f in s["file_paths"]} == {str(p) for p in lib.study("accented").files}
    assert s["zip_path"].startswith("20") and "Jose_Conceicao" in s["zip_path"]
    assert {p["code"] for p in doc["problems"]} == {"MISSING_FILES", "NO_FILES"}
    assert doc["totals"]["done"] == 0 and doc["totals"]["waiting_stability"] == 1
    assert not cfg.backup_dir.exists()  # plan only reads


def test_plan_human_output_and_then_run(setup, capsys):
    lib, cfg, path = setup
    assert cli.main(["plan", "--config", str(path), "--limit", "100"]) == 0
    out = capsys.readouterr().out
    assert "Next run exports" in out and "MISSING_FILES" in out
    assert cli.main(["run", "--config", str(path), "--until-done"]) == 0
    assert zips(cfg.backup_dir)
    assert cli.main(["plan", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Nothing is due" in out and "2 studies failed in earlier runs" in out


def test_status_after_a_run(setup, capsys, launchd_installed):
    lib, cfg, path = setup
    assert cli.main(["status", "--config", str(path)]) == 0
    assert "NEVER-RUN" in capsys.readouterr().out
    cli.main(["run", "--config", str(path), "--until-done"])
    capsys.readouterr()
    assert cli.main(["status", "--config", str(path), "--json"]) == 0
    snap = json.loads(capsys.readouterr().out)
    assert snap["health"]["state"] == "ok" and snap["status_code"] == 0
    assert snap["engine"] == "idle" and snap["done"] == len(zips(cfg.backup_dir))
    assert snap["eligible"] == snap["done"] + snap["pending"]
    assert {i["code"] for i in snap["issues"]} == {"MISSING_FILES", "NO_FILES"}


def test_bad_config_exits_2_naming_the_key(tmp_path, capsys):
    p = tmp_path / "cfg.toml"
    p.write_text('batch_size = "many"\n', encoding="utf-8")
    assert cli.main(["plan", "--config", str(p)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "batch_size" in err and str(p.resolve()) in err


def test_missing_sentinel_exit_code_and_overrides(setup, tmp_path, capsys):
    lib, cfg, path = setup
    p = tmp_path / "cfg2.toml"
    p.write_text(config_mod.render_toml(cfg.with_overrides(sentinel=tmp_path / "nope")), encoding="utf-8")
    assert cli.main(["run", "--config", str(p)]) == EXIT_SENTINEL
    assert "sentinel" in capsys.readouterr().err
    other = tmp_path / "Other"
    assert cli.main(["run", "--config", str(path), "--backup-dir", str(other), "--max-studies", "2"]) == 0
    assert len(zips(other)) == 2


def test_env_var_selects_the_config(setup, monkeypatch, capsys):
    lib, cfg, path = setup
    monkeypatch.setenv(config_mod.ENV_VAR, str(path))
    assert cli.main(["config"]) == 0
    assert str(lib.horos_data) in capsys.readouterr().out


def test_demo_command_builds_and_backs_up(tmp_path, capsys):
    assert cli.main(["demo", "--dir", str(tmp_path / "d"), "--studies", "1"]) == 0
    out = capsys.readouterr().out
    assert "exported" in out and "horos-tui --config" in out
    assert zips(tmp_path / "d" / "Backup")
    # a second call reuses the library and finds nothing to do
    assert cli.main(["demo", "--dir", str(tmp_path / "d")]) == 0
    assert "0 exported" in capsys.readouterr().out


def test_demo_plan_only_says_what_plan_says(tmp_path, capsys):
    """Hardening 24: 'demo --plan-only' listed 50 studies where 'plan' (and the next run) does one batch."""
    import re

    assert cli.main(["demo", "--dir", str(tmp_path / "d"), "--studies", "1", "--plan-only"]) == 0
    shape = r"Next run exports all (\d+) due studies; the first (\d+) "
    demo_says = re.search(shape, capsys.readouterr().out)
    assert cli.main(["plan", "--config", str(tmp_path / "d" / "horos-backup.toml")]) == 0
    plan_says = re.search(shape, capsys.readouterr().out)
    assert demo_says and plan_says and demo_says.groups() == plan_says.groups()
    assert demo_says.group(2) == "8" and int(demo_says.group(1)) > 8  # lists one read (the demo's batch_size)


# -- a read-only backup volume, the run lock, pipes, unmounted volumes ----------------------------------
def _clean_close(cfg) -> None:
    """The ledger as a clean close leaves it on macOS: no -wal/-shm beside it (the case that needs
    SQLite's immutable mode to be read on a read-only volume)."""
    wal = cfg.ledger_path.with_name(cfg.ledger_path.name + "-wal")
    if wal.exists():
        assert wal.stat().st_size == 0, "the test wants a checkpointed ledger"
        wal.unlink()
    cfg.ledger_path.with_name(cfg.ledger_path.name + "-shm").unlink(missing_ok=True)


def test_readonly_backup_volume_exits_7_naming_the_folder_and_status_still_reads(setup, capsys, launchd_installed):
    lib, cfg, path = setup
    assert cli.main(["run", "--config", str(path), "--until-done"]) == 0
    done = len(zips(cfg.backup_dir))
    _clean_close(cfg)
    capsys.readouterr()
    with read_only(cfg.backup_dir) as why:
        for argv in (["run"], ["verify"], ["rebuild-ledger"]):
            assert cli.main(argv + ["--config", str(path)]) == EXIT_VOLUME, argv
            err = capsys.readouterr().err
            assert str(cfg.backup_dir) in err and "Traceback" not in err and "a bug" not in err, err
            assert ("read-only" if why == "volume" else "permission") in err, err
        # the state reads; the health says the last runs were refused (exit 20), with the folder named
        assert cli.main(["status", "--config", str(path), "--json"]) == EXIT_HEALTH_FAILING
        snap = json.loads(capsys.readouterr().out)
        assert snap["engine"] == "idle" and snap["done"] == done > 0
        assert snap["health"]["state"] == "failing" and snap["health"]["count"] == 1  # 'run' (verify: no trace)
        assert str(cfg.backup_dir) in snap["health"]["summary"]
        # the other readers open the ledger the same way: a read-only backup can still be browsed
        assert cli.main(["catalog", "--config", str(path), "--csv"]) == 0
        assert len(capsys.readouterr().out.strip().splitlines()) == done + 1  # header + one row per ZIP
        if why == "volume":
            assert cli.main(["plan", "--config", str(path), "--json"]) == 0
            assert json.loads(capsys.readouterr().out)["totals"]["done"] == done


def test_unwritable_log_folder_warns_and_the_backup_goes_on(setup, capsys):
    lib, cfg, path = setup
    cfg.log_dir.mkdir(parents=True)
    with read_only(cfg.log_dir):
        assert cli.main(["run", "--config", str(path), "--until-done"]) == 0
    err = capsys.readouterr().err
    assert f"cannot write the log in {cfg.log_dir}" in err and "Traceback" not in err
    assert zips(cfg.backup_dir)


def test_lock_held_is_reported_once_and_no_failure(setup, capsys, launchd_installed):
    """launchd starts a run every interval while a long one goes on: exit 4, one quiet line, no ERROR line,
    no FAILING."""
    lib, cfg, path = setup
    cfg.work_dir.mkdir(parents=True)
    with RunLock(cfg.lock_path):
        assert cli.main(["run", "--config", str(path)]) == EXIT_LOCKED
    captured = capsys.readouterr()
    assert captured.out.count("holds") == 1 and "holds" not in captured.err, captured
    # Hardening 24: expected every 10 minutes under launchd: one INFO line in the log, not an ERROR
    log = (cfg.log_dir / "horos-backup.log").read_text(encoding="utf-8").splitlines()
    held = [line for line in log if "holds" in line]
    assert len(held) == 1 and " INFO " in held[0] and "exit 4" in held[0], held
    assert not [line for line in log if " ERROR " in line], log
    # recorded in the health file, as no failure
    assert cli.main(["status", "--config", str(path), "--json"]) == 0
    snap = json.loads(capsys.readouterr().out)
    assert snap["health"]["state"] == "ok" and snap["health"]["count"] == 0
    assert json.loads(cfg.health_path.read_text(encoding="utf-8"))["attempts"][-1]["outcome"] == "lock-held"


def _to_closed_pipe(argv, path) -> subprocess.CompletedProcess:
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first write: every write gets EPIPE
    try:
        return subprocess.run([sys.executable, "-m", "horos_async", *argv, "--config", str(path)], stdout=w,
                              stderr=subprocess.PIPE, env=dict(os.environ, HOROS_BACKUP_CONFIG=""), timeout=120)
    finally:
        os.close(w)


@pytest.mark.parametrize("argv", [["status"], ["status", "--json"], ["verify"]])
def test_a_closed_pipe_is_a_quiet_exit(setup, argv):
    """``horos-backup status | head -1``: the reader went away; no traceback, no "a bug"."""
    lib, cfg, path = setup
    assert cli.main(["run", "--config", str(path), "--until-done"]) == 0
    proc = _to_closed_pipe(argv, path)
    err = proc.stderr.decode()
    assert proc.returncode == EXIT_BROKEN_PIPE and "Traceback" not in err and "Broken pipe" not in err, err


def test_a_closed_pipe_does_not_stop_a_backup(setup):
    """``run --progress | head -3``: the run still backs everything up and exits with its own code."""
    lib, cfg, path = setup
    proc = _to_closed_pipe(["run", "--progress", "--until-done"], path)
    assert proc.returncode == 0 and b"Traceback" not in proc.stderr, proc.stderr.decode()
    assert len(zips(cfg.backup_dir)) == len(exportable(lib))


def test_plan_with_a_missing_horos_folder_exits_like_run(setup, tmp_path, capsys):
    lib, cfg, path = setup
    gone = tmp_path / "Unmounted" / "Horos Data"
    for cmd in ("plan", "run"):
        assert cli.main([cmd, "--config", str(path), "--horos-data", str(gone)]) == EXIT_VOLUME, cmd
        assert f"Horos data folder {gone} not found" in capsys.readouterr().err


def test_horos_data_naming_the_folder_above_horos_data_says_did_you_mean(setup, capsys):
    """Hardening 21: the likeliest mistake; there is no DBFOLDER_LOCATION to blame."""
    lib, cfg, path = setup
    above = lib.horos_data.parent
    assert lib.horos_data.name == "Horos Data"
    for cmd in ("plan", "run"):
        assert cli.main([cmd, "--config", str(path), "--horos-data", str(above)]) == EXIT_VOLUME, cmd
        err = capsys.readouterr().err
        assert f"did you mean '{lib.horos_data}'?" in err, err
        assert "DBFOLDER_LOCATION" not in err
    assert cli.main(["doctor", "--config", str(path), "--horos-data", str(above)]) == 9
    out = capsys.readouterr().out
    assert out.count(f"did you mean '{lib.horos_data}'?") == 2, out  # database and DATABASE.noindex


def test_a_missing_database_sql_is_a_missing_volume_not_busy(setup, capsys):
    """Hardening 24: exit 5 says "busy, will retry"; a Database.sql that is not there is exit 7."""
    lib, cfg, path = setup
    (lib.horos_data / "Database.sql").rename(lib.horos_data / "Database.sql.moved")
    for cmd in ("plan", "run"):
        assert cli.main([cmd, "--config", str(path)]) == EXIT_VOLUME, cmd
        err = capsys.readouterr().err
        assert f"Horos database not found at {lib.horos_data / 'Database.sql'}" in err
        assert "retry" not in err and "Traceback" not in err


def test_demo_prints_commands_that_work_without_the_venv_on_path(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # as after 'make demo': .venv/bin is not on PATH
    assert cli.main(["demo", "--dir", str(tmp_path / "d"), "--studies", "1"]) == 0
    out = capsys.readouterr().out
    nxt = [line.split()[0] for line in out.splitlines() if line.startswith("  ") and "--config" in line]
    assert len(nxt) == 3
    for prog in nxt:
        assert os.path.isabs(prog) and os.access(prog, os.X_OK), prog
    monkeypatch.setenv("PATH", f"{Path(nxt[0]).parent}:/usr/bin:/bin")
    assert cli.program("horos-backup") == "horos-backup"  # on PATH: the short form


def test_sigterm_before_the_event_loop_runs_is_a_clean_stop(setup):
    """launchd may send SIGTERM at any moment, also while the run is still starting: exit 130, not 143."""
    lib, cfg, path = setup
    script = (
        "import os, signal, sys\n"
        "from horos_async import cli\nfrom horos_async.backup import engine\n"
        "real = engine.Engine.__init__\n"
        "def init(self, *a, **kw):\n"
        "    real(self, *a, **kw)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)  # between building the engine and starting its loop\n"
        "engine.Engine.__init__ = init\n"
        "sys.exit(cli.main(sys.argv[1:]))\n")
    done = subprocess.run([sys.executable, "-c", script, "run", "--config", str(path), "--until-done"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 130, done.stderr
    assert not zips(cfg.backup_dir)
