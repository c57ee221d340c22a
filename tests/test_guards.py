"""Guards on real folders: a read-only backup folder, the run lock there, sizes printed for people."""

from __future__ import annotations


import pytest

from horos_async.ops import doctor
from horos_async import guards
from horos_async.errors import VolumeError

from helpers import make_config, read_only, small_tmpfs


def test_human_bytes_never_rounds_a_nearly_full_disk_to_zero():
    assert guards.human_bytes(400_000) == "0.4 MB"
    assert guards.human_bytes(3_500_000) == "3.5 MB"
    assert guards.human_bytes(850_000_000) == "850 MB"
    assert guards.human_bytes(1_400_000_000) == "1.4 GB"
    assert guards.human_bytes(2.1e12) == "2.1 TB"


def test_readonly_backup_folder_is_a_volume_error_naming_it(tmp_path, demo_lib):
    cfg = make_config(demo_lib, tmp_path / "Backup")
    cfg.work_dir.mkdir(parents=True)
    with read_only(cfg.backup_dir) as why:
        with pytest.raises(VolumeError, match="read-only" if why == "volume" else "permission") as exc:
            guards.check_backup_writable(cfg)
        assert str(cfg.backup_dir) in str(exc.value)
        with pytest.raises(VolumeError, match="run lock"):  # what verify and rebuild-ledger meet first
            guards.RunLock(cfg.lock_path).acquire()
    guards.check_backup_writable(cfg)  # writable again: no error


@pytest.fixture
def small_volume(tmp_path):
    """A real 20 MB filesystem (tmpfs)."""
    with small_tmpfs(tmp_path / "small", 20) as mnt:
        yield mnt


def test_doctor_prints_megabytes_on_a_small_disk(tmp_path, demo_lib, small_volume):
    """Was "0.0 GB free, below the 0.1 GB floor"."""
    backup = small_volume / "Backup"
    backup.mkdir()
    cfg = make_config(demo_lib, backup, min_free_gb=0.1)
    free = next(c for c in doctor.check_backup(cfg, volumes_root=tmp_path / "Volumes", mounts=[])
                if c.name == "free space")
    assert free.status == doctor.WARN
    assert "0.0 GB" not in free.message and " MB free, below the 100 MB floor" in free.message, free.message
