"""Blocking work never runs on the event loop: no fsync and no ZIP open on the loop's thread, and one
seam (horos_async/blocking.py) is the only crossing into threads.

The loop drives every job's progress, the live status and the signal handlers; one fsync on a sleeping
USB disk run on it would stall them all. The runs below go through every path that syncs or opens a ZIP
(reconcile with someone else's ZIP in a month folder, exports with issues, a name already taken on disk,
verify, a ledger rebuild) in asyncio's debug mode, which also makes any thread-unsafe call into the loop
raise.
"""

from __future__ import annotations

import ast
import asyncio
import csv
import os
import shutil
import threading
import zipfile
from pathlib import Path

import pytest

from horos_async.ops import rebuild, verify

from helpers import assert_backup_complete, backed_up_library, run, zips

ROOT = Path(__file__).resolve().parents[1]


class BlockingCalls:
    """Records each ``os.fsync`` and ``zipfile.ZipFile`` open while active, with the thread that made it."""

    def __init__(self, monkeypatch) -> None:
        self.loop_thread = threading.get_ident()  # asyncio.run() runs the loop on the test's thread
        self.active = False
        self.on_loop: list = []
        self.in_threads: list = []
        real_fsync, real_init = os.fsync, zipfile.ZipFile.__init__

        def fsync(fd):
            self._note("fsync", _fd_path(fd))
            return real_fsync(fd)

        def init(zf, file, *args, **kw):
            self._note("zipfile", str(getattr(file, "name", file)))
            return real_init(zf, file, *args, **kw)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(zipfile.ZipFile, "__init__", init)
        monkeypatch.setenv("PYTHONASYNCIODEBUG", "1")  # each new loop runs in debug mode

    def _note(self, what: str, path: str) -> None:
        if self.active:
            (self.on_loop if threading.get_ident() == self.loop_thread else self.in_threads).append((what, path))

    def __enter__(self) -> "BlockingCalls":
        self.active = True
        return self

    def __exit__(self, *exc) -> None:
        self.active = False

    def seen(self, what: str, name: str) -> bool:
        """True when a thread made a ``what`` call on a path containing ``name``."""
        return any(w == what and name in p for w, p in self.in_threads)


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"fd {fd}"


def issue_codes(cfg) -> set:
    with open(cfg.issues_csv, encoding="utf-8-sig", newline="") as f:
        return {row["code"] for row in csv.DictReader(f)}


def foreign_zip(path: Path) -> None:
    """A valid ZIP without our identity comment (someone else's file) at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("notes/readme.txt", b"not a horos-backup file\n" * 200)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names synced files through /proc (Linux)")
def test_no_fsync_and_no_zip_open_on_the_event_loop(tmp_path, monkeypatch):
    lib, cfg = backed_up_library(tmp_path, studies=2)
    taken = max(zips(cfg.backup_dir), key=lambda p: p.stat().st_size)
    shutil.rmtree(cfg.backup_dir)
    foreign_zip(taken)  # reconcile reports it; the job finds the name taken on disk and writes _d2
    calls = BlockingCalls(monkeypatch)

    with calls:
        assert run(cfg, until_done=True).exit_code == 0
        assert asyncio.run(verify.Verifier(cfg, deep=True).run()).bad == 0
    taken.unlink()
    for suffix in ("", "-wal", "-shm"):
        (cfg.backup_dir / f"export_state.sqlite{suffix}").unlink(missing_ok=True)
    with calls:
        assert asyncio.run(rebuild.rebuild(cfg))["adopted"] == len(zips(cfg.backup_dir))

    assert calls.on_loop == []
    # ... and the paths that used to run on the loop did run, in threads:
    assert {"FOREIGN_FILE", "MISSING_FILES", "LEDGER_REBUILT"} <= issue_codes(cfg)
    assert calls.seen("fsync", "issues.csv")  # Ledger.issue's append
    assert calls.seen("zipfile", taken.name)  # the job asking whose file holds its name
    assert (taken.parent / (taken.stem + "_d2.zip")).exists()
    assert calls.seen("fsync", "verify_state.json")  # verify's pass state
    assert calls.seen("fsync", ".zip.")  # a ZIP's temp file, synced before its rename
    assert_backup_complete(lib, cfg.backup_dir)


def test_only_the_seam_crosses_into_threads():
    """Nothing in horos_async but horos_async/blocking.py calls ``run_in_executor`` or ``to_thread``."""
    crossings = []
    for path in sorted((ROOT / "horos_async").rglob("*.py")):
        if path.name == "blocking.py" and path.parent.name == "horos_async":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("run_in_executor", "to_thread"):
                crossings.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert crossings == []
