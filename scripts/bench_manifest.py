#!/usr/bin/env python3
"""What the manifest costs: `horos-backup run` with manifests (the default) against the same engine
without them, in one session, alternating rounds, medians compared (prints figures; not a test).

  with manifest    : the product's defaults (every ZIP gets horos-backup-manifest.json: SHA-256, CRC-32
                     and header facts of every file, computed in the reading thread)
  without manifest : the same run with the benchmark-only switch HOROS_BACKUP_MANIFEST=0 (the ZIPs of
                     before manifests existed)
  dicom-media      : information only, zip_layout = "dicom-media" (headers read once more for the DICOMDIR)

Also prints what SHA-256 costs per core here (hashlib, with and without the CPU's SHA extensions:
OPENSSL_ia32cap masks them, as on a Mac without them), and CRC-32 and deflate for scale.
The goal: with manifests >= 95 % of the throughput without them.

Usage: python scripts/bench_manifest.py [--lib DIR] [--studies 40] [--images 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import bench  # noqa: E402  (scripts/bench.py: the demo store, measure(), drop_caches())

_HASH_PROBE = """
import hashlib, os, time, zlib
data = os.urandom(1 << 20)
def rate(fn):
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < 1.0:
        fn(); n += 1
    return n / (time.perf_counter() - t)
print(round(rate(lambda: hashlib.sha256(data).digest())))
"""


def hash_rates() -> dict:
    """MB/s per core of SHA-256 as this Python has it, with the SHA extensions masked, and CRC-32/deflate."""
    out = {}
    for label, env in (("sha256", {}), ("sha256 without SHA-NI", {"OPENSSL_ia32cap": ":~0x20000000"}),
                       ("sha256 without SHA-NI or AVX2", {"OPENSSL_ia32cap": "~0x200000200000000:~0x20000020"})):
        res = subprocess.run([sys.executable, "-c", _HASH_PROBE], env=dict(os.environ, **env),
                             capture_output=True, text=True, check=True)
        out[label] = float(res.stdout.strip())
    import zlib
    data = os.urandom(1 << 20)
    t = time.perf_counter()
    for _ in range(200):
        zlib.crc32(data)
    out["crc32 (zlib)"] = 200 / (time.perf_counter() - t)
    try:
        from isal import isal_zlib
        t = time.perf_counter()
        for _ in range(2000):
            isal_zlib.crc32(data)
        out["crc32 (ISA-L)"] = 2000 / (time.perf_counter() - t)
        sample = Path(__file__).read_bytes() * 64
        t = time.perf_counter()
        for _ in range(20):
            isal_zlib.compress(sample, 1)
        out["deflate level 1 (ISA-L, text)"] = 20 * len(sample) / 1e6 / (time.perf_counter() - t)
    except ImportError:
        pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", type=Path, default=Path("/tmp/horos-bench-manifest/lib"))
    ap.add_argument("--studies", type=int, default=40)
    ap.add_argument("--images", type=int, default=40, help="images per series")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from horos_async import demo

    rates = hash_rates()
    for label, mbs in rates.items():
        print(f"{label:<32} {mbs:8.0f} MB/s per core = {1000 / mbs:5.2f} ms of CPU per MB", flush=True)
    work = args.lib.parent
    work.mkdir(parents=True, exist_ok=True)
    if args.lib.exists():
        shutil.rmtree(args.lib)
    t0 = time.perf_counter()
    lib = demo.build_demo(args.lib, studies=args.studies, images_per_series=args.images, ct_size=512,
                          mr_size=256, compressed_fraction=0.15)
    sets = bench.exportable_sets(lib)
    in_bytes = sum(os.path.getsize(f) for _, files in sets for f in files)
    n = len(sets)
    print(f"demo library: {n} studies, {sum(len(f) for _, f in sets)} files, {in_bytes / 1e9:.2f} GB "
          f"(built in {time.perf_counter() - t0:.0f}s); {os.cpu_count()} CPUs; Python {sys.version.split()[0]}; "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    off = dict(os.environ, HOROS_BACKUP_MANIFEST="0")
    runs = {"without manifest": [], "with manifest": []}
    for _ in range(args.rounds):
        for label, env in (("without manifest", off), ("with manifest", None)):
            backup = work / label.replace(" ", "-")
            runs[label].append(bench.measure(bench.engine_cmd(lib, backup, work), sets, backup, env=env))
    for k, v in runs.items():
        print(f"  {k}: " + ", ".join(f"{m['wall']:.2f}s" for m in v), flush=True)
    med = {k: sorted(v, key=lambda m: m["wall"])[len(v) // 2] for k, v in runs.items()}
    base = med["without manifest"]
    bench.report("without manifest", base, in_bytes, n)
    bench.report("with manifest", med["with manifest"], in_bytes, n)
    media_dir = work / "dicom-media"
    media = bench.measure(bench.engine_cmd(lib, media_dir, work, zip_layout="dicom-media"), sets, media_dir)
    bench.report("dicom-media (info)", media, in_bytes, n)
    ratio = base["wall"] / med["with manifest"]["wall"]
    cpu = {k: v["cpu_pct"] * v["wall"] / 100 for k, v in med.items()}
    print(f"\nwith manifests: {100 * ratio:.1f}% of the throughput without them (goal >= 95%); CPU seconds "
          f"{cpu['with manifest']:.1f} vs {cpu['without manifest']:.1f}; SHA-256 of {in_bytes / 1e9:.2f} GB costs "
          f"{in_bytes / 1e6 / rates['sha256']:.1f} s of one core here, "
          f"{in_bytes / 1e6 / rates['sha256 without SHA-NI']:.1f} s without SHA extensions")


if __name__ == "__main__":
    main()
