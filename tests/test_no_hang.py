"""No run hangs (unattended operation §4; hardening 9 and 10): whatever the Horos side holds, a real
``horos-backup`` process ends on its own with its documented code, and SIGTERM ends it within seconds."""

from __future__ import annotations

import sqlite3

import pytest

from horos_async import config as config_mod
from horos_async.errors import EXIT_DATABASE

from helpers import cli_process, make_config


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
