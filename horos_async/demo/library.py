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
import hashlib
import plistlib
import random
import sqlite3
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple
from zoneinfo import ZoneInfo

import numpy as np

from horos_async.demo import dicom as dd

REFERENCE_UNIX = 978307200
"""Unix time of 2001-01-01 00:00:00 UTC, the zero of Core Data dates."""
ENTITIES = (("Album", 1), ("Image", 2), ("LogEntry", 3), ("Series", 4), ("Study", 5))
"""Core Data entity names and numbers (``Z_ENT``), alphabetical as Core Data assigns them (§2)."""
DUE_MODALITIES = ("CT", "MR")
_DROPPED = ("SR", "SC", "PR", "OT", "KO")  # left out of ZSTUDY.ZMODALITY when anything else exists

SCHEMA = """
CREATE TABLE ZSTUDY ( Z_PK INTEGER PRIMARY KEY, Z_ENT INTEGER, Z_OPT INTEGER,
  ZEXPANDED INTEGER, ZHASDICOM INTEGER, ZLOCKEDSTUDY INTEGER, ZNUMBEROFIMAGES INTEGER, ZSTATETEXT INTEGER,
  ZDATE TIMESTAMP, ZDATEADDED TIMESTAMP, ZDATEOFBIRTH TIMESTAMP, ZDATEOPENED TIMESTAMP,
  ZACCESSIONNUMBER VARCHAR, ZCOMMENT VARCHAR, ZCOMMENT2 VARCHAR, ZCOMMENT3 VARCHAR, ZCOMMENT4 VARCHAR,
  ZDICTATEURL VARCHAR, ZID VARCHAR, ZINSTITUTIONNAME VARCHAR, ZMODALITY VARCHAR, ZNAME VARCHAR,
  ZPATIENTID VARCHAR, ZPATIENTSEX VARCHAR, ZPATIENTUID VARCHAR, ZPERFORMINGPHYSICIAN VARCHAR,
  ZREFERRINGPHYSICIAN VARCHAR, ZREPORTURL VARCHAR, ZSTUDYINSTANCEUID VARCHAR, ZSTUDYNAME VARCHAR,
  ZWINDOWSSTATE BLOB );
CREATE TABLE ZSERIES ( Z_PK INTEGER PRIMARY KEY, Z_ENT INTEGER, Z_OPT INTEGER,
  ZDISPLAYSTYLE INTEGER, ZID INTEGER, ZKEYSERIES INTEGER, ZNUMBEROFIMAGES INTEGER, ZNUMBEROFKEYIMAGES INTEGER,
  ZSTATETEXT INTEGER, ZXFLIPPED INTEGER, ZYFLIPPED INTEGER, ZSTUDY INTEGER,
  ZDATE TIMESTAMP, ZDATEADDED TIMESTAMP, ZDATEOPENED TIMESTAMP,
  ZROTATIONANGLE FLOAT, ZSCALE FLOAT, ZWINDOWLEVEL FLOAT, ZWINDOWWIDTH FLOAT, ZXOFFSET FLOAT, ZYOFFSET FLOAT,
  ZCOMMENT VARCHAR, ZCOMMENT2 VARCHAR, ZCOMMENT3 VARCHAR, ZCOMMENT4 VARCHAR, ZMODALITY VARCHAR, ZNAME VARCHAR,
  ZSERIESDESCRIPTION VARCHAR, ZSERIESDICOMUID VARCHAR, ZSERIESINSTANCEUID VARCHAR, ZSERIESSOPCLASSUID VARCHAR,
  ZTHUMBNAIL BLOB );
CREATE TABLE ZIMAGE ( Z_PK INTEGER PRIMARY KEY, Z_ENT INTEGER, Z_OPT INTEGER,
  ZFRAMEID INTEGER, ZGENERATEDBYOSIRIX INTEGER, ZINSTANCENUMBER INTEGER, ZPATHNUMBER INTEGER,
  ZSTOREDHEIGHT INTEGER, ZSTOREDINDATABASEFOLDER INTEGER, ZSTOREDISKEYIMAGE INTEGER,
  ZSTOREDMOUNTEDVOLUME INTEGER, ZSTOREDNUMBEROFFRAMES INTEGER, ZSTOREDNUMBEROFSERIES INTEGER,
  ZSTOREDWIDTH INTEGER, ZXFLIPPED INTEGER, ZYFLIPPED INTEGER, ZSERIES INTEGER,
  ZDATE TIMESTAMP,
  ZROTATIONANGLE FLOAT, ZSCALE FLOAT, ZSLICELOCATION FLOAT, ZWINDOWLEVEL FLOAT, ZWINDOWWIDTH FLOAT,
  ZXOFFSET FLOAT, ZYOFFSET FLOAT, ZZOOM FLOAT,
  ZCOMMENT VARCHAR, ZCOMMENT2 VARCHAR, ZCOMMENT3 VARCHAR, ZCOMMENT4 VARCHAR, ZPATHSTRING VARCHAR,
  ZSTATETEXT VARCHAR, ZSTOREDEXTENSION VARCHAR, ZSTOREDFILETYPE VARCHAR, ZSTOREDMODALITY VARCHAR,
  ZCOMPRESSEDSOPINSTANCEUID BLOB );
CREATE TABLE ZALBUM ( Z_PK INTEGER PRIMARY KEY, Z_ENT INTEGER, Z_OPT INTEGER,
  ZINDEX INTEGER, ZSMARTALBUM INTEGER, ZNAME VARCHAR, ZPREDICATESTRING VARCHAR );
CREATE TABLE ZLOGENTRY ( Z_PK INTEGER PRIMARY KEY, Z_ENT INTEGER, Z_OPT INTEGER,
  ZNUMBERERROR INTEGER, ZNUMBERIMAGES INTEGER, ZNUMBERPENDING INTEGER, ZNUMBERSENT INTEGER,
  ZENDTIME TIMESTAMP, ZSTARTTIME TIMESTAMP,
  ZDESTINATIONHOSTNAME VARCHAR, ZDESTINATIONNAME VARCHAR, ZDESTINATIONPORT VARCHAR, ZMESSAGE VARCHAR,
  ZORIGINHOSTNAME VARCHAR, ZORIGINNAME VARCHAR, ZORIGINPORT VARCHAR, ZPATIENTNAME VARCHAR, ZSTATUS VARCHAR,
  ZSTUDYNAME VARCHAR, ZTYPE VARCHAR );
CREATE TABLE Z_1STUDIES ( Z_1ALBUMS INTEGER, Z_5STUDIES INTEGER, PRIMARY KEY (Z_1ALBUMS, Z_5STUDIES) );
CREATE TABLE Z_PRIMARYKEY (Z_ENT INTEGER PRIMARY KEY, Z_NAME VARCHAR, Z_SUPER INTEGER, Z_MAX INTEGER);
CREATE TABLE Z_METADATA (Z_VERSION INTEGER PRIMARY KEY, Z_UUID VARCHAR(255), Z_PLIST BLOB);
CREATE TABLE Z_MODELCACHE (Z_CONTENT BLOB);
"""
"""The tables of docs/design/horos-database.md §3 (plus ZLOGENTRY from §1.5), verbatim; indexes come separately."""
INDEXED = {
    "ZIMAGE": ("ZSERIES",),
    "ZSERIES": ("ZSTUDY", "ZID", "ZMODALITY", "ZSERIESDICOMUID", "ZSERIESINSTANCEUID"),
    "ZSTUDY": ("ZACCESSIONNUMBER", "ZCOMMENT", "ZDATE", "ZID", "ZMODALITY", "ZNAME", "ZPATIENTID",
               "ZPATIENTUID", "ZSTUDYINSTANCEUID", "ZSTUDYNAME"),
}
"""Indexed columns: Core Data's foreign keys plus the attributes the model marks "idx" (§1, §3)."""


def _create_indexes(conn: sqlite3.Connection) -> None:
    # One execute per statement: executescript() would commit the caller's open transaction.
    for table, columns in INDEXED.items():
        for c in columns:
            conn.execute(f"CREATE INDEX {table}_{c}_INDEX ON {table} ({c})")
    conn.execute("CREATE INDEX Z_1STUDIES_Z_5STUDIES_INDEX ON Z_1STUDIES (Z_5STUDIES, Z_1ALBUMS)")


def _bookkeeping(conn: sqlite3.Connection, seed: int, maxima: Dict[str, int]) -> None:
    """Z_PRIMARYKEY, Z_METADATA and Z_MODELCACHE rows as a Core Data store has them."""
    conn.executemany("INSERT INTO Z_PRIMARYKEY VALUES (?, ?, 0, ?)",
                     [(ent, name, maxima.get(name, 0)) for name, ent in ENTITIES])
    store_uuid = str(uuid.UUID(int=random.Random(seed).getrandbits(128), version=4)).upper()
    meta = {"NSStoreType": "SQLite", "NSStoreUUID": store_uuid, "NSStoreModelVersionHashesVersion": 3,
            "NSStoreModelVersionHashes": {n: hashlib.sha256(n.encode()).digest() for n, _ in ENTITIES},
            "patientUIDVersion": 2}  # Horos's own key (§2); the value is made up
    conn.execute("INSERT INTO Z_METADATA VALUES (1, ?, ?)",
                 (store_uuid, plistlib.dumps(meta, fmt=plistlib.FMT_BINARY, sort_keys=True)))
    conn.execute("INSERT INTO Z_MODELCACHE VALUES (?)", (b"horos-backup demo: no compiled model",))


def _insert(conn: sqlite3.Connection, table: str, row: Dict[str, Any]) -> None:
    conn.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                 tuple(row.values()))


def core_data_time(moment: dt.datetime) -> float:
    """Seconds since 2001-01-01 UTC for an aware datetime; whole values come back as int."""
    value = moment.timestamp() - REFERENCE_UNIX
    # SQLite's NUMERIC affinity stores whole values as INTEGER anyway; returning an int keeps the
    # truth on the Python side equal to what a reader gets back.
    return int(value) if value == int(value) else value


def horos_study_modality(series_modalities: List[str]) -> str:
    """``ZSTUDY.ZMODALITY`` from the series modalities in series-date order (docs/design/horos-database.md §6)."""
    kept: List[str] = []
    for m in series_modalities:
        m = "RT" if m == "RTSTRUCT" else m
        if m not in _DROPPED and m not in kept:
            kept.append(m)
    if not kept:
        present = set(series_modalities)
        fallback = [m for m in ("SC", "OT") if m in present][:1]
        kept = fallback or [m for m in ("SR", "PR") if m in present]
    return "\\".join(kept)


def horos_patient_uid(name: str, patient_id: str, birth: Optional[dt.date]) -> str:
    """Horos's ``ZPATIENTUID``: ``NAME-ID-YYYYMMDD`` cleaned and upper-cased (``+[DicomFile patientUID:]``)."""
    def clean(s: str) -> str:  # +[DicomFile NSreplaceBadCharacter:]
        return s.replace("^", " ").replace("/", "-").replace("\r", "").replace("\n", "").replace('"', "'").rstrip(" ")

    person = clean(name).replace("-", " ").split("=")[0] or clean(name)
    # A missing birth date is left empty; what Horos prints for one is not verified.
    return clean(f"{person}-{patient_id}-{birth.strftime('%Y%m%d') if birth else ''}").upper()


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


@dataclass
class _Series:
    """How to make one series (internal)."""

    modality: str
    images: int = 3
    number: int = 1
    description: str = ""
    rle: bool = False
    frames: int = 1  # > 1: each file is multi-frame with this many frames
    where: str = "db"  # db | relative | linked | rois
    offset: float = 0.0  # seconds from the study start to the series' first image


@dataclass
class _Study:
    """How to make one study (internal)."""

    note: str
    name: str
    series: List[_Series]
    start: Optional[dt.datetime]  # local wall-clock acquisition start; None = no dates in the files
    birth: Optional[dt.date] = None
    patient_id: str = ""
    sex: str = "O"
    date_only: bool = False  # the files carry StudyDate only (Horos then files them at 12:00 local)
    added_ago: float = 86400.0 * 30  # seconds before `now` the study was imported
    missing: str = ""  # "" | "one" | "all"
    uid: Optional[str] = None
    description: str = "Demo study"


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

    def _place(self, s: _Series, study_pk: int, index: int, sop: str) -> Tuple[Path, Dict[str, Any]]:
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

    def header(self, spec: _Study, uid: str, pk: int) -> Dict[str, Any]:
        """Patient and study attributes shared by every file of a study."""
        return {"PatientName": spec.name, "PatientID": spec.patient_id,
                "PatientBirthDate": spec.birth.strftime("%Y%m%d") if spec.birth else "",
                "PatientSex": spec.sex, "StudyInstanceUID": uid, "StudyID": "1",
                "AccessionNumber": f"ACC{pk:06d}", "StudyDescription": spec.description,
                "InstitutionName": "Hospital Demo", "ReferringPhysicianName": ""}

    def _dates(self, spec: _Study, s: _Series, i: int) -> Dict[str, Any]:
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

    def write_series(self, spec: _Study, s: _Series, study_pk: int, header: Dict[str, Any],
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
                _insert(self.conn, "ZIMAGE", row)
        _insert(self.conn, "ZSERIES", {
            "Z_PK": spk, "Z_ENT": 4, "Z_OPT": 2, "ZID": s.number, "ZSTUDY": study_pk,
            # The count cache is negative for multi-frame series (§4.6).
            "ZNUMBEROFIMAGES": -s.frames if s.frames > 1 else s.images,
            "ZDATE": first_date, "ZDATEADDED": self.now - spec.added_ago - REFERENCE_UNIX,
            "ZMODALITY": s.modality, "ZNAME": s.description, "ZSERIESDESCRIPTION": s.description,
            "ZSERIESDICOMUID": suid, "ZSERIESINSTANCEUID": key, "ZSERIESSOPCLASSUID": dd.SOP_CLASSES[s.modality]})
        return first_date, files, s.images * s.frames

    def write_study(self, spec: _Study) -> DemoStudy:
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

    def study_row(self, pk: int, spec: _Study, uid: str, first: Optional[float], modalities: List[str],
                  files: List[Path], missing: List[Path], rows: int) -> DemoStudy:
        """Insert the ZSTUDY row and return the truth about the study."""
        birth = None if spec.birth is None else self.stamp(dt.datetime.combine(spec.birth, dt.time()))
        patient_uid = horos_patient_uid(spec.name, spec.patient_id, spec.birth)
        _insert(self.conn, "ZSTUDY", {
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
        spec = _Study(note, str(ds.get("PatientName") or ""), [], None,
                      dt.datetime.strptime(born, "%Y%m%d").date() if len(born) == 8 else None,
                      str(ds.get("PatientID") or ""), str(ds.get("PatientSex") or ""), added_ago=added_ago,
                      description=str(ds.get("StudyDescription") or ""))
        pk, spk, ipk = self.alloc("Study"), self.alloc("Series"), self.alloc("Image")
        modality, number = str(ds.Modality), int(ds.get("SeriesNumber") or 0)
        _insert(self.conn, "ZIMAGE", {
            "Z_PK": ipk, "Z_ENT": 2, "Z_OPT": 1, "ZSERIES": spk, "ZDATE": stamp, "ZPATHNUMBER": n,
            "ZINSTANCENUMBER": int(ds.get("InstanceNumber") or 0),
            "ZCOMPRESSEDSOPINSTANCEUID": dd.packed_uid(str(ds.SOPInstanceUID)),
            "ZSTOREDMODALITY": None if modality == "CT" else modality,
            "ZSTOREDWIDTH": int(ds.Columns), "ZSTOREDHEIGHT": int(ds.Rows)})
        _insert(self.conn, "ZSERIES", {
            "Z_PK": spk, "Z_ENT": 4, "Z_OPT": 2, "ZID": number, "ZNUMBEROFIMAGES": 1, "ZSTUDY": pk,
            "ZDATE": stamp, "ZDATEADDED": self.now - added_ago - REFERENCE_UNIX, "ZMODALITY": modality,
            "ZNAME": str(ds.get("SeriesDescription") or "unnamed"), "ZSERIESDICOMUID": str(ds.SeriesInstanceUID),
            "ZSERIESINSTANCEUID": f"{number:08d} {ds.SeriesInstanceUID}", "ZSERIESSOPCLASSUID": str(ds.SOPClassUID)})
        return self.study_row(pk, spec, str(ds.StudyInstanceUID), stamp, [modality], [dest], [], 1)


_FIRST = ("Ana", "Bruno", "Carla", "Diego", "Elisa", "Fábio", "Gabriela", "Heitor", "Iara", "João", "Larissa",
          "Marcos", "Natália", "Otávio", "Paula", "Rafael", "Sofia", "Thiago", "Vitória", "Yuri")
_LAST = ("Silva", "Souza", "Oliveira", "Santos", "Pereira", "Lima", "Carvalho", "Ferreira", "Rodrigues",
         "Almeida", "Gonçalves", "Ribeiro", "Martins", "Barbosa")


def _special_specs(seed: int, rle: bool) -> List[_Study]:
    """The fixed awkward cases, one note each (sample-ct and sample-mr are added by the builder)."""
    ct, mr, at, d = "CT", "MR", dt.datetime, dt.date
    long_name = ("Maria Eduarda Albuquerque Cavalcanti de Vasconcelos Bragança " * 2)[:119] + "^" \
        + ("Wolfeschlegelsteinhausenbergerdorff Pinheiro Guimarães " * 2)[:80]
    dup_uid = dd.make_uid(seed, "duplicate-uid")
    S = _Series
    specs = [
        _Study("accented", "José^Conceição", [S(ct, description="Abdômen"),
                                              S(ct, number=2, description="Abdômen RLE", rle=rle, offset=300)],
               at(2024, 1, 15, 9, 12, 30), d(1975, 8, 2), "P-ACC-001", "M", description="Abdômen"),
        _Study("hostile", '../../etc/passwd^<script>:*?|"\x07', [S(mr, description="Brain/../T1")],
               at(2024, 2, 3, 14, 5), d(1990, 1, 1), "../P:02"),
        _Study("emoji", "Ünïcödé 🙂^Test", [S(ct, description="Chest 🙂")], at(2024, 2, 20, 8), d(2001, 12, 24),
               "P-EMO-003", "F"),
        _Study("empty-name", "", [S(ct)], at(2024, 3, 5, 10), d(1960, 6, 6), "P-EMP-004"),
        _Study("long-name", long_name, [S(mr, description="Knee")], at(2024, 3, 12, 16, 45), d(1955, 3, 30),
               "P-LNG-005", "F"),
        # 22:30 in São Paulo is 01:30 UTC on April 1st: the month folder must still say March.
        _Study("month-boundary", "Mês^Virada", [S(ct, description="Head")], at(2024, 3, 31, 22, 30),
               d(1980, 5, 17), "P-MON-006", "M"),
        _Study("undated", "Sem^Data", [S(ct)], None, d(1970, 7, 7), "P-UND-007", "M"),
        _Study("date-only", "So^Data", [S(ct)], at(2024, 4, 10), d(1972, 2, 29), "P-DTO-008", "F", date_only=True),
        _Study("pet-ct", "Pet^Tomo", [S("PT", description="PET WB"), S(ct, number=2, description="CT AC", offset=600)],
               at(2024, 4, 22, 7, 30), d(1966, 11, 11), "P-PCT-009", "M"),
        _Study("pet-only", "Pet^Only", [S("PT", description="PET Brain")], at(2024, 5, 2, 11), d(1949, 4, 4),
               "P-PET-010", "F"),
        _Study("sr-only", "Sr^Only", [S("SR", images=1, description="Dose Report")], at(2024, 5, 9, 13),
               d(1985, 9, 9), "P-SR-011", "M"),
        _Study("mr-with-sr", "Mr^Roi", [S(mr, description="Spine"),
                                        S("SR", images=1, number=5002, description="OsiriX ROI SR", where="rois",
                                          offset=3600)],
               at(2024, 5, 20, 15), d(1978, 10, 10), "P-ROI-012", "F"),
        _Study("multi-frame", "Multi^Frame", [S(mr, description="Localizer"),
                                              S(mr, images=1, number=2, frames=5, description="Cine", rle=rle,
                                                offset=120)],
               at(2024, 6, 3, 9), d(1988, 8, 8), "P-MF-013", "M"),
        _Study("linked", "Linked^Cd", [S(ct, description="Outside CD", where="linked")], at(2024, 6, 14, 10, 30),
               d(1992, 2, 2), "P-LNK-014", "F"),
        _Study("relative-pathstring", "Relative^Path", [S(ct, where="relative")], at(2024, 7, 1, 8, 15),
               d(1963, 3, 3), "P-REL-015", "M"),
        _Study("missing-file", "Missing^One", [S(ct)], at(2024, 7, 19, 17), d(1999, 9, 19), "P-MIS-016", "F",
               missing="one"),
        _Study("duplicate-uid-a", "Duplicado^Alfa", [S(ct)], at(2024, 8, 5, 9), d(1950, 5, 5), "P-DUP-017", "M",
               uid=dup_uid),
        _Study("duplicate-uid-b", "Duplicado^Beta", [S(ct)], at(2024, 8, 5, 9), d(1951, 6, 6), "P-DUP-018", "F",
               uid=dup_uid),
        _Study("arriving", "Chegando^Agora", [S(ct)], at(2024, 9, 9, 9, 9), d(1982, 12, 1), "P-ARR-019", "M"),
        _Study("no-files", "Sem^Arquivos", [S(ct)], at(2024, 10, 1, 12, 30), d(1977, 7, 17), "P-NOF-020", "F",
               missing="all"),
    ]
    for i, s in enumerate(specs):
        # Imported days ago with a fractional "now", except the study still arriving a minute ago.
        s.added_ago = 60.0 if s.note == "arriving" else 86400.0 * (5 + i) + 0.25 + i / 8.0
    return specs


def _ordinary_specs(count: int, rng: random.Random, images: int, series: int, fraction: float) -> List[_Study]:
    specs = []
    for k in range(count):
        modality = "CT" if rng.random() < 0.75 else "MR"
        start = dt.datetime(2023, 1, 1, 7) + dt.timedelta(days=rng.randrange(730), minutes=rng.randrange(720),
                                                          seconds=rng.randrange(60))
        specs.append(_Study(
            f"ordinary-{k + 1}", f"{rng.choice(_LAST)}^{rng.choice(_FIRST)}",
            [_Series(modality, images=images, number=j + 1, description=f"{modality} series {j + 1}",
                     rle=rng.random() < fraction, offset=300.0 * j) for j in range(series)],
            start, dt.date(1940, 1, 1) + dt.timedelta(days=rng.randrange(365 * 65)), f"P{rng.randrange(10 ** 7):07d}",
            rng.choice("MF"), added_ago=86400.0 * rng.uniform(2, 400), description=f"{modality} exam"))
    return specs


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
        _create_indexes(conn)
        b = _Builder(conn, horos_data, linked, timezone, seed, now, folder_size, first_path_number,
                     _sizes(ct_size, mr_size))
        built = [b.write_study(s) for s in _special_specs(seed, compressed_fraction > 0)]
        built.append(b.sample_study("sample-ct", "CT_small.dcm", 86400.0 * 40.5))
        built.append(b.sample_study("sample-mr", "MR_small.dcm", 86400.0 * 41.5))
        specs = _ordinary_specs(studies, random.Random(seed), images_per_series, series_per_study,
                                compressed_fraction)
        built += [b.write_study(s) for s in specs]
        _albums_and_log(b, built)
        _bookkeeping(conn, seed, b.maxima)
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
        _insert(b.conn, "ZALBUM", {"Z_PK": b.alloc("Album"), "Z_ENT": 1, "Z_OPT": 1, "ZINDEX": index,
                                   "ZSMARTALBUM": smart, "ZNAME": name, "ZPREDICATESTRING": predicate})
    b.conn.execute("INSERT INTO Z_1STUDIES VALUES (?, ?)", (b.maxima["Album"], built[0].pk))
    for s in built[:2]:
        start = b.now - 86400 * 5 - REFERENCE_UNIX
        _insert(b.conn, "ZLOGENTRY", {
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
        spec = _Study(note, patient_name, [_Series(modality, images=images, description=f"{modality} added")],
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
        spec = _Study(study.note, name or "", [], start, None if born is None else wall(born).date(), pid or "",
                      sex or "", added_ago=0.0, description=desc or "")
        header = dict(b.header(spec, uid, study.pk), AccessionNumber=accession)
        series = _Series(modality, images=count, number=number, description=f"{modality} late arrival")
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


def build_large_database(path: Path, *, studies: int = 130_000, images_per_study: int = 40, seed: int = 1) -> None:
    """A ``Database.sql`` with rows only (no files) for planning benchmarks: millions of ZIMAGE rows."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; choose a new file for the large database")
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        # Nothing to protect while building: no journal, no fsync, and the indexes after the rows.
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-200000")
        conn.executescript(SCHEMA)
        conn.execute("BEGIN")
        prefix = dd.make_uid(seed, "large")[:40] + "."
        kinds = (("CT",), ("CT",), ("CT",), ("MR",), ("MR",), ("MR",), ("PT", "CT"), ("PT",), ("CR",), ("US",))
        zone = dt.timezone(dt.timedelta(hours=-3))
        first_day = core_data_time(dt.datetime(2015, 1, 1, tzinfo=zone))
        series_pk = image_pk = 0
        study_rows: List[tuple] = []
        series_rows: List[tuple] = []
        image_rows: List[tuple] = []

        def flush() -> None:
            conn.executemany("INSERT INTO ZSTUDY (Z_PK, Z_ENT, Z_OPT, ZHASDICOM, ZNUMBEROFIMAGES, ZDATE, ZDATEADDED, "
                             "ZDATEOFBIRTH, ZMODALITY, ZNAME, ZPATIENTID, ZPATIENTUID, ZSTUDYINSTANCEUID, "
                             "ZACCESSIONNUMBER) VALUES (?, 5, 2, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", study_rows)
            conn.executemany("INSERT INTO ZSERIES (Z_PK, Z_ENT, Z_OPT, ZID, ZNUMBEROFIMAGES, ZSTUDY, ZDATE, "
                             "ZMODALITY, ZSERIESDICOMUID, ZSERIESINSTANCEUID, ZSERIESSOPCLASSUID) "
                             "VALUES (?, 4, 2, ?, ?, ?, ?, ?, ?, ?, ?)", series_rows)
            conn.executemany("INSERT INTO ZIMAGE (Z_PK, Z_ENT, Z_OPT, ZINSTANCENUMBER, ZPATHNUMBER, ZSERIES, ZDATE, "
                             "ZCOMPRESSEDSOPINSTANCEUID, ZSTOREDMODALITY) VALUES (?, 2, 1, ?, ?, ?, ?, ?, ?)",
                             image_rows)
            del study_rows[:], series_rows[:], image_rows[:]

        for pk in range(1, studies + 1):
            kind = kinds[rng.randrange(len(kinds))]
            date = first_day + rng.randrange(10 * 365) * 86400 + rng.randrange(7 * 3600, 20 * 3600)
            name, pid = f"{rng.choice(_LAST)}^{rng.choice(_FIRST)} {pk}", f"P{pk:07d}"
            birth = dt.date(1935, 1, 1) + dt.timedelta(days=rng.randrange(80 * 365))
            born = core_data_time(dt.datetime.combine(birth, dt.time(), zone))
            study_rows.append((pk, images_per_study, date, date + rng.uniform(600, 86400 * 30), born,
                               horos_study_modality(list(kind)), name, pid, horos_patient_uid(name, pid, birth),
                               f"{prefix}1.{pk}", f"A{pk:08d}"))
            parts = len(kind) if len(kind) > 1 else min(2, images_per_study) or 1
            for j in range(parts):
                modality = kind[j % len(kind)]
                series_pk += 1
                count = images_per_study // parts + (1 if j < images_per_study % parts else 0)
                series_uid = f"{prefix}2.{series_pk}"
                series_rows.append((series_pk, j + 1, count, pk, date + 300 * j, modality, series_uid,
                                    f"{j + 1:08d} {series_uid}",
                                    dd.SOP_CLASSES.get(modality, "1.2.840.10008.5.1.4.1.1.7")))
                stored = None if modality == "CT" else modality
                for i in range(count):
                    image_pk += 1
                    image_rows.append((image_pk, i + 1, image_pk, series_pk, date + 300 * j + i,
                                       dd.packed_uid(f"{prefix}3.{image_pk}"), stored))
            if len(image_rows) >= 200_000:
                flush()
        flush()
        _create_indexes(conn)
        _bookkeeping(conn, seed, {"Study": studies, "Series": series_pk, "Image": image_pk})
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode=delete")  # what Horos uses today (§8)
    finally:
        conn.close()
