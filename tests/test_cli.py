"""The command line as a user meets it: exit codes, messages on stderr, plan/status output."""

from __future__ import annotations

import json

import pytest

from horos_async import cli, config as config_mod
from horos_async.errors import EXIT_CONFIG, EXIT_SENTINEL

from helpers import key_of, make_config, zips


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


def test_status_after_a_run(setup, capsys):
    lib, cfg, path = setup
    assert cli.main(["status", "--config", str(path)]) == 0
    assert "NEVER-RUN" in capsys.readouterr().out
    cli.main(["run", "--config", str(path), "--until-done"])
    capsys.readouterr()
    assert cli.main(["status", "--config", str(path), "--json"]) == 0
    snap = json.loads(capsys.readouterr().out)
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
