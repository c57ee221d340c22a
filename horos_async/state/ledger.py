"""The engine's state database (``export_state.sqlite``): the single truth for "done".

Written only by the engine, through aiosqlite, with commits made durable (``synchronous=FULL``,
``fullfsync`` on macOS). A study is done when ``studies.state = 'done'`` and its ZIP row is ``ok``;
that row is committed only after the ZIP is renamed into place and its directory synced. If the ledger
is lost it is rebuilt from the ZIPs on disk (their comment carries the study identity); if it is
corrupt the engine refuses to run rather than overwrite it.

This module owns the format: the schema (created and migrated here) and every write, with the few
reads the engine makes inside its own connection. The readers (``status``, ``catalog``, ``doctor``,
``plan``) read through ``ledger_read``, which never writes; rows travel as ``ledger_records``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import AbstractSet, Awaitable, Callable, Dict, List, Optional, Sequence, Set, Tuple

import aiosqlite

from horos_async.blocking import offload
from horos_async.guards import human_bytes
from horos_async.codes import IssueCode
from horos_async.errors import DiskFull, HorosBackupError, LedgerError, VolumeError
from horos_async.models import DONE, FAILED, PARTIAL, Outcome, StudyPlan
from horos_async.platform import is_macos
from horos_async.state.issues_csv import append_issue_csv, iso_time, redact_zip_names
from horos_async.state.ledger_read import INDEX_SQL, MARK_SQL, MISSING_SQL, ROWS_MARK, index_from_rows
from horos_async.state.ledger_records import MISSING_KEPT, LedgerIndex, ZipRecord, ZipToVerify

SCHEMA_VERSION = 5
"""2 added ``studies.last_seen`` (docs/design/horos-database.md §11: studies Horos deleted); 3 the counts
that notice a study growing (§12); 4 the manifest's digest and the values ``export`` selects by
(docs/design/manifest.md §5); 5 each ZIP's SHA-256 and the mirror tables (docs/design/mirror.md)."""
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS studies (
  key TEXT PRIMARY KEY, uid TEXT NOT NULL, patient_uid TEXT, horos_pk INTEGER,
  state TEXT NOT NULL, version INTEGER NOT NULL DEFAULT 0, zip_path TEXT, fingerprint TEXT,
  date_added REAL, month TEXT, files INTEGER, bytes_in INTEGER, zip_size INTEGER,
  exported_at REAL, attempts INTEGER NOT NULL DEFAULT 0, code TEXT, detail TEXT, next_attempt REAL,
  patient_name TEXT, birth_date TEXT, study_date TEXT, modalities TEXT, last_seen REAL);
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


async def _columns(db: aiosqlite.Connection, table: str) -> Set[str]:
    async with db.execute(f"PRAGMA table_info({table})") as cur:
        return {r[1] for r in await cur.fetchall()}


async def _to_3(db: aiosqlite.Connection) -> None:
    """Schema 3: what the queue needs to move on its own (growth without a new ZDATEADDED, files coming
    back): the study's image rows and series as the scan counts them, a "grew since export" flag, and
    the missing paths of a study waiting for its files (docs/design/horos-database.md §12). The Horos
    image-row mark needs no step: it is a ``meta`` row (:data:`ROWS_MARK`) the first scan writes; until
    then every study's rows are counted once.

    Every step adds only what ``PRAGMA table_info`` shows missing (tables and indexes only if absent), so
    the steps compose in any order and a step run twice changes nothing."""
    have = await _columns(db, "studies")
    for column in ("image_rows", "series", "grown"):
        if column not in have:
            await db.execute(f"ALTER TABLE studies ADD COLUMN {column} INTEGER")
    await db.execute("CREATE TABLE IF NOT EXISTS missing_files (key TEXT NOT NULL, path TEXT NOT NULL)")
    await db.execute("CREATE INDEX IF NOT EXISTS missing_files_key ON missing_files (key)")


async def _to_4(db: aiosqlite.Connection) -> None:
    """Schema 4: ``zips.manifest_sha256``, the SHA-256 of the ZIP's manifest member (empty for ZIPs from
    before manifests), and ``studies.patient_id`` and ``studies.accession``, which ``export`` selects by
    (docs/design/manifest.md §5). Like :func:`_to_3`, it adds only the columns ``PRAGMA table_info``
    lacks, so it composes with the other steps in any order and a second run changes nothing."""
    if "manifest_sha256" not in await _columns(db, "zips"):
        await db.execute("ALTER TABLE zips ADD COLUMN manifest_sha256 TEXT")
    have = await _columns(db, "studies")
    for column in ("patient_id", "accession"):
        if column not in have:
            await db.execute(f"ALTER TABLE studies ADD COLUMN {column} TEXT")


async def _to_2(db: aiosqlite.Connection) -> None:
    """Schema 2: ``studies.last_seen``, when Horos last listed the study (docs/design/horos-database.md §11).
    Like :func:`_to_3`, it adds its column only when ``PRAGMA table_info`` lacks it."""
    if "last_seen" not in await _columns(db, "studies"):
        await db.execute("ALTER TABLE studies ADD COLUMN last_seen REAL")


async def _to_5(db: aiosqlite.Connection) -> None:
    """Schema 5 (the mirror): ``zips.sha256``, each ZIP's SHA-256 computed while it was written, and the
    mirror's own tables (docs/design/mirror.md §3): ``mirror_copies``, one row per file a destination
    holds a verified copy of, and ``mirror_runs``, one row per destination per mirror run. Like the other
    steps it adds only what is missing, so it composes in any order and runs twice harmlessly."""
    if "sha256" not in await _columns(db, "zips"):
        await db.execute("ALTER TABLE zips ADD COLUMN sha256 TEXT")
    await db.execute(
        "CREATE TABLE IF NOT EXISTS mirror_copies (dest TEXT NOT NULL, path TEXT NOT NULL, kind TEXT NOT NULL, "
        "size INTEGER NOT NULL, sha256 TEXT, copied_at REAL NOT NULL, verified_at REAL, "
        "status TEXT NOT NULL DEFAULT 'ok', stored_as TEXT, PRIMARY KEY (dest, path))")
    await db.execute(
        "CREATE TABLE IF NOT EXISTS mirror_runs (id INTEGER PRIMARY KEY, dest TEXT NOT NULL, started REAL NOT NULL, "
        "ended REAL, outcome TEXT, files INTEGER DEFAULT 0, bytes INTEGER DEFAULT 0, message TEXT)")
    await db.execute("CREATE INDEX IF NOT EXISTS mirror_runs_dest ON mirror_runs (dest, started)")


MIGRATIONS: Dict[int, Callable[[aiosqlite.Connection], Awaitable[None]]] = {2: _to_2, 3: _to_3, 4: _to_4,
                                                                   5: _to_5}
"""Target version -> the step that brings a ledger one version below it there (run in order, in one
transaction; a version without a step here is skipped, see :func:`_to_3`)."""
ZIP_COLUMNS = ("zip_path, key, version, files, bytes_in, zip_size, members_digest, created_at, verified_at, status, "
               "manifest_sha256, sha256")
"""The ``zips`` columns every insert names (positional inserts broke when a step added a column)."""
MISSING_CODES = (IssueCode.MISSING_FILES, IssueCode.NO_FILES)
"""Failures that wait for files: their missing paths are kept, and checked again at each scan."""
MAX_BACKOFF = 7 * 24 * 3600.0


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
                step = MIGRATIONS.get(target)
                if step is not None:
                    await step(self.db)
            await self.db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    @property
    def is_open(self) -> bool:
        """True between :meth:`open` and :meth:`close`."""
        return self.db is not None

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
        async with self.db.execute(MISSING_SQL) as cur:
            missing = await cur.fetchall()
        async with self.db.execute(MARK_SQL) as cur:
            mark = await cur.fetchone()
        return index_from_rows(rows, missing, mark[0] if mark else None)

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

    async def zip_rows(self) -> Dict[str, ZipRecord]:
        """Every ZIP ever recorded, by ``zip_path``."""
        out = {}
        async with self.db.execute("SELECT zip_path, key, version, files, zip_size, status FROM zips") as cur:
            async for r in cur:
                out[r[0]] = ZipRecord(*r)
        return out

    async def zips_to_verify(self, since: Optional[float] = None, month: Optional[str] = None) -> List[ZipToVerify]:
        """The ``ok`` ZIPs in verify's scope, in path order: created at or after ``since`` (Unix seconds),
        in the month folder ``month``."""
        sql = ("SELECT zip_path, key, files, bytes_in, zip_size, COALESCE(members_digest, ''), "
               "COALESCE(manifest_sha256, '') FROM zips WHERE status='ok'")
        params: List[object] = []
        if since is not None:
            sql += " AND created_at >= ?"
            params.append(since)
        if month:
            sql += " AND substr(zip_path, 1, ?) = ?"
            params += [len(month) + 1, month + "/"]
        async with self.db.execute(sql + " ORDER BY zip_path", params) as cur:
            return [ZipToVerify(*r) for r in await cur.fetchall()]

    async def zip_owner(self, zip_path: str) -> Optional[str]:
        """The study key a ZIP path belongs to, if recorded."""
        async with self.db.execute("SELECT key FROM zips WHERE zip_path=?", (zip_path,)) as cur:
            row = await cur.fetchone()
        return row[0] if row else None

    async def backed_up(self) -> int:
        """Studies with a ZIP: ``done`` or ``partial`` (what the ``HOROS_DB_SHRANK`` guard compares with
        Horos's count the first time)."""
        async with self.db.execute("SELECT COUNT(*) FROM studies WHERE state IN (?, ?)", (DONE, PARTIAL)) as cur:
            return (await cur.fetchone())[0]

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
                         state: str = DONE, code: str = "", detail: str = "", now: Optional[float] = None,
                         members: Optional[int] = None, manifest_sha256: str = "", sha256: str = "") -> None:
        """Commit a verified, published ZIP and mark its study done (or partial), in one transaction.

        ``members`` counts every member of the ZIP (its files, and its manifest and DICOMDIR);
        ``studies.files`` keeps the study's files. ``sha256``: the ZIP file's, computed while it was written."""
        now = time.time() if now is None else now
        s = plan.study
        async with self._txn():
            await self.db.execute(
                f"INSERT OR REPLACE INTO zips ({ZIP_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?, 'ok', ?, ?)",
                (zip_path, s.key, plan.version, members if members is not None else len(plan.files),
                 plan.total_bytes, zip_size, members_digest, now, now, manifest_sha256 or None, sha256 or None))
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
            await self.db.execute("UPDATE studies SET patient_id=?, accession=? WHERE key=?",
                                  (s.patient_id or None, s.accession or None, s.key))
            await self._seen(plan, plan.missing)

    async def adopt_zip(self, ident: dict, zip_path: str, zip_size: int, files: int, bytes_in: int,
                        members_digest: str, now: Optional[float] = None, crc_checked: bool = True,
                        manifest_sha256: str = "", study: Optional[dict] = None, sha256: str = "") -> None:
        """Record a verified ZIP found on disk but unknown to the ledger (crash before commit, or rebuild).

        ``files`` counts the ZIP's members; ``ident['files']``, when there, the study's files.
        ``study`` is the manifest's study section, when the ZIP has a manifest (patient ID, accession).
        ``crc_checked=False`` (only its central directory was read) leaves ``verified_at`` empty until a
        ``verify --deep`` reads every member."""
        now = time.time() if now is None else now
        key = ident["key"]
        version = int(ident.get("version", 1))
        study = study or {}
        async with self._txn():
            await self.db.execute(f"INSERT OR REPLACE INTO zips ({ZIP_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?, 'ok', ?, ?)",
                                  (zip_path, key, version, files, bytes_in, zip_size, members_digest,
                                   ident.get("exported_at", now), now if crc_checked else None,
                                   manifest_sha256 or None, sha256 or None))
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
                     zip_path.split("/", 1)[0], int(ident.get("files", files)), bytes_in, zip_size,
                     ident.get("exported_at", now), "" if state == DONE else ident.get("code", ""), "",
                     ident.get("patient_name"), ident.get("birth_date"), ident.get("study_date"),
                     ident.get("modalities")))
                await self.db.execute("UPDATE studies SET patient_id=?, accession=? WHERE key=?",
                                      (study.get("patient_id"), study.get("accession_number"), key))

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
        stored = note if self.names_in_csv else redact_zip_names(note)  # as issue() stores it
        async with self.db.execute("SELECT 1 FROM issues WHERE code=? AND key=? AND detail=? LIMIT 1",
                                   (IssueCode.BAD_ROW, key, stored)) as cur:
            if await cur.fetchone() is not None:
                return False
        await self.issue(IssueCode.BAD_ROW, note, key, uid)
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

    async def mark_verified(self, verified: Sequence[Tuple[float, str]]) -> None:
        """Record ``(verified_at, zip_path)`` of ZIPs that passed ``verify``, in one commit."""
        if verified:
            async with self._txn():
                await self.db.executemany("UPDATE zips SET verified_at=? WHERE zip_path=?", verified)

    async def move_zip(self, old: str, new: str, members_digest: str) -> bool:
        """A recorded ZIP now lies at ``new`` (renamed by someone; same identity and members): its row and
        its study follow the new path. False, changing nothing, when ``old`` is not an ``ok`` ZIP with
        these members."""
        async with self._txn():
            cur = await self.db.execute(
                "UPDATE zips SET zip_path=? WHERE zip_path=? AND status='ok' "
                "AND (members_digest IS NULL OR members_digest='' OR members_digest=?)", (new, old, members_digest))
            if cur.rowcount != 1:
                return False
            await self.db.execute("UPDATE studies SET zip_path=? WHERE zip_path=?", (new, old))
        return True

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
            # An append with fsync on the backup volume: through the seam, never on the event loop.
            await offload(append_issue_csv, self.issues_csv, [iso_time(now), code, uid, shown, detail])

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

    async def condition_since(self, code: str) -> Optional[float]:
        """When an ongoing condition (see :meth:`condition`) started; None when it is not active."""
        async with self.db.execute("SELECT since FROM conditions WHERE code=?", (code,)) as cur:
            row = await cur.fetchone()
        return float(row[0]) if row else None

    async def mark_presence(self, present: AbstractSet[str], now: Optional[float] = None) -> Tuple[int, int]:
        """After a scan of every study row in Horos: record which known studies Horos no longer has.

        ``last_seen`` stays NULL while Horos has the study. When a scan no longer finds it, it becomes the
        time of the last scan that did (meta ``presence_scan``; on the very first scan, when the study was
        exported), and is cleared if the study comes back. Only those changes are written, so a scan
        costs one small commit. Nothing is ever deleted: the study's record and ZIPs stay. Returns
        (studies newly gone, studies back).
        """
        now = time.time() if now is None else now
        async with self.db.execute("SELECT value FROM meta WHERE key='presence_scan'") as cur:
            row = await cur.fetchone()
        previous = float(row[0]) if row else None
        gone, back = [], []
        async with self.db.execute("SELECT key, last_seen, exported_at FROM studies") as cur:
            async for key, last_seen, exported_at in cur:
                if key in present:
                    if last_seen is not None:
                        back.append((key,))
                elif last_seen is None:
                    gone.append((previous or exported_at or now, key))
        async with self._txn():
            await self.db.executemany("UPDATE studies SET last_seen=? WHERE key=?", gone)
            await self.db.executemany("UPDATE studies SET last_seen=NULL WHERE key=?", back)
            await self.db.execute("INSERT OR REPLACE INTO meta VALUES ('presence_scan', ?)", (repr(now),))
        return len(gone), len(back)


FULL_BELOW = 16 << 20
"""Below this much free space, a ledger error is the full volume's doing, not damage."""


VOLUME_SIGNS = ("full", "disk i/o error", "readonly", "read-only", "unable to open")
"""Words of a SQLite error that name the volume under the ledger, not the ledger (see :func:`fault`)."""


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
    text = str(exc).lower()
    if "full" in text or (free is not None and free < FULL_BELOW):
        shown = human_bytes(free) if free is not None else "no space"
        return DiskFull(f"the backup volume is full ({shown} free): the ledger {path} cannot be written "
                        f"({exc}). The ledger is fine: do not move it. Free space and run again")
    if free is None or any(sign in text for sign in VOLUME_SIGNS[1:]):
        # The disk failed under a commit (or went read-only, or away): the volume's fault, not damage.
        return VolumeError(f"the backup volume failed while the ledger {path} was written ({exc}): is the disk "
                           f"still connected? Nothing unfinished was recorded as done. Do not move the ledger; "
                           f"check the disk (Disk Utility's First Aid, 'horos-backup doctor') and run again")
    return LedgerError(
        f"ledger {path} is damaged ({exc}). Nothing was changed. Move it aside (mv '{path}' "
        f"'{path}.damaged') and run 'horos-backup rebuild-ledger' to rebuild it from the ZIPs on disk")
