"""A seeded, deterministic Horos library: the built-in demo, the test fixtures and the benchmark data.

One code path makes all three, so the tests exercise exactly what users see in ``horos-backup demo``.
The library follows horos-database.md: a real SQLite ``Database.sql`` with the Core Data tables of §3,
dates encoded from local wall-clock time as in §5, study modalities built as in §6, and real DICOM files
in ``DATABASE.noindex/<F>/<n>.dcm`` buckets (§4). A fixed set of special studies covers the awkward
cases (hostile names, linked and missing files, multi-frame, duplicate Study UIDs...); each carries a
``note`` that tests look up with ``DemoLibrary.study(note)``. The returned ``DemoStudy`` objects are the
truth that reader and engine tests compare against.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import plistlib
import random
import shutil
import sqlite3
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from horos_async import demo_dicom as dd

try:
    from zoneinfo import ZoneInfo
except ImportError:  # pragma: no cover - Python < 3.9 is not supported anyway
    raise

REFERENCE_UNIX = 978307200
"""Unix time of 2001-01-01 00:00:00 UTC, the zero of Core Data dates."""
ENTITIES = (("Album", 1), ("Image", 2), ("LogEntry", 3), ("Series", 4), ("Study", 5))
"""Core Data entity numbers (``Z_ENT``), alphabetical as Core Data assigns them (§2)."""
FOLDERS = ("DATABASE.noindex", "INCOMING.noindex", "TEMP.noindex", "REPORTS")
DUE_MODALITIES = ("CT", "MR")
_DROPPED = ("SR", "SC", "PR", "OT", "KO")  # never shown in ZSTUDY.ZMODALITY when anything else exists

_V, _I, _T, _F, _B = "VARCHAR", "INTEGER", "TIMESTAMP", "FLOAT", "BLOB"
_COLUMNS: Dict[str, List[Tuple[str, str]]] = {
    "ZALBUM": [(c, _I) for c in ("ZINDEX", "ZSMARTALBUM")] + [(c, _V) for c in ("ZNAME", "ZPREDICATESTRING")],
    "ZIMAGE": [(c, _I) for c in ("ZFRAMEID", "ZGENERATEDBYOSIRIX", "ZINSTANCENUMBER", "ZPATHNUMBER",
                                 "ZSTOREDHEIGHT", "ZSTOREDINDATABASEFOLDER", "ZSTOREDISKEYIMAGE",
                                 "ZSTOREDMOUNTEDVOLUME", "ZSTOREDNUMBEROFFRAMES", "ZSTOREDNUMBEROFSERIES",
                                 "ZSTOREDWIDTH", "ZXFLIPPED", "ZYFLIPPED", "ZSERIES")]
    + [("ZDATE", _T)]
    + [(c, _F) for c in ("ZROTATIONANGLE", "ZSCALE", "ZSLICELOCATION", "ZWINDOWLEVEL", "ZWINDOWWIDTH",
                         "ZXOFFSET", "ZYOFFSET", "ZZOOM")]
    + [(c, _V) for c in ("ZCOMMENT", "ZCOMMENT2", "ZCOMMENT3", "ZCOMMENT4", "ZPATHSTRING", "ZSTATETEXT",
                         "ZSTOREDEXTENSION", "ZSTOREDFILETYPE", "ZSTOREDMODALITY")]
    + [("ZCOMPRESSEDSOPINSTANCEUID", _B)],
    "ZLOGENTRY": [(c, _I) for c in ("ZNUMBERERROR", "ZNUMBERIMAGES", "ZNUMBERPENDING", "ZNUMBERSENT")]
    + [(c, _T) for c in ("ZENDTIME", "ZSTARTTIME")]
    + [(c, _V) for c in ("ZDESTINATIONHOSTNAME", "ZDESTINATIONNAME", "ZDESTINATIONPORT", "ZMESSAGE",
                         "ZORIGINHOSTNAME", "ZORIGINNAME", "ZORIGINPORT", "ZPATIENTNAME", "ZSTATUS",
                         "ZSTUDYNAME", "ZTYPE")],
    "ZSERIES": [(c, _I) for c in ("ZDISPLAYSTYLE", "ZID", "ZKEYSERIES", "ZNUMBEROFIMAGES", "ZNUMBEROFKEYIMAGES",
                                  "ZSTATETEXT", "ZXFLIPPED", "ZYFLIPPED", "ZSTUDY")]
    + [(c, _T) for c in ("ZDATE", "ZDATEADDED", "ZDATEOPENED")]
    + [(c, _F) for c in ("ZROTATIONANGLE", "ZSCALE", "ZWINDOWLEVEL", "ZWINDOWWIDTH", "ZXOFFSET", "ZYOFFSET")]
    + [(c, _V) for c in ("ZCOMMENT", "ZCOMMENT2", "ZCOMMENT3", "ZCOMMENT4", "ZMODALITY", "ZNAME",
                         "ZSERIESDESCRIPTION", "ZSERIESDICOMUID", "ZSERIESINSTANCEUID", "ZSERIESSOPCLASSUID")]
    + [("ZTHUMBNAIL", _B)],
    "ZSTUDY": [(c, _I) for c in ("ZEXPANDED", "ZHASDICOM", "ZLOCKEDSTUDY", "ZNUMBEROFIMAGES", "ZSTATETEXT")]
    + [(c, _T) for c in ("ZDATE", "ZDATEADDED", "ZDATEOFBIRTH", "ZDATEOPENED")]
    + [(c, _V) for c in ("ZACCESSIONNUMBER", "ZCOMMENT", "ZCOMMENT2", "ZCOMMENT3", "ZCOMMENT4", "ZDICTATEURL",
                         "ZID", "ZINSTITUTIONNAME", "ZMODALITY", "ZNAME", "ZPATIENTID", "ZPATIENTSEX",
                         "ZPATIENTUID", "ZPERFORMINGPHYSICIAN", "ZREFERRINGPHYSICIAN", "ZREPORTURL",
                         "ZSTUDYINSTANCEUID", "ZSTUDYNAME")]
    + [("ZWINDOWSSTATE", _B)],
}
"""Entity tables of horos-database.md §3: name -> [(column, declared type)] after Z_PK, Z_ENT, Z_OPT."""
_INDEXED = {
    "ZIMAGE": ("ZSERIES",),
    "ZSERIES": ("ZSTUDY", "ZID", "ZMODALITY", "ZSERIESDICOMUID", "ZSERIESINSTANCEUID"),
    "ZSTUDY": ("ZACCESSIONNUMBER", "ZCOMMENT", "ZDATE", "ZID", "ZMODALITY", "ZNAME", "ZPATIENTID",
               "ZPATIENTUID", "ZSTUDYINSTANCEUID", "ZSTUDYNAME"),
}


def _schema_sql() -> str:
    """The CREATE TABLE statements (indexes apart, so bulk loads can add them last)."""
    tables = [
        f"CREATE TABLE {t} ( Z_PK INTEGER PRIMARY KEY, Z_ENT INTEGER, Z_OPT INTEGER, "
        + ", ".join(f"{c} {ty}" for c, ty in cols) + " );"
        for t, cols in _COLUMNS.items()
    ]
    return "\n".join(tables + [
        "CREATE TABLE Z_1STUDIES ( Z_1ALBUMS INTEGER, Z_5STUDIES INTEGER, PRIMARY KEY (Z_1ALBUMS, Z_5STUDIES) );",
        "CREATE TABLE Z_PRIMARYKEY (Z_ENT INTEGER PRIMARY KEY, Z_NAME VARCHAR, Z_SUPER INTEGER, Z_MAX INTEGER);",
        "CREATE TABLE Z_METADATA (Z_VERSION INTEGER PRIMARY KEY, Z_UUID VARCHAR(255), Z_PLIST BLOB);",
        "CREATE TABLE Z_MODELCACHE (Z_CONTENT BLOB);",
    ])


def _index_sql() -> str:
    lines = [f"CREATE INDEX {t}_{c}_INDEX ON {t} ({c});" for t, cols in _INDEXED.items() for c in cols]
    lines.append("CREATE INDEX Z_1STUDIES_Z_5STUDIES_INDEX ON Z_1STUDIES (Z_5STUDIES, Z_1ALBUMS);")
    return "\n".join(lines)


def _bookkeeping(conn: sqlite3.Connection, seed: int, maxima: Dict[str, int]) -> None:
    """Write Z_PRIMARYKEY, Z_METADATA and Z_MODELCACHE as a fresh Core Data store has them."""
    conn.executemany("INSERT INTO Z_PRIMARYKEY VALUES (?, ?, 0, ?)",
                     [(ent, name, maxima.get(name, 0)) for name, ent in ENTITIES])
    store_uuid = str(uuid.UUID(int=random.Random(seed).getrandbits(128), version=4)).upper()
    hashes = {name: hashlib.sha256(name.encode()).digest() for name, _ in ENTITIES}
    meta = {"NSStoreType": "SQLite", "NSStoreUUID": store_uuid, "NSStoreModelVersionHashes": hashes,
            "NSStoreModelVersionHashesVersion": 3, "NSStoreModelVersionIdentifiers": [""],
            "patientUIDVersion": 2}  # Horos's own key (§2); its value here is made up
    conn.execute("INSERT INTO Z_METADATA VALUES (1, ?, ?)",
                 (store_uuid, plistlib.dumps(meta, fmt=plistlib.FMT_BINARY, sort_keys=True)))
    conn.execute("INSERT INTO Z_MODELCACHE VALUES (?)", (b"horos-backup demo: no compiled model",))


def _insert(conn: sqlite3.Connection, table: str, row: Dict[str, Any]) -> None:
    conn.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                 tuple(row.values()))


def core_data_time(moment: dt.datetime) -> float:
    """Seconds since 2001-01-01 UTC for an aware datetime (whole seconds come back as int)."""
    value = moment.timestamp() - REFERENCE_UNIX
    # SQLite's NUMERIC affinity stores whole values as INTEGER anyway; returning int keeps the
    # Python side equal to what a reader will get back.
    return int(value) if value == int(value) else value


def horos_study_modality(series_modalities: List[str]) -> str:
    """``ZSTUDY.ZMODALITY`` from series modalities in series-date order (horos-database.md §6)."""
    kept: List[str] = []
    for m in series_modalities:
        m = "RT" if m == "RTSTRUCT" else m
        if m not in _DROPPED and m not in kept:
            kept.append(m)
    if not kept:
        present = set(series_modalities)
        for fallback in ("SC", "OT"):
            if fallback in present:
                return fallback
        kept = [m for m in ("SR", "PR") if m in present]
    return "\\".join(kept)


def horos_patient_uid(name: str, patient_id: str, birth: Optional[dt.date]) -> str:
    """Horos's ``ZPATIENTUID``: ``NAME-ID-YYYYMMDD`` cleaned and upper-cased (``+[DicomFile patientUID:]``)."""
    def clean(s: str) -> str:  # NSreplaceBadCharacter
        s = s.replace("^", " ").replace("/", "-").replace("\r", "").replace("\n", "").replace('"', "'")
        return s.rstrip(" ")

    person = clean(name).replace("-", " ").split("=")[0] or clean(name)
    # A missing birth date is left empty here; what Horos prints for it is not verified.
    born = birth.strftime("%Y%m%d") if birth else ""
    return clean(f"{person}-{patient_id}-{born}").upper()


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
    """Raw ``ZNAME`` with ``^`` separators."""
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
    """Earliest image date, aware, in the demo time zone; None when ``ZDATE`` is NULL."""
    note: str
    """What the study exercises, e.g. ``multi-frame``; unique among special studies."""


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
    """Studies as built (``add_study``/``add_images`` return new values instead of changing this)."""
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
    frames: int = 1  # > 1: a single multi-frame file with this many frames
    where: str = "db"  # db | relative | linked | rois
    offset: float = 0.0  # seconds between study start and the series' first image


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
    date_only: bool = False  # files carry StudyDate only (Horos then uses 12:00 local)
    added_ago: float = 86400.0 * 30  # seconds before `now` the study was imported
    missing: str = ""  # "" | "one" | "all"
    uid: Optional[str] = None
    description: str = "Demo study"


class _Builder:
    """Writes studies (files and rows) into one open library; tracks the Core Data key counters."""

    def __init__(self, conn: sqlite3.Connection, horos_data: Path, linked_dir: Path, zone: str, seed: int,
                 now: float, folder_size: int, next_path: int, sizes: Dict[str, int],
                 compressed_fraction: float) -> None:
        self.conn, self.horos_data, self.linked_dir = conn, horos_data, linked_dir
        self.zone, self.seed, self.now, self.folder_size = ZoneInfo(zone), seed, now, folder_size
        self.next_path, self.sizes, self.compressed_fraction = next_path, sizes, compressed_fraction
        self.maxima = {name: 0 for name, _ in ENTITIES}

    def alloc(self, entity: str, count: int = 1) -> int:
        first = self.maxima[entity] + 1
        self.maxima[entity] += count
        return first

    def bucket_path(self, name: str) -> Path:
        n = int("".join(ch for ch in name.split(".")[0] if ch.isdigit()))
        return self.horos_data / "DATABASE.noindex" / str((n // self.folder_size + 1) * self.folder_size) / name

    def local(self, wall: dt.datetime) -> dt.datetime:
        return wall.replace(tzinfo=self.zone)

    def _place(self, s: _Series, study_pk: int, index: int, sop: str) -> Tuple[Path, Dict[str, Any]]:
        """Where one file goes and the ZIMAGE path columns that point at it."""
        if s.where in ("db", "relative"):
            n = self.next_path
            self.next_path += 1
            if s.where == "db":
                return self.bucket_path(f"{n}.dcm"), {"ZPATHNUMBER": n}
            # Odd but tolerated data: a relative name with no path number, resolved by its digits.
            ext = "dcm" if index % 2 == 0 else "dicm"
            return self.bucket_path(f"{n}.{ext}"), {"ZPATHSTRING": f"{n}.{ext}",
                                                    "ZSTOREDEXTENSION": None if ext == "dcm" else ext}
        if s.where == "linked":
            path = self.linked_dir / f"CD{study_pk:04d}" / "DICOM" / f"IM{index + 1:04d}"
        else:  # Horos keeps its ROI SRs in Horos Data/ROIs and links them by absolute path (§4.3)
            path = self.horos_data / "ROIs" / f"{sop}.dcm"
        return path, {"ZPATHSTRING": str(path), "ZSTOREDINDATABASEFOLDER": 0}

    def _header(self, spec: _Study, uid: str, pk: int) -> Dict[str, Any]:
        return {"PatientName": spec.name, "PatientID": spec.patient_id,
                "PatientBirthDate": spec.birth.strftime("%Y%m%d") if spec.birth else "",
                "PatientSex": spec.sex, "StudyInstanceUID": uid, "StudyID": "1",
                "AccessionNumber": f"ACC{pk:06d}", "StudyDescription": spec.description,
                "InstitutionName": "Hospital Demo", "ReferringPhysicianName": ""}

    def write_series(self, spec: _Study, s: _Series, study_pk: int, header: Dict[str, Any],
                     rng: np.random.Generator) -> Tuple[Optional[float], List[Path], int]:
        """Write one series' files and rows; return (series ZDATE, files, image rows)."""
        spk = self.alloc("Series")
        suid = dd.make_uid(self.seed, "series", spk)
        size = self.sizes.get(s.modality, 16)
        phantom = dd.Phantom(s.modality, size, rng) if s.modality != "SR" else None
        files: List[Path] = []
        rows = 0
        first_date: Optional[float] = None
        key = f"{s.number:08d} {suid}"
        for i in range(s.images):
            ipk = self.alloc("Image", s.frames)
            sop = dd.make_uid(self.seed, "image", ipk)
            tags: Dict[str, Any] = dict(header, SeriesInstanceUID=suid, SeriesNumber=s.number,
                                        SeriesDescription=s.description, ProtocolName=s.description,
                                        InstanceNumber=i + 1, FrameOfReferenceUID=dd.make_uid(self.seed, "for", study_pk))
            if spec.start is not None:
                series_start = spec.start + dt.timedelta(seconds=s.offset)
                acquired = series_start + dt.timedelta(seconds=2 * i)
                tags["StudyDate"], tags["StudyTime"] = spec.start.strftime("%Y%m%d"), spec.start.strftime("%H%M%S")
                if spec.date_only:
                    tags["StudyTime"] = None
                    stamp = core_data_time(self.local(spec.start.replace(hour=12, minute=0, second=0)))
                else:
                    for what, when in (("Series", series_start), ("Acquisition", acquired), ("Content", acquired)):
                        tags[what + "Date"], tags[what + "Time"] = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
                    stamp = core_data_time(self.local(acquired))
            else:  # no date at all: Horos gives series and images its 1901 sentinel, the study none
                stamp = core_data_time(dt.datetime(1901, 1, 1, tzinfo=self.zone))
            first_date = stamp if first_date is None else first_date
            path, where_cols = self._place(s, study_pk, i, sop)
            if phantom is None:
                ds = dd.sr_dataset(sop, tags, f"ROI summary for {spec.note}")
            else:
                location = -100.0 + 2.5 * i
                tags.update(SliceLocation=location, SliceThickness=2.5, ImagePositionPatient=[0, 0, location],
                            ImageOrientationPatient=[1, 0, 0, 0, 1, 0], PixelSpacing=[0.7, 0.7])
                ds = dd.base_dataset(s.modality, sop, tags)
                pixels = np.stack([phantom.slice(i * s.frames + f) for f in range(s.frames)]) if s.frames > 1 \
                    else phantom.slice(i)
                dd.add_pixels(ds, pixels, s.modality, s.rle)
            dd.write(ds, path)
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
                       "ZSLICELOCATION": None if phantom is None else -100.0 + 2.5 * i}
                row.update(where_cols)
                _insert(self.conn, "ZIMAGE", row)
                rows += 1
        count = -s.frames if s.frames > 1 else s.images  # Horos counts multi-frame series negative (§4.6)
        _insert(self.conn, "ZSERIES", {
            "Z_PK": spk, "Z_ENT": 4, "Z_OPT": 2, "ZID": s.number, "ZNUMBEROFIMAGES": count, "ZSTUDY": study_pk,
            "ZDATE": first_date, "ZDATEADDED": self.now - spec.added_ago - REFERENCE_UNIX,
            "ZMODALITY": s.modality, "ZNAME": s.description, "ZSERIESDESCRIPTION": s.description,
            "ZSERIESDICOMUID": suid, "ZSERIESINSTANCEUID": key, "ZSERIESSOPCLASSUID": dd.SOP_CLASSES[s.modality]})
        return first_date, files, rows

    def write_study(self, spec: _Study) -> DemoStudy:
        """Write every series of ``spec``, then its ZSTUDY row; delete the files meant to be missing."""
        pk = self.alloc("Study")
        uid = spec.uid or dd.make_uid(self.seed, "study", pk)
        rng = np.random.default_rng([self.seed, pk])
        header = self._header(spec, uid, pk)
        files: List[Path] = []
        dated: List[Tuple[float, str]] = []
        rows = 0
        for s in spec.series:
            date, series_files, n = self.write_series(spec, s, pk, header, rng)
            files += series_files
            rows += n
            dated.append((date if date is not None else float("-inf"), s.modality))
        missing = files[-1:] if spec.missing == "one" else list(files) if spec.missing == "all" else []
        for path in missing:
            path.unlink()
        first = None if spec.start is None else min(d for d, _ in dated)
        return self.study_row(pk, spec, uid, first, [m for _, m in sorted(dated, key=lambda x: x[0])],
                              files, missing, rows)

    def study_row(self, pk: int, spec: _Study, uid: str, first: Optional[float], modalities: List[str],
                  files: List[Path], missing: List[Path], rows: int) -> DemoStudy:
        """Insert the ZSTUDY row and return the truth about the study."""
        birth = None if spec.birth is None else core_data_time(
            dt.datetime(spec.birth.year, spec.birth.month, spec.birth.day, tzinfo=self.zone))
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
                         due=any(m in DUE_MODALITIES for m in distinct),
                         files=tuple(dict.fromkeys(files)), missing=tuple(missing), image_rows=rows,
                         study_date_local=local, note=spec.note)

    def sample_study(self, note: str, filename: str, added_ago: float) -> DemoStudy:
        """Copy one of pydicom's bundled files into DATABASE.noindex and index it from its header."""
        src = dd.sample_file(filename)
        ds = dd.read_header(src)
        n = self.next_path
        self.next_path += 1
        dest = self.bucket_path(f"{n}.dcm")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        os.chmod(dest, 0o644)
        stamp = None
        for what in ("Acquisition", "Content", "Series", "Study"):  # Horos's fallback order (§5)
            day = str(ds.get(what + "Date") or "").strip()
            if len(day) == 8 and day.isdigit():
                hms = dd.split_time(str(ds.get(what + "Time") or "")) or (12, 0, 0)
                wall = dt.datetime(int(day[:4]), int(day[4:6]), int(day[6:]), *hms)
                stamp = core_data_time(self.local(wall))
                break
        born = str(ds.get("PatientBirthDate") or "")
        spec = _Study(note=note, name=str(ds.get("PatientName") or ""), series=[], start=None,
                      birth=dt.datetime.strptime(born, "%Y%m%d").date() if len(born) == 8 else None,
                      patient_id=str(ds.get("PatientID") or ""), sex=str(ds.get("PatientSex") or ""),
                      added_ago=added_ago, description=str(ds.get("StudyDescription") or ""))
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
            "ZNAME": str(ds.get("SeriesDescription") or "unnamed"),
            "ZSERIESDICOMUID": str(ds.SeriesInstanceUID),
            "ZSERIESINSTANCEUID": f"{number:08d} {ds.SeriesInstanceUID}", "ZSERIESSOPCLASSUID": str(ds.SOPClassUID)})
        return self.study_row(pk, spec, str(ds.StudyInstanceUID), stamp, [modality], [dest], [], 1)


_FIRST = ("Ana", "Bruno", "Carla", "Diego", "Elisa", "Fábio", "Gabriela", "Heitor", "Iara", "João", "Larissa",
          "Marcos", "Natália", "Otávio", "Paula", "Rafael", "Sofia", "Thiago", "Vitória", "Yuri")
_LAST = ("Silva", "Souza", "Oliveira", "Santos", "Pereira", "Lima", "Carvalho", "Ferreira", "Rodrigues",
         "Almeida", "Gonçalves", "Ribeiro", "Martins", "Barbosa")


def _special_specs(seed: int, rle: bool) -> List[_Study]:
    """The fixed awkward cases; each gets a distinct note (see the module docstring)."""
    day = 86400.0
    ct, mr = "CT", "MR"
    at = dt.datetime
    long_name = ("Maria Eduarda Albuquerque Cavalcanti de Vasconcelos Bragança e Orleans " * 3)[:120].rstrip() \
        + "^" + "Wolfeschlegelsteinhausenbergerdorff Pinheiro Machado Guimarães " * 2
    long_name = long_name[:200]
    dup_uid = dd.make_uid(seed, "duplicate-uid")
    specs = [
        _Study("accented", "José^Conceição", [_Series(ct, number=1, description="Abdomen"),
                                              _Series(ct, number=2, description="Abdomen RLE", rle=rle, offset=300)],
               at(2024, 1, 15, 9, 12, 30), dt.date(1975, 8, 2), "P-ACC-001", "M", description="Abdômen"),
        _Study("hostile", '../../etc/passwd^<script>:*?|"\x07', [_Series(mr, description="Brain/../T1")],
               at(2024, 2, 3, 14, 5), dt.date(1990, 1, 1), "../P:02", "O"),
        _Study("emoji", "Ünïcödé 🙂^Test", [_Series(ct, description="Chest 🙂")],
               at(2024, 2, 20, 8, 0), dt.date(2001, 12, 24), "P-EMO-003", "F"),
        _Study("empty-name", "", [_Series(ct)], at(2024, 3, 5, 10, 0), dt.date(1960, 6, 6), "P-EMP-004"),
        _Study("long-name", long_name, [_Series(mr, description="Knee")], at(2024, 3, 12, 16, 45),
               dt.date(1955, 3, 30), "P-LNG-005", "F"),
        _Study("month-boundary", "Mês^Virada", [_Series(ct, description="Head")], at(2024, 3, 31, 22, 30),
               dt.date(1980, 5, 17), "P-MON-006", "M"),
        _Study("undated", "Sem^Data", [_Series(ct)], None, dt.date(1970, 7, 7), "P-UND-007", "M"),
        _Study("date-only", "So^Data", [_Series(ct)], at(2024, 4, 10, 0, 0), dt.date(1972, 2, 29),
               "P-DTO-008", "F", date_only=True),
        _Study("pet-ct", "Pet^Tomo", [_Series("PT", number=1, description="PET WB"),
                                      _Series(ct, number=2, description="CT AC", offset=600)],
               at(2024, 4, 22, 7, 30), dt.date(1966, 11, 11), "P-PCT-009", "M"),
        _Study("pet-only", "Pet^Only", [_Series("PT", description="PET Brain")], at(2024, 5, 2, 11, 0),
               dt.date(1949, 4, 4), "P-PET-010", "F"),
        _Study("sr-only", "Sr^Only", [_Series("SR", images=1, description="Dose Report")],
               at(2024, 5, 9, 13, 0), dt.date(1985, 9, 9), "P-SR-011", "M"),
        _Study("mr-with-sr", "Mr^Roi", [_Series(mr, description="Spine"),
                                        _Series("SR", images=1, number=5002, description="OsiriX ROI SR",
                                                where="rois", offset=3600)],
               at(2024, 5, 20, 15, 0), dt.date(1978, 10, 10), "P-ROI-012", "F"),
        _Study("multi-frame", "Multi^Frame", [_Series(mr, description="Localizer"),
                                              _Series(mr, images=1, number=2, frames=5, description="Cine",
                                                      rle=rle, offset=120)],
               at(2024, 6, 3, 9, 0), dt.date(1988, 8, 8), "P-MF-013", "M"),
        _Study("linked", "Linked^Cd", [_Series(ct, description="Outside CD", where="linked")],
               at(2024, 6, 14, 10, 30), dt.date(1992, 2, 2), "P-LNK-014", "F"),
        _Study("relative-pathstring", "Relative^Path", [_Series(ct, where="relative")],
               at(2024, 7, 1, 8, 15), dt.date(1963, 3, 3), "P-REL-015", "M"),
        _Study("missing-file", "Missing^One", [_Series(ct)], at(2024, 7, 19, 17, 0), dt.date(1999, 9, 19),
               "P-MIS-016", "F", missing="one"),
        _Study("duplicate-uid-a", "Duplicado^Alfa", [_Series(ct)], at(2024, 8, 5, 9, 0), dt.date(1950, 5, 5),
               "P-DUP-017", "M", uid=dup_uid),
        _Study("duplicate-uid-b", "Duplicado^Beta", [_Series(ct)], at(2024, 8, 5, 9, 0), dt.date(1951, 6, 6),
               "P-DUP-018", "F", uid=dup_uid),
        _Study("arriving", "Chegando^Agora", [_Series(ct)], at(2024, 9, 9, 9, 9), dt.date(1982, 12, 1),
               "P-ARR-019", "M", added_ago=60.0),
        _Study("no-files", "Sem^Arquivos", [_Series(ct)], at(2024, 10, 1, 12, 30), dt.date(1977, 7, 17),
               "P-NOF-020", "F", missing="all"),
    ]
    for i, s in enumerate(specs):
        if s.note != "arriving":
            s.added_ago = day * (5 + i) + 0.25 + i / 8.0  # fractional like a real "now" at import
    return specs


def _ordinary_specs(count: int, rng: random.Random, images: int, series: int, fraction: float) -> List[_Study]:
    specs = []
    for k in range(count):
        modality = "CT" if rng.random() < 0.6 else "MR"
        start = dt.datetime(2023, 1, 1, 7) + dt.timedelta(days=rng.randrange(730), minutes=rng.randrange(720),
                                                          seconds=rng.randrange(60))
        name = f"{rng.choice(_LAST)}^{rng.choice(_FIRST)}"
        birth = dt.date(1940, 1, 1) + dt.timedelta(days=rng.randrange(365 * 65))
        specs.append(_Study(
            f"ordinary-{k + 1}", name,
            [_Series(modality, images=images, number=j + 1, description=f"{modality} series {j + 1}",
                     rle=rng.random() < fraction, offset=300.0 * j) for j in range(series)],
            start, birth, f"P{rng.randrange(10 ** 7):07d}", rng.choice("MF"),
            added_ago=86400.0 * rng.uniform(2, 400), description=f"{modality} exam"))
    return specs


def _sizes(ct_size: int, mr_size: int) -> Dict[str, int]:
    return {"CT": ct_size, "MR": mr_size, "PT": max(32, ct_size // 4)}


def build_demo(root: Path, *, studies: int = 12, seed: int = 1234, timezone: str = "America/Sao_Paulo",
               images_per_series: int = 3, ct_size: int = 64, mr_size: int = 64, series_per_study: int = 2,
               compressed_fraction: float = 0.2, journal_mode: str = "delete", now: Optional[float] = None,
               folder_size: int = 10000, first_path_number: int = 9995) -> DemoLibrary:
    """Build the special studies plus ``studies`` ordinary CT/MR studies under ``root``."""
    if journal_mode not in ("delete", "wal"):
        raise ValueError(f"journal_mode {journal_mode!r}: use 'delete' (Horos today) or 'wal' (older stores)")
    root = Path(root).resolve()
    horos_data = root / "Horos Data"
    database = horos_data / "Database.sql"
    if database.exists():
        raise FileExistsError(f"{database} already exists; build the demo into an empty folder")
    for name in FOLDERS:
        (horos_data / name).mkdir(parents=True, exist_ok=True)
    (root / "linked").mkdir(exist_ok=True)
    (horos_data / "DB_VERSION").write_text("2.5", encoding="utf-8")
    now = time.time() if now is None else now
    rng = random.Random(seed)
    conn = sqlite3.connect(str(database))
    try:
        conn.execute("PRAGMA synchronous=OFF")  # a demo build that crashes is simply rebuilt
        conn.executescript(_schema_sql() + _index_sql())
        b = _Builder(conn, horos_data, root / "linked", timezone, seed, now, folder_size, first_path_number,
                     _sizes(ct_size, mr_size), compressed_fraction)
        built = [b.write_study(s) for s in _special_specs(seed, compressed_fraction > 0)]
        built.append(b.sample_study("sample-ct", "CT_small.dcm", 86400.0 * 40.5))
        built.append(b.sample_study("sample-mr", "MR_small.dcm", 86400.0 * 41.5))
        for spec in _ordinary_specs(studies, rng, images_per_series, series_per_study, compressed_fraction):
            built.append(b.write_study(spec))
        _albums_and_log(b, built)
        _bookkeeping(conn, seed, b.maxima)
        conn.commit()
        conn.execute(f"PRAGMA journal_mode={journal_mode}")
    finally:
        conn.close()
    return DemoLibrary(root=root, horos_data=horos_data, database=database, linked_dir=root / "linked",
                       timezone=timezone, studies=tuple(built), folder_size=folder_size, seed=seed)


def _albums_and_log(b: _Builder, built: List[DemoStudy]) -> None:
    """Horos's default smart albums, one plain album holding a study, and two log lines."""
    for index, (name, smart, predicate) in enumerate((
            ("Today CT", 1, "(dateAdded >= $NSDATE_TODAY) AND (modality CONTAINS[cd] 'CT')"),
            ("Today MR", 1, "(dateAdded >= $NSDATE_TODAY) AND (modality CONTAINS[cd] 'MR')"),
            ("Teaching", 0, None))):
        pk = b.alloc("Album")
        _insert(b.conn, "ZALBUM", {"Z_PK": pk, "Z_ENT": 1, "Z_OPT": 1, "ZINDEX": index, "ZSMARTALBUM": smart,
                                   "ZNAME": name, "ZPREDICATESTRING": predicate})
    b.conn.execute("INSERT INTO Z_1STUDIES VALUES (?, ?)", (b.maxima["Album"], built[0].pk))
    for s in built[:2]:
        _insert(b.conn, "ZLOGENTRY", {
            "Z_PK": b.alloc("LogEntry"), "Z_ENT": 3, "Z_OPT": 1, "ZNUMBERIMAGES": s.image_rows,
            "ZNUMBERERROR": 0, "ZSTARTTIME": b.now - 86400 * 5 - REFERENCE_UNIX,
            "ZENDTIME": b.now - 86400 * 5 + 3.5 - REFERENCE_UNIX, "ZMESSAGE": "Complete",
            "ZPATIENTNAME": s.patient_name, "ZSTATUS": "Complete", "ZTYPE": "Receive",
            "ZORIGINNAME": "DEMO_SCANNER"})


def _reopen(lib: DemoLibrary, now: Optional[float]) -> _Builder:
    """A builder continuing an existing library's key and file counters."""
    conn = sqlite3.connect(str(lib.database))
    conn.execute("PRAGMA busy_timeout=10000")
    highest = 0
    for number, string in conn.execute("SELECT ZPATHNUMBER, ZPATHSTRING FROM ZIMAGE"):
        if number is not None:
            highest = max(highest, number)
        elif string and not string.startswith("/") and string[:1].isdigit():
            highest = max(highest, int(string.split(".")[0]))
    b = _Builder(conn, lib.horos_data, lib.linked_dir, lib.timezone, lib.seed,
                 time.time() if now is None else now, lib.folder_size, highest + 1, _sizes(64, 64), 0.0)
    b.maxima.update(dict(conn.execute("SELECT Z_NAME, Z_MAX FROM Z_PRIMARYKEY")))
    return b


def _close(b: _Builder) -> None:
    b.conn.executemany("UPDATE Z_PRIMARYKEY SET Z_MAX = ? WHERE Z_NAME = ?",
                       [(v, k) for k, v in b.maxima.items()])
    b.conn.commit()
    b.conn.close()


def add_study(lib: DemoLibrary, *, modality: str = "CT", images: int = 3, date_added: Optional[float] = None,
              now: Optional[float] = None, patient_name: str = "Novo^Estudo",
              study_date: Optional[dt.datetime] = None, size: int = 64, note: str = "added") -> DemoStudy:
    """Append one CT/MR study (``date_added`` in Unix seconds, default now); ``lib.studies`` is unchanged."""
    b = _reopen(lib, now)
    b.sizes = {modality: size}
    try:
        start = study_date or dt.datetime(2024, 11, 5, 10, 0)
        spec = _Study(note, patient_name, [_Series(modality, images=images, description=f"{modality} added")],
                      start.replace(tzinfo=None), dt.date(1985, 1, 1), f"P-NEW-{b.maxima['Study'] + 1:03d}", "O",
                      added_ago=b.now - (b.now if date_added is None else date_added))
        return b.write_study(spec)
    finally:
        _close(b)


def add_images(lib: DemoLibrary, study: DemoStudy, count: int, now: Optional[float] = None,
               size: int = 64) -> DemoStudy:
    """Add a new series of ``count`` images to ``study`` like a late arrival; return the updated study."""
    b = _reopen(lib, now)
    try:
        name, pid, sex, born, uid, desc, date = b.conn.execute(
            "SELECT ZNAME, ZPATIENTID, ZPATIENTSEX, ZDATEOFBIRTH, ZSTUDYINSTANCEUID, ZSTUDYNAME, ZDATE "
            "FROM ZSTUDY WHERE Z_PK = ?", (study.pk,)).fetchone()
        number = b.conn.execute("SELECT COALESCE(MAX(ZID), 0) + 1 FROM ZSERIES WHERE ZSTUDY = ? AND ZID < 5000",
                                (study.pk,)).fetchone()[0]
        modality = next((m for m in study.modalities if m in DUE_MODALITIES), "CT")
        b.sizes = {modality: size}

        def to_local(value: float) -> dt.datetime:
            return dt.datetime.fromtimestamp(value + REFERENCE_UNIX, b.zone)

        start = None if date is None else to_local(date).replace(tzinfo=None) + dt.timedelta(hours=1)
        spec = _Study(study.note, name or "", [], start, None if born is None else to_local(born).date(),
                      pid or "", sex or "", added_ago=0.0, description=desc or "")
        header = b._header(spec, uid, study.pk)
        header["AccessionNumber"] = None  # keep whatever the study already had
        series = _Series(modality, images=count, number=number, description=f"{modality} late arrival")
        _, files, rows = b.write_series(spec, series, study.pk, header, np.random.default_rng([lib.seed, number, study.pk]))
        modalities = [m for (m,) in b.conn.execute(
            "SELECT ZMODALITY FROM ZSERIES WHERE ZSTUDY = ? ORDER BY ZDATE, Z_PK", (study.pk,))]
        # Horos refreshes dateAdded, the study modality and the image count cache on each import.
        b.conn.execute("UPDATE ZSTUDY SET ZDATEADDED = ?, Z_OPT = Z_OPT + 1, ZMODALITY = ?, "
                       "ZNUMBEROFIMAGES = ZNUMBEROFIMAGES + ? WHERE Z_PK = ?",
                       (b.now - REFERENCE_UNIX, horos_study_modality(modalities), rows, study.pk))
        distinct = tuple(dict.fromkeys(modalities))
        return replace(study, files=tuple(dict.fromkeys(study.files + tuple(files))), image_rows=study.image_rows + rows,
                       modalities=distinct, due=any(m in DUE_MODALITIES for m in distinct))
    finally:
        _close(b)


def build_large_database(path: Path, *, studies: int = 130_000, images_per_study: int = 40, seed: int = 1) -> None:
    """A Database.sql with rows only (no files) for planning benchmarks: millions of ZIMAGE rows."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; choose a new file for the large database")
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        # Nothing to protect while building: no journal, no fsync; indexes come after the rows.
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-200000")
        conn.executescript(_schema_sql())
        conn.execute("BEGIN")
        prefix = f"{dd.make_uid(seed, 'large')[:40]}."
        kinds = (("CT",), ("CT",), ("CT",), ("MR",), ("MR",), ("MR",), ("PT", "CT"), ("PT",), ("CR",), ("US",))
        zone = dt.timezone(dt.timedelta(hours=-3))
        first_day = core_data_time(dt.datetime(2015, 1, 1, tzinfo=zone))
        series_pk = image_pk = 0
        study_rows: List[tuple] = []
        series_rows: List[tuple] = []
        image_rows: List[tuple] = []

        def flush() -> None:
            conn.executemany(f"INSERT INTO ZSTUDY (Z_PK, Z_ENT, Z_OPT, ZHASDICOM, ZNUMBEROFIMAGES, ZDATE, ZDATEADDED, "
                             f"ZDATEOFBIRTH, ZMODALITY, ZNAME, ZPATIENTID, ZPATIENTUID, ZSTUDYINSTANCEUID, "
                             f"ZACCESSIONNUMBER) VALUES ({', '.join('?' * 14)})", study_rows)
            conn.executemany(f"INSERT INTO ZSERIES (Z_PK, Z_ENT, Z_OPT, ZID, ZNUMBEROFIMAGES, ZSTUDY, ZDATE, "
                             f"ZMODALITY, ZSERIESDICOMUID, ZSERIESINSTANCEUID, ZSERIESSOPCLASSUID) "
                             f"VALUES ({', '.join('?' * 11)})", series_rows)
            conn.executemany("INSERT INTO ZIMAGE (Z_PK, Z_ENT, Z_OPT, ZINSTANCENUMBER, ZPATHNUMBER, ZSERIES, ZDATE, "
                             "ZCOMPRESSEDSOPINSTANCEUID, ZSTOREDMODALITY) VALUES (?, 2, 1, ?, ?, ?, ?, ?, ?)",
                             image_rows)
            del study_rows[:], series_rows[:], image_rows[:]

        for pk in range(1, studies + 1):
            kind = kinds[rng.randrange(len(kinds))]
            date = first_day + rng.randrange(10 * 365) * 86400 + rng.randrange(7 * 3600, 20 * 3600)
            name = f"{rng.choice(_LAST)}^{rng.choice(_FIRST)} {pk}"
            study_uid = f"{prefix}1.{pk}"
            study_rows.append((pk, 5, 2, 1, images_per_study, date, date + rng.uniform(600, 86400 * 30),
                               first_day - rng.randrange(80 * 365) * 86400, horos_study_modality(list(kind)),
                               name, f"P{pk:07d}", horos_patient_uid(name, f"P{pk:07d}", None), study_uid,
                               f"A{pk:08d}"))
            parts = len(kind) if len(kind) > 1 else (2 if images_per_study >= 2 else 1)
            for j in range(parts):
                modality = kind[j % len(kind)]
                series_pk += 1
                count = images_per_study // parts + (1 if j < images_per_study % parts else 0)
                series_uid = f"{prefix}2.{series_pk}"
                series_rows.append((series_pk, 4, 2, j + 1, count, pk, date + 300 * j, modality,
                                    series_uid, f"{j + 1:08d} {series_uid}",
                                    dd.SOP_CLASSES.get(modality, "1.2.840.10008.5.1.4.1.1.7")))
                stored = None if modality == "CT" else modality
                for i in range(count):
                    image_pk += 1
                    image_rows.append((i + 1, image_pk, series_pk, date + 300 * j + i,
                                       dd.packed_uid(f"{prefix}3.{image_pk}"), stored))
            if len(image_rows) >= 200_000:
                flush()
        flush()
        conn.executescript(_index_sql())
        _bookkeeping(conn, seed, {"Study": studies, "Series": series_pk, "Image": image_pk})
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode=delete")  # what Horos uses today (§8)
    finally:
        conn.close()
