"""Building and verifying study ZIPs: real files in, real ZIPs read back by two readers."""

from __future__ import annotations

import errno
import gc
import io
import os
import shutil
import stat
import subprocess
import threading
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path
from typing import List, Optional

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from horos_async.backup import archive, zipcheck
from horos_async import platform
from horos_async.backup.archive import Member

PYDICOM3 = int(pydicom.__version__.split(".")[0]) >= 3
UNZIP = shutil.which("unzip")
no_unraisable = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


# --- helpers -------------------------------------------------------------------------------------


def write_dicom(path: Path, ts: str = ExplicitVRLittleEndian, *, pixels: bool = True, rle: bool = False) -> Path:
    """A small valid DICOM file, optionally RLE-compressed with pydicom's own encoder."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Test^Patient"
    ds.PatientID = "P1"
    if pixels:
        ds.Rows = ds.Columns = 32
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        data = bytes((i * 7) % 251 for i in range(32 * 32 * 2))
        ds.PixelData = data
        if rle:
            import numpy as np  # an ImportError tells the caller RLE is unavailable

            ds.compress(RLELossless, np.frombuffer(data, dtype="<u2").reshape(32, 32) & 0x0FFF)
    if ts != ExplicitVRLittleEndian and not rle:
        ds.file_meta.TransferSyntaxUID = ts
    if PYDICOM3:
        ds.save_as(path, enforce_file_format=True)
    else:  # pragma: no cover - pydicom 2.4 on Python 3.9
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)
    return path


def random_file(path: Path, size: int, seed: int = 0) -> Path:
    pattern = bytes((seed * i) % 256 for i in range(256)) * (size // 256 + 1)
    path.write_bytes(os.urandom(size) if seed == 0 else pattern[:size])
    return path


def plan(path: Path, name: str, compress: Optional[bool] = None) -> Member:
    if compress is None:
        compress = archive.needs_deflate(path)
    return Member(path, name, path.stat().st_size, compress)


def read_back(zip_path: Path) -> dict:
    with zipfile.ZipFile(zip_path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def unzip_test(zip_path: Path) -> None:
    if UNZIP is None:
        return
    result = subprocess.run([UNZIP, "-t", "-qq", str(zip_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


class FailAfter(io.FileIO):
    """An output file that fails with ``err`` once ``limit`` bytes have been written."""

    def __init__(self, path: Path, limit: int, err: int) -> None:
        super().__init__(path, "xb")
        self.limit, self.err, self.written = limit, err, 0

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        if self.written + n > self.limit:
            raise OSError(self.err, os.strerror(self.err))
        self.written += n
        return super().write(data)


class CountdownEvent(threading.Event):
    """A cancel event that turns itself on after ``n`` checks."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def is_set(self) -> bool:
        self.n -= 1
        return self.n < 0


@pytest.fixture
def study(tmp_path) -> List[Member]:
    """A small study: plain and RLE DICOM, incompressible and compressible binaries, an empty file."""
    src = tmp_path / "src"
    src.mkdir()
    members = [
        plan(write_dicom(src / "ct1.dcm"), "1 CT/ct1.dcm"),
        plan(write_dicom(src / "ct2.dcm"), "1 CT/ct2.dcm"),
        plan(random_file(src / "noise.bin", 3 * 1024 * 1024 + 17), "2 Other/noise.bin"),
        plan(random_file(src / "ramp.bin", 2 * 1024 * 1024, seed=3), "2 Other/ramp.bin"),
        plan(random_file(src / "empty", 0), "2 Other/empty"),
        plan(random_file(src / "accent", 10), "3 Séries/accentué.dcm"),
    ]
    try:
        members.append(plan(write_dicom(src / "rle.dcm", rle=True), "1 CT/rle.dcm"))
    except (ImportError, RuntimeError, NotImplementedError):  # no numpy or no RLE encoder
        pass
    return members


def build(tmp_path: Path, members, name: str = "out.zip", **kwargs):
    out = tmp_path / name
    return out, archive.build_zip(out, members, chunk_size=256 * 1024, **kwargs)


# --- building ------------------------------------------------------------------------------------


def test_build_reads_back_byte_for_byte(tmp_path, study):
    old = os.umask(0o022)
    try:
        out, built = build(tmp_path, study, comment=b'{"key": "1.2.3"}')
    finally:
        os.umask(old)
    contents = read_back(out)
    assert list(contents) == [m.name for m in study]
    for m, b in zip(study, built):
        data = m.source.read_bytes()
        assert contents[m.name] == data
        assert (b.name, b.size, b.crc) == (m.name, len(data), zlib.crc32(data))
    with zipfile.ZipFile(out) as zf:
        assert zf.comment == b'{"key": "1.2.3"}'
        for info, m in zip(zf.infolist(), study):
            assert info.compress_type == (zipfile.ZIP_DEFLATED if m.compress else zipfile.ZIP_STORED)
            assert stat.S_IMODE(info.external_attr >> 16) == 0o644
            assert stat.S_ISREG(info.external_attr >> 16)
            mtime = time.localtime(m.source.stat().st_mtime)[:6]
            assert abs(time.mktime(info.date_time + (0, 0, -1)) - time.mktime(mtime + (0, 0, -1))) <= 2
    assert pydicom.dcmread(io.BytesIO(contents["1 CT/ct1.dcm"])).PatientName == "Test^Patient"
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert zipcheck.verify_zip(out, built) == built
    assert zipcheck.read_comment(out) == b'{"key": "1.2.3"}'
    unzip_test(out)


def test_build_fsyncs_before_returning(tmp_path, study, monkeypatch):
    synced = []
    monkeypatch.setattr(platform, "full_fsync", lambda fd: synced.append(os.fstat(fd).st_size))
    out, _ = build(tmp_path, study[:2])
    assert synced == [out.stat().st_size]  # one sync, of the complete file


def test_failed_fsync_removes_the_zip(tmp_path, study, monkeypatch):
    def eio(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(platform, "full_fsync", eio)
    with pytest.raises(OSError) as info:
        build(tmp_path, study)
    assert info.value.errno == errno.EIO
    assert not (tmp_path / "out.zip").exists()


def test_build_never_touches_an_existing_file(tmp_path, study):
    (tmp_path / "out.zip").write_bytes(b"a good zip")
    with pytest.raises(FileExistsError):
        build(tmp_path, study)
    assert (tmp_path / "out.zip").read_bytes() == b"a good zip"


def test_build_rejects_bad_plans(tmp_path, study):
    with pytest.raises(ValueError):
        build(tmp_path, [study[0], study[0]])
    with pytest.raises(ValueError):
        build(tmp_path, [Member(study[0].source, "../evil", study[0].size, True)])
    assert not (tmp_path / "out.zip").exists()


@no_unraisable
@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO, errno.ENXIO])
@pytest.mark.parametrize("limit", [10, 300_000, 2_500_000])
def test_output_errors_propagate_and_remove_the_file(tmp_path, study, err, limit):
    out = tmp_path / "out.zip"
    with pytest.raises(OSError) as info:
        archive.build_zip(out, study, opener=lambda p: FailAfter(p, limit, err), chunk_size=64 * 1024)
    assert type(info.value) is OSError and info.value.errno == err
    assert not out.exists()
    gc.collect()  # any zipfile finaliser that would write to the dead file runs now


def test_error_while_writing_the_central_directory(tmp_path, study):
    full, _ = build(tmp_path, study, name="full.zip")
    size = full.stat().st_size
    out = tmp_path / "out.zip"
    with pytest.raises(OSError):
        archive.build_zip(out, study, opener=lambda p: FailAfter(p, size - 30, errno.ENOSPC), chunk_size=256 * 1024)
    assert not out.exists()


def test_vanished_source_is_source_missing(tmp_path, study):
    study[2].source.unlink()
    with pytest.raises(archive.SourceMissing) as info:
        build(tmp_path, study)
    assert info.value.path == study[2].source
    assert not (tmp_path / "out.zip").exists()


@pytest.mark.parametrize("change", ["grow", "shrink"])
def test_source_changed_since_plan_is_read_error(tmp_path, study, change):
    victim = study[3].source
    if change == "grow":
        with open(victim, "ab") as f:
            f.write(b"one more image row")
    else:
        os.truncate(victim, study[3].size - 1)
    with pytest.raises(archive.SourceReadError) as info:
        build(tmp_path, study)
    assert info.value.path == victim and "reading" in str(info.value)
    assert not (tmp_path / "out.zip").exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_unreadable_source_is_read_error(tmp_path, study):
    study[0].source.chmod(0)
    with pytest.raises(archive.SourceReadError) as info:
        build(tmp_path, study)
    assert info.value.errno == errno.EACCES


def test_read_error_mid_file_is_read_error(tmp_path, study, monkeypatch):
    class BadSector(io.FileIO):
        def read(self, n=-1):
            if self.tell() > 0:
                raise OSError(errno.EIO, "Input/output error")
            return super().read(n)

    real_open = archive._open_source
    monkeypatch.setattr(archive, "_open_source", lambda p: BadSector(p) if p == study[2].source else real_open(p))
    with pytest.raises(archive.SourceReadError) as info:
        build(tmp_path, study)
    assert info.value.errno == errno.EIO and info.value.path == study[2].source
    assert not (tmp_path / "out.zip").exists()


@pytest.mark.parametrize("mtime, expected", [(0, (1980, 1, 1, 0, 0, 0)), (7e9, (2107, 12, 31, 23, 59, 58))])
def test_dates_outside_zip_range_are_clamped(tmp_path, study, mtime, expected):
    os.utime(study[0].source, (mtime, mtime))
    out, built = build(tmp_path, study[:1])
    with zipfile.ZipFile(out) as zf:
        assert zf.infolist()[0].date_time == expected
    zipcheck.verify_zip(out, built)


@no_unraisable
@pytest.mark.parametrize("checks", [0, 1, 3, 8])
def test_cancel_stops_and_removes_the_file(tmp_path, study, checks):
    with pytest.raises(archive.Cancelled):
        build(tmp_path, study, cancel=CountdownEvent(checks))
    assert not (tmp_path / "out.zip").exists()
    gc.collect()


def test_progress_per_member_and_inside_large_members(tmp_path, study, monkeypatch):
    monkeypatch.setattr(archive, "_PROGRESS_STEP", 1024 * 1024)
    calls = []
    build(tmp_path, study, progress=lambda files, nbytes: calls.append((files, nbytes)))
    total = sum(m.size for m in study)
    assert calls[-1] == (len(study), total)
    assert calls == sorted(calls)
    assert len(calls) >= len(study) + 4  # the 3 MiB and 2 MiB members report while being read


def test_memory_stays_flat_for_a_large_member(tmp_path):
    src = random_file(tmp_path / "big.bin", 48 * 1024 * 1024)
    tracemalloc.start()
    try:
        archive.build_zip(tmp_path / "out.zip", [plan(src, "big.bin", compress=True)], chunk_size=1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 12 * 1024 * 1024


@pytest.mark.skipif(archive._isal is None, reason="isal not installed")
def test_isal_and_zlib_paths_both_make_standard_zips(tmp_path, study, monkeypatch):
    out_isal, built_isal = build(tmp_path, study, name="isal.zip")
    monkeypatch.setattr(archive, "USE_ISAL", False)
    out_zlib, built_zlib = build(tmp_path, study, name="zlib.zip")
    assert read_back(out_isal) == read_back(out_zlib)
    assert [(b.name, b.crc, b.size) for b in built_isal] == [(b.name, b.crc, b.size) for b in built_zlib]
    # Different compressors really ran: the deflate streams differ for compressible members.
    assert out_isal.read_bytes() != out_zlib.read_bytes()
    for out, built in ((out_isal, built_isal), (out_zlib, built_zlib)):
        zipcheck.verify_zip(out, built)
        unzip_test(out)


def test_level_reaches_the_stdlib_compressor(tmp_path, study, monkeypatch):
    monkeypatch.setattr(archive, "USE_ISAL", False)
    sizes = [build(tmp_path, study, name=f"l{level}.zip", level=level)[0].stat().st_size for level in (1, 9)]
    assert sizes[1] < sizes[0]


def test_fast_compressor_swap_is_guarded(monkeypatch):
    class NoCompressor:
        pass

    assert archive._install_fast_compressor(NoCompressor(), 1) is False
    monkeypatch.setattr(archive, "USE_ISAL", False)
    writer = type("W", (), {"_compressor": zlib.compressobj()})()
    assert archive._install_fast_compressor(writer, 1) is False


def test_zip64_for_more_than_65535_members(tmp_path):
    empty = random_file(tmp_path / "empty", 0)
    one = random_file(tmp_path / "one", 1)
    members = [Member(one if i % 2 else empty, f"s/{i:05d}", i % 2, i % 4 == 1) for i in range(65_537)]
    out, built = build(tmp_path, members)
    data = out.read_bytes()
    assert b"PK\x06\x06" in data[-200:] and b"PK\x06\x07" in data[-200:]  # ZIP64 end records
    assert len(zipcheck.verify_zip(out, built)) == 65_537
    unzip_test(out)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("HOROS_SLOW") != "1", reason="writes 4.1 GiB; set HOROS_SLOW=1")
def test_zip64_for_a_member_over_4_gib(tmp_path):
    big = tmp_path / "big.raw"
    with open(big, "wb") as f:
        f.truncate(4 * 1024**3 + 100 * 1024**2)  # sparse: cheap on the source side
    small = random_file(tmp_path / "after", 1000)  # its header lies beyond 4 GiB (cpython #121171)
    members = [Member(big, "big.raw", big.stat().st_size, False), plan(small, "after.bin", False)]
    out, built = build(tmp_path, members, level=1)
    big.unlink()
    assert built[0].size > 0xFFFFFFFF
    zipcheck.verify_zip(out, built)
    unzip_test(out)


# --- compression policy --------------------------------------------------------------------------


def meta_only(path: Path, ts: str) -> Path:
    """A DICOM file holding only its file meta with transfer syntax ``ts`` (all needs_deflate reads)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ts
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_file_meta_info(buf, meta, enforce_standard=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + buf.getvalue())
    return path


def test_needs_deflate_by_transfer_syntax(tmp_path):
    assert archive.needs_deflate(write_dicom(tmp_path / "plain.dcm")) is True
    assert archive.needs_deflate(random_file(tmp_path / "raw.bin", 1000)) is True
    assert archive.needs_deflate(tmp_path / "missing.dcm") is True
    compressed = (JPEGBaseline8Bit, JPEGLSLossless, JPEG2000Lossless, RLELossless, DeflatedExplicitVRLittleEndian,
                  "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.100")  # HTJ2K, MPEG2
    for i, ts in enumerate(compressed):
        assert archive.needs_deflate(meta_only(tmp_path / f"c{i}.dcm", ts)) is False, ts
    # Uncompressed, private/unknown, and "encapsulated uncompressed": deflate them.
    for i, ts in enumerate((ExplicitVRLittleEndian, "1.2.840.10008.1.2", "1.2.3.4.5", "1.2.840.10008.1.2.1.98")):
        assert archive.needs_deflate(meta_only(tmp_path / f"u{i}.dcm", ts)) is True, ts
    assert archive.needs_deflate(write_dicom(tmp_path / "defl.dcm", DeflatedExplicitVRLittleEndian)) is False


def test_needs_deflate_false_for_rle(tmp_path):
    pytest.importorskip("numpy")
    assert archive.needs_deflate(write_dicom(tmp_path / "rle.dcm", rle=True)) is False
