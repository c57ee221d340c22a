"""Writes demo studies, files and rows, into one open Horos library, keeping Core Data's key counters."""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple
from zoneinfo import ZoneInfo

import numpy as np

from horos_async.demo import dicom as dd
from horos_async.demo.cases import SeriesSpec, StudySpec
from horos_async.demo.schema import (DUE_MODALITIES, ENTITIES, REFERENCE_UNIX, core_data_time, horos_patient_uid,
                                     horos_study_modality, insert_row)


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



class Builder:
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
