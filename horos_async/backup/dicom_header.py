"""A bounded read of a DICOM file's header: the few facts a ZIP's manifest records per file.

The manifest names, for every member, its SOP Instance UID, Series Instance UID, transfer syntax and
whether it is lossy (docs/design/manifest.md §2). These come from the bytes the ZIP writer has just
read anyway (the first chunk of the file), never from pixel data, and cost about 20 µs a file:
pydicom's parser (0.3-2 ms a file, holding the GIL) would cost more CPU than deflating the file.

:func:`scan` walks the file meta group and the dataset's top-level elements in tag order, stepping
over sequences (defined or undefined length, nested), and stops at the first tag past (0028,2110)
Lossy Image Compression or at the pixel data. When the bytes given end before that (a very large
header), or the file is deflated or big-endian, :func:`facts` reads the header with pydicom instead,
``stop_before_pixels`` (still no pixel data).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Dict, Optional, Tuple

_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_SOP_INSTANCE, _SERIES_UID, _LOSSY = 0x00080018, 0x0020000E, 0x00282110
_PIXEL_DATA = 0x7FE00010
_TAG, _U32, _U16 = struct.Struct("<HH"), struct.Struct("<L"), struct.Struct("<H")
_WANTED = {_SOP_INSTANCE: "sop_instance_uid", _SERIES_UID: "series_instance_uid", _LOSSY: "lossy_flag"}
_IMPLICIT_LE, _EXPLICIT_LE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
_TS_PREFIX = "1.2.840.10008.1.2.4."
# Transfer syntaxes whose pixels are lossy (JPEG baseline/extended and the retired lossy JPEG processes,
# JPEG-LS near-lossless, MPEG-2/4, HEVC), and those that may be either (JPEG 2000, HTJ2K): PS3.5 §8.2.
_LOSSY_TS = {_TS_PREFIX + s for s in ("50", "51", "52", "53", "54", "55", "56", "59", "60", "61", "62", "63",
                                      "64", "81", "100", "101", "102", "103", "104", "105", "106", "107",
                                      "108", "110", "111", "112")}
_MAYBE_LOSSY_TS = {_TS_PREFIX + s for s in ("91", "93", "203")}


class Truncated(Exception):
    """The bytes given end inside the header: read more (or let pydicom read the file)."""


def facts(first: bytes, path: Optional[Path] = None) -> Dict[str, object]:
    """The manifest facts of one file from its first bytes (``path``: read the header if they do not
    suffice): ``sop_instance_uid``, ``series_instance_uid``, ``transfer_syntax`` ("" for a file that is
    not DICOM), ``lossy`` (True, False or None when the file does not say)."""
    try:
        found = scan(first)
    except Truncated:
        found = _with_pydicom(path) if path is not None else None
    except (ValueError, struct.error):
        found = None
    if found is None:
        return {"sop_instance_uid": None, "series_instance_uid": None, "transfer_syntax": "", "lossy": None}
    ts = found.get("transfer_syntax") or ""
    flag = found.pop("lossy_flag", None)
    if flag in ("01", "00"):
        lossy: Optional[bool] = flag == "01"
    elif ts in _LOSSY_TS:
        lossy = True
    elif ts in _MAYBE_LOSSY_TS or not ts:
        lossy = None
    else:
        lossy = False
    found["lossy"] = lossy
    for key in ("sop_instance_uid", "series_instance_uid"):
        found.setdefault(key, None)
    return found


def scan(buf: bytes) -> Optional[Dict[str, object]]:
    """Parse ``buf`` (a file's first bytes); None when it is not a DICOM Part 10 file.

    Raises :class:`Truncated` when ``buf`` ends before the facts were found, or the dataset is not
    little-endian and uncompressed (deflated or big-endian files go to pydicom).
    """
    if len(buf) < 132 or buf[128:132] != b"DICM":  # the caller gives the whole file when it is this short
        return None
    pos, out = 132, {}  # type: int, Dict[str, object]
    meta_sop = None
    while True:  # the file meta group: explicit VR little endian, always
        if pos + 8 > len(buf):
            raise Truncated()
        group = struct.unpack_from("<H", buf, pos)[0]
        if group != 0x0002:
            break
        tag, vr, length, start = _explicit(buf, pos, "<")
        value = buf[start:start + length]
        if tag == 0x00020010:
            out["transfer_syntax"] = _text(value)
        elif tag == 0x00020003:
            meta_sop = _text(value)
        pos = start + length
    ts = str(out.get("transfer_syntax") or "")
    if ts == _IMPLICIT_LE:
        explicit = False
    elif ts == _EXPLICIT_LE or ts.startswith(_TS_PREFIX) or ts.startswith("1.2.840.10008.1.2.5") \
            or ts == "1.2.840.10008.1.2.1.98":
        explicit = True
    else:
        raise Truncated()  # deflated (1.2.840.10008.1.2.1.99), big endian (1.2.840.10008.1.2.2), private
    size = len(buf)
    while True:  # the hot loop (about 50 elements a file): inlined, precompiled structs
        if pos + 8 > size:
            raise Truncated()
        group, elem = _TAG.unpack_from(buf, pos)
        tag = (group << 16) | elem
        if tag > _LOSSY:
            break
        if not explicit or group == 0xFFFE:
            length, start = _U32.unpack_from(buf, pos + 4)[0], pos + 8
        elif buf[pos + 4:pos + 6] in _LONG_VRS:
            if pos + 12 > size:
                raise Truncated()
            length, start = _U32.unpack_from(buf, pos + 8)[0], pos + 12
        else:
            length, start = _U16.unpack_from(buf, pos + 6)[0], pos + 8
        if length == _UNDEFINED:
            pos = _skip_sequence(buf, start, explicit)
            continue
        if start + length > size:
            if tag in _WANTED:
                raise Truncated()
        elif tag in _WANTED:
            out[_WANTED[tag]] = _text(buf[start:start + length])
        pos = start + length
    if "sop_instance_uid" not in out and meta_sop:
        out["sop_instance_uid"] = meta_sop
    return out


def _explicit(buf: bytes, pos: int, order: str) -> Tuple[int, bytes, int, int]:
    """(tag, VR, length, value start) of an explicit-VR element at ``pos``."""
    group, elem = struct.unpack_from(order + "HH", buf, pos)
    vr = buf[pos + 4:pos + 6]
    if vr in _LONG_VRS:
        if pos + 12 > len(buf):
            raise Truncated()
        return (group << 16) | elem, vr, struct.unpack_from(order + "L", buf, pos + 8)[0], pos + 12
    return (group << 16) | elem, vr, struct.unpack_from(order + "H", buf, pos + 6)[0], pos + 8


def _element(buf: bytes, pos: int, explicit: bool) -> Tuple[int, int, int]:
    """(tag, length, value start) of the dataset element at ``pos``; item tags have no VR."""
    group, elem = struct.unpack_from("<HH", buf, pos)
    tag = (group << 16) | elem
    if not explicit or group == 0xFFFE:
        return tag, struct.unpack_from("<L", buf, pos + 4)[0], pos + 8
    t, _vr, length, start = _explicit(buf, pos, "<")
    return t, length, start


def _skip_sequence(buf: bytes, pos: int, explicit: bool) -> int:
    """Where an undefined-length sequence starting at ``pos`` ends (after its delimiter)."""
    while True:
        if pos + 8 > len(buf):
            raise Truncated()
        tag, length, start = _element(buf, pos, explicit)
        if tag == _SEQ_END:
            return start
        if tag != _ITEM:
            raise ValueError(f"unexpected tag {tag:08x} in a sequence")
        if length != _UNDEFINED:
            pos = start + length
            continue
        pos = start
        while True:  # an undefined-length item: its elements until the item delimiter
            if pos + 8 > len(buf):
                raise Truncated()
            tag, length, start = _element(buf, pos, explicit)
            if tag == _ITEM_END:
                pos = start
                break
            pos = _skip_sequence(buf, start, explicit) if length == _UNDEFINED else start + length


def _text(value: bytes) -> str:
    return value.decode("ascii", "replace").strip("\0 ")


def _with_pydicom(path: Path) -> Optional[Dict[str, object]]:
    """The facts read by pydicom, header only (``stop_before_pixels``); None when it is not DICOM."""
    from pydicom import dcmread  # imported here: see archive.needs_deflate

    try:
        ds = dcmread(str(path), stop_before_pixels=True)
    except Exception:  # not DICOM, damaged: the manifest says so (no UIDs), the file is still backed up
        return None
    meta = getattr(ds, "file_meta", None)
    out: Dict[str, object] = {"transfer_syntax": str(getattr(meta, "TransferSyntaxUID", "") or "")}
    for keyword, key in (("SOPInstanceUID", "sop_instance_uid"), ("SeriesInstanceUID", "series_instance_uid"),
                         ("LossyImageCompression", "lossy_flag")):
        value = ds.get(keyword)
        if value not in (None, ""):
            out[key] = str(value).strip("\0 ")
    return out


def study_facts(path: Path) -> Dict[str, str]:
    """The study's values in one file's header (``stop_before_pixels``), for a manifest whose Horos row
    lacks them: patient ID and name, birth and study dates (ISO), accession number, description."""
    from pydicom import dcmread

    try:
        ds = dcmread(str(path), stop_before_pixels=True)
    except Exception:  # not DICOM: nothing to add
        return {}

    def text(keyword: str) -> str:
        try:
            return str(ds.get(keyword, "") or "").strip("\0 ")
        except Exception:  # a value that does not decode
            return ""

    def iso(keyword: str) -> str:
        v = text(keyword)
        return f"{v[:4]}-{v[4:6]}-{v[6:8]}" if len(v) == 8 and v.isdigit() else ""

    return {"patient_id": text("PatientID"), "patient_name": text("PatientName"), "birth_date": iso("PatientBirthDate"),
            "study_date": iso("StudyDate"), "accession_number": text("AccessionNumber"),
            "description": text("StudyDescription")}
