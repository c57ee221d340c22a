"""Recording one ``run`` attempt in the health file (``horos_async.health`` owns its format).

The file is on the Mac's own disk, not the backup volume, so a run refused before it could write
anything still leaves its trace (docs/design/durability.md §7). Written through ``durable`` (temp file,
full sync, rename, directory sync) under an exclusive ``flock``: a long run ending while a scheduled
start records its exit 4 must not lose either record.
"""

from __future__ import annotations

import fcntl
import os

from horos_async import durable, health
from horos_async.config import Config
from horos_async.health import Attempt, HealthRecord

LOCK_FILE = "health.lock"


def record(cfg: Config, attempt: Attempt) -> HealthRecord:
    """Add ``attempt`` to the health file; returns the new record. Raises OSError when the state folder
    cannot be written (the caller warns; the run's own exit code stands)."""
    folder = cfg.health_dir
    durable.ensure_dir(folder, 0o700)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            old = health.read(cfg)
        except ValueError:  # a damaged file is replaced: it holds history, never "done"
            old = HealthRecord()
        new = health.add(old, attempt)
        durable.write_atomic(cfg.health_path, health.dumps(new), mode=0o600, overwrite=True)
        return new
    finally:
        os.close(fd)
