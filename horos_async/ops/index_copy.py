"""A consistent copy of Horos's live ``Database.sql`` that never stalls Horos for long.

Why not just copy the file: committed data may be mid-write, or sit in a ``-wal`` (docs/design/durability.md
§2). Why not SQLite's backup API in steps: it starts over on every commit and, with Horos saving every
few seconds, may never finish; in one step it holds the read lock for seconds (horos-database.md §8).
So, by journal mode:

* **WAL** (older stores): the backup API in one step inside one read transaction; readers never block
  Horos there.
* **Rollback journal** (Horos since 2018): while we hold the read (SHARED) lock Horos cannot commit, so the
  lock is held only as long as ``index_lock_budget_ms`` allows:

  * ``clone``: a copy-on-write clone taken under the lock (APFS ``clonefile``, Linux FICLONE): milliseconds
    whatever the size; made next to the data on the same volume, copied to the backup volume afterwards.
  * ``cache``: the file is mapped and read once without the lock (which warms the page cache and the
    buffer), then copied again from memory under the lock, when that is measured to fit the budget.
  * ``quiet``: when it does not fit, wait for a moment Horos saved nothing for ``index_quiet_seconds``
    and copy then (the lock held at most ``QUIET_LOCK_MAX_MS``).

  The source's row counts are read in the same transaction as the copy, and the file change counter
  (header offset 24, bumped by every commit) is read before and after the copy: a change means the lock
  was not held, and the copy is thrown away.

The POSIX-lock trap: locks belong to the process, and closing *any* descriptor of the file drops SQLite's
own lock on it. So every descriptor (and ``mmap``, which holds a duplicate) of ``Database.sql`` opened
here stays open until the transaction has ended (``_RawSource`` is entered before and left after).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import sqlite3
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

from horos_async import durable, platform
from horos_async.horos_db import connect_readonly, journal_mode, row_counts
from horos_async.ops.index_store import sha256_file

QUIET_LOCK_MAX_MS = 5000.0
"""Longest lock a ``quiet`` copy may hold (Horos showed no save for ``index_quiet_seconds``)."""
CHUNK = 8 << 20
_ATTEMPTS = 3


class Busy(Exception):
    """No consistent copy can be made now (Horos keeps saving, the database is locked, a hot journal);
    try again later. The message says which."""


class Stopped(Exception):
    """A stop was requested (SIGTERM/SIGINT) before the copy was made."""


@dataclass
class CopyResult:
    """How the copy was made."""

    method: str
    """``clone``, ``cache``, ``quiet`` or ``wal-backup``."""
    lock_ms: float
    """Time the source's read lock was held (Horos could not commit meanwhile, unless WAL)."""
    journal_mode: str
    counts: Dict[str, int]
    """Source row counts, read in the same transaction as the copy."""
    raw_bytes: int
    raw_sha256: str


def consistent_copy(db: Path, dest: Path, *, budget_ms: float, quiet_seconds: float,
                    clone_dir: Optional[Path] = None, cancel: Optional[threading.Event] = None,
                    log: Callable[[str], None] = lambda text: None) -> CopyResult:
    """Copy the store at ``db`` to the new file ``dest`` (a consistent image of one committed state)."""
    con = _connect(db)
    try:
        mode = _ask(lambda: journal_mode(con), db)
        if mode == "wal":
            return _wal_copy(con, db, dest, mode)
        with _RawSource(db) as src:
            try:
                if clone_dir is not None and _clones_work(src, clone_dir):
                    return _clone_copy(con, src, dest, clone_dir, mode)
                return _cache_copy(con, src, dest, mode, budget_ms, quiet_seconds, cancel, log)
            finally:
                con.close()  # no transaction is open here; only then may _RawSource close its descriptors
    finally:
        con.close()


# -- WAL ----------------------------------------------------------------------------------------------
def _wal_copy(con: sqlite3.Connection, db: Path, dest: Path, mode: str) -> CopyResult:
    """One read transaction: the counts, then the backup API in one step, from the same snapshot."""
    out = sqlite3.connect(str(dest))
    try:
        t0 = time.monotonic()
        _begin(con, db)
        try:
            counts = row_counts(con)
            con.backup(out)
        finally:
            con.execute("COMMIT")
        lock_ms = (time.monotonic() - t0) * 1000
        out.execute("PRAGMA journal_mode=DELETE")  # our private copy: a plain rollback-journal file
    finally:
        out.close()
    with open(dest, "rb+") as f:
        durable.sync_file(f)
    size, digest = sha256_file(dest)
    return CopyResult("wal-backup", lock_ms, mode, counts, size, digest)


# -- rollback journal ---------------------------------------------------------------------------------
class _RawSource:
    """``Database.sql`` opened and mapped read-only by us, for the whole life of the snapshot's lock."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.fd = -1
        self.map: Optional[mmap.mmap] = None
        self.size = 0

    def __enter__(self) -> "_RawSource":
        self.fd = os.open(self.db, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self.remap()
        return self

    def remap(self) -> None:
        """(Re)map the whole file at its current size. Only with no transaction open: closing the old
        map closes its duplicate descriptor, which drops this process's locks on the file."""
        if self.map is not None:
            self.map.close()
        self.size = os.fstat(self.fd).st_size
        self.map = mmap.mmap(self.fd, self.size, prot=mmap.PROT_READ) if self.size else None
        platform.advise_willneed(self.fd, self.size)
        if self.map is not None and hasattr(self.map, "madvise") and hasattr(mmap, "MADV_WILLNEED"):
            self.map.madvise(mmap.MADV_WILLNEED)

    def counter(self) -> Tuple[int, int]:
        """(file change counter, size): what every commit in rollback mode changes."""
        head = os.pread(self.fd, 4, 24)
        return (struct.unpack(">I", head)[0] if len(head) == 4 else -1), os.fstat(self.fd).st_size

    def __exit__(self, *exc) -> None:
        if self.map is not None:
            self.map.close()
        os.close(self.fd)


def _clones_work(src: _RawSource, clone_dir: Path) -> bool:
    """Can ``clone_dir`` hold a clone of the database (same volume, clones supported)? Probed on a file
    of our own, so no lock is wasted finding out."""
    try:
        if os.stat(clone_dir).st_dev != os.fstat(src.fd).st_dev:
            return False
        probe = clone_dir / f".horos-backup-probe-{os.getpid()}{durable.TEMP_SUFFIX}"
        copy = clone_dir / f".horos-backup-probe-{os.getpid()}-clone{durable.TEMP_SUFFIX}"
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"horos-backup clone probe\n")
            return platform.clone_file(fd, copy)
        finally:
            os.close(fd)
            for p in (probe, copy):
                durable.discard(p)
    except OSError:
        return False


def _clone_copy(con: sqlite3.Connection, src: _RawSource, dest: Path, clone_dir: Path, mode: str) -> CopyResult:
    clone = clone_dir / f".horos-backup-index-{os.getpid()}{durable.TEMP_SUFFIX}"
    durable.discard(clone)  # a crash's leftover of ours
    try:
        t0 = time.monotonic()
        _begin(con, src.db)
        try:
            before = src.counter()
            counts = row_counts(con)
            cloned = platform.clone_file(src.fd, clone)
            after = src.counter()
        finally:
            con.execute("COMMIT")
        lock_ms = (time.monotonic() - t0) * 1000
        if not cloned:
            raise Busy(f"could not clone {src.db} into {clone_dir} although a test clone worked; will retry")
        _check_unchanged(src.db, before, after)
        with open(clone, "rb") as f:
            size, digest = _write(dest, iter(lambda: f.read(CHUNK), b""))
        if _header_counter(dest) != before[0]:
            raise Busy(f"the clone of {src.db} is not the state read under the lock; will retry")
    finally:
        durable.discard(clone)
    return CopyResult("clone", lock_ms, mode, counts, size, digest)


def _cache_copy(con: sqlite3.Connection, src: _RawSource, dest: Path, mode: str, budget_ms: float,
                quiet_seconds: float, cancel: Optional[threading.Event], log: Callable[[str], None]) -> CopyResult:
    if src.size > _memory_cap():
        return _quiet_copy(con, src, dest, mode, quiet_seconds, None, QUIET_LOCK_MAX_MS, cancel, log)
    buf = mmap.mmap(-1, max(1, src.size))
    try:
        last, estimate = "", 0.0
        for _ in range(_ATTEMPTS):
            if cancel is not None and cancel.is_set():
                raise Stopped()
            if src.counter()[1] != src.size:  # Horos grew (or shrank) the file meanwhile
                src.remap()
            if len(buf) < src.size:
                buf.close()
                buf = mmap.mmap(-1, src.size)
            _fill(buf, src)  # unlocked: brings the file into the page cache and faults in both mappings
            t0 = time.monotonic()
            _fill(buf, src)  # the same copy the lock will cover, timed
            estimate = (time.monotonic() - t0) * 1000 * 1.2 + 2
            if estimate > budget_ms:
                last = f"a copy from memory needs about {estimate:.0f} ms, over the {budget_ms:.0f} ms budget"
                break
            done = _locked(con, src, buf, budget_ms - estimate)
            if isinstance(done, str):
                last = done
                continue
            lock_ms, counts = done
            size, digest = _write(dest, _chunks_of(buf, src.size))
            return CopyResult("cache", lock_ms, mode, counts, size, digest)
        log(f"index snapshot: {last}; waiting for a moment Horos is not saving")
        return _quiet_copy(con, src, dest, mode, quiet_seconds, buf, estimate, cancel, log, last)
    finally:
        buf.close()


def _locked(con: sqlite3.Connection, src: _RawSource, buf: mmap.mmap, counts_budget_ms: float):
    """One locked copy into ``buf``: (lock_ms, counts), or the reason (a str) to try again. The counts
    must leave ``counts_budget_ms`` for the copy, else the lock is released at once."""
    t0 = time.monotonic()
    _begin(con, src.db)
    try:
        before = src.counter()
        if before[1] != src.size:
            return f"{src.db} changed size since it was read ({src.size} -> {before[1]} bytes)"
        counts = row_counts(con)
        spent = (time.monotonic() - t0) * 1000
        if spent > counts_budget_ms:
            return f"counting the rows took {spent:.0f} ms under the lock, leaving no room for the copy"
        _fill(buf, src)  # the copy itself: memory to memory, nothing to wait for
        after = src.counter()
    finally:
        con.execute("COMMIT")
        lock_ms = (time.monotonic() - t0) * 1000
    _check_unchanged(src.db, before, after)
    if bytes(buf[24:28]) != struct.pack(">I", before[0]):
        return "the copied header is not the state read under the lock"
    return lock_ms, counts


def _quiet_copy(con: sqlite3.Connection, src: _RawSource, dest: Path, mode: str, quiet_seconds: float,
                buf: Optional[mmap.mmap], estimate: float, cancel: Optional[threading.Event],
                log: Callable[[str], None], why: str = "") -> CopyResult:
    """Wait for ``quiet_seconds`` without a commit, then copy under one lock (into ``buf``, or straight
    into ``dest`` when the database is too big to hold in memory)."""
    why = why or f"{src.db} ({src.size / 1e6:.0f} MB) is too big to copy from memory"
    if quiet_seconds <= 0:
        raise Busy(f"{why}, and index_quiet_seconds = 0 forbids waiting for a quiet moment")
    if estimate > QUIET_LOCK_MAX_MS:
        raise Busy(f"{why}; even at a quiet moment the copy would keep Horos from saving for about "
                   f"{estimate / 1000:.1f} s (limit {QUIET_LOCK_MAX_MS / 1000:.0f} s)")
    deadline = time.monotonic() + 2 * quiet_seconds + 5
    journal = Path(str(src.db) + "-journal")
    state, since = None, time.monotonic()
    while True:
        if cancel is not None and cancel.is_set():
            raise Stopped()
        now = time.monotonic()
        current = (src.counter(), _mtime(src.db), journal.exists())
        if current != state:
            state, since = current, now
        elif now - since >= quiet_seconds:
            break
        if now > deadline:
            raise Busy(f"{why}, and Horos never stopped saving for {quiet_seconds:.0f} s in "
                       f"{2 * quiet_seconds + 5:.0f} s of waiting")
        time.sleep(min(0.25, quiet_seconds / 4))
    if src.counter()[1] != src.size:
        src.remap()
    direct = buf is None or len(buf) < src.size
    t0 = time.monotonic()
    _begin(con, src.db)
    try:
        before = src.counter()
        counts = row_counts(con)
        if direct:  # straight to the backup volume (not synced under the lock: that can take seconds)
            written = _write(dest, _pread_chunks(src.fd, before[1]), sync=False)
        else:
            _fill(buf, src)
        after = src.counter()
    finally:
        con.execute("COMMIT")
        lock_ms = (time.monotonic() - t0) * 1000
    _check_unchanged(src.db, before, after)
    if direct:
        with open(dest, "rb+") as f:
            durable.sync_file(f, path=dest)
        size, digest = written
    else:
        size, digest = _write(dest, _chunks_of(buf, before[1]))
    if _header_counter(dest) != before[0]:
        raise Busy(f"the copy of {src.db} is not the state read under the lock; will retry")
    return CopyResult("quiet", lock_ms, mode, counts, size, digest)


# -- helpers ------------------------------------------------------------------------------------------
def _connect(db: Path) -> sqlite3.Connection:
    try:
        return connect_readonly(db, timeout=1.0)
    except sqlite3.Error as exc:
        raise Busy(f"cannot open {db} read-only ({exc}); will retry") from None


def _ask(fn, db: Path):
    try:
        return fn()
    except sqlite3.Error as exc:
        raise Busy(_busy_text(db, exc)) from None


def _begin(con: sqlite3.Connection, db: Path) -> None:
    """``BEGIN`` and take the read lock now (a deferred BEGIN takes it at the first read)."""
    for attempt in range(5):
        try:
            con.execute("BEGIN")
            con.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return
        except sqlite3.OperationalError as exc:
            if con.in_transaction:
                con.execute("ROLLBACK")
            if "locked" not in str(exc).lower() or attempt == 4:
                raise Busy(_busy_text(db, exc)) from None
            time.sleep(0.5)


def _busy_text(db: Path, exc: BaseException) -> str:
    text = str(exc).lower()
    if "readonly" in text or "read-only" in text:
        return (f"{db} has a hot journal (Horos stopped mid-save); open Horos so it recovers the database. "
                f"Will retry")
    if "locked" in text or "busy" in text:
        return f"{db} stayed locked (Horos is saving); will retry"
    return f"cannot read {db} ({exc}); will retry"


def _check_unchanged(db: Path, before: Tuple[int, int], after: Tuple[int, int]) -> None:
    if before != after:
        raise Busy(f"{db} changed while it was copied under its read lock (change counter {before[0]} -> "
                   f"{after[0]}): the lock was not held; the copy was thrown away. Will retry")


def _fill(buf: mmap.mmap, src: _RawSource) -> None:
    """Copy the mapped database into ``buf`` (one memcpy through memoryviews, no temporary bytes)."""
    if src.map is None:
        return
    into, out = memoryview(buf), memoryview(src.map)
    try:
        into[:src.size] = out
    finally:
        into.release()
        out.release()


def _memory_cap() -> int:
    """Biggest database copied through memory: a quarter of the RAM (1 GiB when unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 1 << 30


def _mtime(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


def _chunks_of(buf: mmap.mmap, size: int):
    view = memoryview(buf)
    try:
        for off in range(0, size, CHUNK):
            yield view[off:min(size, off + CHUNK)]
    finally:
        view.release()


def _pread_chunks(fd: int, size: int):
    off = 0
    while off < size:
        block = os.pread(fd, min(CHUNK, size - off), off)
        if not block:
            raise OSError(f"the database ended at {off} of {size} bytes while copied under its lock")
        off += len(block)
        yield block


def _write(dest: Path, chunks, sync: bool = True) -> Tuple[int, str]:
    """Write ``chunks`` to the new file ``dest`` (synced unless ``sync`` is False); (bytes, SHA-256)."""
    h, n = hashlib.sha256(), 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), durable.FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        for block in chunks:
            f.write(block)
            h.update(block)
            n += len(block)
        if sync:
            durable.sync_file(f, path=dest)
    return n, h.hexdigest()


def _header_counter(path: Path) -> int:
    with open(path, "rb") as f:
        f.seek(24)
        head = f.read(4)
    return struct.unpack(">I", head)[0] if len(head) == 4 else -1
