"""A stand-in for Horos committing to its store, to prove the backup never stalls it.

``python -m horos_async.demo.writer_probe DB SECONDS [INTERVAL [SYNC]]`` commits a tiny change every
INTERVAL seconds (default 0.05) in rollback-journal mode, as current Horos does, and prints one JSON line:
commits made and the worst, 99th-percentile and median time a commit waited. ``SYNC`` is the writer's
``PRAGMA synchronous`` (default ``full``, as Horos); ``off`` leaves the writer's own disk syncs out of
its waits, so on a busy test machine the figures show only the time it waited for our locks. SIGTERM
ends it early, figures printed. Used by tests and scripts/bench_*.py.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import statistics
import sys
import time


_stopped = []


def probe(db: str, seconds: float, interval: float = 0.05, sync: str = "full") -> dict:
    """Commit every ``interval`` s for ``seconds`` (or until SIGTERM); return latency figures in ms."""
    con = sqlite3.connect(db, isolation_level=None, timeout=30)
    con.execute(f"PRAGMA synchronous={'OFF' if sync == 'off' else 'FULL'}")
    waits = []
    end = time.monotonic() + seconds
    while time.monotonic() < end and not _stopped:
        t0 = time.monotonic()
        con.execute("BEGIN IMMEDIATE")
        con.execute("UPDATE ZSTUDY SET ZDATEOPENED = ? WHERE Z_PK = (SELECT MIN(Z_PK) FROM ZSTUDY)",
                    (time.time() - 978307200,))
        con.execute("COMMIT")
        waits.append((time.monotonic() - t0) * 1000.0)
        time.sleep(interval)
    con.close()
    ordered = sorted(waits)
    return {"commits": len(waits), "max_ms": round(max(waits), 1),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
            "median_ms": round(statistics.median(waits), 2)}


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: _stopped.append(True))
    args = sys.argv[1:]
    print(json.dumps(probe(args[0], float(args[1]), float(args[2]) if len(args) > 2 else 0.05,
                           args[3] if len(args) > 3 else "full")), flush=True)
