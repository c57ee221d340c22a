"""Shared test helpers: a config for a demo library, one engine run, reading the backup back."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sqlite3
import zipfile
from pathlib import Path
from typing import Dict, List

from horos_async import config as config_mod
from horos_async.backup.engine import Engine, RunResult


def make_config(lib, backup: Path, **over) -> config_mod.Config:
    """A config for a demo library: no sentinel, no pauses, short busy timeout."""
    data = {"horos_data": str(lib.horos_data), "backup_dir": str(backup), "sentinel": "",
            "timezone": lib.timezone, "sleep_between_studies": 0, "stability_minutes": 30,
            "db_busy_seconds": 1.0, "min_free_gb": 0.0, "horos_free_gb": 0.0, "retry_backoff_minutes": 0.0}
    data.update(over)
    return config_mod.from_mapping(data, source=backup.parent / "cfg.toml")


def run(cfg, **kw) -> RunResult:
    """One engine run, as ``horos-backup run`` does it."""
    return asyncio.run(Engine(cfg, **kw).run())


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def zips(backup: Path) -> List[Path]:
    """Every final ZIP in the month folders."""
    return sorted(p for p in backup.glob("*/*.zip") if not p.parent.name.startswith("."))


def zips_by_key(backup: Path) -> Dict[str, List[Path]]:
    out: Dict[str, List[Path]] = {}
    for p in zips(backup):
        with zipfile.ZipFile(p) as zf:
            ident = json.loads(zf.comment.decode())
        out.setdefault(ident["key"], []).append(p)
    return out


NOT_STUDY_FILES = ("horos-backup-manifest.json", "DICOMDIR")
"""Members of a study ZIP that are not one of the study's files (the manifest, a DICOMDIR)."""


def study_members(zf: zipfile.ZipFile) -> List[zipfile.ZipInfo]:
    """The members holding the study's files (the manifest and a DICOMDIR left out)."""
    return [i for i in zf.infolist() if i.filename not in NOT_STUDY_FILES]


def member_hashes(zip_path: Path) -> List[str]:
    """SHA-256 of each of the study's files in a ZIP, sorted."""
    with zipfile.ZipFile(zip_path) as zf:
        return sorted(hashlib.sha256(zf.read(i)).hexdigest() for i in study_members(zf))


def key_of(study) -> str:
    return f"{study.uid}|{study.patient_uid}"


def exportable(lib) -> list:
    """Demo studies that a run with the default config must back up completely."""
    return [s for s in lib.studies if s.due and not s.missing and s.note != "arriving"]


def assert_backup_complete(lib, backup: Path) -> None:
    """The invariant: every exportable study in exactly one ZIP, byte-identical to its sources."""
    by_key = zips_by_key(backup)
    for s in exportable(lib):
        found = by_key.get(key_of(s), [])
        assert len(found) == 1, f"{s.note}: {len(found)} ZIPs"
        assert member_hashes(found[0]) == sorted(sha(p) for p in set(s.files)), s.note
    assert not list(backup.rglob("*.partial")), "temp files left behind"


def backed_up_library(root: Path, studies: int = 1):
    """A demo library in ``root/lib`` with one completed backup in ``root/Backup``: (lib, cfg)."""
    from horos_async import demo

    lib = demo.build_demo(root / "lib", studies=studies)
    cfg = make_config(lib, root / "Backup")
    run(cfg, until_done=True)
    return lib, cfg


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` made read-only for real: a read-only bind mount as root (EROFS, what a volume mounted
    read-only gives), else mode 0555 (EACCES, a folder this user may not write). Yields "volume" or
    "permission"; restores the folder after."""
    import os
    import subprocess

    if os.geteuid() == 0:
        if subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode != 0:
            import pytest
            pytest.skip("cannot bind-mount here (no mount namespace privileges)")
        try:
            if subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True).returncode:
                import pytest
                pytest.skip("cannot remount read-only here")
            yield "volume"
        finally:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        return
    mode = folder.stat().st_mode
    folder.chmod(0o555)
    try:
        yield "permission"
    finally:
        folder.chmod(mode)


@contextlib.contextmanager
def small_tmpfs(folder: Path, size_mb):
    """A real filesystem (tmpfs) of ``size_mb`` MB, or of a size as ``mount`` writes it (``"160k"``),
    mounted at ``folder``; the test is skipped where this process may not mount (not root)."""
    import subprocess

    import pytest

    size = f"{size_mb}m" if isinstance(size_mb, int) else str(size_mb)
    folder.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def horos_sql(lib, query, *args):
    """Run one statement on a demo library's Database.sql (as Horos or another tool would), committed."""
    con = sqlite3.connect(str(lib.database))
    try:
        rows = con.execute(query, args).fetchall()
        con.commit()
        return rows
    finally:
        con.close()


def cli_process(argv, *, timeout: float = 120, script: str = "", script_args=(), **kw):
    """``horos-backup ARGV`` as a real process (launchd's view): its CompletedProcess, text mode. A process
    that does not end within ``timeout`` seconds is killed and the test fails: a hang is the bug.
    ``script``: Python run instead of ``-m horos_async`` (it arranges a moment, then calls ``cli.main``),
    given ``script_args`` before ARGV."""
    import os
    import subprocess
    import sys

    import pytest

    env = dict(os.environ, HOROS_BACKUP_CONFIG="")
    env.update(kw.pop("env", {}))
    head = ["-c", script, *script_args] if script else ["-m", "horos_async"]
    try:
        return subprocess.run([sys.executable, *head, *argv], capture_output=True, text=True,
                              env=env, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"horos-backup {' '.join(argv)} did not exit within {timeout}s: {exc.stderr}")


def limited(file_size: int = 0, dac: bool = True):
    """A ``preexec_fn`` giving the child process what this root test process lacks: a file-size limit
    (``RLIMIT_FSIZE`` with SIGXFSZ ignored: a write past it fails with a real EFBIG, as on FAT32 past
    4 GiB), and with ``dac=False`` no power to ignore file permissions (CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH leave the bounding set before exec: a mode-000 file then gives a real EACCES)."""
    import ctypes
    import resource
    import signal

    def setup() -> None:
        if file_size:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
        if not dac:
            libc = ctypes.CDLL(None, use_errno=True)
            for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
                if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                    raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP failed")

    return setup
