"""Config loading: defaults, TOML, overrides and clear errors naming file, key and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from horos_async import config
from horos_async.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "horos-backup.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_defaults_mirror_the_classic_layout():
    cfg = config.load(None, env={})
    assert cfg.horos_data == Path("/Volumes/PACS/Database/Horos Data")
    assert cfg.backup_dir == Path("/Volumes/PACS/Backup")
    assert cfg.sentinel == Path("/Volumes/PACS/.pacs_sentinel")
    assert cfg.modalities == ("CT", "MR") and cfg.batch_size == 15 and cfg.incoming_max_files == 25000
    assert cfg.ledger_path == Path("/Volumes/PACS/Backup/export_state.sqlite")


def test_every_state_path_is_a_property_under_backup_dir():
    """README "Where things are": the run lock, live status, verify state and quarantine, named once."""
    cfg = config.load(None, env={}).with_overrides(backup_dir=Path("/b"))
    assert (cfg.work_dir, cfg.lock_path, cfg.live_status_path, cfg.verify_state_path, cfg.quarantine_dir) == (
        Path("/b/.tmp"), Path("/b/.tmp/run.lock"), Path("/b/.tmp/status.json"), Path("/b/.tmp/verify_state.json"),
        Path("/b/.quarantine"))


def test_file_values_relative_paths_and_env(tmp_path):
    p = write(tmp_path, 'horos_data = "lib/Horos Data"\nbackup_dir = "/b"\nmodalities = ["ct", "MR", "CT"]\n'
                        'concurrency = 4\nsleep_between_studies = 0\ntimezone = "America/Sao_Paulo"\n'
                        'sentinel = ""\n[path_map]\n"/Volumes/CD" = "/mnt/cd"\n"/Volumes/CD/A" = "/mnt/a"\n')
    cfg = config.load(None, env={config.ENV_VAR: str(p)})
    assert cfg.horos_data == tmp_path / "lib" / "Horos Data"
    assert cfg.modalities == ("CT", "MR")
    assert cfg.concurrency == 4 and cfg.sentinel is None
    assert cfg.path_map[0] == ("/Volumes/CD/A", "/mnt/a")  # longest prefix first
    assert cfg.source == p.resolve()


@pytest.mark.parametrize("text, key", [
    ("batch_sise = 3", "batch_sise"),
    ('batch_size = "15"', "batch_size"),
    ("concurrency = 0", "concurrency"),
    ('order_by = "name"', "order_by"),
    ('timezone = "Mars/Olympus"', "timezone"),
    ("modalities = []", "modalities"),
    ("allow_partial = 1", "allow_partial"),
    ('run_window = "25:00-06:00"', "run_window"),
    ('compression = "zstd"', "compression"),
    ("sleep_between_studies = inf", "sleep_between_studies"),
    ("min_free_gb = nan", "min_free_gb"),
    ("retry_backoff_minutes = inf", "retry_backoff_minutes"),
])
def test_bad_values_name_file_key_and_value(tmp_path, text, key):
    p = write(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as err:
        config.load(p)
    msg = str(err.value)
    assert str(p.resolve()) in msg and f"'{key}'" in msg


def test_unparsable_and_missing_files(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(write(tmp_path, "batch_size = = 3"))
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.toml")


def test_backup_inside_horos_data_is_refused(tmp_path):
    p = write(tmp_path, f'horos_data = "{tmp_path}/H"\nbackup_dir = "{tmp_path}/H/Backup"\n')
    with pytest.raises(ConfigError, match="backup_dir"):
        config.load(p)


def test_render_round_trips(tmp_path):
    cfg = config.from_mapping({"horos_data": "/x/Horos Data", "backup_dir": "/y", "timezone": "Asia/Tokyo",
                               "path_map": {"/Volumes/CD": "/mnt/cd"}})
    again = config.load(write(tmp_path, config.render_toml(cfg)))
    assert again == cfg


def test_dbfolder_location_moves_the_data_root(tmp_path):
    hd = tmp_path / "Horos Data"
    hd.mkdir()
    cfg = config.from_mapping({"horos_data": str(hd), "backup_dir": str(tmp_path / "b")})
    assert cfg.data_root == hd
    (hd / "DBFOLDER_LOCATION").write_text(str(tmp_path / "elsewhere") + "\n", encoding="utf-8")
    assert cfg.data_root == tmp_path / "elsewhere"
    assert cfg.incoming_dir == tmp_path / "elsewhere" / "INCOMING.noindex"


@pytest.mark.parametrize("key, meant", [("Batch_Size", "batch_size"), ("BATCH_SIZE", "batch_size"),
                                        ("batch-size", "batch_size"), ("concurency", "concurrency"),
                                        ("Horos_Data", "horos_data")])
def test_a_mistyped_key_gets_a_did_you_mean(tmp_path, key, meant):
    """Hardening 22: TOML keys are case-sensitive; 'Batch_Size' used to get no hint."""
    p = write(tmp_path, f"{key} = 3\n")
    with pytest.raises(ConfigError, match=f"did you mean {meant}\\?"):
        config.load(p)


def test_backup_inside_the_data_folder_named_by_dbfolder_location_is_refused(tmp_path):
    hd = tmp_path / "Horos Data"
    hd.mkdir()
    elsewhere = tmp_path / "Images"
    (hd / "DBFOLDER_LOCATION").write_text(f"{elsewhere}\n", encoding="utf-8")
    p = write(tmp_path, f'horos_data = "{hd}"\nbackup_dir = "{elsewhere}/Backup"\nsentinel = ""\n')
    with pytest.raises(ConfigError, match="DBFOLDER_LOCATION") as err:
        config.load(p)
    assert "'backup_dir'" in str(err.value) and str(elsewhere) in str(err.value)
    ok = write(tmp_path, f'horos_data = "{hd}"\nbackup_dir = "{tmp_path}/Backup"\nsentinel = ""\n')
    assert config.load(ok).backup_dir == tmp_path / "Backup"


def test_errors_met_with_the_built_in_defaults_say_so(tmp_path, monkeypatch, capsys):
    """Hardening 22: 'sentinel /Volumes/PACS/.pacs_sentinel is missing' puzzles someone who wrote a
    config but forgot --config; say the defaults were used, and call the disk the backup volume."""
    from horos_async import cli

    if Path("/Volumes/PACS/.pacs_sentinel").exists():
        pytest.skip("this machine has the default sentinel")
    monkeypatch.delenv(config.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run"]) == 3
    err = capsys.readouterr().err
    assert "the backup volume is not mounted" in err and "PACS volume" not in err
    assert config.DEFAULTS_NOTE in err
    assert cli.main(["run", "--backup-dir", str(tmp_path / "B")]) == 3  # overrides still use the default sentinel
    assert config.DEFAULTS_NOTE in capsys.readouterr().err
    p = write(tmp_path, 'sentinel = "/nonexistent/.pacs_sentinel"\n')
    assert cli.main(["run", "--config", str(p)]) == 3
    assert config.DEFAULTS_NOTE not in capsys.readouterr().err
    monkeypatch.setenv(config.ENV_VAR, str(p))
    assert cli.main(["status"]) == 7  # /Volumes/PACS/Backup: unmounted; the config came from the variable
    assert config.DEFAULTS_NOTE not in capsys.readouterr().err
    monkeypatch.delenv(config.ENV_VAR)
    assert cli.main(["status"]) == 7
    assert config.DEFAULTS_NOTE in capsys.readouterr().err
