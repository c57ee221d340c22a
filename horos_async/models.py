"""Frozen dataclasses shared by the reader, the engine and the front ends (no I/O here)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple


def study_key(uid, patient_uid) -> str:
    """The ledger key of a study from its raw ``ZSTUDYINSTANCEUID`` and ``ZPATIENTUID`` (NULL-safe).

    Horos files an incoming image by both values together (docs/design/horos-database.md §4.5), so rows sharing
    them are one study; ``Z_PK`` is kept as data, as it changes when Horos rebuilds its database.
    """
    return f"{str(uid or '').strip()}|{patient_uid or ''}"


@dataclass(frozen=True)
class StudyRow:
    """One study as Horos's ``ZSTUDY`` describes it, dates already in the Mac's time zone."""

    pk: int
    """``ZSTUDY.Z_PK``: stable while the store lives, renumbered by a Horos "rebuild database"."""
    uid: str
    """Study Instance UID (``ZSTUDYINSTANCEUID``); may repeat across rows (docs/design/horos-database.md §4.5)."""
    patient_uid: str
    """Horos's normalised patient key (``ZPATIENTUID``); with ``uid`` it identifies the study."""
    patient_name: str
    """Raw DICOM patient name, ``^`` separators kept."""
    patient_id: str
    """Patient ID (may be empty)."""
    birth_date: Optional[dt.date]
    """Date of birth as the Mac recorded it (local midnight), or None."""
    study_date: Optional[dt.datetime]
    """Earliest acquisition, aware, in the configured zone; None when Horos has no date."""
    date_added: Optional[float]
    """Unix seconds of the last time Horos added images to the study; drives stability and changes."""
    modalities: str
    """Horos's study modality string, e.g. ``CT\\PT``."""
    description: str
    """Study description (``ZSTUDYNAME``)."""
    accession: str
    """Accession number."""
    problems: Tuple[str, ...] = ()
    """Values of the row that could not be read as what they should be (``BAD_ROW`` notes)."""

    @property
    def key(self) -> str:
        """The ledger key: Study UID plus patient UID, stable across a Horos database rebuild."""
        return study_key(self.uid, self.patient_uid)


@dataclass(frozen=True)
class SourceFile:
    """One distinct file of a study, with the series it belongs to."""

    path: Path
    """Resolved absolute path of the file (after ``DBFOLDER_LOCATION`` and ``path_map``)."""
    series_pk: int
    """``ZSERIES.Z_PK`` of the series that owns the file (the first one when shared)."""
    series_number: Optional[int]
    """DICOM Series Number (``ZSERIES.ZID``)."""
    series_description: str
    """Series Description (``ZSERIES.ZNAME``)."""
    modality: str
    """Series modality (``ZSERIES.ZMODALITY``)."""
    instance_number: Optional[int]
    """Instance number of the file's first row, for ordering inside its series."""
    linked: bool = False
    """True for files outside DATABASE.noindex (absolute ``ZPATHSTRING``)."""


@dataclass(frozen=True)
class PlannedFile:
    """A source file with its member name in the ZIP and its size when planned."""

    source: SourceFile
    member: str
    """Portable member name inside the ZIP, ``<series folder>/<file name>``."""
    size: int
    """Bytes on disk when planned (-1 when missing)."""


@dataclass(frozen=True)
class StudyPlan:
    """Everything one ZIP job needs: the study, its files and where its ZIP goes."""

    study: StudyRow
    files: Tuple[PlannedFile, ...]
    """Present files, in member order."""
    missing: Tuple[str, ...]
    """Paths of files the database lists but that do not exist or cannot be read."""
    zip_relpath: str
    """Path of the ZIP relative to ``backup_dir``, POSIX separators (``2024_03/Name_..._UID.zip``)."""
    fingerprint: str
    """Hash of the sorted resolved source paths and sizes: a change means a new version is due."""
    image_rows: int
    """Number of ``ZIMAGE`` rows (frames) behind the files."""
    version: int = 1
    """1 for the first export, 2+ when the study gained images after an earlier export."""
    pks: Tuple[int, ...] = ()
    """``ZSTUDY.Z_PK`` of every row of the study (to count its images again before "done")."""
    counts: Tuple[int, int] = (0, 0)
    """(image rows, series holding them) of the rows the scan found, as it counts them: recorded with
    the export, so a study that grows without a new ``ZDATEADDED`` is noticed."""
    bad_rows: Tuple[str, ...] = ()
    """Malformed Horos rows of the study, one ``BAD_ROW`` note each ("ZIMAGE Z_PK=12: ...")."""

    @property
    def total_bytes(self) -> int:
        """Bytes of source data."""
        return sum(f.size for f in self.files)

    @property
    def month(self) -> str:
        """The month folder name."""
        return self.zip_relpath.split("/", 1)[0]


# Outcome statuses. Only DONE means "this study is safely backed up".
DONE = "done"
FAILED = "failed"
PARTIAL = "partial"
UNCHANGED = "unchanged"
"""The ledger already holds a verified ZIP of exactly these files: nothing was written."""


@dataclass(frozen=True)
class Outcome:
    """What one study job produced; the engine records it in the ledger and, when partial or failed, in
    issues.csv."""

    key: str
    status: str
    """``done``, ``partial`` (exported with files missing, allowed by config), ``failed``, or ``unchanged``
    (nothing to write: the study's verified ZIP holds exactly its files)."""
    code: str = ""
    """Issue code of a partial or failed study (``PARTIAL``, ``MISSING_FILES``, ``NO_FILES``, ``ZIP_FAIL``...)."""
    detail: str = ""
    zip_relpath: str = ""
    files: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    extra: Tuple[str, ...] = field(default=())
    """First few paths involved (missing or unreadable files)."""
    members_digest: str = ""
    """Digest of the published ZIP's members (names, CRCs, sizes) for the ledger; done and partial only."""
    members: int = 0
    """Members of the published ZIP (its files, the manifest, a DICOMDIR); 0 when nothing was written."""
    manifest_sha256: str = ""
    """SHA-256 of the ZIP's manifest member ("" when it has none); the ledger keeps it."""
    sha256: str = ""
    """Hex SHA-256 of the published ZIP file, computed while it was written; done and partial only."""
