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
from typing import Any, Dict, List, Optional, Tuple
from zoneinfo import ZoneInfo

import numpy as np

from horos_async.demo import dicom as dd
from horos_async.demo.cases import SeriesSpec, StudySpec, ordinary_specs, special_specs
from horos_async.demo.schema import (DUE_MODALITIES, ENTITIES, REFERENCE_UNIX, SCHEMA, bookkeeping,  # noqa: F401
                                     core_data_time, create_indexes, horos_patient_uid, horos_study_modality,
                                     insert_row)


@dataclass(frozen=True)
class DemoStudy:
    """The truth about one demo study, for tests to compare the reader and the engine against."""

    pk: int
    """``ZSTUDY.Z_PK``."""
    uid: str
    """``ZSTUDYINSTANCEUID`` (shared by the two duplicate-uid studies)."""
    patient_uid: str
    """``ZPATIENTUID``."""
    patient_name: str
    """Raw ``ZNAME``, ``^`` separators kept."""
    modalities: Tuple[str, ...]
    """Distinct series modalities in series-date order, e.g. ``("PT", "CT")``."""
    due: bool
    """True when at least one series is CT or MR (the default selection)."""
    files: Tuple[Path, ...]
    """Every distinct file the database references for the study, present or not; absolute, resolved."""
    missing: Tuple[Path, ...]
    """The subset of ``files`` deliberately absent from disk."""
    image_rows: int
    """Number of ``ZIMAGE`` rows (one per frame)."""
    study_date_local: Optional[dt.datetime]
    """Earliest image date (``ZDATE``), aware, in the demo time zone; None when ``ZDATE`` is NULL."""
    note: str
    """What the study exercises, e.g. ``multi-frame``; ordinary studies are ``ordinary-<k>``."""


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


class _Builder:
    """Writes studies (files and rows) into one open library and keeps Core Data's key counters."""

    def __init__(self, conn: sqlite3.Connection, horos_data: Path, linked_dir: Path, zone: str, seed: int,
                 now: float, folder_size: int, next_path: int, sizes: Dict[str, int]) -> None:
        self.conn, self.horos_data, self.linked_dir = conn, horos_data, linked_dir
        self.zone, self.seed, self.now, self.folder_size = ZoneInfo(zone), seed, now, folder_size
        self.next_path, self.sizes = next_path, sizes
        self.maxima = {name: 0 for name, _ in ENTITIES}

    def alloc(self, entity: str, count: int = 1) -> int:
        """Hand out ``count`` primary keys like Core Data (Z_MAX + 1 ...); return the first."""
        self.maxima[entity] += count
        return self.maxima[entity] - count + 1

    def stamp(self, wall: Optional[dt.datetime]) -> float:
        """Core Data value of a local wall-clock time; None means Horos's 1901 "no date" sentinel."""
        return core_data_time((wall or dt.datetime(1901, 1, 1)).replace(tzinfo=self.zone))

    def bucket_path(self, name: str) -> Path:
        n = int(name.split(".")[0])
        return self.horos_data / "DATABASE.noindex" / str((n // self.folder_size + 1) * self.folder_size) / name

    def _place(self, s: SeriesSpec, study_pk: int, index: int, sop: str) -> Tuple[Path, Dict[str, Any]]:
        """Where one file goes, and the ZIMAGE columns that point at it."""
        if s.where in ("db", "relative"):
            n = self.next_path
            self.next_path += 1
            if s.where == "db":
                return self.bucket_path(f"{n}.dcm"), {"ZPATHNUMBER": n}
            # Odd but tolerated data: a relative name and no path number, resolved by its digits.
            ext = "dcm" if index % 2 == 0 else "dicm"
            return self.bucket_path(f"{n}.{ext}"), {"ZPATHSTRING": f"{n}.{ext}",
                                                    "ZSTOREDEXTENSION": None if ext == "dcm" else ext}
        if s.where == "linked":
            path = self.linked_dir / f"CD{study_pk:04d}" / "DICOM" / f"IM{index + 1:04d}"
        else:  # Horos keeps its ROI SRs in ROIs/ and links them by absolute path (§4.3, §7)
            path = self.horos_data / "ROIs" / f"{sop}.dcm"
        return path, {"ZPATHSTRING": str(path), "ZSTOREDINDATABASEFOLDER": 0}

    def header(self, spec: StudySpec, uid: str, pk: int) -> Dict[str, Any]:
        """Patient and study attributes shared by every file of a study."""
        return {"PatientName": spec.name, "PatientID": spec.patient_id,
                "PatientBirthDate": spec.birth.strftime("%Y%m%d") if spec.birth else "",
                "PatientSex": spec.sex, "StudyInstanceUID": uid, "StudyID": "1",
                "AccessionNumber": f"ACC{pk:06d}", "StudyDescription": spec.description,
                "InstitutionName": "Hospital Demo", "ReferringPhysicianName": ""}

    def _dates(self, spec: StudySpec, s: SeriesSpec, i: int) -> Dict[str, Any]:
        if spec.start is None:
            return {}
        tags = {"StudyDate": spec.start.strftime("%Y%m%d")}
        if not spec.date_only:
            series_start = spec.start + dt.timedelta(seconds=s.offset)
            acquired = series_start + dt.timedelta(seconds=2 * i)
            for what, when in (("Study", spec.start), ("Series", series_start), ("Acquisition", acquired),
                               ("Content", acquired)):
                tags[what + "Date"], tags[what + "Time"] = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
        return tags

    def write_series(self, spec: StudySpec, s: SeriesSpec, study_pk: int, header: Dict[str, Any],
                     rng: np.random.Generator) -> Tuple[Optional[float], List[Path], int]:
        """Write one series' files and rows; return (series ZDATE, files, image rows)."""
        spk = self.alloc("Series")
        suid = dd.make_uid(self.seed, "series", spk)
        size = self.sizes.get(s.modality, 32)
        phantom = dd.Phantom(s.modality, size, rng) if s.modality != "SR" else None
        files: List[Path] = []
        first_date: Optional[float] = None
        key = f"{s.number:08d} {suid}"
        for i in range(s.images):
            ipk = self.alloc("Image", s.frames)
            sop = dd.make_uid(self.seed, "image", ipk)
            tags = dict(header, SeriesInstanceUID=suid, SeriesNumber=s.number, SeriesDescription=s.description,
                        ProtocolName=s.description, InstanceNumber=i + 1, **self._dates(spec, s, i))
            # Horos files the image under the header's date, read as local time (§5).
            stamp = self.stamp(dd.horos_wall_time(tags))
            first_date = stamp if first_date is None else first_date
            path, where = self._place(s, study_pk, i, sop)
            location = -100.0 + 2.5 * i
            if phantom is not None:
                tags["FrameOfReferenceUID"] = dd.make_uid(self.seed, "frame-of-reference", study_pk)
            dd.write_instance(path, s.modality, sop, tags, phantom, i, s.frames, s.rle, location)
            files.append(path)
            if s.frames > 1:  # Horos gives each multi-frame file a series key of its own (§4.4)
                key = f"{s.number:08d} {suid}-{i + 1}-{sop}"
            for f in range(s.frames):
                row = {"Z_PK": ipk + f, "Z_ENT": 2, "Z_OPT": 1, "ZSERIES": spk, "ZDATE": stamp,
                       "ZINSTANCENUMBER": i + 1 + f, "ZCOMPRESSEDSOPINSTANCEUID": dd.packed_uid(sop),
                       # Horos stores NULL whenever a value equals its default (§1.3).
                       "ZFRAMEID": f if s.frames > 1 else None,
                       "ZSTOREDNUMBEROFFRAMES": s.frames if s.frames > 1 else None,
                       "ZSTOREDMODALITY": None if s.modality == "CT" else s.modality,
                       "ZSTOREDWIDTH": None if size == 512 else size, "ZSTOREDHEIGHT": None if size == 512 else size,
                       "ZSLICELOCATION": None if phantom is None else location}
                row.update(where)
                insert_row(self.conn, "ZIMAGE", row)
        insert_row(self.conn, "ZSERIES", {
            "Z_PK": spk, "Z_ENT": 4, "Z_OPT": 2, "ZID": s.number, "ZSTUDY": study_pk,
            # The count cache is negative for multi-frame series (§4.6).
            "ZNUMBEROFIMAGES": -s.frames if s.frames > 1 else s.images,
            "ZDATE": first_date, "ZDATEADDED": self.now - spec.added_ago - REFERENCE_UNIX,
            "ZMODALITY": s.modality, "ZNAME": s.description, "ZSERIESDESCRIPTION": s.description,
            "ZSERIESDICOMUID": suid, "ZSERIESINSTANCEUID": key, "ZSERIESSOPCLASSUID": dd.SOP_CLASSES[s.modality]})
        return first_date, files, s.images * s.frames

    def write_study(self, spec: StudySpec) -> DemoStudy:
        """Write every series of ``spec`` and its ZSTUDY row; delete the files meant to be missing."""
        pk = self.alloc("Study")
        uid = spec.uid or dd.make_uid(self.seed, "study", pk)
        rng = np.random.default_rng([self.seed, pk])  # per study, so adding one never shifts the others
        header = self.header(spec, uid, pk)
        files: List[Path] = []
        dated: List[Tuple[float, str]] = []
        rows = 0
        for s in spec.series:
            date, series_files, n = self.write_series(spec, s, pk, header, rng)
            files += series_files
            rows += n
            dated.append((date if date is not None else float("-inf"), s.modality))
        missing = {"one": files[-1:], "all": list(files)}.get(spec.missing, [])
        for path in missing:
            path.unlink()
        first = None if spec.start is None else min(d for d, _ in dated)  # the 1901 sentinel never counts
        return self.study_row(pk, spec, uid, first, [m for _, m in sorted(dated, key=lambda x: x[0])],
                              files, missing, rows)

    def study_row(self, pk: int, spec: StudySpec, uid: str, first: Optional[float], modalities: List[str],
                  files: List[Path], missing: List[Path], rows: int) -> DemoStudy:
        """Insert the ZSTUDY row and return the truth about the study."""
        birth = None if spec.birth is None else self.stamp(dt.datetime.combine(spec.birth, dt.time()))
        patient_uid = horos_patient_uid(spec.name, spec.patient_id, spec.birth)
        insert_row(self.conn, "ZSTUDY", {
            "Z_PK": pk, "Z_ENT": 5, "Z_OPT": 1 + len(modalities), "ZEXPANDED": 0, "ZHASDICOM": 1,
            "ZNUMBEROFIMAGES": rows, "ZSTATETEXT": 0, "ZDATE": first,
            "ZDATEADDED": self.now - spec.added_ago - REFERENCE_UNIX, "ZDATEOFBIRTH": birth,
            "ZACCESSIONNUMBER": f"ACC{pk:06d}", "ZID": "1", "ZINSTITUTIONNAME": "Hospital Demo",
            "ZMODALITY": horos_study_modality(modalities), "ZNAME": spec.name, "ZPATIENTID": spec.patient_id,
            "ZPATIENTSEX": spec.sex, "ZPATIENTUID": patient_uid, "ZSTUDYINSTANCEUID": uid,
            "ZSTUDYNAME": spec.description})
        distinct = tuple(dict.fromkeys(modalities))
        local = None if first is None else dt.datetime.fromtimestamp(first + REFERENCE_UNIX, self.zone)
        return DemoStudy(pk=pk, uid=uid, patient_uid=patient_uid, patient_name=spec.name, modalities=distinct,
                         due=any(m in DUE_MODALITIES for m in distinct), files=tuple(dict.fromkeys(files)),
                         missing=tuple(missing), image_rows=rows, study_date_local=local, note=spec.note)

    def sample_study(self, note: str, filename: str, added_ago: float) -> DemoStudy:
        """Copy one of pydicom's bundled files into DATABASE.noindex and index it from its header."""
        n = self.next_path
        self.next_path += 1
        dest = self.bucket_path(f"{n}.dcm")
        ds = dd.copy_sample(filename, dest)
        wall = dd.horos_wall_time(ds)
        stamp = None if wall is None else self.stamp(wall)
        born = str(ds.get("PatientBirthDate") or "")
        spec = StudySpec(note, str(ds.get("PatientName") or ""), [], None,
                      dt.datetime.strptime(born, "%Y%m%d").date() if len(born) == 8 else None,
                      str(ds.get("PatientID") or ""), str(ds.get("PatientSex") or ""), added_ago=added_ago,
                      description=str(ds.get("StudyDescription") or ""))
        pk, spk, ipk = self.alloc("Study"), self.alloc("Series"), self.alloc("Image")
        modality, number = str(ds.Modality), int(ds.get("SeriesNumber") or 0)
        insert_row(self.conn, "ZIMAGE", {
            "Z_PK": ipk, "Z_ENT": 2, "Z_OPT": 1, "ZSERIES": spk, "ZDATE": stamp, "ZPATHNUMBER": n,
            "ZINSTANCENUMBER": int(ds.get("InstanceNumber") or 0),
            "ZCOMPRESSEDSOPINSTANCEUID": dd.packed_uid(str(ds.SOPInstanceUID)),
            "ZSTOREDMODALITY": None if modality == "CT" else modality,
            "ZSTOREDWIDTH": int(ds.Columns), "ZSTOREDHEIGHT": int(ds.Rows)})
        insert_row(self.conn, "ZSERIES", {
            "Z_PK": spk, "Z_ENT": 4, "Z_OPT": 2, "ZID": number, "ZNUMBEROFIMAGES": 1, "ZSTUDY": pk,
            "ZDATE": stamp, "ZDATEADDED": self.now - added_ago - REFERENCE_UNIX, "ZMODALITY": modality,
            "ZNAME": str(ds.get("SeriesDescription") or "unnamed"), "ZSERIESDICOMUID": str(ds.SeriesInstanceUID),
            "ZSERIESINSTANCEUID": f"{number:08d} {ds.SeriesInstanceUID}", "ZSERIESSOPCLASSUID": str(ds.SOPClassUID)})
        return self.study_row(pk, spec, str(ds.StudyInstanceUID), stamp, [modality], [dest], [], 1)


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
        b = _Builder(conn, horos_data, linked, timezone, seed, now, folder_size, first_path_number,
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


def _albums_and_log(b: _Builder, built: List[DemoStudy]) -> None:
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


def _reopen(lib: DemoLibrary, now: Optional[float], sizes: Dict[str, int]) -> _Builder:
    """A builder that continues an existing library's key and file-name counters."""
    conn = sqlite3.connect(str(lib.database))
    conn.execute("PRAGMA busy_timeout=10000")
    highest = 0
    for number, string in conn.execute("SELECT ZPATHNUMBER, ZPATHSTRING FROM ZIMAGE"):
        if number is not None:
            highest = max(highest, number)
        elif string and string[:1].isdigit():
            highest = max(highest, int(string.split(".")[0]))
    b = _Builder(conn, lib.horos_data, lib.linked_dir, lib.timezone, lib.seed, time.time() if now is None else now,
                 lib.folder_size, highest + 1, sizes)
    b.maxima.update(dict(conn.execute("SELECT Z_NAME, Z_MAX FROM Z_PRIMARYKEY")))
    return b


def _close(b: _Builder) -> None:
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
