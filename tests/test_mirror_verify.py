"""``verify --mirror``: bad mirror copies copied again, bad primary ZIPs restored from a good mirror copy
(without Horos), both bad flagged for re-export; resumable and rotating."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from horos_async import config as config_mod
from horos_async.errors import EXIT_CHECK, EXIT_OK

from mirror_helpers import assert_mirrored, copies, file_sha, ledger_rows, library, main, ok_zips, with_mirrors


@pytest.fixture
def mirrored(tmp_path):
    """A backed-up library mirrored to a second folder: (lib, cfg, conf path, mirror, its folder)."""
    lib, cfg = library(tmp_path)
    disk = tmp_path / "disk2"
    disk.mkdir()
    (disk / config_mod.MIRROR_SENTINEL).touch()
    m = config_mod.MirrorConfig(dest=str(disk))
    conf = with_mirrors(cfg, tmp_path, m)
    assert main("mirror", "--config", str(conf)) == EXIT_OK
    return lib, cfg, conf, m, disk


def _flip(path: Path, at: int = 200) -> None:
    data = bytearray(path.read_bytes())
    data[min(at, len(data) - 30)] ^= 0x55
    path.write_bytes(bytes(data))


def test_a_damaged_or_missing_mirror_copy_is_copied_again(mirrored):
    _lib, cfg, conf, m, disk = mirrored
    a, b = sorted(ok_zips(cfg))[:2]
    _flip(disk / a)
    (disk / b).unlink()
    assert main("verify", "--mirror", "--config", str(conf)) == EXIT_OK
    assert_mirrored(cfg, disk, m.dest)
    assert ledger_rows(cfg, "SELECT COUNT(*) FROM issues WHERE code='MIRROR_COPY_BAD'") == [(2,)]


def test_a_damaged_or_missing_primary_is_restored_from_the_mirror_without_horos(mirrored):
    """The payoff: Horos's files are gone, two primary ZIPs are damaged or gone; verify --mirror puts both
    back byte for byte from the mirror, the damaged one kept in .quarantine/, and nothing needs exporting."""
    lib, cfg, conf, m, disk = mirrored
    hashes = ok_zips(cfg)
    damaged, gone = sorted(hashes)[:2]
    _flip(cfg.backup_dir / damaged)
    (cfg.backup_dir / gone).unlink()
    shutil.rmtree(lib.horos_data)  # Horos no longer holds anything
    assert main("verify", "--mirror", "--config", str(conf)) == EXIT_OK
    for rel in (damaged, gone):
        assert file_sha(cfg.backup_dir / rel) == hashes[rel]
    assert (cfg.quarantine_dir / damaged).is_file()
    assert ledger_rows(cfg, "SELECT COUNT(*) FROM issues WHERE code='MIRROR_RESTORED'") == [(2,)]
    assert set(ok_zips(cfg)) == set(hashes)
    assert not list(cfg.backup_dir.rglob("*.partial"))


def test_a_zip_verify_already_flagged_is_restored_and_its_study_done_again(mirrored):
    """Plain ``verify`` found a ZIP bad (quarantined it, queued its study); ``verify --mirror`` restores it
    and the study is done again: the next run exports nothing."""
    _lib, cfg, conf, m, disk = mirrored
    rel = sorted(ok_zips(cfg))[0]
    sha = ok_zips(cfg)[rel]
    _flip(cfg.backup_dir / rel)
    assert main("verify", "--deep", "--config", str(conf)) == EXIT_CHECK
    assert ledger_rows(cfg, "SELECT status FROM zips WHERE zip_path=?", rel) == [("bad",)]
    assert ledger_rows(cfg, "SELECT state FROM studies WHERE zip_path=?", rel) == [("pending",)]
    assert main("verify", "--mirror", "--config", str(conf)) == EXIT_OK
    assert file_sha(cfg.backup_dir / rel) == sha
    assert ledger_rows(cfg, "SELECT status FROM zips WHERE zip_path=?", rel) == [("ok",)]
    assert ledger_rows(cfg, "SELECT state FROM studies WHERE zip_path=?", rel) == [("done",)]
    from helpers import run

    assert run(cfg).done == 0  # nothing exported again


def test_bad_on_both_sides_is_flagged_for_export(mirrored):
    _lib, cfg, conf, m, disk = mirrored
    rel = sorted(ok_zips(cfg))[0]
    _flip(cfg.backup_dir / rel)
    (disk / rel).unlink()
    assert main("verify", "--mirror", "--config", str(conf)) == EXIT_CHECK
    assert ledger_rows(cfg, "SELECT status FROM zips WHERE zip_path=?", rel) == [("bad",)]
    assert (cfg.quarantine_dir / rel).is_file()


def test_verify_mirror_is_resumable_and_rotates(mirrored, capsys):
    _lib, cfg, conf, m, disk = mirrored
    n = len(ok_zips(cfg))
    state = cfg.work_dir / "verify_mirror_state.json"
    assert main("verify", "--mirror", "--max-zips", "5", "--config", str(conf)) == EXIT_OK
    first = state.read_text()
    assert m.dest in first and sorted(ok_zips(cfg))[4] in first
    checked = 5
    while True:
        assert main("verify", "--mirror", "--max-zips", "5", "--config", str(conf)) == EXIT_OK
        out = capsys.readouterr().out
        checked += int(out.split(": ", 1)[1].split(" ZIPs", 1)[0])
        if "pass finished" in out:
            break
    assert checked == n
    # The next one starts the archive over.
    assert main("verify", "--mirror", "--max-zips", "1", "--config", str(conf)) == EXIT_OK
    assert sorted(ok_zips(cfg))[0] in state.read_text()
    verified = ledger_rows(cfg, "SELECT COUNT(*) FROM mirror_copies WHERE dest=? AND verified_at > copied_at", m.dest)
    assert verified[0][0] >= 1


def test_restore_from_an_rclone_mirror(tmp_path, monkeypatch):
    if shutil.which("rclone") is None:
        pytest.skip("rclone is not installed")
    conf_file = tmp_path / "rclone.conf"
    conf_file.write_text("[vault]\ntype = local\n", encoding="utf-8")
    monkeypatch.setenv("RCLONE_CONFIG", str(conf_file))
    _lib, cfg = library(tmp_path)
    m = config_mod.MirrorConfig(dest=f"rclone:vault:{tmp_path}/remote")
    conf = with_mirrors(cfg, tmp_path, m)
    assert main("mirror", "--config", str(conf)) == EXIT_OK
    hashes = ok_zips(cfg)
    rel = sorted(hashes)[3]
    (cfg.backup_dir / rel).unlink()
    copy = sorted(copies(cfg, m.dest))[0]
    (tmp_path / "remote" / copy).write_bytes(b"rot")
    assert main("verify", "--mirror", "--config", str(conf)) == EXIT_OK
    assert file_sha(cfg.backup_dir / rel) == hashes[rel]
    assert_mirrored(cfg, tmp_path / "remote", m.dest)
