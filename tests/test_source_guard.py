"""HOROS_DB_SHRANK: a Horos database that shrank or was replaced is refused, never "nothing to do".

Horos silently opens an empty ``~/Documents/Horos Data`` when its data volume is not mounted; these tests
make that happen for real: the database file replaced by another, rows deleted, the path changed.
"""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from horos_async import cli, config as config_mod, demo, health
from horos_async.errors import EXIT_OK, EXIT_SOURCE, HorosDbShrank
from horos_async.state.ledger_read import open_readonly

from helpers import make_config, run, zips


def write_config(cfg, where):
    path = where / "cfg.toml"
    path.write_text(config_mod.render_toml(cfg), encoding="utf-8")
    return path


def done_count(cfg) -> int:
    con = open_readonly(cfg.ledger_path)
    try:
        return con.execute("SELECT COUNT(*) FROM studies WHERE state='done'").fetchone()[0]
    finally:
        con.close()


@pytest.fixture
def backed_up(tmp_path):
    lib = demo.build_demo(tmp_path / "lib", studies=6)
    cfg = make_config(lib, tmp_path / "Backup")
    assert run(cfg, until_done=True).done > 4
    return lib, cfg


def test_an_empty_database_in_place_of_the_real_one_is_refused(backed_up, tmp_path, capsys):
    """Horos's volume not mounted: an empty Horos Data answers at the same path (a new file)."""
    lib, cfg = backed_up
    before, done = sorted(zips(cfg.backup_dir)), done_count(cfg)
    empty = demo.build_demo(tmp_path / "empty", studies=0, seed=99)
    with sqlite3.connect(empty.database) as db:
        db.execute("DELETE FROM ZSERIES")  # a fresh Horos database: no studies at all
        db.execute("DELETE FROM ZSTUDY")
    shutil.move(str(lib.database), str(tmp_path / "real.sql"))
    shutil.copy(empty.database, lib.database)
    path = write_config(cfg, tmp_path)
    assert cli.main(["run", "--config", str(path)]) == EXIT_SOURCE
    err = capsys.readouterr().err
    assert str(lib.database.resolve()) in err and "Is the right Horos Data mounted?" in err
    assert "nothing to do" not in err.lower() and "--accept-horos-db" in err
    assert sorted(zips(cfg.backup_dir)) == before and done_count(cfg) == done  # nothing touched
    last = health.read(cfg).attempts[-1]
    assert last.code == "HOROS_DB_SHRANK" and last.exit_code == EXIT_SOURCE
    issues = open_readonly(cfg.ledger_path).execute("SELECT code FROM issues WHERE code='HOROS_DB_SHRANK'")
    assert len(issues.fetchall()) == 1
    assert cli.main(["run", "--config", str(path)]) == EXIT_SOURCE  # refused every run, one issue row
    assert len(open_readonly(cfg.ledger_path).execute(
        "SELECT code FROM issues WHERE code='HOROS_DB_SHRANK'").fetchall()) == 1
    # the volume is mounted again: the real database is back, the run goes on as before
    shutil.move(str(tmp_path / "real.sql"), str(lib.database))
    assert cli.main(["run", "--config", str(path)]) == EXIT_OK
    assert sorted(zips(cfg.backup_dir)) == before
    # a deliberate copy (Horos Data moved to a new disk): a new file, asked once, then accepted
    shutil.copy(lib.database, tmp_path / "copy.sql")
    shutil.move(str(tmp_path / "copy.sql"), str(lib.database))
    capsys.readouterr()
    assert cli.main(["run", "--config", str(path)]) == EXIT_SOURCE
    assert "is a new file since the last run" in capsys.readouterr().err
    assert cli.main(["run", "--config", str(path), "--accept-horos-db"]) == EXIT_OK
    assert cli.main(["run", "--config", str(path)]) == EXIT_OK
    assert sorted(zips(cfg.backup_dir)) == before  # same studies: nothing exported twice


def test_a_database_that_lost_most_of_its_studies_is_refused(backed_up):
    lib, cfg = backed_up
    with sqlite3.connect(lib.database) as db:  # same file, same store: most studies gone at once
        keep = db.execute("SELECT MIN(Z_PK) FROM ZSTUDY").fetchone()[0]
        db.execute("DELETE FROM ZSERIES WHERE ZSTUDY <> ?", (keep,))
        db.execute("DELETE FROM ZSTUDY WHERE Z_PK <> ?", (keep,))
    with pytest.raises(HorosDbShrank) as info:
        run(cfg)
    assert "under 50% of the" in str(info.value) and str(lib.database.resolve()) in str(info.value)


def test_a_small_prune_passes_and_the_threshold_is_configurable(backed_up):
    lib, cfg = backed_up
    with sqlite3.connect(lib.database) as db:  # the clinic deletes one old study from Horos: fine
        pk = db.execute("SELECT MAX(Z_PK) FROM ZSTUDY").fetchone()[0]
        db.execute("DELETE FROM ZSERIES WHERE ZSTUDY = ?", (pk,))
        db.execute("DELETE FROM ZSTUDY WHERE Z_PK = ?", (pk,))
    assert run(cfg).exit_code == EXIT_OK
    strict = make_config(lib, cfg.backup_dir, shrink_threshold=1.0)
    with sqlite3.connect(lib.database) as db:
        pk = db.execute("SELECT MAX(Z_PK) FROM ZSTUDY").fetchone()[0]
        db.execute("DELETE FROM ZSERIES WHERE ZSTUDY = ?", (pk,))
        db.execute("DELETE FROM ZSTUDY WHERE Z_PK = ?", (pk,))
    with pytest.raises(HorosDbShrank):  # 1.0: any drop is refused
        run(strict)
    off = make_config(lib, cfg.backup_dir, shrink_threshold=0)
    with sqlite3.connect(lib.database) as db:
        db.execute("DELETE FROM ZSERIES")
        db.execute("DELETE FROM ZSTUDY")
    assert run(off).outcome == "nothing-to-do"  # 0 disables the count check (the same file still)


def test_another_path_is_another_database(backed_up, tmp_path):
    lib, cfg = backed_up
    moved = tmp_path / "moved" / "Horos Data"
    shutil.copytree(lib.horos_data, moved)
    other = make_config(lib, cfg.backup_dir, horos_data=str(moved))
    with pytest.raises(HorosDbShrank) as info:
        run(other)
    assert f"not {lib.database.resolve()}" in str(info.value)


def test_first_run_against_an_existing_ledger_compares_with_the_studies_backed_up(backed_up):
    """An upgrade: a ledger, no record of the last database yet; an empty database is still refused."""
    lib, cfg = backed_up
    cfg.source_baseline_path.unlink()
    with sqlite3.connect(lib.database) as db:
        db.execute("DELETE FROM ZSERIES")
        db.execute("DELETE FROM ZSTUDY")
    with pytest.raises(HorosDbShrank) as info:
        run(cfg)
    assert "already backed up" in str(info.value)
