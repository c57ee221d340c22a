"""``horos-backup index snapshot``: one verified snapshot of Horos's own index.

Horos loses its index by itself: it deletes ``Database.sql`` when it fails to open it, rebuilds it from
``DATABASE.noindex`` alone (losing comments, report status, albums, ``dateAdded`` and every linked study),
and its auto-cleaning deletes studies (docs/design/horos-database.md §11). A snapshot is what brings the
index back. Steps, in a hidden folder renamed into ``HorosIndex/`` only at the end (index_store):

1. a consistent copy of ``Database.sql`` (index_copy: clone, cache, quiet moment or WAL backup), with
   the source's row counts read in the same transaction;
2. verified before it counts: the copy opened read-only, ``PRAGMA integrity_check`` = ok, its row counts
   equal the source's; a copy that fails is refused (:class:`Refused`) and nothing is kept;
3. compressed (gzip: a Core Data store shrinks about 5x; measured in scripts/bench_index.py), and read
   back to the same SHA-256;
4. the side files a restore needs, each optional and recorded when absent, in ``side-files.zip``;
5. ``manifest.json`` with the SHA-256 of every file, then the folder is synced and renamed into place.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import shutil
import socket
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from horos_async import durable, platform
from horos_async.backup import archive, zipcheck
from horos_async.config import Config
from horos_async.errors import ConfigError, SnapshotError
from horos_async.horos_db import connect_readonly, integrity, row_counts
from horos_async.ops import index_copy, index_store
from horos_async.ops.index_copy import Busy, Stopped  # noqa: F401 (callers catch them from here)
from horos_async.timezones import load_zone, system_zone

try:  # ISA-L deflate: the same gzip stream 4-5x faster (an optional dependency, see pyproject.toml)
    from isal import isal_zlib as _zlib
except ImportError:  # pragma: no cover - the wheel is missing on this machine
    import zlib as _zlib  # type: ignore[no-redef]

log = logging.getLogger(__name__)
RAW_NAME = "Database.sql.snapshot"
"""The uncompressed copy while it is verified (never a bare ``.sql`` name: Horos destroys foreign ones)."""
PREFERENCES = "Preferences/" + platform.HOROS_DOMAIN + ".plist"
SIDE_ITEMS = ("DB_VERSION", "DBFOLDER_LOCATION", "Database.momd", "REPORTS", "ROIs", PREFERENCES)
"""What a restore needs besides the database, as named inside ``side-files.zip``."""


class Refused(SnapshotError):
    """The copy failed its verification: not kept. Horos's own database may be damaged."""


@dataclass
class Taken:
    """A snapshot just published."""

    snapshot: index_store.Snapshot
    pruned: List[str]
    """Older snapshots retention removed afterwards."""


def zone_of(cfg: Config) -> Optional[dt.tzinfo]:
    """The zone snapshot names and retention days are counted in (``timezone``, else this machine's)."""
    return load_zone(cfg.timezone) if cfg.timezone else system_zone()


def clone_dir(cfg: Config) -> Path:
    """Where a clone is made: beside ``Horos Data`` on its volume, never inside it."""
    return cfg.horos_data.parent


def take(cfg: Config, *, home: Optional[Path] = None, clock: Callable[[], float] = time.time,
         cancel: Optional[threading.Event] = None, log_line: Callable[[str], None] = log.info) -> index_store.Snapshot:
    """Take, verify and publish one snapshot; raises ``Busy`` (no consistent copy now, retry later),
    :class:`Refused` (the copy failed verification), ``Stopped``, or OSError (backup volume trouble)."""
    if not cfg.database.is_file():
        raise SnapshotError(f"Horos database not found at {cfg.database}; check 'horos_data' and that the "
                            f"Horos volume is mounted")
    root = cfg.index_dir
    started = time.monotonic()
    durable.ensure_dir(root)
    index_store.remove_stale_temps(root)
    _remove_stale_clones(clone_dir(cfg))
    tmp, created = index_store.new_temp_dir(root)
    try:
        raw = tmp / RAW_NAME
        copy = index_copy.consistent_copy(cfg.database, raw, budget_ms=cfg.index_lock_budget_ms,
                                          quiet_seconds=cfg.index_quiet_seconds, clone_dir=clone_dir(cfg),
                                          cancel=cancel, log=log_line)
        verdict = verify_copy(raw, copy.counts)
        if verdict != "ok":
            raise Refused(f"the copy of {cfg.database} failed its check ({verdict}); nothing was kept. Horos's "
                          f"database may be damaged: keep the older snapshots ('horos-backup index list') and "
                          f"see README 'When Horos loses its database'")
        if cancel is not None and cancel.is_set():
            raise Stopped()
        files = {index_store.DB_FILE: _compress(raw, tmp / index_store.DB_FILE, copy.raw_sha256)}
        raw.unlink()
        present, absent = write_side_files(cfg, tmp / index_store.SIDE_FILE, home=home)
        size, digest = index_store.sha256_file(tmp / index_store.SIDE_FILE)
        files[index_store.SIDE_FILE] = {"bytes": size, "sha256": digest}
        now = clock()
        name = index_store.folder_name(dt.datetime.fromtimestamp(now, zone_of(cfg)), root)
        manifest = index_store.Manifest(
            name=name, created=now, source=str(cfg.database), journal_mode=copy.journal_mode, method=copy.method,
            lock_ms=round(copy.lock_ms, 1), duration_s=round(time.monotonic() - started, 2), counts=copy.counts,
            integrity=verdict, db_bytes=copy.raw_bytes, db_sha256=copy.raw_sha256, files=files,
            side_present=present, side_absent=absent, host=socket.gethostname())
        durable.write_atomic(tmp / index_store.MANIFEST, manifest.to_bytes())
        durable.sync_dir(tmp)
        durable.publish_dir(tmp, root / name, created_dirs=created)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log_line(f"index snapshot {name}: {copy.counts['studies']} studies, {copy.counts['images']} images, "
             f"{copy.raw_bytes / 1e6:.1f} MB ({files[index_store.DB_FILE]['bytes'] / 1e6:.1f} MB stored), "
             f"method {copy.method}, Horos's database locked {copy.lock_ms:.1f} ms")
    return index_store.read_snapshot(root / name)


def take_and_prune(cfg: Config, events: List[Tuple[float, str]] = (), **kw) -> Taken:
    """:func:`take`, then retention (only now that a newer verified snapshot exists)."""
    snap = take(cfg, **kw)
    pruned = index_store.prune(cfg.index_dir, keep_daily=cfg.index_keep_daily, keep_weekly=cfg.index_keep_weekly,
                               keep_monthly=cfg.index_keep_monthly, zone=zone_of(cfg), events=events)
    return Taken(snap, pruned)


def verify_copy(path: Path, counts: dict) -> str:
    """``ok`` when the copy at ``path`` opens read-only, passes ``integrity_check`` and holds ``counts``
    rows; otherwise what is wrong."""
    import sqlite3

    try:
        con = connect_readonly(path)
        try:
            verdict = integrity(con)
            if verdict != "ok":
                return f"integrity_check: {verdict}"
            found = row_counts(con)
        finally:
            con.close()
    except sqlite3.Error as exc:
        return f"cannot be read as a database: {exc}"
    if found != counts:
        return f"row counts {found} differ from the source's {counts}"
    return "ok"


def _compress(raw: Path, out: Path, sha256: str) -> dict:
    """gzip ``raw`` into ``out`` (synced), then read it back: it must give ``sha256`` again."""
    comp = _zlib.compressobj(1, _zlib.DEFLATED, 31)
    h, n = hashlib.sha256(), 0
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, durable.FILE_MODE)
    with open(raw, "rb") as src, os.fdopen(fd, "wb") as f:
        for block in iter(lambda: src.read(index_copy.CHUNK), b""):
            data = comp.compress(block)
            f.write(data)
            h.update(data)
            n += len(data)
        data = comp.flush()
        f.write(data)
        h.update(data)
        n += len(data)
        durable.sync_file(f, path=out)
    if gunzip_sha256(out) != sha256:
        raise Refused(f"{out} does not decompress to the database it was made from; nothing was kept")
    return {"bytes": n, "sha256": h.hexdigest()}


def gunzip_sha256(path: Path, into: Optional[Path] = None) -> str:
    """SHA-256 of the decompressed content of ``path`` (also written to ``into`` when given, synced)."""
    dec = _zlib.decompressobj(31)
    h = hashlib.sha256()
    out = open(into, "xb") if into is not None else None
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(index_copy.CHUNK), b""):
                data = dec.decompress(block)
                h.update(data)
                if out is not None:
                    out.write(data)
            data = dec.flush()
            h.update(data)
            if out is not None:
                out.write(data)
                durable.sync_file(out, path=into)
        if not dec.eof or dec.unused_data:
            return "not a complete gzip stream"
    finally:
        if out is not None:
            out.close()
    return h.hexdigest()


def side_sources(cfg: Config, home: Optional[Path] = None) -> List[Tuple[str, Path]]:
    """(name in side-files.zip, where it lives) of every side file (docs/design/horos-database.md §7)."""
    try:
        data = cfg.data_root
    except ConfigError:
        data = cfg.horos_data
    return [("DB_VERSION", cfg.horos_data / "DB_VERSION"), ("DBFOLDER_LOCATION", cfg.horos_data / "DBFOLDER_LOCATION"),
            ("Database.momd", cfg.horos_data / "Database.momd"), ("REPORTS", data / "REPORTS"),
            ("ROIs", data / "ROIs"), (PREFERENCES, platform.horos_preferences_path(home))]


def write_side_files(cfg: Config, out: Path, *, home: Optional[Path] = None) -> Tuple[List[str], List[str]]:
    """Zip the side files into ``out`` (synced, then verified); (present, absent) names."""
    present, absent = [], []
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, durable.FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
            for name, path in side_sources(cfg, home):
                if path.is_file():
                    zf.write(path, name)
                    present.append(name)
                elif path.is_dir():
                    zf.writestr(zipfile.ZipInfo(name + "/"), b"")
                    for member, file in _tree(path, name):
                        zf.write(file, member)
                    present.append(name)
                else:
                    absent.append(name)
        durable.sync_file(f, path=out)
    try:
        zipcheck.verify_zip(out, None, deep=True)
    except archive.ZipInvalid as exc:
        raise Refused(f"{out} failed its check right after it was written ({exc}); nothing was kept") from None
    return present, absent


def _tree(root: Path, prefix: str):
    """(member name, file) of every regular file under ``root`` (symbolic links inside are not followed)."""
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(folder, root)
        for n in sorted(names):
            file = Path(folder) / n
            if file.is_file() and not file.is_symlink() and archive.safe_member_name(n):
                yield (prefix if rel == "." else f"{prefix}/{rel}") + "/" + n, file


def _remove_stale_clones(folder: Path) -> None:
    """Clones a killed snapshot left beside Horos Data (ours only; the run lock makes any one stale)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for e in entries:
        if e.name.startswith((".horos-backup-index-", ".horos-backup-probe-")) and durable.is_temp_name(e.name):
            durable.discard(Path(e.path))
