"""Durable writes: never overwrite, sync in the right order, and the macOS F_FULLFSYNC fallback."""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path
from typing import List, Tuple

import pytest

from horos_async import durable, platform


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def events(monkeypatch) -> List[Tuple[str, Path]]:
    """Records trace events and real directory syncs in one list, in call order."""
    log: List[Tuple[str, Path]] = []
    real_sync_dir = platform.sync_dir

    def spy_sync_dir(path):
        real_sync_dir(path)
        log.append(("real-sync-dir", Path(path)))

    monkeypatch.setattr(platform, "sync_dir", spy_sync_dir)
    return log


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- publish -------------------------------------------------------------------------------------


def test_publish_moves_tmp_to_final(tmp_path):
    tmp = _write(tmp_path / ".a.zip.t.partial", b"new")
    durable.publish(tmp, tmp_path / "a.zip")
    assert (tmp_path / "a.zip").read_bytes() == b"new"
    assert not tmp.exists()


def test_publish_never_overwrites(tmp_path):
    final = _write(tmp_path / "a.zip", b"the good zip")
    tmp = _write(tmp_path / ".a.zip.t.partial", b"something else")
    with pytest.raises(durable.AlreadyExists) as info:
        durable.publish(tmp, final)
    assert isinstance(info.value, FileExistsError)
    assert str(final) in str(info.value)
    assert final.read_bytes() == b"the good zip"
    assert tmp.read_bytes() == b"something else"  # left for the caller to decide


@pytest.mark.parametrize("err", [errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK])
def test_publish_without_hard_links_still_refuses_to_overwrite(tmp_path, monkeypatch, err):
    def no_links(src, dst, *args, **kwargs):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, "link", no_links)
    final = _write(tmp_path / "a.zip", b"the good zip")
    tmp = _write(tmp_path / ".a.zip.t.partial", b"something else")
    with pytest.raises(durable.AlreadyExists):
        durable.publish(tmp, final)
    assert final.read_bytes() == b"the good zip"
    assert tmp.exists()

    other = tmp_path / "b.zip"
    durable.publish(tmp, other)  # the rename fallback works when the name is free
    assert other.read_bytes() == b"something else"
    assert not tmp.exists()


def test_publish_propagates_real_link_errors(tmp_path, monkeypatch):
    def broken(src, dst, *args, **kwargs):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "link", broken)
    tmp = _write(tmp_path / ".a.zip.t.partial", b"x")
    with pytest.raises(OSError) as info:
        durable.publish(tmp, tmp_path / "a.zip")
    assert info.value.errno == errno.EIO
    assert not (tmp_path / "a.zip").exists()


def test_publish_syncs_dir_then_parents_of_created_dirs(tmp_path, events):
    created = durable.ensure_dir(tmp_path / "2024" / "03")
    assert created == [tmp_path / "2024", tmp_path / "2024" / "03"]
    # the new folders are durable at once (their parents synced, innermost first) ...
    assert events == [("real-sync-dir", tmp_path / "2024"), ("real-sync-dir", tmp_path)]
    events.clear()
    final = tmp_path / "2024" / "03" / "a.zip"
    tmp = _write(final.with_name(".a.zip.t.partial"), b"x")
    durable.publish(tmp, final, created_dirs=created, trace=lambda e, p: events.append((e, p)))
    assert events == [
        ("rename", final),
        ("real-sync-dir", tmp_path / "2024" / "03"),
        ("fsync-dir", tmp_path / "2024" / "03"),
        ("real-sync-dir", tmp_path / "2024"),
        ("fsync-dir", tmp_path / "2024"),
        ("real-sync-dir", tmp_path),
        ("fsync-dir", tmp_path),
    ]


# --- write_atomic --------------------------------------------------------------------------------


def test_write_atomic_order_is_file_rename_dir(tmp_path, events, monkeypatch):
    fsynced = []
    real_full_fsync = platform.full_fsync
    monkeypatch.setattr(platform, "full_fsync", lambda fd: (fsynced.append(fd), real_full_fsync(fd)))
    final = tmp_path / "new" / "marker.json"
    durable.write_atomic(final, b"{}", trace=lambda e, p: events.append((e, p)))
    assert events.pop(0) == ("real-sync-dir", tmp_path)  # ensure_dir made "new" durable at once
    names = [e for e, _ in events]
    assert names == ["fsync-file", "rename", "real-sync-dir", "fsync-dir", "real-sync-dir", "fsync-dir"]
    assert durable.is_temp_name(events[0][1].name) and events[0][1].parent == final.parent
    assert events[1][1] == final
    assert [p for e, p in events if e == "fsync-dir"] == [final.parent, tmp_path]
    assert len(fsynced) >= 3  # the file and both directories went through full_fsync
    assert final.read_bytes() == b"{}"
    assert os.listdir(final.parent) == ["marker.json"]


def test_write_atomic_refuses_overwrite_and_cleans_its_temp(tmp_path):
    final = _write(tmp_path / "marker", b"old")
    with pytest.raises(durable.AlreadyExists):
        durable.write_atomic(final, b"new")
    assert final.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["marker"]


def test_write_atomic_overwrite_replaces(tmp_path):
    final = _write(tmp_path / "status.json", b"old")
    trace: List[str] = []
    durable.write_atomic(final, b"new", overwrite=True, trace=lambda e, p: trace.append(e))
    assert final.read_bytes() == b"new"
    assert trace == ["fsync-file", "rename", "fsync-dir"]
    assert os.listdir(tmp_path) == ["status.json"]


def test_write_atomic_failed_sync_leaves_no_file(tmp_path, monkeypatch):
    def failing(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(platform, "full_fsync", failing)
    with pytest.raises(OSError):
        durable.write_atomic(tmp_path / "marker", b"data")
    assert os.listdir(tmp_path) == []


def test_new_files_and_dirs_are_not_world_readable(tmp_path, umask022):
    final = tmp_path / "a" / "b" / "marker"
    durable.write_atomic(final, b"x")
    assert stat.S_IMODE(final.stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o750


def test_ensure_dir_existing_returns_nothing(tmp_path):
    assert durable.ensure_dir(tmp_path) == []
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(OSError):
        durable.ensure_dir(tmp_path / "f" / "sub")


# --- temp names and cleanup ----------------------------------------------------------------------


def test_temp_names_are_hidden_and_recognisable(tmp_path):
    tmp = durable.temp_path_for(tmp_path / "Doe^John_1.2.3.zip", "123-1")
    assert tmp == tmp_path / ".Doe^John_1.2.3.zip.123-1.partial"
    assert durable.is_temp_name(tmp.name)
    assert not durable.is_temp_name("Doe^John_1.2.3.zip")
    with pytest.raises(ValueError):
        durable.temp_path_for(tmp_path / "a.zip", "x/y")


def test_temp_name_of_a_long_name_fits_name_max(tmp_path):
    final = tmp_path / ("é" * 120 + ".zip")  # 244 bytes in UTF-8
    tmp = durable.temp_path_for(final, "4242-1")
    assert len(os.fsencode(tmp.name)) <= 255
    assert durable.is_temp_name(tmp.name) and tmp.parent == tmp_path
    tmp.write_bytes(b"ok")  # the filesystem accepts it


def test_remove_stale_temps_removes_only_partials(tmp_path):
    month = tmp_path / "2024-03"
    month.mkdir()
    keep = [
        _write(tmp_path / "a.zip", b"zip"),
        _write(month / "b.zip", b"zip"),
        _write(tmp_path / "notes.partial", b"not ours: not hidden"),
    ]
    (tmp_path / ".dir.partial").mkdir()
    stale = [
        _write(tmp_path / ".a.zip.1-1.partial", b""),
        _write(month / ".b.zip.2-3.partial", b"half"),
    ]
    removed = durable.remove_stale_temps(tmp_path)
    assert sorted(removed) == sorted(stale)
    assert all(p.exists() for p in keep)
    assert (tmp_path / ".dir.partial").is_dir()
    assert not any(p.exists() for p in stale)
    assert durable.remove_stale_temps(tmp_path / "missing") == []


def test_remove_stale_temps_keeps_the_temp_files_of_this_process(tmp_path):
    """Hardening 24: every run logged "removed temp file left by an interrupted run" for the live
    status file it was itself replacing."""
    pid = os.getpid()
    mine = [_write(tmp_path / f".status.json.{pid}.partial", b"{}"),
            _write(tmp_path / f".a.zip.{pid}-1.partial", b"being written")]
    left = [_write(tmp_path / f".status.json.{pid + 1}.partial", b"{}"),
            _write(tmp_path / f".a.zip.{pid}1-1.partial", b"another pid that starts with ours")]
    assert sorted(durable.remove_stale_temps(tmp_path)) == sorted(left)
    assert all(p.exists() for p in mine)
    assert durable.is_own_temp(f".x.{pid}-ab.partial") and not durable.is_own_temp(f".x.{pid}.zip")


# --- platform: full_fsync and sync_dir -----------------------------------------------------------


class FakeFcntl:
    """Stands in for macOS fcntl: F_FULLFSYNC fails with the given errno (or succeeds)."""

    def __init__(self, err=None):
        self.err = err
        self.calls: List[Tuple[int, int]] = []

    def fcntl(self, fd, cmd, arg=0):
        self.calls.append((fd, cmd))
        if self.err:
            raise OSError(self.err, os.strerror(self.err))
        return 0


@pytest.fixture
def fake_macos(monkeypatch, tmp_path):
    """Pretend F_FULLFSYNC exists; return (install(fake), fsync calls, an open fd)."""
    fsyncs: List[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd)))
    monkeypatch.setattr(platform, "_FULLFSYNC", 51)
    monkeypatch.setattr(platform, "_warned_devices", set())

    def install(fake):
        monkeypatch.setattr(platform, "_fcntl", fake)

    fd = os.open(tmp_path / "f", os.O_CREAT | os.O_WRONLY, 0o640)
    yield install, fsyncs, fd
    os.close(fd)


@pytest.mark.parametrize("err", [errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP])
def test_full_fsync_falls_back_and_warns_once(fake_macos, caplog, err):
    install, fsyncs, fd = fake_macos
    fake = FakeFcntl(err)
    install(fake)
    with caplog.at_level(logging.WARNING, logger="horos_async"):
        platform.full_fsync(fd)
        platform.full_fsync(fd)
    assert fake.calls == [(fd, 51), (fd, 51)]
    assert fsyncs == [fd, fd]
    warnings = [r for r in caplog.records if "degraded durability on" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.parametrize("err", [errno.EIO, errno.ENXIO, errno.ENOSPC])
def test_full_fsync_real_errors_propagate(fake_macos, err):
    install, fsyncs, fd = fake_macos
    install(FakeFcntl(err))
    with pytest.raises(OSError) as info:
        platform.full_fsync(fd)
    assert info.value.errno == err
    assert fsyncs == []  # no silent downgrade: the file is not safe


def test_full_fsync_uses_fullfsync_when_accepted(fake_macos):
    install, fsyncs, fd = fake_macos
    fake = FakeFcntl()
    install(fake)
    platform.full_fsync(fd)
    assert fake.calls == [(fd, 51)] and fsyncs == []


def test_full_fsync_without_fullfsync_is_fsync(fake_macos, monkeypatch):
    _, fsyncs, fd = fake_macos
    monkeypatch.setattr(platform, "_FULLFSYNC", None)
    platform.full_fsync(fd)
    assert fsyncs == [fd]


def test_sync_dir_ignores_einval_only(tmp_path, monkeypatch):
    def einval(fd):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(platform, "full_fsync", einval)
    platform.sync_dir(tmp_path)

    def eio(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(platform, "full_fsync", eio)
    with pytest.raises(OSError):
        platform.sync_dir(tmp_path)


def test_sync_dir_closes_its_descriptor(tmp_path):
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    for _ in range(50):
        platform.sync_dir(tmp_path)
    if before is not None:
        assert len(os.listdir("/proc/self/fd")) == before


def test_temp_file_that_cannot_be_removed_is_logged_without_the_patient_name(tmp_path, caplog, monkeypatch):
    final = tmp_path / "2024_03" / "Souza_Vitoria_19900101_20240305_1.2.3.zip"
    tmp = durable.temp_path_for(final, "1-1")

    def refuse(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(durable.os, "unlink", refuse)
    with caplog.at_level(logging.WARNING, logger="horos_async"):
        durable.discard(tmp)
    assert "…_1.2.3.zip.1-1.partial" in caplog.text
    assert "Souza" not in caplog.text


def test_a_folder_ensure_dir_creates_is_durable_before_anyone_publishes_into_it(tmp_path, events):
    """Two jobs in a new month: the second finds the folder already made and commits first. The month's
    own entry in its parent must be synced by then, or a power cut could take the ZIP the ledger calls done."""
    month = tmp_path / "2024_03"
    assert durable.ensure_dir(month) == [month]  # job 1 creates the month folder ...
    assert durable.ensure_dir(month) == []  # ... job 2 finds it there
    final = month / "b.zip"
    tmp = _write(month / ".b.zip.t.partial", b"x")
    durable.publish(tmp, final, created_dirs=[])  # job 2 publishes first, before job 1 syncs anything
    assert ("real-sync-dir", tmp_path) in events
    assert events.index(("real-sync-dir", tmp_path)) < events.index(("real-sync-dir", month))
