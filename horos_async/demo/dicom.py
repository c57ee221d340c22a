"""The pydicom half of the demo library: phantom pixels, DICOM datasets and files written to disk.

Kept apart from ``demo`` so the database shape and the file content can be read separately. Everything
here is deterministic for the same inputs, and works with pydicom 2.4 (the last release for Python 3.9)
as well as pydicom 3, whose write and compress APIs differ.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import struct
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import pydicom
from pydicom import config as _pd_config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, RLELossless, generate_uid

PYDICOM3 = int(pydicom.__version__.split(".")[0]) >= 3

SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "MR": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "PT": "1.2.840.10008.5.1.4.1.1.128",  # Positron Emission Tomography Image Storage
    "SR": "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR Storage
}

# Noise per modality, tuned so deflate level 1 shrinks a file to about 0.45-0.6 of its size, like
# real CT/MR; without noise the phantoms would compress ten-fold and flatter every benchmark.
_NOISE = {"CT": 25.0, "MR": 18.0, "PT": 6.0}
# Stored 12-bit CT values are HU + 1024, the usual unsigned encoding with RescaleIntercept -1024.
_CT_INTERCEPT = -1024
_HEX_DIGITS = str.maketrans("0123456789.", "123456789ab")


def make_uid(*parts: Any) -> str:
    """A valid UID derived only from ``parts``: the same parts always give the same UID."""
    return generate_uid(entropy_srcs=["horos-backup-demo"] + [str(p) for p in parts])


def packed_uid(uid: str) -> bytes:
    """Horos's ``ZCOMPRESSEDSOPINSTANCEUID``: two characters per byte, '0'-'9' -> 1-10, '.' -> 11."""
    # Each character is one nibble, so the nibbles can be spelled as hex digits and parsed in C.
    digits = uid.translate(_HEX_DIGITS)
    return bytes.fromhex(digits + "0" * (len(digits) % 2))


class Phantom:
    """Ellipse phantom for one series: one base image, cheap per-slice variation and noise."""

    def __init__(self, modality: str, size: int, rng: np.random.Generator) -> None:
        """Prepare the base image and a noise bank for ``size`` x ``size`` slices."""
        self.size = size
        n = size
        y, x = (np.mgrid[0:n, 0:n] - (n - 1) / 2.0) / (n / 2.0)
        x = x + rng.uniform(-0.05, 0.05)
        base = np.zeros((n, n), np.float32)
        if modality == "CT":
            fov = x * x + y * y < 1.0
            base[fov] = 24  # air inside the reconstruction circle; padding (0) outside it
            base[(x / 0.85) ** 2 + (y / 0.65) ** 2 < 1] = 1064  # soft tissue
            for cx, cy, a, b, v in ((-0.35, 0, 0.25, 0.35, 224), (0.35, 0, 0.25, 0.35, 224),
                                    (0.0, 0.3, 0.12, 0.12, 1600)):  # lungs, vertebra
                base[((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 < 1] = v
            self.noise_mask: Optional[np.ndarray] = fov
        elif modality == "MR":
            base[(x / 0.75) ** 2 + (y / 0.9) ** 2 < 1] = 600
            base[(x / 0.65) ** 2 + (y / 0.8) ** 2 < 1] = 350
            self.noise_mask = None
        else:  # PT: a warm body with hot spots
            base[(x / 0.8) ** 2 + (y / 0.6) ** 2 < 1] = 300
            base[((x + 0.3) / 0.1) ** 2 + (y / 0.1) ** 2 < 1] = 2500
            self.noise_mask = base > 0
        # The structure that changes from slice to slice, so consecutive slices are not identical.
        self.lesion = (((x - 0.1) / 0.15) ** 2 + ((y + 0.2) / 0.12) ** 2 < 1).astype(np.float32)
        self.base = base
        sigma = _NOISE.get(modality, 10.0)
        # One bank, read at a different offset per slice: fresh-looking noise without drawing 512x512
        # normals per slice (the benchmark library writes thousands of slices).
        self.bank = rng.normal(0.0, sigma, n * n + 4099).astype(np.float32)
        self.rng = rng

    def slice(self, index: int) -> np.ndarray:
        """Slice ``index`` as unsigned 16-bit pixels (12 significant bits)."""
        n = self.size
        off = int(self.rng.integers(0, 4099))
        noise = self.bank[off:off + n * n].reshape(n, n)
        if self.noise_mask is not None:
            noise = noise * self.noise_mask
        img = self.base + self.lesion * (40.0 * np.sin(index / 3.0)) + noise
        return np.clip(img, 0, 4095).astype("<u2")


def _put(ds: Dataset, keyword: str, value: Any) -> None:
    """Set one element without value validation: hostile names are the point of the demo."""
    tag = tag_for_keyword(keyword)
    if tag is None:  # pragma: no cover - a typo in this module
        raise KeyError(keyword)
    ds.add(DataElement(tag, dictionary_VR(tag), value, validation_mode=_pd_config.IGNORE))


def _needs_utf8(values: Dict[str, Any]) -> bool:
    return any(isinstance(v, str) and not v.isascii() for v in values.values())


def base_dataset(modality: str, sop_uid: str, header: Dict[str, Any]) -> Dataset:
    """A dataset with file meta for ``modality``; ``header`` maps DICOM keywords to values."""
    sop_class = SOP_CLASSES[modality]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    if _needs_utf8(header):
        _put(ds, "SpecificCharacterSet", "ISO_IR 192")
    _put(ds, "SOPClassUID", sop_class)
    _put(ds, "SOPInstanceUID", sop_uid)
    _put(ds, "Modality", modality)
    _put(ds, "Manufacturer", "horos-backup demo")
    for keyword, value in header.items():
        if value is not None:
            _put(ds, keyword, value)
    return ds


def add_pixels(ds: Dataset, frames: np.ndarray, modality: str, rle: bool) -> None:
    """Attach pixel data (shape (rows, cols) or (frames, rows, cols)), optionally RLE Lossless."""
    rows, cols = frames.shape[-2:]
    for keyword, value in (("SamplesPerPixel", 1), ("PhotometricInterpretation", "MONOCHROME2"),
                           ("Rows", rows), ("Columns", cols), ("BitsAllocated", 16),
                           ("BitsStored", 16 if modality == "PT" else 12),
                           ("HighBit", 15 if modality == "PT" else 11), ("PixelRepresentation", 0)):
        _put(ds, keyword, value)
    if frames.ndim == 3:
        _put(ds, "NumberOfFrames", frames.shape[0])
        _put(ds, "FrameIncrementPointer", 0x00181063)  # Frame Time
        _put(ds, "FrameTime", 100.0)
    if modality == "CT":
        _put(ds, "RescaleIntercept", _CT_INTERCEPT)
        _put(ds, "RescaleSlope", 1)
        _put(ds, "WindowCenter", 40)
        _put(ds, "WindowWidth", 400)
    elif modality == "PT":
        _put(ds, "RescaleIntercept", 0)
        _put(ds, "RescaleSlope", 1)
        _put(ds, "Units", "BQML")
    if not rle:
        _put(ds, "PixelData", frames.astype("<u2").tobytes())
        return
    stack = frames.reshape((-1,) + frames.shape[-2:])
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.add(DataElement(0x7FE00010, "OB", encapsulate([rle_frame(f) for f in stack]), is_undefined_length=True))


def rle_frame(pixels: np.ndarray) -> bytes:
    """One 16-bit frame as a DICOM RLE Lossless frame (PS3.5 Annex G): header, MSB and LSB segments."""
    # pydicom's own encoder (``ds.compress``) is pure Python and takes ~0.1 s per 512x512 slice, which
    # made the benchmark library slow to build; this one is vectorised and decoded by any reader.
    # (``ds.compress`` under pydicom 3 would also replace the SOP Instance UID unless told not to.)
    words = pixels.astype("<u2")
    segments = [_packbits((words >> 8).astype(np.uint8)), _packbits((words & 0xFF).astype(np.uint8))]
    offsets = [64, 64 + len(segments[0])] + [0] * 13
    return struct.pack("<16L", len(segments), *offsets) + b"".join(segments)


def _packbits(plane: np.ndarray) -> bytes:
    """PackBits-encode each row of a 2-D byte array separately, as an even-length RLE segment."""
    cols = plane.shape[1]
    flat = plane.ravel()
    begins = np.ones(flat.size, bool)
    begins[1:] = flat[1:] != flat[:-1]
    begins[::cols] = True  # runs never cross a row boundary (PS3.5 G.3.1)
    starts = np.flatnonzero(begins)
    lengths = np.diff(np.append(starts, flat.size))
    rep = lengths >= 3  # shorter runs are cheaper inside a literal
    # A token starts at every replicate run, and at a literal stretch's first run (after a replicate
    # run or at a row start); consecutive short runs merge into one literal token.
    after_rep = np.concatenate(([True], rep[:-1]))
    first = np.flatnonzero(rep | after_rep | (starts % cols == 0))
    tok_start, tok_len, tok_rep = starts[first], np.add.reduceat(lengths, first), rep[first]
    # Split tokens into chunks of at most 128 bytes, the longest run PackBits can express.
    chunks = (tok_len + 127) // 128
    tok = np.repeat(np.arange(first.size), chunks)
    k = np.arange(tok.size) - np.repeat(np.cumsum(chunks) - chunks, chunks)
    c_start, c_len = tok_start[tok] + 128 * k, np.minimum(128, tok_len[tok] - 128 * k)
    c_rep = tok_rep[tok] & (c_len >= 2)
    out_len = np.where(c_rep, 2, c_len + 1)
    off = np.cumsum(out_len) - out_len
    out = np.empty(int(out_len.sum()), np.uint8)
    out[off] = np.where(c_rep, 257 - c_len, c_len - 1).astype(np.uint8)  # -(n-1) repeats, n-1 literal
    r = np.flatnonzero(c_rep)
    out[off[r] + 1] = flat[c_start[r]]
    lit = np.flatnonzero(~c_rep)
    n = c_len[lit]
    src = np.repeat(c_start[lit], n) + np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    out[src + np.repeat(off[lit] + 1 - c_start[lit], n)] = flat[src]
    data = out.tobytes()
    return data + b"\x00" * (len(data) % 2)


def sr_dataset(sop_uid: str, header: Dict[str, Any], text: str) -> Dataset:
    """A small Comprehensive SR, standing in for a Horos ROI SR (series 5002)."""
    ds = base_dataset("SR", sop_uid, header)
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "ROI", "99HOROS", "OsiriX ROI SR"
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
    item.ConceptNameCodeSequence = Sequence([code])
    _put(item, "TextValue", text)
    _put(ds, "ValueType", "CONTAINER")
    ds.ConceptNameCodeSequence = Sequence([code])
    _put(ds, "ContinuityOfContent", "SEPARATE")
    _put(ds, "CompletionFlag", "COMPLETE")
    _put(ds, "VerificationFlag", "UNVERIFIED")
    ds.ContentSequence = Sequence([item])
    return ds


def write_instance(path: Path, modality: str, sop_uid: str, header: Dict[str, Any], phantom: Optional[Phantom],
                   index: int, frames: int, rle: bool, location: float) -> None:
    """Write one image file (``frames`` > 1: multi-frame) from ``phantom``, or a small SR when it is None."""
    if phantom is None:
        write(sr_dataset(sop_uid, header, f"ROI summary, instance {index + 1}"), path)
        return
    header = dict(header, SliceLocation=location, SliceThickness=2.5, ImagePositionPatient=[0, 0, location],
                  ImageOrientationPatient=[1, 0, 0, 0, 1, 0], PixelSpacing=[0.7, 0.7])
    ds = base_dataset(modality, sop_uid, header)
    slices = [phantom.slice(index * frames + f) for f in range(frames)]
    add_pixels(ds, np.stack(slices) if frames > 1 else slices[0], modality, rle)
    write(ds, path)


def write(ds: Dataset, path: Path) -> int:
    """Write ``ds`` as a DICOM Part 10 file with mode 0o644; return its size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if PYDICOM3:
        ds.save_as(path, enforce_file_format=True)
    else:  # pragma: no cover - exercised with pydicom 2.4 (Python 3.9)
        # pydicom 2.x takes the encoding from these flags, 3.x from the transfer syntax (and warns
        # when they are set), hence the version switch rather than setting them everywhere.
        ds.is_little_endian = True
        ds.is_implicit_VR = False
        ds.save_as(str(path), write_like_original=False)
    os.chmod(path, 0o644)
    return path.stat().st_size


def sample_file(name: str) -> Path:
    """Path of a test file bundled inside pydicom (never one that would be downloaded)."""
    import pydicom.data

    try:
        found = pydicom.data.get_testdata_file(name, download=False)
    except TypeError:  # pydicom 2.4 has no download flag and only searches bundled files first
        found = pydicom.data.get_testdata_file(name)
    if not found:
        raise FileNotFoundError(f"pydicom's bundled test file {name} is missing; reinstall pydicom")
    return Path(str(found))


def copy_sample(name: str, dest: Path) -> Dataset:
    """Copy pydicom's bundled test file ``name`` to ``dest`` (mode 0o644); return its header."""
    src = sample_file(name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    os.chmod(dest, 0o644)
    return pydicom.dcmread(str(dest), stop_before_pixels=True)


_TIME = re.compile(r"^(\d{2})(\d{2})?(\d{2})?")


def horos_wall_time(header: Any) -> Optional[dt.datetime]:
    """The naive local date-time Horos files an image under (docs/design/horos-database.md §5), or None.

    ``header`` is a Dataset or a keyword dict. The first non-empty of Acquisition, Content, Series and
    Study Date wins, with its own Time; a missing time means 12:00.
    """
    for what in ("Acquisition", "Content", "Series", "Study"):
        day = str(header.get(what + "Date") or "").strip()
        if len(day) == 8 and day.isdigit():
            m = _TIME.match(str(header.get(what + "Time") or "").strip())
            hms = tuple(int(g) if g else 0 for g in m.groups()) if m else (12, 0, 0)
            return dt.datetime(int(day[:4]), int(day[4:6]), int(day[6:]), *hms)
    return None
