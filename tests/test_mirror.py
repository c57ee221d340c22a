"""The mirror to a folder (a second disk, a NAS share): real second filesystems (tmpfs), real faults.

Each test proves one promise of docs/design/mirror.md: the SHA-256 hashed while a ZIP is written, the
month SHA256SUMS that ``sha256sum -c`` accepts on both sides, the durable copy read back before it is
recorded, nothing ever replaced at a destination, and the faults (unmounted, full, vanishing, SIGKILL).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from horos_async import config as config_mod
from horos_async.errors import EXIT_MIRROR, EXIT_OK
from horos_async.state import sums

from helpers import small_tmpfs
from mirror_helpers import (assert_mirrored, copies, file_sha, ledger_rows, library, main, ok_zips, sha256sum_c,
                            with_mirrors)


def tmpfs(folder: Path, size: str):
    """A real tmpfs of ``size`` (``"160k"``, ``"16m"``) at ``folder`` (helpers.small_tmpfs)."""
    return small_tmpfs(folder, size)


@pytest.fixture
def backed(tmp_path):
    return library(tmp_path)


def _disk(root: Path) -> config_mod.MirrorConfig:
    (root / config_mod.MIRROR_SENTINEL).touch()
    return config_mod.MirrorConfig(dest=str(root))


def test_each_zip_sha256_is_hashed_as_written_and_listed_per_month(backed):
    """The ledger's SHA-256 of each ZIP is the file's; the ZIP streams its members (data descriptors, no
    seek back), and every month folder's SHA256SUMS passes ``sha256sum -c``."""
    _lib, cfg = backed
    hashes = ok_zips(cfg)
    assert hashes and all(hashes.values())
    for rel, sha in hashes.items():
        path = cfg.backup_dir / rel
        assert file_sha(path) == sha, rel
        with zipfile.ZipFile(path) as zf:
            assert all(i.flag_bits & 0x08 for i in zf.infolist()), "members written append-only"
        listed = sums.read(path.parent)
        assert listed is not None and listed[path.name] == sha
    sha256sum_c(cfg.backup_dir)


def test_mirror_to_a_second_filesystem_copies_and_verifies_everything(backed, tmp_path):
    _lib, cfg = backed
    with tmpfs(tmp_path / "disk2", "16m") as disk:
        m = _disk(disk)
        conf = with_mirrors(cfg, tmp_path, m)
        assert main("mirror", "--config", str(conf)) == EXIT_OK
        assert_mirrored(cfg, disk, m.dest)
        sha256sum_c(disk)
        assert not list(disk.rglob("*.partial"))
        # A second mirror has nothing to copy and changes nothing.
        before = {p: p.stat().st_mtime_ns for p in disk.rglob("*") if p.is_file()}
        assert main("mirror", "--config", str(conf)) == EXIT_OK
        assert {p: p.stat().st_mtime_ns for p in disk.rglob("*") if p.is_file()} == before
        runs = ledger_rows(cfg, "SELECT outcome, files FROM mirror_runs WHERE dest=? ORDER BY id", m.dest)
        assert runs[0][0] == "ok" and runs[0][1] > len(ok_zips(cfg)) and runs[-1] == ("ok", 0)


def test_status_shows_each_destination(backed, tmp_path, capsys):
    _lib, cfg = backed
    disk = tmp_path / "disk2"
    disk.mkdir()
    m = _disk(disk)
    never = config_mod.MirrorConfig(dest=str(tmp_path / "nas"), sentinel="")
    conf = with_mirrors(cfg, tmp_path, m, never)
    assert main("mirror", "--config", str(conf), "--dest", m.dest) == EXIT_OK
    from horos_async import status

    snap = status.read_snapshot(config_mod.load(conf))
    out = status.render(snap, width=1000)
    n = len(ok_zips(cfg))
    assert f"Mirror {m.dest}: OK, {n}/{n} ZIPs" in out
    assert f"Mirror {never.dest}: NEVER RUN, 0/{n} ZIPs" in out
    assert [(s.dest, s.percent) for s in snap.mirrors] == [(m.dest, 100.0), (never.dest, 0.0)]
    assert status.to_json(snap)["mirrors"][0]["zips_mirrored"] == n
    capsys.readouterr()
    assert main("status", "--config", str(conf)) is not None
    assert "Mirror " in capsys.readouterr().out


def test_unmounted_destination_is_refused_by_its_sentinel(backed, tmp_path, capsys):
    """No sentinel (the NAS not mounted, a bare mount point): nothing is written there, exit 12, and the
    destination shows as failing."""
    _lib, cfg = backed
    bare = tmp_path / "Volumes" / "NAS"
    bare.mkdir(parents=True)
    m = config_mod.MirrorConfig(dest=str(bare))
    conf = with_mirrors(cfg, tmp_path, m)
    assert main("mirror", "--config", str(conf)) == EXIT_MIRROR
    err = capsys.readouterr().err
    assert "is not mounted" in err and config_mod.MIRROR_SENTINEL in err
    assert list(bare.iterdir()) == []
    assert copies(cfg, m.dest) == {}
    assert ledger_rows(cfg, "SELECT outcome FROM mirror_runs WHERE dest=?", m.dest) == [("failed",)]
    assert ledger_rows(cfg, "SELECT COUNT(*) FROM issues WHERE code='MIRROR_FAILED'") == [(1,)]
    from horos_async import status

    assert f"Mirror {m.dest}: FAILING" in status.render(status.read_snapshot(config_mod.load(conf)), width=1000)


def test_full_destination_records_only_what_fits(backed, tmp_path, capsys):
    """A real filesystem too small for the archive: ENOSPC ends the mirror (exit 12, 'full'); the partial
    copy is removed; every copy recorded is whole; with room again, the next mirror finishes."""
    _lib, cfg = backed
    total = sum(n for (n,) in ledger_rows(cfg, "SELECT zip_size FROM zips WHERE status='ok'"))
    with tmpfs(tmp_path / "small", f"{total // 2 // 1024}k") as disk:
        m = _disk(disk)
        conf = with_mirrors(cfg, tmp_path, m)
        assert main("mirror", "--config", str(conf)) == EXIT_MIRROR
        assert "is full" in capsys.readouterr().err
        recorded = copies(cfg, m.dest)
        assert 0 < len(recorded) < len(ok_zips(cfg))
        for rel, (stored, sha, _status) in recorded.items():
            assert file_sha(disk / stored) == sha
        assert not list(disk.rglob("*.partial"))
        subprocess.run(["mount", "-o", f"remount,size={total * 4 // 1024 + 256}k", str(disk)], check=True)
        assert main("mirror", "--config", str(conf)) == EXIT_OK
        assert_mirrored(cfg, disk, m.dest)
        sha256sum_c(disk)


def test_destination_vanishing_mid_mirror(backed, tmp_path, capsys):
    """The disk is pulled (lazily unmounted) while files are copied: the mirror stops with exit 12 and
    writes nothing onto the bare mount point; what it recorded was read back before."""
    _lib, cfg = backed
    with tmpfs(tmp_path / "usb", "16m") as disk:
        (disk / config_mod.MIRROR_SENTINEL).touch()
        m = config_mod.MirrorConfig(dest=str(disk), bwlimit="64k")
        conf = with_mirrors(cfg, tmp_path, m)
        seen = []

        def pull():
            while not any(disk.glob("*/*.zip")):
                time.sleep(0.02)
            seen.extend(p.name for p in disk.glob("*/*.zip"))
            subprocess.run(["umount", "-l", str(disk)], check=True)

        t = threading.Thread(target=pull)
        t.start()
        code = main("mirror", "--config", str(conf))
        t.join()
        assert code == EXIT_MIRROR
        assert "mounted" in capsys.readouterr().err  # "is not mounted" or "is it still mounted?"
        assert list(disk.iterdir()) == []  # the bare mount point: nothing written onto the disk below
        assert len(copies(cfg, m.dest)) <= len(seen)


def test_sigkill_mid_copy_records_nothing_unverified_then_resumes(backed, tmp_path):
    _lib, cfg = backed
    disk = tmp_path / "disk2"
    disk.mkdir()
    m = config_mod.MirrorConfig(dest=str(disk), bwlimit="48k")
    (disk / config_mod.MIRROR_SENTINEL).touch()
    conf = with_mirrors(cfg, tmp_path, m)
    for delay in (0.5, 1.5, 3.0):
        proc = subprocess.Popen([sys.executable, "-m", "horos_async", "mirror", "--config", str(conf)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for rel, (stored, sha, _status) in copies(cfg, m.dest).items():
            assert file_sha(disk / stored) == sha, "a recorded copy must be whole"
        assert all(p.name.startswith(".") for p in disk.rglob("*.partial")), "a partial copy never has a ZIP's name"
    quick = with_mirrors(cfg, tmp_path, config_mod.MirrorConfig(dest=str(disk)))
    assert main("mirror", "--config", str(quick)) == EXIT_OK
    assert_mirrored(cfg, disk, m.dest)
    assert not list(disk.rglob("*.partial")), "the stale temps of the killed runs are removed"
    sha256sum_c(disk)


def test_nothing_at_a_destination_is_ever_replaced(backed, tmp_path):
    """Another file under a ZIP's name stays as it is; the ZIP goes beside it (``~<hash>``) and a
    ``MIRROR_CONFLICT`` issue says so. A file an earlier run copied but never recorded is adopted."""
    _lib, cfg = backed
    disk = tmp_path / "disk2"
    disk.mkdir()
    m = _disk(disk)
    rels = sorted(ok_zips(cfg))
    other, same = rels[0], rels[1]
    (disk / other).parent.mkdir(parents=True, exist_ok=True)
    (disk / other).write_bytes(b"someone else's file")
    (disk / same).parent.mkdir(parents=True, exist_ok=True)
    (disk / same).write_bytes((cfg.backup_dir / same).read_bytes())
    conf = with_mirrors(cfg, tmp_path, m)
    assert main("mirror", "--config", str(conf)) == EXIT_OK
    assert (disk / other).read_bytes() == b"someone else's file"
    stored, sha, _ = copies(cfg, m.dest)[other]
    assert stored != other and "~" in stored and file_sha(disk / stored) == sha == ok_zips(cfg)[other]
    assert copies(cfg, m.dest)[same][0] == same
    assert ledger_rows(cfg, "SELECT COUNT(*) FROM issues WHERE code='MIRROR_CONFLICT'") == [(1,)]


def test_the_scheduled_run_mirrors_after_exporting(tmp_path):
    from horos_async import demo
    from helpers import make_config

    lib = demo.build_demo(tmp_path / "lib", studies=1)
    cfg = make_config(lib, tmp_path / "Backup")
    disk = tmp_path / "disk2"
    disk.mkdir()
    m = _disk(disk)
    conf = with_mirrors(cfg, tmp_path, m)
    assert main("run", "--config", str(conf)) == EXIT_OK
    assert ok_zips(cfg)
    assert_mirrored(cfg, disk, m.dest)
    sha256sum_c(disk)


def test_a_scheduled_run_outside_the_mirror_window_leaves_it_for_later(tmp_path):
    from horos_async import demo
    from helpers import make_config

    lib = demo.build_demo(tmp_path / "lib", studies=1)
    cfg = make_config(lib, tmp_path / "Backup")
    disk = tmp_path / "disk2"
    disk.mkdir()
    (disk / config_mod.MIRROR_SENTINEL).touch()
    from horos_async.timezones import zone_for
    import datetime as dt

    now = dt.datetime.now(zone_for(cfg.timezone))
    start = (now + dt.timedelta(hours=2)).strftime("%H:%M")
    end = (now + dt.timedelta(hours=3)).strftime("%H:%M")
    m = config_mod.MirrorConfig(dest=str(disk), window=f"{start}-{end}")
    conf = with_mirrors(cfg, tmp_path, m)
    assert main("run", "--config", str(conf)) == EXIT_OK
    assert copies(cfg, m.dest) == {} and not list(disk.glob("*/*.zip"))
    assert main("mirror", "--config", str(conf), "--now") == EXIT_OK
    assert_mirrored(cfg, disk, m.dest)


def test_index_snapshots_are_mirrored(backed, tmp_path):
    _lib, cfg = backed
    assert main("index", "snapshot", "--config", str(with_mirrors(cfg, tmp_path))) == EXIT_OK
    disk = tmp_path / "disk2"
    disk.mkdir()
    m = _disk(disk)
    assert main("mirror", "--config", str(with_mirrors(cfg, tmp_path, m))) == EXIT_OK
    snaps = sorted(p for p in cfg.index_dir.iterdir() if not p.name.startswith("."))
    assert snaps
    for snap in snaps:
        for f in snap.iterdir():
            copy = disk / cfg.index_dir.name / snap.name / f.name
            assert copy.read_bytes() == f.read_bytes()
    kinds = {r[0] for r in ledger_rows(cfg, "SELECT kind FROM mirror_copies WHERE dest=?", m.dest)}
    assert kinds == {"zip", "sums", "index"}


def test_zips_written_before_the_mirror_schema_are_hashed_when_first_mirrored(backed, tmp_path):
    """An older ledger's ZIPs have no SHA-256: the mirror hashes each while copying, records it, and the
    month lists follow."""
    _lib, cfg = backed
    import sqlite3

    con = sqlite3.connect(str(cfg.ledger_path))
    con.execute("UPDATE zips SET sha256=NULL")
    con.commit()
    con.close()
    for f in cfg.backup_dir.glob(f"*/{sums.SUMS_NAME}"):
        f.unlink()
    disk = tmp_path / "disk2"
    disk.mkdir()
    m = _disk(disk)
    assert main("mirror", "--config", str(with_mirrors(cfg, tmp_path, m))) == EXIT_OK
    hashes = ok_zips(cfg)
    assert all(hashes.values())
    assert all(file_sha(cfg.backup_dir / rel) == sha for rel, sha in hashes.items())
    sha256sum_c(cfg.backup_dir)
    assert_mirrored(cfg, disk, m.dest)


def test_mirror_config_errors_name_the_key(tmp_path):
    from horos_async.errors import ConfigError

    base = {"horos_data": str(tmp_path / "h"), "backup_dir": str(tmp_path / "b"), "sentinel": ""}
    for table, needle in (({"dest": ""}, "mirror.dest"), ({"dest": "/x", "verify": "md5"}, "mirror.verify"),
                          ({"dest": "/x", "bwlimit": "fast"}, "mirror.bwlimit"),
                          ({"dest": "/x", "window": "9-5"}, "mirror.window"),
                          ({"dest": "rclone:nocolon"}, "mirror.dest"), ({"dest": "/x", "speed": "1"}, "mirror.speed"),
                          ({"dest": str(tmp_path / "b" / "m")}, "mirror.dest")):
        with pytest.raises(ConfigError) as info:
            config_mod.from_mapping({**base, "mirror": table})
        assert needle in str(info.value)
    cfg = config_mod.from_mapping({**base, "mirror": [{"dest": "/a"}, {"dest": "rclone:b2:horos", "bwlimit": "2M"}]})
    assert [m.dest for m in cfg.mirror] == ["/a", "rclone:b2:horos"]
    assert cfg.mirror[1].is_rclone and cfg.mirror[1].remote == "b2:horos" and cfg.mirror[1].bytes_per_second == 2 << 20
    assert config_mod.from_mapping(dict(config_mod.tomllib.loads(config_mod.render_toml(cfg)))).mirror == cfg.mirror
