"""restore: byte-identical files, hostile members refused, never overwriting, INCOMING fed within its limit."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
import zipfile
from pathlib import Path

import pytest

from horos_async import cli, config as config_mod, durable
from horos_async.ops import restore

from helpers import backed_up_library, zips, zips_by_key, key_of


@pytest.fixture(scope="module")
def backed_up(tmp_path_factory):
    lib, cfg = backed_up_library(tmp_path_factory.mktemp("restore"), studies=1)
    return lib, cfg


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hostile_zip(path: Path, name: str, symlink: bool = False) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ok/IM00001.dcm", b"fine")
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, b"/etc/passwd" if symlink else b"evil")
    return path


def test_restore_is_byte_identical_to_the_sources(backed_up, tmp_path):
    lib, cfg = backed_up
    study = lib.study("accented")
    (zip_path,) = zips_by_key(cfg.backup_dir)[key_of(study)]
    report = restore.restore_to(zip_path, tmp_path / "out")
    assert not report.error and report.restored == len(set(study.files))
    root = tmp_path / "out" / zip_path.stem
    restored = sorted(sha(p) for p in root.rglob("*") if p.is_file())
    assert restored == sorted(sha(p) for p in set(study.files))
    assert not list(root.rglob(".*")), "a temp file was left behind"
    with zipfile.ZipFile(zip_path) as zf:
        assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == sorted(zf.namelist())


def test_restore_never_overwrites(backed_up, tmp_path):
    lib, cfg = backed_up
    zip_path = zips(cfg.backup_dir)[0]
    first = restore.restore_to(zip_path, tmp_path)
    victim = next(p for p in (tmp_path / zip_path.stem).rglob("*") if p.is_file())
    victim.write_bytes(b"edited by a person")
    again = restore.restore_to(zip_path, tmp_path)
    assert again.restored == 0 and again.skipped == first.restored
    assert victim.read_bytes() == b"edited by a person"
    assert "never overwritten" in again.line()


@pytest.mark.parametrize("name", ["../evil", "/abs", "a\\..\\b", "C:/win", "ok/../../evil"])
def test_hostile_member_names_are_refused(tmp_path, name):
    bad = hostile_zip(tmp_path / "hostile.zip", name)
    out = tmp_path / "deep" / "out"
    report = restore.restore_to(bad, out)
    assert report.error and report.restored == 0
    assert not out.exists(), "nothing may be written from a hostile ZIP"
    assert not (tmp_path / "deep" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not Path("/abs").exists()


def test_symlink_members_are_refused(tmp_path):
    bad = hostile_zip(tmp_path / "link.zip", "ok/link", symlink=True)
    report = restore.restore_to(bad, tmp_path / "out")
    assert "symbolic link" in report.error and not (tmp_path / "out").exists()


def test_corrupt_zip_is_refused_before_anything_is_written(backed_up, tmp_path):
    lib, cfg = backed_up
    src = max(zips(cfg.backup_dir), key=lambda p: p.stat().st_size)
    copy = tmp_path / src.name
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as zf:
        info = max(zf.infolist(), key=lambda i: i.compress_size)
    data[info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.compress_size // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    report = restore.restore_to(copy, tmp_path / "out")
    assert "fails verification" in report.error
    assert not (tmp_path / "out").exists()


def test_flat_names_are_unique_and_short():
    a = restore.flat_name(Path("/b/2024_01/Jose_19750802_20240115_1.2.3.zip"), "S0001_CT/IM00001.dcm")
    assert a == "Jose_19750802_20240115_1.2.3_S0001_CT_IM00001.dcm"
    long = restore.flat_name(Path("x" * 300 + ".zip"), "S0001_CT/IM00001.dcm")
    assert len(long.encode()) <= 240 and long.endswith("S0001_CT_IM00001.dcm")


def test_into_horos_keeps_incoming_under_its_limit(tmp_path, monkeypatch):
    """7 files, limit 3, Horos simulated by a thread that imports (deletes) visible files slowly."""
    zip_path = tmp_path / "2024_01" / "Jose_19750802_20240115_1.2.3.zip"
    zip_path.parent.mkdir()
    with zipfile.ZipFile(zip_path, "w") as zf:
        for i in range(7):
            zf.writestr(f"S0001_CT/IM{i:05d}.dcm", os.urandom(20000))
    incoming = tmp_path / "Horos Data" / "INCOMING.noindex"
    incoming.mkdir(parents=True)
    hcfg = config_mod.from_mapping({"horos_data": str(tmp_path / "Horos Data"), "backup_dir": str(tmp_path / "B"),
                                    "sentinel": "", "incoming_max_files": 3})
    assert hcfg.incoming_dir == incoming

    def visible():
        return [p for p in incoming.iterdir() if not p.name.startswith(".")]

    after_publish = []
    real_publish = durable.publish

    def counting_publish(tmp, final, **kw):  # exact count each time a file becomes visible to Horos
        assert tmp.name.startswith(".") and tmp.stat().st_size == 20000  # complete before it is shown
        real_publish(tmp, final, **kw)
        after_publish.append(len(visible()))

    monkeypatch.setattr(durable, "publish", counting_publish)
    stop = threading.Event()
    seen_max, imported = [0], {}

    def horos():
        while not stop.is_set():
            now = visible()
            seen_max[0] = max(seen_max[0], len(now))
            for p in now[:1]:  # import one file per tick
                imported[p.name] = p.read_bytes()
                p.unlink()
            time.sleep(0.01)

    worker = threading.Thread(target=horos)
    worker.start()
    try:
        report = restore.restore_into_horos(zip_path, hcfg, wait_seconds=10, poll_seconds=0.01)
        deadline = time.monotonic() + 10
        while visible() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        worker.join()
    assert not report.error and report.restored == 7
    assert len(after_publish) == 7 and max(after_publish) <= 3 and seen_max[0] <= 3
    with zipfile.ZipFile(zip_path) as zf:
        expected = {restore.flat_name(zip_path, n): zf.read(n) for n in zf.namelist()}
    assert imported == expected  # every file complete, under its flat unique name
    assert "Jose_19750802_20240115_1.2.3_S0001_CT_IM00000.dcm" in imported
    assert not list(incoming.iterdir()), "hidden temp files left in INCOMING"


def test_into_horos_gives_up_when_incoming_stays_full(tmp_path, backed_up):
    lib, cfg = backed_up
    incoming = tmp_path / "Horos Data" / "INCOMING.noindex"
    incoming.mkdir(parents=True)
    for i in range(3):
        (incoming / f"waiting{i}.dcm").write_bytes(b"x")
    hcfg = config_mod.from_mapping({"horos_data": str(tmp_path / "Horos Data"), "backup_dir": str(tmp_path / "B"),
                                    "sentinel": "", "incoming_max_files": 3})
    with pytest.raises(restore.RestoreError, match="is Horos running"):
        restore.restore_into_horos(zips(cfg.backup_dir)[0], hcfg, wait_seconds=0.2, poll_seconds=0.05)
    assert sorted(p.name for p in incoming.iterdir()) == ["waiting0.dcm", "waiting1.dcm", "waiting2.dcm"]


def test_cli_restore(backed_up, tmp_path, capsys):
    lib, cfg = backed_up
    good = zips(cfg.backup_dir)[0]
    bad = hostile_zip(tmp_path / "bad.zip", "../evil")
    code = cli.main(["restore", str(good), str(bad), "--to", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 9
    assert "restored" in captured.out and "REFUSED" in captured.out and "refused" in captured.err
    cfg.source.write_text(config_mod.render_toml(cfg), encoding="utf-8")
    rel = good.relative_to(cfg.backup_dir).as_posix()  # names relative to backup_dir work too
    assert cli.main(["restore", rel, "--to", str(tmp_path / "out2"), "--config", str(cfg.source)]) == 0
    assert (tmp_path / "out2" / good.stem).is_dir()
