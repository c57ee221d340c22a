"""The engine's state database (``export_state.sqlite``): the single truth for "done".

Written only by the engine, through aiosqlite, with commits made durable (``synchronous=FULL``,
``fullfsync`` on macOS). A study is done when ``studies.state = 'done'`` and its ZIP row is ``ok``;
that row is committed only after the ZIP is renamed into place and its directory synced. If the ledger
is lost it is rebuilt from the ZIPs on disk (their comment carries the study identity); if it is
corrupt the engine refuses to run rather than overwrite it.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import io
import json
import os
import re
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import aiosqlite

from horos_async import naming
from horos_async.guards import human_bytes
from horos_async.errors import DiskFull, HorosBackupError, LedgerError, VolumeError
from horos_async.models import DONE, FAILED, PARTIAL, Outcome, StudyPlan
from horos_async.platform import is_macos

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS studies (
  key TEXT PRIMARY KEY, uid TEXT NOT NULL, patient_uid TEXT, horos_pk INTEGER,
  state TEXT NOT NULL, version INTEGER NOT NULL DEFAULT 0, zip_path TEXT, fingerprint TEXT,
  date_added REAL, month TEXT, files INTEGER, bytes_in INTEGER, zip_size INTEGER,
  exported_at REAL, attempts INTEGER NOT NULL DEFAULT 0, code TEXT, detail TEXT, next_attempt REAL,
  patient_name TEXT, birth_date TEXT, study_date TEXT, modalities TEXT);
CREATE INDEX IF NOT EXISTS studies_state ON studies (state);
CREATE INDEX IF NOT EXISTS studies_uid ON studies (uid);
CREATE TABLE IF NOT EXISTS zips (
  zip_path TEXT PRIMARY KEY, key TEXT NOT NULL, version INTEGER NOT NULL, files INTEGER NOT NULL,
  bytes_in INTEGER NOT NULL, zip_size INTEGER NOT NULL, members_digest TEXT, created_at REAL,
  verified_at REAL, status TEXT NOT NULL DEFAULT 'ok');
CREATE INDEX IF NOT EXISTS zips_key ON zips (key);
CREATE TABLE IF NOT EXISTS runs (
  id INTEGER PRIMARY KEY, started REAL NOT NULL, ended REAL, pid INTEGER, outcome TEXT,
  exit_code INTEGER, studies_done INTEGER DEFAULT 0, studies_failed INTEGER DEFAULT 0,
  bytes_in INTEGER DEFAULT 0, bytes_out INTEGER DEFAULT 0, message TEXT);
CREATE TABLE IF NOT EXISTS issues (
  id INTEGER PRIMARY KEY, ts REAL NOT NULL, code TEXT NOT NULL, key TEXT, uid TEXT, zip_path TEXT,
  detail TEXT, run_id INTEGER);
CREATE TABLE IF NOT EXISTS conditions (code TEXT PRIMARY KEY, since REAL NOT NULL, detail TEXT);
"""
"""Schema 1, as every ledger starts; :data:`MIGRATIONS` brings it to :data:`SCHEMA_VERSION`."""
MIGRATIONS = {
    # 2: what the queue needs to move on its own (growth without a new ZDATEADDED, files coming back):
    # the study's image rows and series as the scan counts them, a "grew since export" flag, and every
    # missing path of a study waiting for its files (docs/design/horos-database.md §11).
    2: ("ALTER TABLE studies ADD COLUMN image_rows INTEGER",
        "ALTER TABLE studies ADD COLUMN series INTEGER",
        "ALTER TABLE studies ADD COLUMN grown INTEGER",
        "CREATE TABLE IF NOT EXISTS missing_files (key TEXT NOT NULL, path TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS missing_files_key ON missing_files (key)"),
}
INDEX_COLUMNS = ("key", "state", "version", "date_added", "fingerprint", "next_attempt", "zip_path", "code",
                 "horos_pk", "uid", "files", "image_rows", "series", "grown")
INDEX_SQL = f"SELECT {', '.join(INDEX_COLUMNS)} FROM studies"
ROWS_MARK = "horos_rows_mark"
"""``meta`` key of the Horos image-row high-water mark (see :meth:`Ledger.note_growth`)."""
MISSING_CODES = ("MISSING_FILES", "NO_FILES")
"""Failures that wait for files: their missing paths are kept, and checked again at each scan."""
MISSING_KEPT = 20
"""Missing paths kept per study (the first ones): enough to see them come back (the retry itself checks
every file), few enough that a whole unmounted volume of linked studies stays small in memory."""
CSV_HEADER = ["timestamp", "code", "study_uid", "zip", "detail"]
MAX_BACKOFF = 7 * 24 * 3600.0


@dataclass(frozen=True)
class Entry:
    """What the planner needs to know about one study from the ledger."""

    state: str
    version: int
    date_added: Optional[float]
    fingerprint: str
    next_attempt: Optional[float]
    zip_path: str
    code: str
    horos_pk: Optional[int] = None
    """``ZSTUDY.Z_PK`` last seen for the study (refreshed after a Horos database rebuild)."""
    files: Optional[int] = None
    """Files in the study's current ZIP."""
    image_rows: Optional[int] = None
    """Image rows of the study when it was exported, as the scan counts them (None: not recorded yet)."""
    series: Optional[int] = None
    """Series holding those image rows."""
    grown: bool = False
    """The scan saw new image rows for the study since its export (:meth:`Ledger.note_growth`)."""


class LedgerIndex(Dict[str, Entry]):
    """Every study the ledger knows, by key; ``by_pk`` maps a Horos ``Z_PK`` to (uid, key).

    ``by_pk`` lets the scan recognise a study whose patientUID Horos recomputed (a Horos upgrade
    changes ``patientUIDVersion``): same row, same StudyInstanceUID, new key. A ``Z_PK`` known under
    two keys (a Horos database rebuild renumbered them) maps to None and matches nothing.
    """

    def __init__(self, rows=(), missing=(), rows_mark: Optional[str] = None) -> None:
        super().__init__()
        self.by_pk: Dict[int, Optional[Tuple[str, str]]] = {}
        for r in rows:
            self[r[0]] = _entry(r)
            if r[8] is not None:
                self.by_pk[r[8]] = None if r[8] in self.by_pk else (r[9], r[0])
        self.missing: Dict[str, List[str]] = {}
        """key -> the paths a study waiting for its files lacked at its last attempt (the first
        :data:`MISSING_KEPT`)."""
        for key, path in missing:
            self.missing.setdefault(key, []).append(path)
        self.rows_mark = _mark(rows_mark)
        """(Horos store UUID, highest ``ZIMAGE.Z_PK``) the last recorded scan had seen, or None."""


def _entry(r) -> Entry:
    """An Entry from a row of INDEX_SQL."""
    return Entry(r[1], r[2] or 0, r[3], r[4] or "", r[5], r[6] or "", r[7] or "", r[8], r[10], r[11], r[12],
                 bool(r[13]))


def _mark(text: Optional[str]) -> Optional[Tuple[str, int]]:
    try:
        value = json.loads(text) if text else None
        return (str(value["store"]), int(value["image_pk"])) if value else None
    except (ValueError, TypeError, KeyError):
        return None


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


class Ledger:
    """Async access to the ledger for the engine (the only writer)."""

    def __init__(self, path: Path, issues_csv: Optional[Path] = None, names_in_csv: bool = False) -> None:
        self.path = path
        self.issues_csv = issues_csv
        # False: issues.csv shows only the month folder of a ZIP (the ZIP's name carries the patient's name).
        self.names_in_csv = names_in_csv
        self.db: Optional[aiosqlite.Connection] = None
        self.run_id: Optional[int] = None
        self.created = False
        self._lock = asyncio.Lock()  # concurrent jobs share one connection: one transaction at a time

    @contextlib.asynccontextmanager
    async def _txn(self):
        """One write transaction (BEGIN IMMEDIATE ... COMMIT), serialised across tasks."""
        async with self._lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
            await self.db.execute("COMMIT")

    async def open(self) -> "Ledger":
        """Open (creating if absent) and check integrity; raise LedgerError if corrupt."""
        self.created = not self.path.exists()
        try:
            self.db = await aiosqlite.connect(str(self.path), isolation_level=None, timeout=30)
            if self.created:
                os.chmod(self.path, 0o640)
            await self.db.execute("PRAGMA journal_mode=WAL")
            await self.db.execute("PRAGMA synchronous=FULL")
            if is_macos():
                await self.db.execute("PRAGMA fullfsync=ON")
                await self.db.execute("PRAGMA checkpoint_fullfsync=ON")
            async with self.db.execute("PRAGMA quick_check") as cur:
                result = (await cur.fetchone())[0]
            if result != "ok":
                raise sqlite3.DatabaseError(result)
            # One transaction: a reader (status, horos-tui) never sees half the tables.
            await self.db.executescript("BEGIN IMMEDIATE;" + SCHEMA + "COMMIT;")
            async with self.db.execute("SELECT value FROM meta WHERE key='schema'") as cur:
                row = await cur.fetchone()
            version = 1 if row is None else int(row[0])
            if version > SCHEMA_VERSION:
                raise LedgerError(f"ledger {self.path} was written by a newer horos-backup (schema {row[0]}); "
                                  f"upgrade horos-backup")
            if version < SCHEMA_VERSION:
                await self._migrate(version)
        except sqlite3.DatabaseError as exc:
            await self.close()
            raise fault(self.path, exc) from None
        return self

    async def _migrate(self, version: int) -> None:
        """Bring a schema-``version`` ledger (1 when new) to :data:`SCHEMA_VERSION`, in one transaction."""
        async with self._txn():
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target]:
                    await self.db.execute(statement)
            await self.db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    async def close(self) -> None:
        """Close the connection."""
        if self.db is not None:
            await self.db.close()
            self.db = None

    async def __aenter__(self) -> "Ledger":
        return await self.open()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- reads -------------------------------------------------------------------------------------
    async def index(self) -> LedgerIndex:
        """Every study the ledger knows, by key (about 200 bytes per study in memory), with the missing
        paths of the studies waiting for files and the Horos image-row mark."""
        async with self.db.execute(INDEX_SQL) as cur:
            rows = await cur.fetchall()
        async with self.db.execute("SELECT key, path FROM missing_files ORDER BY rowid") as cur:
            missing = await cur.fetchall()
        async with self.db.execute("SELECT value FROM meta WHERE key=?", (ROWS_MARK,)) as cur:
            mark = await cur.fetchone()
        return LedgerIndex(rows, missing, mark[0] if mark else None)

    async def refresh_pks(self, pks: Sequence[Tuple[str, int]]) -> None:
        """Record the ``Z_PK`` each study has now (a Horos rebuild renumbers them), in one commit, so a
        later patientUID change is still recognised by row (see :class:`LedgerIndex`)."""
        if pks:
            async with self._txn():
                await self.db.executemany("UPDATE studies SET horos_pk=? WHERE key=?", [(pk, k) for k, pk in pks])

    async def rekey(self, old: str, new: str, patient_uid: str) -> bool:
        """Horos gave a known study a new patientUID: move its ledger rows to the new key (one commit).

        Returns False, changing nothing, when the new key is already taken."""
        async with self._txn():
            async with self.db.execute("SELECT 1 FROM studies WHERE key=?", (new,)) as cur:
                if await cur.fetchone() is not None:
                    return False
            await self.db.execute("UPDATE studies SET key=?, patient_uid=? WHERE key=?", (new, patient_uid, old))
            await self.db.execute("UPDATE zips SET key=? WHERE key=?", (new, old))
            await self.db.execute("UPDATE missing_files SET key=? WHERE key=?", (new, old))
        return True

    async def note_growth(self, keys: Sequence[str], mark: Optional[Tuple[str, int]]) -> None:
        """Flag these exported studies as grown (the scan saw new image rows for them) and move the
        image-row mark to ``mark``, in one commit: no growth is forgotten once the mark has passed it."""
        if not keys and mark is None:
            return
        async with self._txn():
            await self.db.executemany("UPDATE studies SET grown=1 WHERE key=?", [(k,) for k in keys])
            if mark is not None:
                await self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                      (ROWS_MARK, json.dumps({"store": mark[0], "image_pk": mark[1]})))

    async def zip_rows(self) -> Dict[str, tuple]:
        """``zip_path -> (key, version, files, zip_size, status)`` for every ZIP ever recorded."""
        out = {}
        async with self.db.execute("SELECT zip_path, key, version, files, zip_size, status FROM zips") as cur:
            async for r in cur:
                out[r[0]] = tuple(r[1:])
        return out

    async def zip_owner(self, zip_path: str) -> Optional[str]:
        """The study key a ZIP path belongs to, if recorded."""
        async with self.db.execute("SELECT key FROM zips WHERE zip_path=?", (zip_path,)) as cur:
            row = await cur.fetchone()
        return row[0] if row else None

    # -- writes ------------------------------------------------------------------------------------
    async def begin_run(self) -> int:
        """Record the start of a run and return its id."""
        async with self._lock:
            cur = await self.db.execute("INSERT INTO runs (started, pid) VALUES (?, ?)", (time.time(), os.getpid()))
        self.run_id = cur.lastrowid
        return self.run_id

    async def end_run(self, outcome: str, exit_code: int, done: int, failed: int, bytes_in: int,
                      bytes_out: int, message: str = "") -> None:
        """Record how the run ended."""
        async with self._lock:
            await self.db.execute(
            "UPDATE runs SET ended=?, outcome=?, exit_code=?, studies_done=?, studies_failed=?, bytes_in=?, "
            "bytes_out=?, message=? WHERE id=?",
            (time.time(), outcome, exit_code, done, failed, bytes_in, bytes_out, message, self.run_id))

    async def record_zip(self, plan: StudyPlan, zip_path: str, zip_size: int, members_digest: str,
                         state: str = DONE, code: str = "", detail: str = "", now: Optional[float] = None) -> None:
        """Commit a verified, published ZIP and mark its study done (or partial), in one transaction."""
        now = time.time() if now is None else now
        s = plan.study
        async with self._txn():
            await self.db.execute(
                "INSERT OR REPLACE INTO zips VALUES (?,?,?,?,?,?,?,?,?, 'ok')",
                (zip_path, s.key, plan.version, len(plan.files), plan.total_bytes, zip_size, members_digest,
                 now, now))
            await self.db.execute(
                "INSERT INTO studies (key, uid, patient_uid, horos_pk, state, version, zip_path, fingerprint, "
                "date_added, month, files, bytes_in, zip_size, exported_at, attempts, code, detail, next_attempt, "
                "patient_name, birth_date, study_date, modalities) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,0,?,?,NULL,?,?,?,?) "
                "ON CONFLICT(key) DO UPDATE SET uid=excluded.uid, patient_uid=excluded.patient_uid, "
                "horos_pk=excluded.horos_pk, state=excluded.state, version=excluded.version, "
                "zip_path=excluded.zip_path, fingerprint=excluded.fingerprint, date_added=excluded.date_added, "
                "month=excluded.month, files=excluded.files, bytes_in=excluded.bytes_in, "
                "zip_size=excluded.zip_size, exported_at=excluded.exported_at, attempts=0, code=excluded.code, "
                "detail=excluded.detail, next_attempt=NULL, patient_name=excluded.patient_name, "
                "birth_date=excluded.birth_date, study_date=excluded.study_date, modalities=excluded.modalities",
                (s.key, s.uid, s.patient_uid, s.pk, state, plan.version, zip_path, plan.fingerprint,
                 s.date_added, plan.month, len(plan.files), plan.total_bytes, zip_size, now, code, detail,
                 s.patient_name, s.birth_date.isoformat() if s.birth_date else None,
                 s.study_date.isoformat() if s.study_date else None, s.modalities))
            await self._seen(plan, plan.missing)

    async def adopt_zip(self, ident: dict, zip_path: str, zip_size: int, files: int, bytes_in: int,
                        members_digest: str, now: Optional[float] = None) -> None:
        """Record a verified ZIP found on disk but unknown to the ledger (crash before commit, or rebuild)."""
        now = time.time() if now is None else now
        key = ident["key"]
        version = int(ident.get("version", 1))
        async with self._txn():
            await self.db.execute("INSERT OR REPLACE INTO zips VALUES (?,?,?,?,?,?,?,?,?, 'ok')",
                                  (zip_path, key, version, files, bytes_in, zip_size, members_digest,
                                   ident.get("exported_at", now), now))
            async with self.db.execute("SELECT version, state FROM studies WHERE key=?", (key,)) as cur:
                row = await cur.fetchone()
            if row is None or row[0] < version or row[1] != DONE:
                state = ident.get("state", DONE)
                await self.db.execute(
                    "INSERT OR REPLACE INTO studies (key, uid, patient_uid, horos_pk, state, version, zip_path, "
                    "fingerprint, date_added, month, files, bytes_in, zip_size, exported_at, attempts, code, "
                    "detail, patient_name, birth_date, study_date, modalities) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,0,?,?,?,?,?,?)",
                    (key, ident.get("uid", ""), ident.get("patient_uid", ""), ident.get("horos_pk"), state,
                     version, zip_path, ident.get("fingerprint", ""), ident.get("date_added"),
                     zip_path.split("/", 1)[0], files, bytes_in, zip_size, ident.get("exported_at", now),
                     "" if state == DONE else ident.get("code", ""), "", ident.get("patient_name"),
                     ident.get("birth_date"), ident.get("study_date"), ident.get("modalities")))

    async def record_failure(self, plan_or_key, outcome: Outcome, backoff_minutes: float,
                             now: Optional[float] = None, keep_done: bool = False) -> bool:
        """Record a failed attempt; returns True when it is a new event (worth an issues.csv row).

        A study already done stays done (``keep_done``): a later problem with a newer version never
        takes back the backup that exists.
        """
        now = time.time() if now is None else now
        plan = plan_or_key if isinstance(plan_or_key, StudyPlan) else None
        key = plan.study.key if plan else str(plan_or_key)
        async with self._txn():
            async with self.db.execute("SELECT state, attempts, code, detail FROM studies WHERE key=?", (key,)) as cur:
                row = await cur.fetchone()
            attempts = (row[1] if row else 0) + 1
            delay = min(MAX_BACKOFF, backoff_minutes * 60.0 * (2 ** min(attempts - 1, 16)))
            new_event = row is None or row[2] != outcome.code or row[3] != outcome.detail
            if row is None:
                s = plan.study
                await self.db.execute(
                    "INSERT INTO studies (key, uid, patient_uid, horos_pk, state, version, date_added, month, "
                    "attempts, code, detail, next_attempt, patient_name, birth_date, study_date, modalities) "
                    "VALUES (?,?,?,?,?,0,?,?,?,?,?,?,?,?,?,?)",
                    (key, s.uid, s.patient_uid, s.pk, FAILED, s.date_added, plan.month, attempts, outcome.code,
                     outcome.detail, now + delay, s.patient_name,
                     s.birth_date.isoformat() if s.birth_date else None,
                     s.study_date.isoformat() if s.study_date else None, s.modalities))
            else:
                state = row[0] if (keep_done and row[0] in (DONE, PARTIAL)) else FAILED
                await self.db.execute(
                    "UPDATE studies SET state=?, attempts=?, code=?, detail=?, next_attempt=? WHERE key=?",
                    (state, attempts, outcome.code, outcome.detail, now + delay, key))
            if plan is not None:  # what it waits for: its files (checked again at each scan), or nothing
                waiting = outcome.code in MISSING_CODES and (plan.missing or outcome.extra)
                await self._missing(key, waiting or ())
            return new_event

    async def touch_unchanged(self, key: str, date_added: Optional[float], plan: Optional[StudyPlan] = None) -> None:
        """The study's date or rows changed but its files did not: remember what was seen, export nothing."""
        async with self._txn():
            await self.db.execute("UPDATE studies SET date_added=? WHERE key=?", (date_added, key))
            if plan is not None:
                await self._seen(plan, plan.missing)

    async def _seen(self, plan: StudyPlan, missing: Sequence[str]) -> None:
        """Inside a transaction: the study's rows as exported (no longer grown) and its missing paths."""
        await self.db.execute("UPDATE studies SET image_rows=?, series=?, grown=NULL WHERE key=?",
                              (plan.counts[0], plan.counts[1], plan.study.key))
        await self._missing(plan.study.key, missing)

    async def _missing(self, key: str, paths: Sequence[str]) -> None:
        """Inside a transaction: replace the study's recorded missing paths (the first MISSING_KEPT)."""
        await self.db.execute("DELETE FROM missing_files WHERE key=?", (key,))
        await self.db.executemany("INSERT INTO missing_files VALUES (?, ?)",
                                  [(key, str(p)) for p in paths[:MISSING_KEPT]])

    async def bad_row(self, key: str, uid: str, note: str) -> bool:
        """Record a malformed Horos row of this study as a ``BAD_ROW`` issue, once (True when new)."""
        async with self.db.execute("SELECT 1 FROM issues WHERE code='BAD_ROW' AND key=? AND detail=? LIMIT 1",
                                   (key, note)) as cur:
            if await cur.fetchone() is not None:
                return False
        await self.issue("BAD_ROW", note, key, uid)
        return True

    async def mark_zip_bad(self, zip_path: str, status: str, code: str, detail: str) -> Optional[str]:
        """A recorded ZIP is missing or invalid: flag it and requeue its study. Returns the study key."""
        async with self.db.execute("SELECT key FROM zips WHERE zip_path=?", (zip_path,)) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        key = row[0]
        async with self._txn():
            await self.db.execute("UPDATE zips SET status=? WHERE zip_path=?", (status, zip_path))
            # Requeue only if this was the study's current ZIP; an older version going bad is just reported.
            await self.db.execute(
                "UPDATE studies SET state='pending', code=?, detail=?, next_attempt=NULL, fingerprint='' "
                "WHERE key=? AND zip_path=?", (code, detail, key, zip_path))
        return key

    async def issue(self, code: str, detail: str, key: str = "", uid: str = "", zip_path: str = "",
                    now: Optional[float] = None) -> None:
        """Append one issue to the ledger and to issues.csv."""
        now = time.time() if now is None else now
        if not self.names_in_csv:
            # `status` and horos-tui show this detail too: redacted in the table as in issues.csv.
            detail = redact_zip_names(detail)
        async with self._lock:
            await self.db.execute(
                "INSERT INTO issues (ts, code, key, uid, zip_path, detail, run_id) VALUES (?,?,?,?,?,?,?)",
                (now, code, key, uid, zip_path, detail, self.run_id))
        if self.issues_csv is not None:
            shown = zip_path if self.names_in_csv else zip_path.split("/", 1)[0]
            append_issue_csv(self.issues_csv, [_iso(now), code, uid, shown, detail])

    async def condition(self, code: str, active: bool, detail: str = "") -> bool:
        """Track an ongoing condition (e.g. INCOMING over limit); True only when it starts."""
        async with self._txn():
            async with self.db.execute("SELECT 1 FROM conditions WHERE code=?", (code,)) as cur:
                exists = await cur.fetchone() is not None
            if active and not exists:
                await self.db.execute("INSERT INTO conditions VALUES (?,?,?)", (code, time.time(), detail))
                return True
            if not active and exists:
                await self.db.execute("DELETE FROM conditions WHERE code=?", (code,))
            return False

    async def counts(self) -> Dict[str, int]:
        """Studies per state."""
        async with self.db.execute("SELECT state, COUNT(*) FROM studies GROUP BY state") as cur:
            return {r[0]: r[1] for r in await cur.fetchall()}


_TOKEN = re.compile(r"[^\s/'\"(),;:]+")


def redact_zip_names(text: str) -> str:
    """``text`` with every ZIP or temp file name in it redacted by :func:`naming.redact_zip_path`
    (ZIP names carry the patient's name and birth date; ``log_patient_names = false`` hides them)."""
    def one(m: "re.Match[str]") -> str:
        token = m.group()
        core = token.rstrip(".")  # a sentence's full stop is not part of the name
        if core.endswith((".zip", ".partial")):
            return naming.redact_zip_path(core) + token[len(core):]
        return token
    return _TOKEN.sub(one, text)


def append_issue_csv(path: Path, row: Sequence[str]) -> None:
    """Append one row to issues.csv (header written when the file is new; UTF-8 with BOM for Excel)."""
    new = not path.exists()
    buf = io.StringIO()
    w = csv.writer(buf)
    if new:
        w.writerow(CSV_HEADER)
    w.writerow([str(c).replace("\n", " ") for c in row])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    with os.fdopen(fd, "a", encoding="utf-8-sig" if new else "utf-8", newline="") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())


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


FULL_BELOW = 16 << 20
"""Below this much free space, a ledger error is the full volume's doing, not damage."""


def fault(path: Path, exc: sqlite3.Error) -> HorosBackupError:
    """What a SQLite error on the ledger means: a full backup volume (SQLite says "database or disk is
    full", or reports an I/O error while the volume has next to no space left) or a damaged ledger.

    Telling them apart matters: "move the ledger aside" is the fix for damage, and would throw away
    the failure, backoff and issue history of a ledger that is fine on a full disk.
    """
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if "full" in str(exc).lower() or (free is not None and free < FULL_BELOW):
        shown = human_bytes(free) if free is not None else "no space"
        return DiskFull(f"the backup volume is full ({shown} free): the ledger {path} cannot be written "
                        f"({exc}). The ledger is fine: do not move it. Free space and run again")
    return LedgerError(
        f"ledger {path} is damaged ({exc}). Nothing was changed. Move it aside (mv '{path}' "
        f"'{path}.damaged') and run 'horos-backup rebuild-ledger' to rebuild it from the ZIPs on disk")


def _on_readonly_volume(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def read_index(path: Path) -> LedgerIndex:
    """The ledger index read without writing (for ``plan``); empty when there is no ledger yet.

    A ledger not yet migrated (written by an older horos-backup, no run since) reads with NULL for the
    columns it lacks."""
    if not path.exists():
        return LedgerIndex()
    try:
        con = open_readonly(path)
        try:
            have = {r[1] for r in con.execute("PRAGMA table_info(studies)")}
            rows = con.execute(f"SELECT {', '.join(c if c in have else 'NULL' for c in INDEX_COLUMNS)} "
                               f"FROM studies").fetchall()
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            missing = con.execute("SELECT key, path FROM missing_files ORDER BY rowid").fetchall() \
                if "missing_files" in tables else []
            mark = con.execute("SELECT value FROM meta WHERE key=?", (ROWS_MARK,)).fetchone()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"ledger {path} cannot be read ({exc}); run 'horos-backup doctor'") from None
    return LedgerIndex(rows, missing, mark[0] if mark else None)
