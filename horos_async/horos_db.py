"""The only module that speaks Horos's SQL: read-only, short transactions, names per docs/design/horos-database.md.

Horos (rollback journal since 2018) cannot commit while we hold a read transaction, so:
candidates are scanned in small keyset pages, each its own statement read to the end; one batch's
studies, series and images are read in one short ``BEGIN ... COMMIT`` and released before any file is
touched. Busy/locked databases and hot journals are retried with backoff, then reported as
``DatabaseUnavailable`` ("try later"), never as "no studies".

A malformed row is its study's problem, never the run's: text that is not UTF-8 is read again with
replacement characters, and values that cannot be what their column means (an infinite date, a path
holding a BLOB or a NUL byte) become a ``BAD_ROW`` note on the study (``StudyRow.problems``,
``ImageRef.problem``) and are read as absent.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import math
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Dict, List, Optional, Sequence, Set, Tuple

import aiosqlite

from horos_async.config import Config
from horos_async.errors import DatabaseUnavailable, SchemaError, VolumeError
from horos_async.models import StudyRow
from horos_async.timezones import cocoa_to_local, cocoa_to_unix, load_zone, system_zone

log = logging.getLogger(__name__)

# Columns we cannot work without; everything else is optional and read as NULL when absent.
REQUIRED = {
    "ZSTUDY": ("Z_PK", "ZSTUDYINSTANCEUID"),
    "ZSERIES": ("Z_PK", "ZSTUDY", "ZMODALITY"),
    "ZIMAGE": ("Z_PK", "ZSERIES", "ZPATHNUMBER", "ZPATHSTRING"),
}
STUDY_COLUMNS = ("Z_PK", "ZSTUDYINSTANCEUID", "ZPATIENTUID", "ZNAME", "ZPATIENTID", "ZDATEOFBIRTH", "ZDATE",
                 "ZDATEADDED", "ZMODALITY", "ZSTUDYNAME", "ZACCESSIONNUMBER")
SCAN_COLUMNS = ("Z_PK", "ZSTUDYINSTANCEUID", "ZPATIENTUID", "ZDATE", "ZDATEADDED")
SERIES_COLUMNS = ("Z_PK", "ZSTUDY", "ZID", "ZNAME", "ZMODALITY")
IMAGE_COLUMNS = ("Z_PK", "ZSERIES", "ZINSTANCENUMBER", "ZFRAMEID", "ZPATHNUMBER", "ZPATHSTRING")

_TRANSIENT = ("database is locked", "database table is locked", "readonly", "unable to open",
              "disk i/o error", "locking protocol")
TEXT_COLUMNS = frozenset(("ZSTUDYINSTANCEUID", "ZPATIENTUID", "ZNAME", "ZPATIENTID", "ZMODALITY", "ZSTUDYNAME",
                          "ZACCESSIONNUMBER"))
"""Read as text whatever their storage class (a BLOB or a number there is odd data, not a reason to fail).
``ZPATHSTRING`` is not among them: a path that is not text names no file (a ``BAD_ROW``)."""
_REPLACING = functools.partial(str, encoding="utf-8", errors="replace")
"""The text factory for a statement that met text that is not UTF-8 (slower than ``str``: used only then)."""
COUNT_COLUMNS = (
    "(SELECT COUNT(*) FROM ZSERIES cs JOIN ZIMAGE ci ON ci.ZSERIES = cs.Z_PK WHERE cs.ZSTUDY = st.Z_PK)",
    "(SELECT COUNT(*) FROM ZSERIES cs WHERE cs.ZSTUDY = st.Z_PK "
    "AND EXISTS (SELECT 1 FROM ZIMAGE ci WHERE ci.ZSERIES = cs.Z_PK))")
"""(image rows, series holding image rows) of one study row (docs/design/horos-database.md §12)."""


@dataclass(frozen=True)
class ImageRef:
    """One ``ZIMAGE`` row joined with its series: enough to find and place the file."""

    series_pk: int
    series_number: Optional[int]
    series_description: str
    modality: str
    instance_number: Optional[int]
    path_number: Optional[int]
    path_string: Optional[str]
    pk: int = 0
    """``ZIMAGE.Z_PK`` (named in reports about the row)."""
    problem: str = ""
    """Why the row names no usable file although it names one (``ZPATHSTRING`` a BLOB, with a NUL byte or
    not UTF-8; ``ZPATHNUMBER`` not a whole number); both path fields are then None."""


@dataclass(frozen=True)
class DatabaseIdentity:
    """What makes one ``Database.sql`` this one and not another (see :meth:`HorosReader.identity`)."""

    path: str
    """The resolved path that was read."""
    inode: int
    store_uuid: str
    """``Z_METADATA.Z_UUID``, Core Data's store UUID ("" when the table is absent)."""


def bucket_folder(n: int, size: int) -> int:
    """Horos's bucket: F = (n div S + 1) * S (folder F holds F-S ... F-1)."""
    return (n // size + 1) * size


def resolve_image_path(img: ImageRef, data_root: Path, folder_size: int,
                       path_map: Sequence[Tuple[str, str]] = ()) -> Tuple[Optional[Path], bool]:
    """The absolute file of one image row and whether it is linked (outside DATABASE.noindex).

    Returns (None, False) when the row names no file at all.
    """
    noindex = data_root / "DATABASE.noindex"
    if img.path_number is not None:  # the name "<n>.dcm" (-[DicomImage path]), whatever ZPATHSTRING says
        n = int(img.path_number)
        return noindex / str(bucket_folder(n, folder_size)) / f"{n}.dcm", False
    s = img.path_string or ""
    if not s.strip():
        return None, False
    if s.startswith("/"):  # a linked file: the path as-is (no normalising: ".." may cross a symlink)
        for old, new in path_map:
            if s == old or s.startswith(old.rstrip("/") + "/"):
                s = new.rstrip("/") + s[len(old.rstrip("/")):]
                break
        return Path(s), True
    # A relative name: the bucket comes from its leading digits (+[DicomImage completePathForLocalPath:]).
    s = s.strip()
    digits = ""
    for ch in s:
        if not ch.isdigit():
            break
        digits += ch
    n = int(digits) if digits else 0
    return noindex / str(bucket_folder(n, folder_size)) / s, False


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and any(t in str(exc).lower() for t in _TRANSIENT)


class HorosReader:
    """Read-only access to ``Database.sql``; use as ``async with HorosReader(cfg) as db``."""

    def __init__(self, cfg: Config, *, busy_seconds: Optional[float] = None, page_size: int = 500) -> None:
        self.cfg = cfg
        self.path = cfg.database
        self.busy_seconds = cfg.db_busy_seconds if busy_seconds is None else busy_seconds
        self.page_size = page_size
        # A ZoneInfo converts ~5x faster than the C library's localtime; None falls back to the latter.
        self.zone = load_zone(cfg.timezone) if cfg.timezone else system_zone()
        self.data_root = cfg.data_root
        self.journal_mode = "unknown"
        self._db: Optional[aiosqlite.Connection] = None
        self._cols: Dict[str, Set[str]] = {}
        self._has_metadata = False

    # -- connection --------------------------------------------------------------------------------
    async def __aenter__(self) -> "HorosReader":
        await self._retry(self._open, "open")
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection (releases every lock)."""
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def _open(self) -> None:
        if not self.path.is_file():
            # Not "busy, will retry": nothing is there to wait for (a wrong 'horos_data', or the volume
            # is not mounted), the same as a missing Horos folder (exit 7).
            raise VolumeError(
                f"Horos database not found at {self.path}{self.cfg.horos_data_hint()}; check 'horos_data' in "
                f"the config and that the Horos volume is mounted. Nothing was written")
        await self.close()
        # as_uri() quotes '#', '?' and spaces: a hand-built "file:" URI could open another (empty) file.
        uri = self.path.resolve().as_uri() + "?mode=ro"
        db = await aiosqlite.connect(uri, uri=True, isolation_level=None,
                                     timeout=min(2.0, max(0.05, self.busy_seconds)))
        try:
            await db.execute("PRAGMA query_only=1")
            async with db.execute("PRAGMA journal_mode") as cur:
                row = await cur.fetchone()
            self.journal_mode = (row[0] if row else "unknown").lower()
            self._cols = {}
            for table in ("ZSTUDY", "ZSERIES", "ZIMAGE"):
                async with db.execute(f"PRAGMA table_info({table})") as cur:
                    self._cols[table] = {r[1].upper() for r in await cur.fetchall()}
            async with db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='Z_METADATA'") as cur:
                self._has_metadata = await cur.fetchone() is not None
            self._check_schema()
        except BaseException:
            # Every way out closes the connection: its thread would keep the process alive after the
            # error was printed, and launchd starts no new run meanwhile (docs/design/durability.md §7).
            await db.close()
            raise
        self._db = db

    def _check_schema(self) -> None:
        for table, cols in REQUIRED.items():
            have = self._cols.get(table) or set()
            if not have:
                raise SchemaError(f"{self.path}: table {table} is missing: is this a Horos/OsiriX Database.sql?")
            lacking = [c for c in cols if c not in have]
            if lacking:
                raise SchemaError(f"{self.path}: table {table} lacks column(s) {', '.join(lacking)}; "
                                  f"this Horos database version is not supported")

    async def _retry(self, fn, what: str):
        """Run ``fn`` retrying transient SQLite errors with backoff within ``busy_seconds``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.busy_seconds
        delay = 0.1
        while True:
            try:
                return await self._decoding(fn)
            except sqlite3.DatabaseError as exc:
                if not _is_transient(exc):
                    raise DatabaseUnavailable(
                        f"cannot read Horos database {self.path} ({what}): {exc}; run "
                        f"'horos-backup doctor' and check the file is a Horos Database.sql") from None
                if loop.time() + delay > deadline:
                    raise DatabaseUnavailable(self._unavailable_message(exc)) from None
                log.info("Horos database %s (%s); retrying in %.1fs", exc, what, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _decoding(self, fn):
        """Run ``fn``; if a text value is not UTF-8 (a malformed row), run it again reading text with
        replacement characters (U+FFFD), which the row's readers then report as a ``BAD_ROW``."""
        try:
            return await fn()
        except sqlite3.OperationalError as exc:
            if "could not decode" not in str(exc).lower():
                raise
        log.info("Horos database %s: text that is not UTF-8; reading it with replacement characters", self.path)
        self._db.text_factory = _REPLACING
        try:
            return await fn()
        finally:
            self._db.text_factory = str

    def _unavailable_message(self, exc: BaseException) -> str:
        journal = Path(str(self.path) + "-journal")
        text = str(exc).lower()
        if "readonly" in text and journal.exists():
            return (f"Horos database {self.path} has a hot journal ({journal.name}) left by an interrupted "
                    f"write; open Horos so it can recover the database. Database unavailable, will retry "
                    f"next run")
        if "locked" in text:
            return (f"Horos database {self.path} stayed locked for {self.busy_seconds:.0f}s (Horos is "
                    f"writing). Database busy, will retry next run")
        return f"Horos database {self.path} unavailable ({exc}); will retry next run"

    # -- queries -----------------------------------------------------------------------------------
    def _select(self, table: str, columns: Sequence[str], alias: str) -> str:
        have = self._cols[table]
        return ", ".join(("NULL" if c not in have else f"CAST({alias}.{c} AS TEXT)" if c in TEXT_COLUMNS
                          else f"{alias}.{c}") for c in columns)

    def _modality_filter(self) -> Tuple[str, List[str]]:
        mods = list(self.cfg.modalities)
        marks = ",".join("?" * len(mods))
        return (f"EXISTS (SELECT 1 FROM ZSERIES s WHERE s.ZSTUDY = st.Z_PK "
                f"AND UPPER(TRIM(s.ZMODALITY)) IN ({marks}))", mods)

    def _study(self, r: Sequence) -> StudyRow:
        pk, notes = int(r[0]), []
        for i in (1, 2, 3):  # the identity and the name: worth a note when they had to be replaced
            if r[i] and "\ufffd" in r[i]:
                notes.append(f"ZSTUDY Z_PK={pk}: {STUDY_COLUMNS[i]} is not valid UTF-8; read with replacement "
                             f"characters")
        dob = cocoa_to_local(_date_value(r[5], pk, "ZDATEOFBIRTH", notes), self.zone)
        study_date = cocoa_to_local(_date_value(r[6], pk, "ZDATE", notes), self.zone)
        return StudyRow(
            pk=pk, uid=(r[1] or "").strip(), patient_uid=r[2] or "", patient_name=r[3] or "",
            patient_id=r[4] or "", birth_date=dob.date() if dob else None, study_date=study_date,
            date_added=cocoa_to_unix(_date_value(r[7], pk, "ZDATEADDED", notes)), modalities=r[8] or "",
            description=r[9] or "", accession=r[10] or "", problems=tuple(notes))

    async def iter_studies(self, after_pk: int = 0) -> AsyncIterator[StudyRow]:
        """Every study with a series in ``cfg.modalities``, by ``Z_PK``, in short keyset pages."""
        async for r in self._pages(STUDY_COLUMNS, after_pk):
            yield self._study(r)

    async def iter_scan_rows(self) -> AsyncIterator[Tuple[int, str, str, Optional[float], Optional[float]]]:
        """The scan's lean view of every eligible study: (pk, uid, patient_uid, ZDATE, ZDATEADDED) raw."""
        async for r in self._pages(SCAN_COLUMNS):
            yield r

    async def scan_pages(self, counts: bool = False) -> AsyncIterator[List[Sequence]]:
        """:meth:`iter_scan_rows` a page at a time (the scan's loop: no per-row hop through a generator),
        each row with two more values: its image rows and the series holding them when ``counts``
        (docs/design/horos-database.md §12), else NULL."""
        extra = COUNT_COLUMNS if counts else ("NULL", "NULL")
        async for page in self._pages(SCAN_COLUMNS, by_page=True, extra=extra):
            yield page

    async def _pages(self, columns: Sequence[str], after_pk: int = 0, by_page: bool = False,
                     extra: Sequence[str] = ()) -> AsyncIterator:
        """Rows of eligible studies in keyset pages of ``page_size``, each page its own short read
        (``by_page``: each page as one list; ``extra``: more SQL expressions per row)."""
        cond, params = self._modality_filter()
        more = "".join(f", {e}" for e in extra)
        sql = (f"SELECT {self._select('ZSTUDY', columns, 'st')}{more} FROM ZSTUDY st "
               f"WHERE st.Z_PK > ? AND {cond} ORDER BY st.Z_PK LIMIT {self.page_size}")
        last = after_pk
        while True:
            async def page():
                async with self._db.execute(sql, [last, *params]) as cur:
                    return await cur.fetchall()

            rows = await self._retry(page, "scan")
            if by_page:
                yield rows
            else:
                for r in rows:
                    yield r
            if len(rows) < self.page_size:
                return
            last = rows[-1][0]

    async def scan_rows_by_pk(self, pks: Sequence[int], counts: bool = False) -> List[Sequence]:
        """The scan's lean view (see :meth:`iter_scan_rows`) of these study rows only; with ``counts``,
        each row also carries its image rows and the series holding them (docs/design/horos-database.md §12)."""
        if not pks:
            return []
        cond, params = self._modality_filter()
        marks = ",".join("?" * len(pks))
        extra = "".join(f", {c}" for c in COUNT_COLUMNS) if counts else ""
        sql = (f"SELECT {self._select('ZSTUDY', SCAN_COLUMNS, 'st')}{extra} FROM ZSTUDY st "
               f"WHERE st.Z_PK IN ({marks}) AND {cond} ORDER BY st.Z_PK")

        async def q():
            async with self._db.execute(sql, [*pks, *params]) as cur:
                return await cur.fetchall()

        return await self._retry(q, "scan")

    async def rows_mark(self) -> Tuple[str, int]:
        """Where the image rows stand: (the store's UUID, the highest ``ZIMAGE.Z_PK``); two index lookups.

        Core Data hands out ``Z_PK`` from ``Z_PRIMARYKEY.Z_MAX`` and never reuses one, so every image row
        added later has a higher number (docs/design/horos-database.md §12); a rebuilt store has a new UUID.
        """
        async def q():
            store = ""
            if self._has_metadata:
                async with self._db.execute("SELECT CAST(Z_UUID AS TEXT) FROM Z_METADATA ORDER BY Z_VERSION "
                                            "LIMIT 1") as cur:
                    row = await cur.fetchone()
                store = str(row[0] or "") if row else ""
            async with self._db.execute("SELECT MAX(Z_PK) FROM ZIMAGE") as cur:
                top = (await cur.fetchone())[0]
            return store, _int(top) or 0

        return await self._retry(q, "scan")

    async def studies_with_rows(self, low: int, high: int, step: int = 50_000) -> Set[int]:
        """``ZSTUDY.Z_PK`` of the studies owning the image rows with ``low < Z_PK <= high``, read in short
        statements of ``step`` rows each (the cost follows the rows added, not the store's size)."""
        out: Set[int] = set()
        sql = ("SELECT DISTINCT se.ZSTUDY FROM ZIMAGE im JOIN ZSERIES se ON se.Z_PK = im.ZSERIES "
               "WHERE im.Z_PK > ? AND im.Z_PK <= ?")
        for start in range(low, high, step):
            async def q(start=start):
                async with self._db.execute(sql, (start, min(high, start + step))) as cur:
                    return await cur.fetchall()

            out.update(r[0] for r in await self._retry(q, "scan") if r[0] is not None)
        return out

    async def read_batch(self, wanted: Sequence[int]) -> List[Tuple[StudyRow, List[ImageRef]]]:
        """These study rows (by ``Z_PK``, as the scan found them) and their images, read in one short
        transaction released before returning. Rows no longer eligible are left out."""
        if not wanted:
            return []

        async def txn():
            db = self._db
            await db.execute("BEGIN")
            try:
                cond, params = self._modality_filter()
                marks = ",".join("?" * len(wanted))
                async with db.execute(
                        f"SELECT {self._select('ZSTUDY', STUDY_COLUMNS, 'st')} FROM ZSTUDY st "
                        f"WHERE st.Z_PK IN ({marks}) AND {cond} ORDER BY st.Z_PK",
                        [*wanted, *params]) as cur:
                    studies = [self._study(r) for r in await cur.fetchall()]
                studies += await self._sibling_rows(db, studies)
                pks = [s.pk for s in studies]
                images: Dict[int, List[ImageRef]] = {pk: [] for pk in pks}
                if pks:
                    marks = ",".join("?" * len(pks))
                    sql = (f"SELECT se.ZSTUDY, {self._select('ZSERIES', SERIES_COLUMNS[2:], 'se')}, "
                           f"{self._select('ZIMAGE', IMAGE_COLUMNS, 'im')} FROM ZIMAGE im "
                           f"JOIN ZSERIES se ON im.ZSERIES = se.Z_PK WHERE se.ZSTUDY IN ({marks}) "
                           f"ORDER BY se.ZSTUDY, se.Z_PK, im.Z_PK")
                    async with db.execute(sql, pks) as cur:
                        async for r in cur:
                            images[r[0]].append(_image(r))
            finally:
                await db.execute("COMMIT")
            return [(s, images[s.pk]) for s in studies]

        return await self._retry(txn, "batch")

    async def _sibling_rows(self, db, studies: List[StudyRow]) -> List[StudyRow]:
        """Other rows of the same studies (same UID and patientUID) that hold no CT/MR series themselves:
        Horos files them into the same study, so their images belong in its ZIP (an SR, a PT series)."""
        if not studies:
            return []
        uids = sorted({s.uid for s in studies if s.uid})
        keys, have = {s.key for s in studies}, {s.pk for s in studies}
        cond = f"st.ZSTUDYINSTANCEUID IN ({','.join('?' * len(uids))})" if uids else "0"
        if any(not s.uid for s in studies):
            cond += " OR st.ZSTUDYINSTANCEUID IS NULL OR TRIM(st.ZSTUDYINSTANCEUID) = ''"
        async with db.execute(f"SELECT {self._select('ZSTUDY', STUDY_COLUMNS, 'st')} FROM ZSTUDY st "
                              f"WHERE {cond} ORDER BY st.Z_PK", uids) as cur:
            rows = [self._study(r) for r in await cur.fetchall()]
        return [r for r in rows if r.pk not in have and r.key in keys]

    async def identity(self) -> "DatabaseIdentity":
        """Which database file this is: its resolved path, inode, and Core Data store UUID.

        A Horos that fell back to an empty ``~/Documents/Horos Data``, or a database rebuilt as a new
        file, shows a new inode and a new ``Z_METADATA.Z_UUID`` (docs/design/horos-database.md §2).
        """
        async def q():
            try:
                async with self._db.execute("SELECT Z_UUID FROM Z_METADATA ORDER BY Z_VERSION LIMIT 1") as cur:
                    row = await cur.fetchone()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc).lower():
                    return ""
                raise
            return str(row[0] or "") if row else ""

        store_uuid = await self._retry(q, "identity")
        st = self.path.stat()
        return DatabaseIdentity(str(self.path.resolve()), st.st_ino, store_uuid)

    async def iter_study_keys(self) -> AsyncIterator[Tuple[int, str, str]]:
        """(Z_PK, ZSTUDYINSTANCEUID, ZPATIENTUID) of every study row, whatever its modality, in short
        keyset pages: what the ledger's "last seen in Horos" needs (docs/design/horos-database.md §11)."""
        sql = (f"SELECT {self._select('ZSTUDY', ('Z_PK', 'ZSTUDYINSTANCEUID', 'ZPATIENTUID'), 'st')} FROM ZSTUDY st "
               f"WHERE st.Z_PK > ? ORDER BY st.Z_PK LIMIT {self.page_size}")
        last = 0
        while True:
            async def page():
                async with self._db.execute(sql, [last]) as cur:
                    return await cur.fetchall()

            rows = await self._retry(page, "presence scan")
            for r in rows:
                yield int(r[0]), str(r[1] or ""), str(r[2] or "")
            if len(rows) < self.page_size:
                return
            last = rows[-1][0]

    async def count_images(self, pks: Sequence[int]) -> int:
        """Number of image rows of these studies (a final re-check before "done")."""
        if not pks:
            return 0
        marks = ",".join("?" * len(pks))

        async def q():
            async with self._db.execute(
                    f"SELECT COUNT(*) FROM ZIMAGE im JOIN ZSERIES se ON im.ZSERIES = se.Z_PK "
                    f"WHERE se.ZSTUDY IN ({marks})", list(pks)) as cur:
                return (await cur.fetchone())[0]

        return await self._retry(q, "recount")


def _image(r: Sequence) -> ImageRef:
    """An ImageRef from a row of the batch's image query (study, series columns, image columns)."""
    number, path, problem = _int(r[8]), r[9], ""
    if r[8] is not None and r[8] != "" and number is None:
        problem = f"ZPATHNUMBER holds {_shown(r[8])}, not a file number"
    elif path is not None and not isinstance(path, str):
        problem = f"ZPATHSTRING holds {type(path).__name__} data, not a path"
    elif path and "\x00" in path:
        problem = "ZPATHSTRING contains a NUL byte"
    elif path and "\ufffd" in path:
        problem = "ZPATHSTRING is not valid UTF-8"
    if problem:
        number = path = None
    return ImageRef(series_pk=int(r[5]), series_number=_int(r[1]), series_description=r[2] or "",
                    modality=(r[3] or "OT").strip().upper(), instance_number=_int(r[6]), path_number=number,
                    path_string=path, pk=int(r[4]), problem=problem)


def _date_value(v, pk: int, column: str, notes: List[str]) -> Optional[float]:
    """A Core Data date column as a finite number, or None; a value that cannot be one gets a note."""
    if v is None or v == "":
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        f = math.nan
    if math.isfinite(f) and cocoa_to_local(f, dt.timezone.utc) is not None:  # and a year datetime can hold
        return f
    notes.append(f"ZSTUDY Z_PK={pk}: {column} holds {_shown(v)}, not a date; read as no date")
    return None


def _shown(v) -> str:
    """A raw column value for a note, kept short."""
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _int(v) -> Optional[int]:
    try:
        return None if v is None or v == "" else int(v)
    except (TypeError, ValueError, OverflowError):
        return None


# -- synchronous reads for the index snapshot and doctor (docs/design/horos-database.md §8, §11) ------------
INDEX_TABLES = (("studies", "ZSTUDY"), ("series", "ZSERIES"), ("images", "ZIMAGE"))
"""What a snapshot counts, as (name in the manifest, table)."""


def connect_readonly(path: Path, timeout: float = 2.0) -> sqlite3.Connection:
    """A read-only connection to a Horos store (or a copy of one): ``mode=ro`` URI, ``query_only``, and
    autocommit, so every transaction is an explicit ``BEGIN ... COMMIT`` (docs/design/durability.md §2)."""
    con = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True, timeout=timeout,
                          isolation_level=None)
    try:
        con.execute("PRAGMA query_only=1")
    except BaseException:
        con.close()
        raise
    return con


def journal_mode(con: sqlite3.Connection) -> str:
    """``delete`` (Horos since 2018), ``wal`` (older stores), or whatever the store says, lower case."""
    row = con.execute("PRAGMA journal_mode").fetchone()
    return str(row[0] if row else "unknown").lower()


def row_counts(con: sqlite3.Connection) -> Dict[str, int]:
    """Rows of the study, series and image tables. Call it inside the transaction whose state the counts
    must describe (a snapshot compares them with its copy's)."""
    return {name: int(con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]) for name, table in INDEX_TABLES}


def integrity(con: sqlite3.Connection) -> str:
    """``PRAGMA integrity_check``: ``ok``, or the first problems SQLite reports, joined."""
    rows = [str(r[0]) for r in con.execute("PRAGMA integrity_check(20)")]
    return "ok" if rows == ["ok"] else "; ".join(rows) or "no answer"


AUTOCLEAN_MODES = {0: "oldest studies", 1: "oldest unopened", 2: "least recently added"}
"""Horos's ``AutocleanSpaceMode`` values (``DicomDatabase+Clean.mm`` ``cleanForFreeSpaceMB:``)."""
AUTOCLEAN_KEYS = {0: ("ZDATE",), 1: ("ZDATEOPENED", "ZDATEADDED", "ZDATE"), 2: ("ZDATEADDED", "ZDATE")}


@dataclass(frozen=True)
class CleanCandidate:
    """A study Horos's auto-cleaning would delete early, in its order."""

    uid: str
    patient_uid: str
    when: Optional[float]
    """The date auto-cleaning sorts on, as Unix seconds (None when the study has none)."""
    eligible: bool
    """It has a series in the configured modalities (so horos-backup is meant to hold it)."""


def autoclean_first(con: sqlite3.Connection, mode: int, limit: int, modalities: Sequence[str], *,
                    spare_commented: bool = True, now: Optional[float] = None) -> List[CleanCandidate]:
    """The first ``limit`` studies Horos's space auto-cleaning would delete, in its order
    (docs/design/horos-database.md §11): never locked studies, studies in an album, studies added in the
    last two hours, nor (``dontDeleteStudiesWithComments``, default on) studies with a comment."""
    have = {r[1].upper() for r in con.execute("PRAGMA table_info(ZSTUDY)")}

    def col(name: str) -> str:
        return f"st.{name}" if name in have else "NULL"

    keys = [col(c) for c in AUTOCLEAN_KEYS.get(mode, AUTOCLEAN_KEYS[2])]
    key = keys[0] if len(keys) == 1 else f"COALESCE({', '.join(keys)})"
    where = [f"COALESCE({col('ZLOCKEDSTUDY')}, 0) = 0"]
    if spare_commented:
        where += [f"COALESCE({col(c)}, '') = ''" for c in ("ZCOMMENT", "ZCOMMENT2", "ZCOMMENT3", "ZCOMMENT4")]
    now = time.time() if now is None else now
    where.append(f"({col('ZDATEADDED')} IS NULL OR {col('ZDATEADDED')} < ?)")
    params: List = [now - 2 * 3600 - 978307200]
    join = _album_join(con)
    if join:
        where.append(f"st.Z_PK NOT IN (SELECT {join[1]} FROM {join[0]})")
    marks = ",".join("?" * len(modalities)) or "''"
    sql = (f"SELECT {col('ZSTUDYINSTANCEUID')}, {col('ZPATIENTUID')}, {key} AS k, "
           f"EXISTS (SELECT 1 FROM ZSERIES s WHERE s.ZSTUDY = st.Z_PK AND UPPER(TRIM(s.ZMODALITY)) IN ({marks})) "
           f"FROM ZSTUDY st WHERE {' AND '.join(where)} ORDER BY k IS NULL, k, st.Z_PK LIMIT ?")
    rows = con.execute(sql, [*params, *modalities, limit]).fetchall()
    return [CleanCandidate(str(r[0] or "").strip(), str(r[1] or ""), cocoa_to_unix(r[2]), bool(r[3])) for r in rows]


def _album_join(con: sqlite3.Connection) -> Optional[Tuple[str, str]]:
    """(table, study column) of the album<->study join table, found in ``sqlite_master`` (§2)."""
    for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 'Z!_%STUDIES' "
                               "ESCAPE '!'"):
        cols = [r[1] for r in con.execute(f'PRAGMA table_info("{name}")')]
        study = [c for c in cols if c.upper().endswith("STUDIES")]
        if study and any(c.upper().endswith("ALBUMS") for c in cols):
            return f'"{name}"', f'"{study[0]}"'
    return None
