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
    assert not report.error and report.restored == len(set(study.files)) + 1  # and the manifest
    root = tmp_path / "out" / zip_path.stem
    restored = sorted(sha(p) for p in root.rglob("*") if p.is_file() and p.name != "horos-backup-manifest.json")
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


# -- a destination that is full, a file, read-only; members that cannot be written (hardening 16, 17) --
def plain_zip(path: Path, members) -> Path:
    """A ZIP of (name, bytes) pairs, stored (no compression: declared size = bytes on disk)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def test_restore_checks_free_space_first_and_goes_on_with_the_next_zip(tmp_path, capsys):
    from helpers import small_tmpfs

    big = plain_zip(tmp_path / "zips" / "Big_1.2.3.zip", [(f"S0001_CT/IM{i:05d}.dcm", os.urandom(1 << 20))
                                                          for i in range(3)])
    small = plain_zip(tmp_path / "zips" / "Small_1.2.4.zip", [("S0001_CT/IM00001.dcm", b"x" * 5000)])
    with small_tmpfs(tmp_path / "dest", 2) as dest:
        code = cli.main(["restore", str(big), str(small), "--to", str(dest)])
        captured = capsys.readouterr()
        assert code == 6, captured
        assert "STOPPED" in captured.out and "only" in captured.out and "nothing was written" in captured.out
        assert not (dest / "Big_1.2.3").exists(), "nothing may be written from a ZIP that does not fit"
        assert (dest / "Small_1.2.4" / "S0001_CT" / "IM00001.dcm").read_bytes() == b"x" * 5000
        assert "did not fit" in captured.err and "Traceback" not in captured.err


def test_restore_that_fills_the_destination_midway_stops_that_zip_cleanly(tmp_path, capsys):
    """Declared sizes fit, but the filesystem runs out of inodes (ENOSPC) after a few files."""
    import subprocess

    many = plain_zip(tmp_path / "zips" / "Many_1.2.3.zip", [(f"S0001_CT/IM{i:05d}.dcm", b"d" * 100)
                                                             for i in range(30)])
    dest = tmp_path / "dest"
    dest.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,nr_inodes=12", "tmpfs", str(dest)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        code = cli.main(["restore", str(many), str(many), "--to", str(dest)])
        captured = capsys.readouterr()
        assert code == 6, captured
        assert captured.out.count("STOPPED") == 2 and "filled up" in captured.out
        assert "Traceback" not in captured.err
        assert not [p for p in dest.rglob(".*") if p.is_file()], "a temp file was left behind"
    finally:
        subprocess.run(["umount", "-l", str(dest)], capture_output=True)


def test_restore_to_a_file_or_under_a_file_is_a_clear_error(tmp_path, capsys):
    good = plain_zip(tmp_path / "A_1.2.3.zip", [("S0001_CT/IM00001.dcm", b"x")])
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    assert cli.main(["restore", str(good), "--to", str(afile)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert cli.main(["restore", str(good), "--to", str(afile / "sub")]) == 2
    err = capsys.readouterr().err
    assert "which is a file" in err and "Traceback" not in err
    assert afile.read_text() == "not a folder"


def test_restore_to_a_read_only_folder_is_exit_7_and_writes_nothing(tmp_path, capsys):
    from helpers import read_only

    good = plain_zip(tmp_path / "A_1.2.3.zip", [("S0001_CT/IM00001.dcm", b"x")])
    dest = tmp_path / "ro"
    dest.mkdir()
    with read_only(dest) as how:
        code = cli.main(["restore", str(good), "--to", str(dest / "out")])
    captured = capsys.readouterr()
    assert code == 7, captured
    assert f"cannot restore into {dest / 'out'}" in captured.err and "Traceback" not in captured.err
    assert "read-only" in captured.err if how == "volume" else "permission" in captured.err
    assert not list(dest.iterdir())


def test_member_name_too_long_is_listed_and_the_others_are_restored(tmp_path, capsys):
    long_name = "S0001_CT/" + "L" * 300 + ".dcm"
    z = plain_zip(tmp_path / "Long_1.2.3.zip", [("S0001_CT/IM00001.dcm", b"one"), (long_name, b"long"),
                                                ("S0001_CT/IM00002.dcm", b"two")])
    later = plain_zip(tmp_path / "Later_1.2.4.zip", [("S0001_CT/IM00001.dcm", b"later")])
    code = cli.main(["restore", str(z), str(later), "--to", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 9, captured
    assert "NOT WRITTEN 1" in captured.out and "name too long" in captured.out
    root = tmp_path / "out" / "Long_1.2.3" / "S0001_CT"
    assert sorted(p.name for p in root.iterdir()) == ["IM00001.dcm", "IM00002.dcm"]
    assert (tmp_path / "out" / "Later_1.2.4" / "S0001_CT" / "IM00001.dcm").read_bytes() == b"later"
    assert "not completely restored" in captured.err and "Traceback" not in captured.err


def test_member_that_is_both_a_file_and_a_folder_is_renamed_not_lost(tmp_path, capsys):
    z = plain_zip(tmp_path / "Odd_1.2.3.zip", [("S0001_CT/IM00001", b"file"), ("S0001_CT/IM00001/inner.dcm", b"in")])
    code = cli.main(["restore", str(z), "--to", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 0, captured
    root = tmp_path / "out" / "Odd_1.2.3" / "S0001_CT"
    assert (root / "IM00001").read_bytes() == b"file"
    assert (root / "IM00001_2" / "inner.dcm").read_bytes() == b"in"
    assert "1 renamed" in captured.out and "S0001_CT/IM00001/inner.dcm -> S0001_CT/IM00001_2/inner.dcm" in captured.out


def test_series_that_differ_only_by_case_are_restored_apart(tmp_path):
    """A ZIP written before names were unique case-insensitively: on a Mac disk the second series would
    have been skipped as 'already there'."""
    z = plain_zip(tmp_path / "Case_1.2.3.zip", [("S0001_CT_Head/IM00001.dcm", b"head"),
                                                ("S0001_CT_HEAD/IM00001.dcm", b"HEAD")])
    report = restore.restore_to(z, tmp_path / "out")
    assert report.restored == 2 and report.kind == ""
    root = tmp_path / "out" / "Case_1.2.3"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.dcm")) == [
        "S0001_CT_HEAD_2/IM00001.dcm", "S0001_CT_Head/IM00001.dcm"]
    again = restore.restore_to(z, tmp_path / "out")  # the same names every time: a repeat skips both
    assert again.restored == 0 and again.skipped == 2


def test_unique_paths_is_case_insensitive_and_keeps_good_names():
    names = ["a/IM1.dcm", "A/IM1.dcm", "a/im1.DCM", "b", "b/c", "B/", "A/IM2.dcm"]
    got = restore.unique_paths(names)
    assert got == {"a/IM1.dcm": "a/IM1.dcm", "A/IM1.dcm": "A_2/IM1.dcm", "a/im1.DCM": "a/im1_2.DCM",
                   "b": "b", "b/c": "b_2/c", "B/": "B_3", "A/IM2.dcm": "A_2/IM2.dcm"}
    assert len({v.casefold() for v in got.values()}) == len(got)


def test_flat_names_are_unique_case_insensitively_across_zips():
    used: set = set()
    first = restore.flat_names(Path("Jose_1.2.3.zip"), ["S0001_CT_Head/IM00001.dcm", "S0001_CT_HEAD/IM00001.dcm"],
                               used)
    second = restore.flat_names(Path("JOSE_1.2.3.zip"), ["S0001_CT_Head/IM00001.dcm"], used)
    assert first == ["Jose_1.2.3_S0001_CT_Head_IM00001.dcm", "Jose_1.2.3_S0001_CT_HEAD_IM00001_2.dcm"]
    assert second == ["JOSE_1.2.3_S0001_CT_Head_IM00001_3.dcm"]
