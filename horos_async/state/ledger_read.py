"""The ledger read without writing, for the readers: ``status`` and ``horos-tui``, ``catalog``, ``doctor``, ``plan``.

One synchronous, read-only connection (``mode=ro`` plus ``query_only``, opened ``immutable`` on a
read-only volume), one method per question the readers ask, each answer a named record from
``ledger_records``. The engine's writer (``ledger``) owns the schema; this module never imports it, so
the TUI can read the ledger without importing anything that writes.

Errors stay SQLite's (``sqlite3.OperationalError`` when the file cannot be opened or read,
``sqlite3.DatabaseError`` when it is damaged): each command words its own message and next step.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from horos_async.errors import HorosBackupError, LedgerError, VolumeError
from horos_async.state.ledger_records import (Entry, IssueRecord, LedgerIndex, RunRecord, RunsSince,
                                              StateTotals, StudyRecord)

INDEX_COLUMNS = ("key", "state", "version", "date_added", "fingerprint", "next_attempt", "zip_path", "code",
                 "horos_pk", "uid", "files", "image_rows", "series", "grown")
INDEX_SQL = f"SELECT {', '.join(INDEX_COLUMNS)} FROM studies"
MISSING_SQL = "SELECT key, path FROM missing_files ORDER BY rowid"
ROWS_MARK = "horos_rows_mark"
"""``meta`` key of the Horos image-row high-water mark (JSON ``{"store": uuid, "image_pk": n}``; written by
``Ledger.note_growth``)."""
MARK_SQL = f"SELECT value FROM meta WHERE key='{ROWS_MARK}'"
_CATALOG_SQL = """
SELECT s.patient_name, s.birth_date, s.study_date, s.modalities, s.uid, s.zip_path, s.zip_size, s.files,
       s.exported_at, s.version, s.state, z.status, {last_seen}
FROM studies s LEFT JOIN zips z ON z.zip_path = s.zip_path
{where}
ORDER BY s.study_date, s.uid
"""
_READY_TABLES = {"studies", "issues", "runs"}


def index_from_rows(rows: Iterable[Sequence], missing: Iterable[Sequence] = (),
                    mark: Optional[str] = None) -> LedgerIndex:
    """A LedgerIndex from rows of ``INDEX_SQL``, of ``MISSING_SQL`` and the ``MARK_SQL`` value (the
    writer's and the reader's, one decoding)."""
    index = LedgerIndex()
    for r in rows:
        index.add(r[0], r[9], Entry(r[1], r[2] or 0, r[3], r[4] or "", r[5], r[6] or "", r[7] or "", r[8],
                                    r[10], r[11], r[12], bool(r[13])))
    for key, path in missing:
        index.missing.setdefault(key, []).append(path)
    index.rows_mark = _mark(mark)
    return index


def _mark(text: Optional[str]) -> Optional[Tuple[str, int]]:
    """The image-row mark from its ``meta`` value; None when absent or unreadable (counted afresh)."""
    try:
        value = json.loads(text) if text else None
        return (str(value["store"]), int(value["image_pk"])) if value else None
    except (ValueError, TypeError, KeyError):
        return None


def open_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection for readers (``status``, ``horos-tui``, ``plan``, ``catalog``), also on a
    read-only volume.

    The ledger is in WAL mode: SQLite wants to create ``-shm`` even to read, which a read-only volume
    refuses ("unable to open database file"). Nothing can write a read-only volume, so when no WAL
    content is waiting the file is opened ``immutable`` (no locks, no ``-shm``) and reads the same.
    """
    con = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=2)
    con.execute("PRAGMA query_only=1")
    try:
        con.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return con
    except sqlite3.OperationalError:
        con.close()
        if not _on_readonly_volume(path):
            raise
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise VolumeError(f"the ledger {path} is on a read-only volume with changes still in {wal.name} that "
                          f"only a writable mount can read; remount the volume read-write and try again")
    con = sqlite3.connect(path.resolve().as_uri() + "?mode=ro&immutable=1", uri=True)
    con.execute("PRAGMA query_only=1")
    return con


def _on_readonly_volume(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


class LedgerReader:
    """A read-only connection to the ledger and the questions readers ask of it; use as a context manager."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con

    @classmethod
    def open(cls, path: Path) -> "LedgerReader":
        """Open ``path`` read-only (see :func:`open_readonly`)."""
        return cls(open_readonly(path))

    def close(self) -> None:
        """Close the connection."""
        self.con.close()

    def __enter__(self) -> "LedgerReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def is_ready(self) -> bool:
        """False while the engine is still creating an empty ledger (its tables are not all there yet)."""
        tables = {r[0] for r in self.con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        return _READY_TABLES <= tables

    def quick_check(self) -> str:
        """SQLite's ``PRAGMA quick_check``: ``ok``, or what is damaged."""
        return self.con.execute("PRAGMA quick_check").fetchone()[0]

    def state_totals(self) -> Dict[str, StateTotals]:
        """Studies per state (``done``, ``failed``, ``pending``, ``partial``) with their bytes."""
        return {state: StateTotals(n, b, z) for state, n, b, z in self.con.execute(
            "SELECT state, COUNT(*), COALESCE(SUM(bytes_in),0), COALESCE(SUM(zip_size),0) FROM studies "
            "GROUP BY state")}

    def done_per_month(self) -> Dict[str, int]:
        """Studies done per month folder."""
        return {m: n for m, n in self.con.execute(
            "SELECT month, COUNT(*) FROM studies WHERE state='done' GROUP BY month")}

    def ok_zips(self) -> int:
        """ZIPs recorded as ``ok``."""
        return self.con.execute("SELECT COUNT(*) FROM zips WHERE status='ok'").fetchone()[0]

    def recent_issues(self, limit: int) -> Tuple[IssueRecord, ...]:
        """The newest ``limit`` issues, newest first."""
        return tuple(IssueRecord(r[0], r[1], r[2] or "", r[3] or "", r[4] or "") for r in self.con.execute(
            "SELECT ts, code, uid, zip_path, detail FROM issues ORDER BY id DESC LIMIT ?", (limit,)))

    def recent_runs(self, limit: int) -> Tuple[RunRecord, ...]:
        """The newest ``limit`` runs, newest first (the current one included, ``ended`` None)."""
        return tuple(RunRecord(r[0], r[1], r[2], r[3] or "", r[4], r[5] or 0, r[6] or 0, r[7] or 0)
                     for r in self.con.execute(
            "SELECT id, started, ended, outcome, exit_code, studies_done, studies_failed, bytes_in FROM runs "
            "ORDER BY id DESC LIMIT ?", (limit,)))

    def runs_since(self, since: float) -> RunsSince:
        """The runs started at or after ``since`` (Unix seconds): when the first started, studies exported."""
        first, studies = self.con.execute(
            "SELECT MIN(started), COALESCE(SUM(studies_done), 0) FROM runs WHERE started >= ?", (since,)).fetchone()
        return RunsSince(first, int(studies or 0))

    def has_last_seen(self) -> bool:
        """True on a ledger of schema 2 or later: ``studies.last_seen`` records the studies Horos's database
        no longer has (docs/design/horos-database.md §11). A reader never migrates: an older ledger reads
        as "Horos still has every study" until the engine opens it."""
        return "last_seen" in {r[1] for r in self.con.execute("PRAGMA table_info(studies)")}

    def catalog(self, include_all: bool = False, only_in_backup: bool = False) -> List[StudyRecord]:
        """Every study with a ZIP (``include_all``: every study), by study date then UID;
        ``only_in_backup`` keeps the studies Horos's database no longer has."""
        schema2 = self.has_last_seen()
        where = [] if include_all else ["s.zip_path IS NOT NULL AND s.zip_path != ''"]
        if only_in_backup:
            where.append("s.last_seen IS NOT NULL" if schema2 else "0")
        sql = _CATALOG_SQL.format(where="WHERE " + " AND ".join(where) if where else "",
                                  last_seen="s.last_seen" if schema2 else "NULL")
        return [StudyRecord(*r) for r in self.con.execute(sql)]

    def only_in_backup(self) -> int:
        """Backed-up studies Horos's database no longer has (their ZIPs are the only copy); 0 on a ledger
        older than schema 2."""
        if not self.has_last_seen():
            return 0
        return self.con.execute(
            "SELECT COUNT(*) FROM studies WHERE last_seen IS NOT NULL AND COALESCE(zip_path, '') != ''").fetchone()[0]

    def conditions(self) -> Tuple[Tuple[str, float, str], ...]:
        """Every ongoing condition (the engine's ``Ledger.condition``): (code, since, detail), oldest first."""
        tables = {r[0] for r in self.con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "conditions" not in tables:
            return ()
        return tuple((r[0], float(r[1]), r[2] or "") for r in self.con.execute(
            "SELECT code, since, detail FROM conditions ORDER BY since, code"))

    def issue_times(self, code: str) -> List[float]:
        """When issues with ``code`` were recorded, oldest first."""
        return [float(r[0]) for r in self.con.execute("SELECT ts FROM issues WHERE code=? ORDER BY ts", (code,))]

    def index(self) -> LedgerIndex:
        """Every study the ledger knows, by key (what the planner compares with Horos), with the missing
        paths of the studies waiting for files and the Horos image-row mark.

        A ledger not yet migrated (written by an older horos-backup, no run since) reads with NULL for
        the columns it lacks and no missing paths."""
        have = {r[1] for r in self.con.execute("PRAGMA table_info(studies)")}
        columns = ", ".join(c if c in have else "NULL" for c in INDEX_COLUMNS)
        rows = self.con.execute(f"SELECT {columns} FROM studies").fetchall()
        tables = {r[0] for r in self.con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        missing = self.con.execute(MISSING_SQL).fetchall() if "missing_files" in tables else []
        mark = self.con.execute(MARK_SQL).fetchone()
        return index_from_rows(rows, missing, mark[0] if mark else None)


def read_index(path: Path) -> LedgerIndex:
    """The ledger index read without writing (for ``plan``); empty when there is no ledger yet."""
    if not path.exists():
        return LedgerIndex()
    try:
        with LedgerReader.open(path) as led:
            return led.index()
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"ledger {path} cannot be read ({exc}); run 'horos-backup doctor'") from None


def issue_times(path: Path, code: str) -> List[float]:
    """When issues with ``code`` were recorded (empty when there is no ledger or it cannot be read).

    ``index`` retention keeps the last snapshot before each ``HOROS_DB_SHRANK`` (the mass-drop guard)."""
    if not path.exists():
        return []
    try:
        with LedgerReader.open(path) as led:
            return led.issue_times(code)
    except (sqlite3.Error, HorosBackupError):
        return []
