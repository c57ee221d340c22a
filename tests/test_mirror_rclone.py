"""The mirror to an rclone remote, with rclone itself and a local-backend remote (an rclone config file in
tmp_path, ``RCLONE_CONFIG``): copy, bulk verification, and rclone missing, misconfigured, failing or
killed mid-upload."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from horos_async import config as config_mod
from horos_async.errors import EXIT_MIRROR, EXIT_OK

from mirror_helpers import assert_mirrored, copies, file_sha, library, main, ok_zips, sha256sum_c, with_mirrors

RCLONE = shutil.which("rclone")
pytestmark = pytest.mark.skipif(RCLONE is None, reason="rclone is not installed (.ci/run installs it)")


@pytest.fixture
def remote(tmp_path, monkeypatch):
    """A local-backend remote named ``vault`` in a private rclone config; its folder on disk."""
    conf = tmp_path / "rclone.conf"
    conf.write_text("[vault]\ntype = local\n", encoding="utf-8")
    monkeypatch.setenv("RCLONE_CONFIG", str(conf))
    folder = tmp_path / "remote"
    folder.mkdir()
    return folder


@pytest.fixture
def backed(tmp_path):
    return library(tmp_path)


def _dest(folder: Path, **kw) -> config_mod.MirrorConfig:
    return config_mod.MirrorConfig(dest=f"rclone:vault:{folder}/horos", **kw)


def _logging_rclone(tmp_path: Path) -> Path:
    """An ``rclone`` that logs each call's subcommand before running the real one."""
    log = tmp_path / "rclone-calls.log"
    wrapper = tmp_path / "rclone-logged"
    wrapper.write_text(f"#!/bin/sh\necho \"$1\" >> '{log}'\nexec '{RCLONE}' \"$@\"\n", encoding="utf-8")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return log


def test_rclone_mirror_copies_and_verifies_in_bulk(backed, remote, tmp_path, monkeypatch):
    """Every ZIP, SHA256SUMS and nothing else reaches the remote, verified by SHA-256; a batch costs a
    handful of rclone processes (one copy, one hashsum), never one per file."""
    _lib, cfg = backed
    log = _logging_rclone(tmp_path)
    monkeypatch.setenv("HOROS_RCLONE", str(tmp_path / "rclone-logged"))
    m = _dest(remote)
    assert main("mirror", "--config", str(with_mirrors(cfg, tmp_path, m))) == EXIT_OK
    root = remote / "horos"
    assert_mirrored(cfg, root, m.dest)
    sha256sum_c(root)
    calls = log.read_text().split()
    assert len(ok_zips(cfg)) > 10
    assert calls.count("copy") == 2, calls  # the ZIPs in one, the month lists in one
    assert calls.count("hashsum") == 2 and "copyto" not in calls, calls
    assert len(calls) <= 10, calls
    # rclone's own check of a month against its list (the SUMS file itself is not in it).
    month = next(p for p in root.iterdir() if (p / "SHA256SUMS").is_file())
    done = subprocess.run([RCLONE, "checksum", "sha256", str(month / "SHA256SUMS"), f"vault:{month}",
                           "--exclude", "SHA256SUMS"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_rclone_missing_is_a_clear_error(backed, remote, tmp_path, monkeypatch, capsys):
    _lib, cfg = backed
    monkeypatch.setenv("HOROS_RCLONE", "rclone-not-installed-here")
    assert main("mirror", "--config", str(with_mirrors(cfg, tmp_path, _dest(remote)))) == EXIT_MIRROR
    err = capsys.readouterr().err
    assert "rclone is not installed" in err and "brew install rclone" in err
    assert not (remote / "horos").exists()


def test_rclone_misconfigured_remote_quotes_rclone(backed, remote, tmp_path, capsys):
    _lib, cfg = backed
    m = config_mod.MirrorConfig(dest="rclone:nosuchremote:horos")
    assert main("mirror", "--config", str(with_mirrors(cfg, tmp_path, m))) == EXIT_MIRROR
    err = capsys.readouterr().err
    assert "rclone failed" in err and "nosuchremote" in err and "rclone config" in err
    assert copies(cfg, m.dest) == {}


def test_rclone_failing_remote_quotes_rclone_and_records_nothing(backed, remote, tmp_path, capsys):
    """The remote's folder cannot be written (a read-only volume): rclone's own error is quoted."""
    _lib, cfg = backed
    from helpers import read_only

    (remote / "horos").mkdir()
    m = _dest(remote)
    with read_only(remote / "horos"):
        assert main("mirror", "--config", str(with_mirrors(cfg, tmp_path, m))) == EXIT_MIRROR
    err = capsys.readouterr().err
    assert "rclone failed" in err and ("read-only" in err or "permission denied" in err.lower()), err
    assert copies(cfg, m.dest) == {}


def test_a_cut_short_upload_is_never_recorded_and_is_moved_aside(backed, remote, tmp_path):
    """A ZIP's name at the remote holding fewer bytes (a killed rclone's upload) is not a copy: it is moved
    to a hidden ``.partial`` name (never deleted) and the ZIP uploaded again."""
    _lib, cfg = backed
    rel = sorted(ok_zips(cfg))[0]
    target = remote / "horos" / rel
    target.parent.mkdir(parents=True)
    target.write_bytes((cfg.backup_dir / rel).read_bytes()[:1000])
    m = _dest(remote)
    assert main("mirror", "--config", str(with_mirrors(cfg, tmp_path, m))) == EXIT_OK
    assert file_sha(target) == ok_zips(cfg)[rel]
    aside = [p for p in target.parent.iterdir() if p.name.endswith(".partial")]
    assert len(aside) == 1 and aside[0].name.startswith(".") and aside[0].stat().st_size == 1000


def test_sigkill_during_an_rclone_upload_then_resume(backed, remote, tmp_path):
    _lib, cfg = backed
    slow = _dest(remote, bwlimit="40k")
    conf = with_mirrors(cfg, tmp_path, slow)
    env = dict(os.environ)
    for delay in (1.0, 2.5):
        proc = subprocess.Popen([sys.executable, "-m", "horos_async", "mirror", "--config", str(conf)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)  # horos-backup and its rclone, at once (a power cut, a crash)
        proc.wait()
        for rel, (stored, sha, _status) in copies(cfg, slow.dest).items():
            assert file_sha(remote / "horos" / stored) == sha, "a recorded copy must be whole"
    fast = _dest(remote)
    assert main("mirror", "--config", str(with_mirrors(cfg, tmp_path, fast))) == EXIT_OK
    assert_mirrored(cfg, remote / "horos", fast.dest)
    sha256sum_c(remote / "horos")


def test_size_only_verification(backed, remote, tmp_path):
    _lib, cfg = backed
    m = _dest(remote, verify="size")
    assert main("mirror", "--config", str(with_mirrors(cfg, tmp_path, m))) == EXIT_OK
    assert_mirrored(cfg, remote / "horos", m.dest)
