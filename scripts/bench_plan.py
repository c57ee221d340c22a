#!/usr/bin/env python3
"""Planning over a Horos-sized database (prints figures; not a test).

Builds (once) a Database.sql of 130,000 studies and 5.2 million image rows, then measures in a child
process the full scan that counts the archive and picks the next batch, in four situations:

* first run: an empty ledger (every study new);
* steady state: every study backed up, no image row added since the last run (what launchd runs
  every few minutes);
* rows added: every study backed up, 2,000 image rows added since the last run (their studies are
  looked at again: growth without a new ZDATEADDED, docs/design/horos-database.md §12);
* first scan after the upgrade: every study backed up but no high-water mark yet, so every study's
  image rows are counted once;

and one batch read, peak RSS; then, with a writer committing every 50 ms as Horos would, the worst
time that writer waited. Wall and CPU seconds are both printed: on a shared machine CPU time says more.

Usage: python scripts/bench_plan.py [--studies 130000] [--images 40] [--db PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
GROWN_ROWS = 2_000


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM on Linux: unlike ru_maxrss it is not inherited across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def ledgers(db: Path, studies, mark):
    """The ledger indexes of the four situations (see the module docstring), built without timing."""
    from horos_async.state.ledger_read import index_from_rows
    from horos_async.timezones import cocoa_to_unix

    con = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)
    counts, top = {}, max(pk for pk, *_ in studies)
    for low in range(0, top, 1000):  # short statements: the writer probe may be committing meanwhile
        counts.update((pk, (rows, series)) for pk, rows, series in con.execute(
            "SELECT se.ZSTUDY, COUNT(*), COUNT(DISTINCT se.Z_PK) FROM ZSERIES se JOIN ZIMAGE im "
            "ON im.ZSERIES = se.Z_PK WHERE se.ZSTUDY > ? AND se.ZSTUDY <= ? GROUP BY se.ZSTUDY", (low, low + 1000)))
    con.close()
    rows = [(f"{(uid or '').strip()}|{pu or ''}", "done", 1, cocoa_to_unix(added), "", None, "2020_01/x.zip", "",
             pk, uid, counts[pk][0], counts[pk][0], counts[pk][1], None) for pk, uid, pu, _date, added in studies]
    now = json.dumps({"store": mark[0], "image_pk": mark[1]})
    behind = json.dumps({"store": mark[0], "image_pk": mark[1] - GROWN_ROWS})
    return {"first run, empty ledger": {},
            "steady state, every study backed up": index_from_rows(rows, (), now),
            f"every study backed up, {GROWN_ROWS:,} image rows added since the last run":
                index_from_rows(rows, (), behind),
            "first scan after the upgrade (no mark: every study's rows counted once)": index_from_rows(rows)}


def child(db: Path, rounds: int) -> None:
    from horos_async import config as config_mod
    from horos_async.backup import planner
    from horos_async.horos_db import HorosReader

    cfg = config_mod.from_mapping({"horos_data": str(db.parent), "backup_dir": str(db.parent.parent / "B"),
                                   "sentinel": "", "stability_minutes": 0})

    async def go():
        out = {}
        async with HorosReader(cfg) as r:
            studies = [row async for row in r.iter_scan_rows()]
            situations = ledgers(db, studies, await r.rows_mark())
            del studies
            for label, index in situations.items():
                times = out[label] = []
                for _ in range(rounds):
                    t0, c0 = time.perf_counter(), time.process_time()
                    cands, totals = await planner.scan(r, index, cfg, time.time(), cfg.batch_size)
                    t1, c1 = time.perf_counter(), time.process_time()
                    rows = await r.read_batch([pk for c in cands for pk in c.pks])
                    t2 = time.perf_counter()
                    times.append((t1 - t0, c1 - c0, t2 - t1, totals.eligible, sum(len(i) for _, i in rows),
                                  totals.done, len(totals.grown)))
        return out

    out = asyncio.run(go())
    print(json.dumps({"situations": out, "rss_mb": peak_rss_mb()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=130_000)
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--db", type=Path, default=Path("/tmp/horos-bench-plan/Horos Data/Database.sql"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if args.child:
        return child(args.db, args.rounds)
    from horos_async import demo

    if not args.db.exists():
        args.db.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        demo.build_large_database(args.db, studies=args.studies, images_per_study=args.images)
        print(f"built {args.db} ({args.db.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f}s")
    cmd = [sys.executable, __file__, "--child", "--db", str(args.db), "--rounds", str(args.rounds)]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    for label, rounds in out["situations"].items():
        print(f"{label}:")
        for i, (wall, cpu, batch, eligible, images, done, grown) in enumerate(rounds, 1):
            print(f"  round {i}: scan of {eligible:,} eligible studies ({done:,} done, {grown} grown) {wall:.2f}s "
                  f"(CPU {cpu:.2f}s); batch read ({images} image rows) {batch * 1000:.0f} ms")
    print(f"peak RSS of the planning process: {out['rss_mb']:.1f} MB")
    writer = subprocess.Popen([sys.executable, "-m", "horos_async.demo.writer_probe", str(args.db), "25"],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    busy = subprocess.run(cmd[:-1] + ["2"], capture_output=True, text=True)
    figures = json.loads(writer.communicate()[0])
    print(f"writer committing every 50 ms during {2 * len(out['situations'])} full scans: {figures['commits']} "
          f"commits, worst wait {figures['max_ms']} ms, median {figures['median_ms']} ms (goal: worst < 250 ms)"
          + ("" if busy.returncode == 0 else f"  [scan child failed: {busy.stderr[-300:]}]"))
    # A whole engine run against the big store (its files do not exist: every study ends NO_FILES, which
    # still exercises scan, batch reads and ledger commits) while the writer commits every 50 ms.
    from horos_async import config as config_mod

    backup = args.db.parent.parent / "Backup"
    shutil.rmtree(backup, ignore_errors=True)
    (args.db.parent / "DATABASE.noindex").mkdir(exist_ok=True)  # the run refuses a Horos folder without it
    cfg = config_mod.from_mapping({"horos_data": str(args.db.parent), "backup_dir": str(backup), "sentinel": "",
                                   "stability_minutes": 0, "sleep_between_studies": 0, "min_free_gb": 0,
                                   "horos_free_gb": 0})
    cfg_path = args.db.parent.parent / "bench.toml"
    cfg_path.write_text(config_mod.render_toml(cfg), encoding="utf-8")
    writer = subprocess.Popen([sys.executable, "-m", "horos_async.demo.writer_probe", str(args.db), "25"],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    t0 = time.perf_counter()
    runp = subprocess.run([sys.executable, "-m", "horos_async", "run", "--config", str(cfg_path),
                           "--max-minutes", "0.3", "--max-studies", "100000"], capture_output=True, text=True,
                          cwd=ROOT)
    took = time.perf_counter() - t0
    figures = json.loads(writer.communicate()[0])
    print(f"writer during a {took:.0f}s engine run on the same store (exit {runp.returncode}: "
          f"{runp.stdout.strip().splitlines()[-1] if runp.stdout.strip() else runp.stderr[-200:]}): "
          f"{figures['commits']} commits, worst wait {figures['max_ms']} ms, median {figures['median_ms']} ms")


if __name__ == "__main__":
    main()
