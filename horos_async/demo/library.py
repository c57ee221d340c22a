"""A seeded, deterministic Horos library: the built-in demo, the test fixtures and the benchmark data.

One code path makes all three, so the tests exercise what users see in ``horos-backup demo``. The
library follows docs/design/horos-database.md: a real SQLite ``Database.sql`` with the Core Data tables of §3, dates
encoded from local wall-clock time as in §5, study modalities built as in §6, and real DICOM files in
``DATABASE.noindex/<F>/<n>.dcm`` buckets (§4). A fixed set of special studies covers the awkward cases
(hostile names, linked and missing files, multi-frame, duplicate Study UIDs...). Each has a ``note``
that tests look up with ``DemoLibrary.study(note)``; the returned ``DemoStudy`` objects are the truth
that reader and engine tests compare against. The pydicom side lives in ``demo_dicom``.
"""

from __future__ import annotations

import datetime as dt
import random
import shutil
import sqlite3
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from horos_async.demo.builder import Builder, DemoStudy
from horos_async.demo.cases import SeriesSpec, StudySpec, ordinary_specs, special_specs
from horos_async.demo.schema import (DUE_MODALITIES, REFERENCE_UNIX, SCHEMA, bookkeeping, create_indexes,
                                     horos_study_modality, insert_row)


@dataclass(frozen=True)
class DemoLibrary:
    """A demo Horos library on disk and the truth about its studies."""

    root: Path
    """The folder passed to ``build_demo``, resolved."""
    horos_data: Path
    """``root / "Horos Data"``."""
    database: Path
    """``horos_data / "Database.sql"``."""
    linked_dir: Path
    """``root / "linked"``: files the database references by absolute path (not copied)."""
    timezone: str
    """IANA zone of the pretend Mac; dates were encoded from wall-clock time in it."""
    studies: Tuple[DemoStudy, ...]
    """Studies as built; ``add_study`` and ``add_images`` return new values and leave this unchanged."""
    folder_size: int = 10000
    """Files per ``DATABASE.noindex/<F>/`` bucket (Horos's ``DefaultFolderSizeForDB``)."""
    seed: int = 1234
    """Seed the library was built with; later additions derive their UIDs from it."""

    def study(self, note: str) -> DemoStudy:
        """The first study whose note equals ``note``."""
        for s in self.studies:
            if s.note == note:
                return s
        raise KeyError(f"no demo study with note {note!r}; notes: {sorted({s.note for s in self.studies})}")


def _sizes(ct_size: int, mr_size: int) -> Dict[str, int]:
    return {"CT": ct_size, "MR": mr_size, "PT": max(32, ct_size // 4)}


def build_demo(root: Path, *, studies: int = 12, seed: int = 1234, timezone: str = "America/Sao_Paulo",
               images_per_series: int = 3, ct_size: int = 64, mr_size: int = 64, series_per_study: int = 2,
               compressed_fraction: float = 0.2, journal_mode: str = "delete", now: Optional[float] = None,
               folder_size: int = 10000, first_path_number: int = 9995) -> DemoLibrary:
    """Build the special studies plus ``studies`` ordinary CT/MR studies under ``root`` (must be new)."""
    if journal_mode not in ("delete", "wal"):
        raise ValueError(f"journal_mode {journal_mode!r}: use 'delete' (Horos today) or 'wal' (older stores)")
    root = Path(root).resolve()
    horos_data, linked = root / "Horos Data", root / "linked"
    database = horos_data / "Database.sql"
    if database.exists():
        raise FileExistsError(f"{database} already exists; build the demo into an empty folder")
    for name in ("DATABASE.noindex", "INCOMING.noindex", "TEMP.noindex", "REPORTS"):
        (horos_data / name).mkdir(parents=True, exist_ok=True)
    linked.mkdir(exist_ok=True)
    (horos_data / "DB_VERSION").write_text("2.5", encoding="utf-8")
    now = time.time() if now is None else now
    conn = sqlite3.connect(str(database))
    try:
        conn.execute("PRAGMA synchronous=OFF")  # a demo build that crashes is simply rebuilt
        conn.executescript(SCHEMA)
        create_indexes(conn)
        b = Builder(conn, horos_data, linked, timezone, seed, now, folder_size, first_path_number,
                     _sizes(ct_size, mr_size))
        built = [b.write_study(s) for s in special_specs(seed, compressed_fraction > 0)]
        built.append(b.sample_study("sample-ct", "CT_small.dcm", 86400.0 * 40.5))
        built.append(b.sample_study("sample-mr", "MR_small.dcm", 86400.0 * 41.5))
        specs = ordinary_specs(studies, random.Random(seed), images_per_series, series_per_study,
                                compressed_fraction)
        built += [b.write_study(s) for s in specs]
        _albums_and_log(b, built)
        bookkeeping(conn, seed, b.maxima)
        conn.commit()
        conn.execute(f"PRAGMA journal_mode={journal_mode}")
    finally:
        conn.close()
    return DemoLibrary(root=root, horos_data=horos_data, database=database, linked_dir=linked,
                       timezone=timezone, studies=tuple(built), folder_size=folder_size, seed=seed)


def _albums_and_log(b: Builder, built: List[DemoStudy]) -> None:
    """Two of Horos's default smart albums, one plain album holding a study, two log lines."""
    for index, (name, smart, predicate) in enumerate((
            ("Today CT", 1, "(dateAdded >= $NSDATE_TODAY) AND (modality CONTAINS[cd] 'CT')"),
            ("Today MR", 1, "(dateAdded >= $NSDATE_TODAY) AND (modality CONTAINS[cd] 'MR')"),
            ("Teaching", 0, None))):
        insert_row(b.conn, "ZALBUM", {"Z_PK": b.alloc("Album"), "Z_ENT": 1, "Z_OPT": 1, "ZINDEX": index,
                                   "ZSMARTALBUM": smart, "ZNAME": name, "ZPREDICATESTRING": predicate})
    b.conn.execute("INSERT INTO Z_1STUDIES VALUES (?, ?)", (b.maxima["Album"], built[0].pk))
    for s in built[:2]:
        start = b.now - 86400 * 5 - REFERENCE_UNIX
        insert_row(b.conn, "ZLOGENTRY", {
            "Z_PK": b.alloc("LogEntry"), "Z_ENT": 3, "Z_OPT": 1, "ZNUMBERIMAGES": s.image_rows, "ZNUMBERERROR": 0,
            "ZSTARTTIME": start, "ZENDTIME": start + 3.5, "ZMESSAGE": "Complete", "ZPATIENTNAME": s.patient_name,
            "ZSTATUS": "Complete", "ZTYPE": "Receive", "ZORIGINNAME": "DEMO_SCANNER"})


def _reopen(lib: DemoLibrary, now: Optional[float], sizes: Dict[str, int]) -> Builder:
    """A builder that continues an existing library's key and file-name counters."""
    conn = sqlite3.connect(str(lib.database))
    conn.execute("PRAGMA busy_timeout=10000")
    highest = 0
    for number, string in conn.execute("SELECT ZPATHNUMBER, ZPATHSTRING FROM ZIMAGE"):
        if number is not None:
            highest = max(highest, number)
        elif string and string[:1].isdigit():
            highest = max(highest, int(string.split(".")[0]))
    b = Builder(conn, lib.horos_data, lib.linked_dir, lib.timezone, lib.seed, time.time() if now is None else now,
                 lib.folder_size, highest + 1, sizes)
    b.maxima.update(dict(conn.execute("SELECT Z_NAME, Z_MAX FROM Z_PRIMARYKEY")))
    return b


def _close(b: Builder) -> None:
    b.conn.executemany("UPDATE Z_PRIMARYKEY SET Z_MAX = ? WHERE Z_NAME = ?", [(v, k) for k, v in b.maxima.items()])
    b.conn.commit()
    b.conn.close()


def add_study(lib: DemoLibrary, *, modality: str = "CT", images: int = 3, date_added: Optional[float] = None,
              now: Optional[float] = None, patient_name: str = "Novo^Estudo",
              study_date: Optional[dt.datetime] = None, size: int = 64, note: str = "added") -> DemoStudy:
    """Append one CT/MR study; ``date_added`` is Unix seconds (default ``now``), ``study_date`` naive = local."""
    b = _reopen(lib, now, {modality: size})
    try:
        added = b.now if date_added is None else date_added
        start = study_date or dt.datetime(2024, 11, 5, 10, 0)
        if start.tzinfo is not None:  # an aware value is first seen on the pretend Mac's clock
            start = start.astimezone(b.zone).replace(tzinfo=None)
        spec = StudySpec(note, patient_name, [SeriesSpec(modality, images=images, description=f"{modality} added")],
                      start, dt.date(1985, 1, 1), f"P-NEW-{b.maxima['Study'] + 1:03d}", added_ago=b.now - added)
        return b.write_study(spec)
    finally:
        _close(b)


def add_images(lib: DemoLibrary, study: DemoStudy, count: int, now: Optional[float] = None,
               size: int = 64) -> DemoStudy:
    """Add a series of ``count`` images to ``study`` as Horos would; pass and get back the latest DemoStudy."""
    modality = next((m for m in study.modalities if m in DUE_MODALITIES), "CT")
    b = _reopen(lib, now, {modality: size})
    try:
        name, pid, sex, born, uid, desc, accession, date = b.conn.execute(
            "SELECT ZNAME, ZPATIENTID, ZPATIENTSEX, ZDATEOFBIRTH, ZSTUDYINSTANCEUID, ZSTUDYNAME, ZACCESSIONNUMBER, "
            "ZDATE FROM ZSTUDY WHERE Z_PK = ?", (study.pk,)).fetchone()
        number = b.conn.execute("SELECT COALESCE(MAX(ZID), 0) + 1 FROM ZSERIES WHERE ZSTUDY = ? AND ZID < 5000",
                                (study.pk,)).fetchone()[0]

        def wall(value: float) -> dt.datetime:
            return dt.datetime.fromtimestamp(value + REFERENCE_UNIX, b.zone).replace(tzinfo=None)

        # The late series was acquired an hour after the study began, so ZDATE does not move.
        start = None if date is None else wall(date) + dt.timedelta(hours=1)
        spec = StudySpec(study.note, name or "", [], start, None if born is None else wall(born).date(), pid or "",
                      sex or "", added_ago=0.0, description=desc or "")
        header = dict(b.header(spec, uid, study.pk), AccessionNumber=accession)
        series = SeriesSpec(modality, images=count, number=number, description=f"{modality} late arrival")
        rng = np.random.default_rng([lib.seed, study.pk, number])
        _, files, rows = b.write_series(spec, series, study.pk, header, rng)
        modalities = [m for (m,) in b.conn.execute(
            "SELECT ZMODALITY FROM ZSERIES WHERE ZSTUDY = ? ORDER BY ZDATE, Z_PK", (study.pk,))]
        # Like Horos on each import: refresh dateAdded, the study modality and the image-count cache.
        b.conn.execute("UPDATE ZSTUDY SET ZDATEADDED = ?, Z_OPT = Z_OPT + 1, ZMODALITY = ?, "
                       "ZNUMBEROFIMAGES = ZNUMBEROFIMAGES + ? WHERE Z_PK = ?",
                       (b.now - REFERENCE_UNIX, horos_study_modality(modalities), rows, study.pk))
        distinct = tuple(dict.fromkeys(modalities))
        return replace(study, files=tuple(dict.fromkeys(study.files + tuple(files))),
                       image_rows=study.image_rows + rows, modalities=distinct,
                       due=any(m in DUE_MODALITIES for m in distinct))
    finally:
        _close(b)


def copy_library(lib: DemoLibrary, root: Path) -> DemoLibrary:
    """A copy of ``lib`` under ``root`` (must be new) that shares nothing with it.

    The tests build one pristine library per session and copy it for each test that needs its own: a copy
    costs a fraction of a build. Linked files are referenced by absolute path (docs/design/horos-database.md
    §4.3), so those rows are rewritten to point into the copy, as are the truth's file paths.
    """
    root = Path(root).resolve()
    if root.exists():
        raise FileExistsError(f"{root} already exists; copy the demo into a new folder")
    shutil.copytree(lib.root, root, symlinks=True)
    old, new = str(lib.root), str(root)

    def moved(path: Path) -> Path:
        text = str(path)
        return Path(new + text[len(old):]) if text == old or text.startswith(old + "/") else path

    database = moved(lib.database)
    conn = sqlite3.connect(str(database))
    try:
        conn.execute("UPDATE ZIMAGE SET ZPATHSTRING = ? || substr(ZPATHSTRING, ?) "
                     "WHERE substr(ZPATHSTRING, 1, ?) = ?", (new + "/", len(old) + 2, len(old) + 1, old + "/"))
        conn.commit()
    finally:
        conn.close()
    studies = tuple(replace(s, files=tuple(moved(f) for f in s.files), missing=tuple(moved(f) for f in s.missing))
                    for s in lib.studies)
    return replace(lib, root=root, horos_data=moved(lib.horos_data), database=database,
                   linked_dir=moved(lib.linked_dir), studies=studies)
