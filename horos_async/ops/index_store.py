"""``backup_dir/HorosIndex/``: the verified snapshots of Horos's index, their manifest, and their retention.

One folder per snapshot, named by its local time (``2026-05-03_021500``), holding the database copy
(``Database.sql.snapshot.gz``: never a bare ``*.sql`` name, since Horos destroys a foreign ``.sql`` it
is asked to open), ``side-files.zip`` (``DB_VERSION``, ``Database.momd/``, ``REPORTS/``, ``ROIs/``, the
preferences...) and ``manifest.json``, written last, with the SHA-256 of every file. A folder appears
whole or not at all (built under a hidden ``.partial`` name, then renamed: docs/design/durability.md §1).

This module owns that format (it writes and reads :class:`Manifest`), lists and checks snapshots, and
applies retention: the only deletion horos-backup ever does, of its own snapshots, and only after a newer
verified one exists (docs/design/horos-database.md §11).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import secrets
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from horos_async import durable

FORMAT = 1
MANIFEST = "manifest.json"
DB_FILE = "Database.sql.snapshot.gz"
SIDE_FILE = "side-files.zip"
NAME = re.compile(r"^\d{4}-\d{2}-\d{2}_\d{6}(_\d+)?$")
TEMP_PREFIX = ".snapshot-"
SHRINK_RATIO = 0.9
"""A snapshot holding fewer than 90 % of the previous one's studies marks a loss: the one before is kept."""


@dataclass
class Manifest:
    """Everything known about one snapshot (``manifest.json``); times are Unix seconds."""

    name: str
    created: float
    source: str
    """The ``Database.sql`` copied."""
    journal_mode: str
    method: str
    """``clone`` (copy-on-write under the lock), ``cache`` (read from memory under the lock), ``quiet``
    (the same at a moment Horos was not saving), ``wal-backup`` (SQLite's backup API; WAL readers never
    block Horos)."""
    lock_ms: float
    """How long the snapshot held the database's read lock (Horos could not save meanwhile, unless WAL)."""
    duration_s: float
    counts: Dict[str, int]
    """Rows of the study, series and image tables, read in the same transaction as the copy."""
    integrity: str
    """``PRAGMA integrity_check`` of the copy: ``ok``."""
    db_bytes: int
    """Size of the uncompressed database."""
    db_sha256: str
    """SHA-256 of the uncompressed database."""
    files: Dict[str, Dict[str, object]] = field(default_factory=dict)
    """File name -> {"bytes": n, "sha256": hex} for every file of the snapshot but the manifest."""
    side_present: List[str] = field(default_factory=list)
    side_absent: List[str] = field(default_factory=list)
    host: str = ""
    tool: str = "horos-backup"
    format: int = FORMAT

    def to_bytes(self) -> bytes:
        """The manifest as written to disk."""
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> "Manifest":
        """Parse a manifest; ValueError when it is not one of ours."""
        doc = json.loads(data.decode("utf-8"))
        if not isinstance(doc, dict) or doc.get("tool") != "horos-backup" or int(doc.get("format", 0)) > FORMAT:
            raise ValueError("not a horos-backup index manifest (or from a newer version)")
        known = {k: doc[k] for k in cls.__dataclass_fields__ if k in doc}
        return cls(**known)


@dataclass
class Snapshot:
    """One folder in ``HorosIndex/``."""

    path: Path
    manifest: Optional[Manifest]
    problem: str = ""
    """Why it does not count (no or unreadable manifest, a file missing or changed); empty when verified."""

    @property
    def name(self) -> str:
        """The folder name (its local time)."""
        return self.path.name

    @property
    def verified(self) -> bool:
        """It has a manifest of ours and (as far as checked) every file matches it."""
        return self.manifest is not None and not self.problem

    @property
    def created(self) -> float:
        """Unix time it was taken (0 when unknown)."""
        return self.manifest.created if self.manifest else 0.0

    @property
    def size(self) -> int:
        """Bytes on disk, manifest included."""
        return sum(int(f.get("bytes", 0)) for f in self.manifest.files.values()) if self.manifest else 0


def folder_name(when: dt.datetime, root: Path) -> str:
    """A new snapshot's folder name: its local time, ``_2``... when that second is taken."""
    base = when.strftime("%Y-%m-%d_%H%M%S")
    name, n = base, 1
    while (root / name).exists():
        n += 1
        name = f"{base}_{n}"
    return name


def new_temp_dir(root: Path) -> Tuple[Path, List[Path]]:
    """A fresh hidden folder in ``root`` to build a snapshot in, and the folders created for it."""
    created = durable.ensure_dir(root)
    tmp = root / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}{durable.TEMP_SUFFIX}"
    os.mkdir(tmp, durable.DIR_MODE)
    return tmp, created


def remove_stale_temps(root: Path) -> List[Path]:
    """Remove half-built snapshots a crash left (our own ``.snapshot-*.partial`` folders only)."""
    removed = []
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return removed
    for e in entries:
        if e.name.startswith(TEMP_PREFIX) and e.name.endswith(durable.TEMP_SUFFIX) and e.is_dir(follow_symlinks=False):
            shutil.rmtree(e.path, ignore_errors=True)
            removed.append(Path(e.path))
    if removed:
        durable.sync_dir(root)
    return removed


def sha256_file(path: Path, chunk: int = 1 << 20) -> Tuple[int, str]:
    """(bytes, SHA-256 hex) of a file."""
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                return n, h.hexdigest()
            h.update(block)
            n += len(block)


def list_snapshots(root: Path, *, check: bool = False) -> List[Snapshot]:
    """Every snapshot folder in ``root``, oldest first; ``check`` re-hashes every file against its manifest."""
    out = []
    try:
        entries = sorted((e for e in os.scandir(root) if e.is_dir(follow_symlinks=False) and NAME.match(e.name)),
                         key=lambda e: e.name)
    except FileNotFoundError:
        return out
    for e in entries:
        out.append(read_snapshot(Path(e.path), check=check))
    out.sort(key=lambda s: (s.created, s.name))
    return out


def read_snapshot(path: Path, *, check: bool = False) -> Snapshot:
    """One snapshot folder: its manifest, and whether its files are all there (and intact, with ``check``)."""
    try:
        manifest = Manifest.from_bytes((path / MANIFEST).read_bytes())
    except FileNotFoundError:
        return Snapshot(path, None, "no manifest.json (not a complete snapshot)")
    except (OSError, ValueError, TypeError) as exc:
        return Snapshot(path, None, f"manifest.json unreadable ({exc})")
    if manifest.integrity != "ok":
        return Snapshot(path, manifest, f"integrity was {manifest.integrity!r} when taken")
    for name, meta in sorted(manifest.files.items()):
        target = path / name
        try:
            size = target.stat().st_size
        except OSError:
            return Snapshot(path, manifest, f"{name} is missing")
        if size != int(meta.get("bytes", -1)):
            return Snapshot(path, manifest, f"{name} is {size} bytes, the manifest says {meta.get('bytes')}")
        if check and sha256_file(target)[1] != meta.get("sha256"):
            return Snapshot(path, manifest, f"{name} does not match its SHA-256 (damaged since it was taken)")
    return Snapshot(path, manifest)


def find(root: Path, which: str) -> Snapshot:
    """The snapshot named ``which`` (a folder name in ``root``, a path to one, or ``latest``), checked
    in depth; raises LookupError naming what exists."""
    if which == "latest":
        good = [s for s in list_snapshots(root) if s.verified]
        if not good:
            raise LookupError(f"no verified snapshot in {root}; take one with 'horos-backup index snapshot'")
        return read_snapshot(good[-1].path, check=True)
    path = Path(which).expanduser()
    if not path.is_dir():
        path = root / which
    if not path.is_dir():
        names = ", ".join(s.name for s in list_snapshots(root)[-5:]) or "none"
        raise LookupError(f"no snapshot {which!r} in {root} (latest: {names}); see 'horos-backup index list'")
    return read_snapshot(path, check=True)


# -- retention -----------------------------------------------------------------------------------------
def plan_retention(snapshots: Sequence[Tuple[str, float, int]], *, keep_daily: int, keep_weekly: int,
                   keep_monthly: int, zone: Optional[dt.tzinfo] = None,
                   events: Iterable[Tuple[float, str]] = ()) -> Dict[str, str]:
    """Which verified snapshots to keep, and why: ``{name: reason}``; every other one may go.

    ``snapshots`` are (name, created Unix time, studies) of the verified snapshots. Kept: the newest of
    each of the last ``keep_daily`` days that have one, of the last ``keep_weekly`` ISO weeks, of the last
    ``keep_monthly`` months (in ``zone``, default this machine's); always the newest; the last one before
    each of ``events`` ((Unix time, what happened): a ``HOROS_DB_SHRANK``, a Horos rebuild); the last one
    before a snapshot with fewer than ``SHRINK_RATIO`` of its studies. Pure: the tests pass a made-up
    calendar.
    """
    items = sorted(snapshots, key=lambda s: (s[1], s[0]))
    keep: Dict[str, str] = {}
    if not items:
        return keep
    keep[items[-1][0]] = "newest"

    def local(ts: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(ts, zone) if zone else dt.datetime.fromtimestamp(ts)

    for count, label, period in ((keep_daily, "daily", lambda d: d.date()),
                                 (keep_weekly, "weekly", lambda d: d.isocalendar()[:2]),
                                 (keep_monthly, "monthly", lambda d: (d.year, d.month))):
        seen: List[object] = []
        for name, created, _ in reversed(items):  # newest first: the first seen of a period is its newest
            p = period(local(created))
            if p in seen:
                continue
            if len(seen) >= count:
                break
            seen.append(p)
            keep.setdefault(name, label)
    for when, what in events:
        before = [s for s in items if s[1] < when]
        if before:
            keep[before[-1][0]] = f"last before {what} ({local(when).strftime('%Y-%m-%d %H:%M')})"
    for prev, nxt in zip(items, items[1:]):
        if prev[2] and nxt[2] < prev[2] * SHRINK_RATIO:
            keep[prev[0]] = f"last before the studies dropped from {prev[2]} to {nxt[2]}"
    return keep


def prune(root: Path, *, keep_daily: int, keep_weekly: int, keep_monthly: int,
          zone: Optional[dt.tzinfo] = None, events: Iterable[Tuple[float, str]] = ()) -> List[str]:
    """Delete the verified snapshots retention no longer keeps; returns their names.

    Never touches a folder that is not a verified snapshot of ours (a damaged one stays for a person to
    look at), and does nothing unless at least two verified snapshots exist.
    """
    snaps = [s for s in list_snapshots(root) if s.verified]
    if len(snaps) < 2:
        return []
    keep = plan_retention([(s.name, s.created, int(s.manifest.counts.get("studies", 0))) for s in snaps],
                          keep_daily=keep_daily, keep_weekly=keep_weekly, keep_monthly=keep_monthly,
                          zone=zone, events=events)
    removed = []
    for s in snaps:
        if s.name in keep:
            continue
        # Out of sight first (a rename is atomic), then the files: a crash leaves only a temp folder.
        doomed = root / f"{TEMP_PREFIX}{s.name}-deleting{durable.TEMP_SUFFIX}"
        os.rename(s.path, doomed)
        durable.sync_dir(root)
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(s.name)
    if removed:
        durable.sync_dir(root)
    return removed


def reasons(root: Path, *, keep_daily: int, keep_weekly: int, keep_monthly: int,
            zone: Optional[dt.tzinfo] = None, events: Iterable[Tuple[float, str]] = ()) -> Dict[str, str]:
    """Why each verified snapshot in ``root`` is kept (for ``index list``)."""
    snaps = [s for s in list_snapshots(root) if s.verified]
    return plan_retention([(s.name, s.created, int(s.manifest.counts.get("studies", 0))) for s in snaps],
                          keep_daily=keep_daily, keep_weekly=keep_weekly, keep_monthly=keep_monthly,
                          zone=zone, events=events)
