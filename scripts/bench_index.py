#!/usr/bin/env python3
"""Snapshots of Horos's index while Horos commits (prints figures; not a test).

On the 130,000-study / 5.2-million-image store of scripts/bench_plan.py (built once) and on the demo
library: a writer process commits every 50 ms in rollback-journal mode, as Horos does, while one
``index snapshot`` runs. Prints the snapshot's method, duration, stored size and the time it held the
database's read lock, and the writer's worst, 99th-percentile and median wait (goal: worst < 250 ms).

Scenarios: the store where it is (``cache``: copied from memory under the lock, if the measured copy
fits ``index_lock_budget_ms``, else a quiet moment is waited for) and, where this machine can mount a
small XFS filesystem (root + mkfs.xfs), the same store on a volume with copy-on-write clones (``clone``:
what APFS gives on a Mac). The writer runs with ``synchronous=OFF`` so its own disk syncs on a shared test
machine do not hide the time it waited for our lock.

Usage: python scripts/bench_index.py [--db PATH] [--no-clone] [--quiet-seconds 15]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def writer(db: Path) -> subprocess.Popen:
    """Start the 50 ms writer and return once its commits land."""
    p = subprocess.Popen([sys.executable, "-m", "horos_async.demo.writer_probe", str(db), "3600", "0.05", "off"],
                         stdout=subprocess.PIPE, text=True, cwd=ROOT)
    watched = [db, Path(str(db) + "-wal")]
    first = [w.stat().st_mtime_ns if w.exists() else 0 for w in watched]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and [w.stat().st_mtime_ns if w.exists() else 0 for w in watched] == first:
        time.sleep(0.02)
    time.sleep(0.5)
    return p


def stop(p: subprocess.Popen) -> dict:
    p.terminate()
    return json.loads(p.communicate(timeout=60)[0])


def one(label: str, horos_data: Path, backup: Path, quiet: float, with_writer: bool = True) -> None:
    from horos_async import config as config_mod
    from horos_async.ops import index_snapshot

    shutil.rmtree(backup, ignore_errors=True)
    cfg = config_mod.from_mapping({"horos_data": str(horos_data), "backup_dir": str(backup), "sentinel": "",
                                   "index_quiet_seconds": quiet})
    db = cfg.database
    size = db.stat().st_size
    w = writer(db) if with_writer else None
    t0 = time.perf_counter()
    try:
        snap = index_snapshot.take(cfg, log_line=lambda text: None)
        outcome = None
    except (index_snapshot.Busy, index_snapshot.Refused) as exc:
        snap, outcome = None, f"{type(exc).__name__}: {exc}"
    took = time.perf_counter() - t0
    figures = stop(w) if w is not None else None
    print(f"{label}: {size / 1e6:.0f} MB store")
    if snap is not None:
        m = snap.manifest
        print(f"  snapshot {m.method}: {took:.1f} s, stored {snap.size / 1e6:.1f} MB ({size / max(1, snap.size):.1f}x "
              f"smaller), {m.counts['studies']} studies / {m.counts['images']} images, lock held {m.lock_ms:.0f} ms")
    else:
        print(f"  no snapshot after {took:.1f} s: {outcome}")
    if figures is None:
        print("  (no writer: Horos idle, the snapshot waited index_quiet_seconds for that)")
        return
    verdict = "OK" if figures["max_ms"] < 250 else "OVER 250 ms"
    print(f"  writer: {figures['commits']} commits, worst wait {figures['max_ms']} ms, p99 {figures['p99_ms']} ms, "
          f"median {figures['median_ms']} ms ({verdict})")


def xfs_volume(work: Path):
    """(mount point, cleanup) of a fresh XFS loop filesystem, or None where that is not possible."""
    if os.geteuid() != 0 or not shutil.which("mkfs.xfs"):
        return None
    image, mount = work / "xfs.img", work / "xfs"
    with open(image, "wb") as f:
        f.truncate(2 << 30)
    mount.mkdir(exist_ok=True)
    if subprocess.run(["mkfs.xfs", "-q", "-f", str(image)], capture_output=True).returncode or \
            subprocess.run(["mount", "-o", "loop", str(image), str(mount)], capture_output=True).returncode:
        return None

    def cleanup() -> None:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
        image.unlink()

    return mount, cleanup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", type=Path, default=Path("/tmp/horos-bench-plan/Horos Data/Database.sql"))
    ap.add_argument("--studies", type=int, default=130_000)
    ap.add_argument("--no-clone", action="store_true", help="skip the XFS (copy-on-write clone) scenario")
    ap.add_argument("--quiet-seconds", type=float, default=15.0,
                    help="index_quiet_seconds for the runs (the default config waits 60 s)")
    args = ap.parse_args()
    from horos_async import demo

    if not args.db.exists():
        args.db.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        demo.build_large_database(args.db, studies=args.studies, images_per_study=40)
        print(f"built {args.db} in {time.perf_counter() - t0:.0f}s")
    work = Path(tempfile.mkdtemp(prefix="horos-bench-index-"))
    try:
        lib = demo.build_demo(work / "demo", studies=200)
        one("demo library (rollback journal)", lib.horos_data, work / "Backup-demo", args.quiet_seconds)
        wal = demo.build_demo(work / "demo-wal", studies=200, journal_mode="wal")
        one("demo library (WAL)", wal.horos_data, work / "Backup-demo-wal", args.quiet_seconds)
        one(f"large store in place ({args.db.parent.parent}, no clones)", args.db.parent, work / "Backup-large",
            args.quiet_seconds)
        one("large store in place, Horos idle (a quiet moment)", args.db.parent, work / "Backup-quiet",
            args.quiet_seconds, with_writer=False)
        vol = None if args.no_clone else xfs_volume(work)
        if vol is None:
            print("clone scenario skipped: needs root and mkfs.xfs for a copy-on-write volume")
        else:
            mount, cleanup = vol
            try:
                (mount / "Horos Data").mkdir()
                shutil.copy(args.db, mount / "Horos Data" / "Database.sql")
                subprocess.run(["sync"])
                one("large store on a volume with clones (XFS, as APFS)", mount / "Horos Data",
                    work / "Backup-clone", args.quiet_seconds)
            finally:
                cleanup()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
