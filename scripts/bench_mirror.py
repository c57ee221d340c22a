"""Mirror speed: ``horos-backup mirror`` with its default settings against the plain tools, same ZIPs, same disks.

* folder destination: ``mirror`` (durable copy, folder sync, read-back SHA-256 of every copy) against
  ``cp -r`` followed by ``sha256sum`` of the copies;
* rclone destination (a local-backend remote): ``mirror`` (``lsjson``, one ``copy --files-from``, one
  ``hashsum sha256`` per batch) against ``rclone copy --checksum`` of the same tree.

Each measurement copies into a fresh, empty destination; the source ZIPs are read once first, so every
contender starts from the same warm page cache. Rounds alternate baseline and mirror; medians are
compared. Prints MB/s, both ratios (goal: >= 0.90) and the peak RSS of each mirror process (with rclone).

    .venv/bin/python scripts/bench_mirror.py [--dest-fs loop|tmpfs|dir] [--zips 48] [--mb 24] [--rounds 3]

``loop`` (the default) puts the destination on a loop-mounted ext4 image: a second filesystem with real
syncs. ``tmpfs`` a RAM filesystem; ``dir`` a folder beside the source (no mount needed).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import List, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from horos_async import config as config_mod  # noqa: E402
from horos_async.state import sums  # noqa: E402
from horos_async.state.ledger import Ledger  # noqa: E402


def make_archive(backup: Path, zips: int, mb: int) -> int:
    """``zips`` stored ZIPs of ``mb`` MB of random bytes in month folders, adopted into a fresh ledger."""
    backup.mkdir(parents=True)
    rows = []
    block = os.urandom(1 << 20)
    for i in range(zips):
        month = backup / f"2024_{1 + i % 12:02d}"
        month.mkdir(exist_ok=True)
        path = month / f"Patient_{i:04d}_19700101_20240101_1.2.3.{i}.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
            with zf.open(zipfile.ZipInfo(f"1 CT/{i}.dcm"), "w") as member:
                for j in range(mb):
                    member.write(hashlib.sha256(block[:64] + bytes([i % 256, j % 256])).digest() * 32768)
        h = hashlib.sha256(path.read_bytes()).hexdigest()
        rows.append((path.relative_to(backup).as_posix(), path.stat().st_size, h, i))

    async def adopt():
        async with Ledger(backup / "export_state.sqlite") as led:
            for rel, size, sha, i in rows:
                await led.adopt_zip({"key": f"1.2.3.{i}|p{i}", "version": 1}, rel, size, 1, size, "", sha256=sha)

    asyncio.run(adopt())
    sums.refresh_all(backup, [(r[0], r[2]) for r in rows])  # as the engine writes them after a run
    return sum(r[1] for r in rows)


def warm(backup: Path) -> None:
    for p in backup.rglob("*.zip"):
        with open(p, "rb") as f:
            while f.read(8 << 20):
                pass


CPU = {}
"""Command label -> CPU seconds (user + system, the children waited for included) of its last run."""


def timed(cmd: List[str], env=None) -> Tuple[float, int]:
    """(seconds, peak RSS in MB of the process and the children it waited for); CPU seconds in :data:`CPU`."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[:3]} failed: {proc.stderr.read().decode()[-2000:]}")
    CPU["last"] = usage.ru_utime + usage.ru_stime
    return took, usage.ru_maxrss // 1024


def shell(script: str) -> Tuple[float, int]:
    return timed(["/bin/sh", "-c", script])


def fresh(dest_root: Path, name: str) -> Path:
    for old in dest_root.iterdir():  # the previous copies: the destination filesystem never fills up
        if old.name != "lost+found":
            shutil.rmtree(old)
    d = dest_root / name
    d.mkdir()
    subprocess.run(["sync"], check=True)  # the previous round's writes do not land on this one
    return d


def write_config(work: Path, backup: Path, dest: str) -> Path:
    cfg = config_mod.Config(horos_data=work / "Horos Data", backup_dir=backup, sentinel=None,
                            mirror=(config_mod.MirrorConfig(dest=dest, sentinel=""),))
    path = work / f"cfg-{abs(hash(dest))}.toml"
    path.write_text(config_mod.render_toml(cfg), encoding="utf-8")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/horos-bench-mirror"))
    ap.add_argument("--dest-fs", choices=("loop", "tmpfs", "dir"), default="loop")
    ap.add_argument("--zips", type=int, default=48)
    ap.add_argument("--mb", type=int, default=24, help="MB per ZIP")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = args.work
    if work.exists():
        subprocess.run(["umount", "-l", str(work / "dest")], capture_output=True)
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / "Horos Data").mkdir()
    backup = work / "Backup"
    total = make_archive(backup, args.zips, args.mb)
    dest_root = work / "dest"
    dest_root.mkdir()
    need_mb = total // (1 << 20) * 2 + 256
    if args.dest_fs == "loop":
        image = work / "dest.img"
        subprocess.run(["truncate", "-s", f"{need_mb}M", str(image)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
        loop = subprocess.run(["losetup", "-f", "--show", str(image)], check=True, capture_output=True,
                              text=True).stdout.strip()
        subprocess.run(["blockdev", "--setrw", loop], check=True)  # a loop device may keep an old read-only flag
        subprocess.run(["mount", loop, str(dest_root)], check=True)
    elif args.dest_fs == "tmpfs":
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={need_mb}m", "tmpfs", str(dest_root)], check=True)
    rclone_conf = work / "rclone.conf"
    rclone_conf.write_text("[bench]\ntype = local\n", encoding="utf-8")
    env = dict(os.environ, RCLONE_CONFIG=str(rclone_conf))
    months = sorted(p.name for p in backup.iterdir() if p.is_dir())
    hb = [str(ROOT / ".venv" / "bin" / "horos-backup")] if (ROOT / ".venv/bin/horos-backup").exists() else \
        [sys.executable, "-m", "horos_async"]
    res = {k: [] for k in ("cp", "mirror_folder", "rclone", "mirror_rclone")}
    cpu = {k: [] for k in res}
    rss = {"mirror_folder": 0, "mirror_rclone": 0, "rclone": 0}
    try:
        for n in range(args.rounds):  # each mirror into a destination it has never seen (its ledger rows)
            warm(backup)
            d = fresh(dest_root, "cp")
            srcs = " ".join(f"'{backup / m}'" for m in months)
            t, _ = shell(f"cp -r {srcs} '{d}/' && find '{d}' -name '*.zip' -exec sha256sum {{}} + > /dev/null")
            res["cp"].append(t)
            cpu["cp"].append(CPU["last"])
            warm(backup)
            d = fresh(dest_root, f"mirror{n}")
            conf = write_config(work, backup, str(d))
            t, peak = timed([*hb, "mirror", "--config", str(conf)], env)
            res["mirror_folder"].append(t)
            cpu["mirror_folder"].append(CPU["last"])
            rss["mirror_folder"] = max(rss["mirror_folder"], peak)
            warm(backup)
            d = fresh(dest_root, "rclone")
            t, peak = timed(["rclone", "copy", "--checksum", "--include", "*.zip", str(backup), f"bench:{d}"], env)
            res["rclone"].append(t)
            cpu["rclone"].append(CPU["last"])
            rss["rclone"] = max(rss["rclone"], peak)
            warm(backup)
            d = fresh(dest_root, f"mirror_rclone{n}")
            conf = write_config(work, backup, f"rclone:bench:{d}")
            t, peak = timed([*hb, "mirror", "--config", str(conf)], env)
            res["mirror_rclone"].append(t)
            cpu["mirror_rclone"].append(CPU["last"])
            rss["mirror_rclone"] = max(rss["mirror_rclone"], peak)
    finally:
        if args.dest_fs != "dir":
            subprocess.run(["umount", str(dest_root)], capture_output=True)
        if args.dest_fs == "loop":
            subprocess.run(["losetup", "-d", loop], capture_output=True)
    mb = total / 1e6
    med = {k: statistics.median(v) for k, v in res.items()}
    cmed = {k: statistics.median(v) for k, v in cpu.items()}
    load = os.getloadavg()[0]
    print(f"{args.zips} ZIPs, {mb:.0f} MB, destination on {args.dest_fs}, {args.rounds} rounds (medians), "
          f"{os.cpu_count()} cores, load {load:.1f}")
    for k in ("cp", "mirror_folder", "rclone", "mirror_rclone"):
        print(f"  {k:<14} {med[k]:6.2f} s  {mb / med[k]:7.1f} MB/s  CPU {cmed[k]:5.2f} s   "
              f"(rounds: {', '.join(f'{x:.2f}' for x in res[k])})")
    print(f"folder: mirror / (cp + sha256sum) = {med['cp'] / med['mirror_folder']:.2f} (goal >= 0.90)")
    print(f"rclone: mirror / rclone copy --checksum = {med['rclone'] / med['mirror_rclone']:.2f} (goal >= 0.90)")
    print(f"CPU time (what a loaded machine divides among processes): folder {cmed['cp'] / cmed['mirror_folder']:.2f}, "
          f"rclone {cmed['rclone'] / cmed['mirror_rclone']:.2f} (baseline CPU / mirror CPU)")
    print(f"peak RSS: mirror to a folder {rss['mirror_folder']} MB; mirror to rclone {rss['mirror_rclone']} MB "
          f"(with its rclone processes); rclone copy alone {rss['rclone']} MB")


if __name__ == "__main__":
    main()
