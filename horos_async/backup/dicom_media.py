"""The ``dicom-media`` layout: DICOM PS3.12 Annex V ("ZIP File Media") and PS3.10 File-sets.

A DICOMDIR at the root with PATIENT/STUDY/SERIES/IMAGE records, built with pydicom's ``FileSet``, and
every file under a conformant File ID: at most 8 components of at most 8 characters from ``A-Z``,
``0-9`` and ``_``, no extension (pydicom's ``PT000000/ST000000/SE000000/IM000000``).
docs/design/manifest.md §4.

The records are made from each file's **header** only (``stop_before_pixels``): pydicom stages those
header-only copies in a temporary folder to lay the File-set out, and only the DICOMDIR and the
File IDs are kept; the files themselves are then written from their sources (the study job) or from
their ZIPs (``export``). A file that cannot be a File-set instance (not DICOM, no SOP Instance UID,
the same SOP Instance UID twice, a record pydicom cannot make) is still written, under
``NODIR/Fnnnnnn``, unreferenced: Annex V allows other files beside the File-set.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

UNREFERENCED = "NODIR"
"""Folder of the files the DICOMDIR cannot reference."""
_FILE_ID = re.compile(r"^[A-Z0-9_]{1,8}$")
MAX_LEVELS = 8


@dataclass(frozen=True)
class Header:
    """What a file-set record is made from: one file's header dataset, or None for a file that is not
    DICOM; ``series_key`` tells series apart when a file has no Series Instance UID."""

    dataset: object
    series_key: str = ""


@dataclass(frozen=True)
class MediaLayout:
    """File IDs (``/``-separated, one per file given, in order) and the DICOMDIR's bytes."""

    names: List[str]
    dicomdir: bytes
    unreferenced: int
    """Files under ``NODIR/`` (not in the DICOMDIR)."""


def conformant(file_id: str) -> bool:
    """True for a PS3.10 File ID: 1-8 components of 1-8 characters ``A-Z 0-9 _``."""
    parts = file_id.split("/")
    return 0 < len(parts) <= MAX_LEVELS and all(_FILE_ID.match(p) for p in parts)


def read_header(path_or_bytes, *, study_date: str = "") -> Optional[object]:
    """The header dataset of a file (a path, or its first bytes), pixel data never read; None when it
    is not DICOM. With bytes that end inside the header, None too (the caller reads more)."""
    from pydicom import dcmread  # imported here: see archive.needs_deflate

    try:
        if isinstance(path_or_bytes, (bytes, bytearray)):
            return dcmread(io.BytesIO(path_or_bytes), stop_before_pixels=True)
        return dcmread(str(path_or_bytes), stop_before_pixels=True)
    except Exception:  # not DICOM, truncated, damaged: it is still written, unreferenced
        return None


def lay_out(headers: Sequence[Optional[Header]], *, default_date: str = "") -> MediaLayout:
    """Build the File-set of these files (their headers, in order): their File IDs and the DICOMDIR.

    ``default_date`` (``YYYYMMDD``) fills a missing Study Date, which a STUDY record requires.
    """
    from pydicom.fileset import FileSet

    fs = FileSet()
    sop_of: List[Optional[str]] = []
    seen = set()
    for h in headers:
        ds = h.dataset if h is not None else None
        uid = str(getattr(ds, "SOPInstanceUID", "") or "").strip() if ds is not None else ""
        if ds is None or not uid or uid in seen or getattr(ds, "file_meta", None) is None \
                or "TransferSyntaxUID" not in ds.file_meta or "SOPClassUID" not in ds:
            sop_of.append(None)
            continue
        _complete(ds, h.series_key, default_date, len(sop_of) + 1)
        try:
            fs.add(ds)
        except Exception:  # a record type pydicom cannot make from this header (an SR lacking flags...)
            sop_of.append(None)
            continue
        seen.add(uid)
        sop_of.append(uid)
    names: List[str] = []
    dicomdir = b""
    if seen:
        with tempfile.TemporaryDirectory(prefix="horos-backup-fileset-") as tmp:
            fs.write(tmp)
            ids = {str(i.SOPInstanceUID): str(i.FileID).replace(os.sep, "/") for i in fs}
            dicomdir = (Path(tmp) / "DICOMDIR").read_bytes()
    else:
        ids = {}
    extra = 0
    for uid in sop_of:
        if uid is None or uid not in ids:
            extra += 1
            names.append(f"{UNREFERENCED}/F{extra:07d}")
        else:
            names.append(ids[uid])
    for n in names:
        if not conformant(n):
            raise ValueError(f"File ID {n!r} is not conformant (PS3.10 §8.5)")
    return MediaLayout(names, dicomdir, extra)


def _complete(ds, series_key: str, default_date: str, number: int) -> None:
    """Fill, in this header-only copy, the elements the directory records require (PS3.3 F.5) that the
    file lacks or leaves empty: the DICOMDIR can then reference it. The file itself is not changed."""
    from pydicom.uid import generate_uid

    def empty(keyword: str) -> bool:
        return keyword not in ds or ds[keyword].VM == 0 or str(ds[keyword].value).strip() == ""

    if empty("PatientID"):
        ds.PatientID = "UNKNOWN"
    if empty("StudyDate"):
        ds.StudyDate = default_date or "19000101"
    if empty("StudyTime"):
        ds.StudyTime = "000000"
    if empty("StudyID"):
        ds.StudyID = "1"
    if empty("Modality"):
        ds.Modality = "OT"
    if empty("SeriesInstanceUID"):
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(ds.get("StudyInstanceUID", "")), series_key])
    if empty("SeriesNumber"):
        ds.SeriesNumber = 0
    if empty("InstanceNumber"):
        ds.InstanceNumber = number


def headers_of(paths: Iterable[Path], series_keys: Iterable[str]) -> List[Optional[Header]]:
    """The headers of these source files (blocking; header bytes only)."""
    out: List[Optional[Header]] = []
    for p, key in zip(paths, series_keys):
        ds = read_header(p)
        out.append(Header(ds, key) if ds is not None else None)
    return out
