"""Verifying study ZIPs: every kind of damage a disk can do is found, and nothing else is called damage."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import time
import warnings
import zipfile
from pathlib import Path

import pytest

from horos_async.backup import archive, zipcheck
from horos_async.backup.archive import BuiltMember

from helpers import backed_up_library, zips
from test_archive import CountdownEvent, build, study  # noqa: F401 (study is a fixture)


# --- verifying -----------------------------------------------------------------------------------


def _member_data_offset(zip_path: Path, name: str) -> int:
    with zipfile.ZipFile(zip_path) as zf:
        info = zf.getinfo(name)
    with open(zip_path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x55]))


@pytest.mark.parametrize("name", ["2 Other/noise.bin", "2 Other/ramp.bin", "1 CT/ct1.dcm"])
def test_verify_catches_a_flipped_byte(tmp_path, study, name):
    out, built = build(tmp_path, study)
    _flip(out, _member_data_offset(out, name) + 100)
    with pytest.raises(archive.ZipInvalid) as info:
        zipcheck.verify_zip(out, built)
    assert info.value.member == name
    assert zipcheck.verify_zip(out, built, deep=False) == built  # the directory alone looks fine


def test_verify_catches_a_damaged_local_header(tmp_path, study):
    out, built = build(tmp_path, study)
    with zipfile.ZipFile(out) as zf:
        second = zf.infolist()[1]
    _flip(out, second.header_offset + 31)  # inside the name stored in the local header
    with pytest.raises(archive.ZipInvalid) as info:
        zipcheck.verify_zip(out, built)
    assert info.value.member == second.filename


def test_verify_catches_truncation(tmp_path, study):
    out, built = build(tmp_path, study)
    for cut in (1, 40, out.stat().st_size // 2):
        damaged = tmp_path / f"cut{cut}.zip"
        damaged.write_bytes(out.read_bytes()[:-cut])
        with pytest.raises(archive.ZipInvalid):
            zipcheck.verify_zip(damaged, built, deep=False)
    with pytest.raises(archive.ZipInvalid):
        zipcheck.verify_zip(tmp_path / "cut1.zip")


@pytest.mark.parametrize("garbage", [b"\0", b"trailing garbage" * 100, b"PK\x05\x06" + b"\0" * 30])
def test_verify_catches_trailing_garbage(tmp_path, study, garbage):
    out, built = build(tmp_path, study)
    with open(out, "ab") as f:
        f.write(garbage)
    with zipfile.ZipFile(out) as zf:  # the stdlib reader does not notice
        assert zf.testzip() is None
    with pytest.raises(archive.ZipInvalid):
        zipcheck.verify_zip(out, built)


def test_verify_catches_prepended_data(tmp_path, study):
    out, built = build(tmp_path, study)
    out.write_bytes(b"junk" * 10 + out.read_bytes())
    with pytest.raises(archive.ZipInvalid):
        zipcheck.verify_zip(out, built, deep=False)


def test_verify_rejects_duplicate_names(tmp_path):
    out = tmp_path / "dup.zip"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns "Duplicate name"
        with zipfile.ZipFile(out, "w") as zf:
            zf.writestr("a.dcm", b"first")
            zf.writestr("a.dcm", b"second")
    with pytest.raises(archive.ZipInvalid) as info:
        zipcheck.verify_zip(out, deep=False)
    assert info.value.member == "a.dcm" and "duplicate" in str(info.value)


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", "a/../../b", "C:/x", "a\\b", "a//b", "./a"])
def test_verify_rejects_unsafe_names(tmp_path, name):
    out = tmp_path / "evil.zip"
    with zipfile.ZipFile(out, "w") as zf:
        info = zipfile.ZipInfo("placeholder")
        zf.writestr(info, b"x")
        info.filename = name  # bypass zipfile's own sanitising of the name
    with pytest.raises(archive.ZipInvalid):
        zipcheck.verify_zip(out)


def test_safe_member_name():
    for ok in ["1 CT/img.dcm", "Séries 2/a b.dcm", "a", "dir/", "ab:c", "a..b/c"]:
        assert archive.safe_member_name(ok), ok
    for bad in ["", "/a", "..", "a/..", "a/./b", "a\\b", "c:x", "a\0b", "a\nb", "//a"]:
        assert not archive.safe_member_name(bad), bad


def test_verify_compares_with_the_plan(tmp_path, study):
    out, built = build(tmp_path, study)
    wrong_crc = [BuiltMember(b.name, b.crc ^ 1, b.size, b.compressed_size) for b in built]
    with pytest.raises(archive.ZipInvalid) as info:
        zipcheck.verify_zip(out, wrong_crc, deep=False)
    assert info.value.member == built[0].name
    with pytest.raises(archive.ZipInvalid):
        zipcheck.verify_zip(out, built[:-1])
    renamed = built[:-1] + [BuiltMember("other", built[-1].crc, built[-1].size, 0)]
    with pytest.raises(archive.ZipInvalid) as info:
        zipcheck.verify_zip(out, renamed)
    assert info.value.member == "other"


def test_verify_cancel_and_progress(tmp_path, study):
    out, built = build(tmp_path, study)
    calls = []
    zipcheck.verify_zip(out, built, progress=lambda f, b: calls.append((f, b)))
    assert calls[-1] == (len(study), sum(m.size for m in study))
    with pytest.raises(archive.Cancelled):
        zipcheck.verify_zip(out, built, cancel=CountdownEvent(2))


def test_verify_missing_file_is_oserror_not_invalid(tmp_path):
    with pytest.raises(FileNotFoundError):
        zipcheck.verify_zip(tmp_path / "gone.zip")


def test_verify_empty_and_non_zip_files(tmp_path):
    for content in (b"", b"not a zip at all", b"PK\x03\x04" + b"\0" * 100):
        bad = tmp_path / "bad.zip"
        bad.write_bytes(content)
        with pytest.raises(archive.ZipInvalid):
            zipcheck.verify_zip(bad)
        assert zipcheck.read_comment(bad) == b""
    assert zipcheck.read_comment(tmp_path / "missing.zip") == b""


def test_empty_study_zip_is_valid(tmp_path):
    out, built = build(tmp_path, [])
    assert built == [] and zipcheck.verify_zip(out, []) == []


# --- bit rot: what verify --deep passes, unzip -t and restore accept -----------------------------

UNZIP = shutil.which("unzip")


@pytest.fixture(scope="module")
def demo_zip(tmp_path_factory) -> bytes:
    """A real study ZIP the engine wrote from the demo library: the smallest with several deflated members."""
    lib, cfg = backed_up_library(tmp_path_factory.mktemp("sweep"), studies=1)
    candidates = []
    for p in zips(cfg.backup_dir):
        with zipfile.ZipFile(p) as zf:
            infos = zf.infolist()
        if len(infos) >= 3 and all(i.compress_type == zipfile.ZIP_DEFLATED for i in infos):
            candidates.append((p.stat().st_size, p))
    return min(candidates)[1].read_bytes()


def _regions(data: bytes):
    """(local header spans, central directory + end record span, comment span, ends of deflate streams)."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos, comment = zf.infolist(), zf.comment
    locals_, stream_ends = [], []
    for info in infos:
        name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
        start = info.header_offset + 30 + name_len + extra_len
        locals_.append(range(info.header_offset, start))
        stream_ends.append(range(start + info.compress_size - 4, start + info.compress_size))
    cd_start = struct.unpack_from("<L", data, len(data) - len(comment) - 22 + 16)[0]
    return locals_, range(cd_start, len(data) - len(comment)), range(len(data) - len(comment), len(data)), stream_ends


def _flips(data: bytes):
    """Every byte flipped whole (XOR 0xFF); every bit on its own in the headers, the directory and the
    last bytes of each compressed stream; in the archive comment (free text: the identity JSON) every
    eighth byte."""
    locals_, central, comment, ends = _regions(data)
    bitwise = set().union(*locals_, central, *ends)
    for offset in range(len(data)):
        if offset in comment and offset % 8:
            continue
        masks = [1 << bit for bit in range(8)] + [0xFF] if offset in bitwise else [0xFF]
        for mask in masks:
            yield offset, mask


@pytest.mark.skipif(UNZIP is None, reason="unzip is not installed (CI installs it)")
def test_what_verify_deep_passes_unzip_and_restore_accept_over_a_sweep_of_flips(tmp_path, demo_zip):
    """Bit rot in a real ZIP: every flip verify --deep lets through must pass ``unzip -t`` and restore's checks."""
    from horos_async.ops.restore import Refused, safe_members

    path = tmp_path / "flipped.zip"
    path.write_bytes(demo_zip)
    tried = rejected = 0
    slipped = []
    t0 = time.monotonic()
    with open(path, "r+b", buffering=0) as f:
        for offset, mask in _flips(demo_zip):
            f.seek(offset)
            f.write(bytes([demo_zip[offset] ^ mask]))
            tried += 1
            try:
                zipcheck.verify_zip(path, deep=True)
            except archive.ZipInvalid:
                rejected += 1
            else:
                done = subprocess.run([UNZIP, "-t", "-qq", str(path)], capture_output=True, text=True)
                try:
                    safe_members(path)
                    refused = ""
                except Refused as exc:
                    refused = str(exc)
                if done.returncode or refused:
                    slipped.append((offset, hex(mask), done.returncode, (done.stdout + done.stderr)[:120], refused))
            f.seek(offset)
            f.write(demo_zip[offset:offset + 1])
    assert not slipped, f"{len(slipped)} of {tried} flips pass verify --deep but not unzip -t/restore: {slipped[:8]}"
    assert tried > len(demo_zip) and rejected > 0.9 * len(demo_zip)
    assert time.monotonic() - t0 < 120


def _first_and_last(data: bytes):
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos, comment = zf.infolist(), zf.comment
    first = infos[0]
    name_len, extra_len = struct.unpack_from("<HH", data, first.header_offset + 26)
    data_end = first.header_offset + 30 + name_len + extra_len + first.compress_size
    cd_end = len(data) - len(comment) - 22
    last_entry = data.rfind(b"PK\x01\x02", 0, cd_end)
    first_entry = struct.unpack_from("<L", data, cd_end + 16)[0]
    return first.header_offset, data_end, first_entry, last_entry


# (what is damaged, offset from (first local header, end of first member's data, first central entry,
#  last central entry), XOR mask): each one passed verify --deep before it parsed the headers itself
ROT = [
    ("local header CRC", lambda o: o[0] + 14, 0xFF),
    ("local header size", lambda o: o[0] + 19, 0x01),
    ("local header method", lambda o: o[0] + 8, 0x02),
    ("local header flags (name encoding)", lambda o: o[0] + 7, 0x08),
    ("end of the compressed stream", lambda o: o[1] - 1, 0xFF),
    ("central name length runs past the directory", lambda o: o[3] + 28, 0xFF),
    ("central flags", lambda o: o[2] + 9, 0xFF),
    ("external attributes: a symbolic link", lambda o: o[2] + 41, 0x20),
]


@pytest.mark.parametrize("what, where, mask", ROT, ids=[r[0] for r in ROT])
def test_verify_deep_finds_rot_zipfile_overlooks(tmp_path, demo_zip, what, where, mask):
    from horos_async.ops.restore import Refused, safe_members

    data = bytearray(demo_zip)
    data[where(_first_and_last(demo_zip))] ^= mask
    path = tmp_path / "rot.zip"
    path.write_bytes(bytes(data))
    with pytest.raises(archive.ZipInvalid):
        zipcheck.verify_zip(path, deep=True)
    with pytest.raises(Refused):
        safe_members(path)
    # unzip tests a link's target like a file (restore refuses it); and our ZIPs carry data descriptors
    # (docs/design/durability.md §8), so unzip reads a member's CRC and sizes from there, never from the
    # local header: a flip of those zero fields is harmless to it, while verify still calls it damage.
    descriptor = struct.unpack_from("<H", demo_zip, 6)[0] & 0x08
    benign = "attributes" in what or (descriptor and what in ("local header CRC", "local header size"))
    if UNZIP and not benign:
        assert subprocess.run([UNZIP, "-t", "-qq", str(path)], capture_output=True).returncode != 0


def test_verify_deep_reads_a_streamed_zip_with_data_descriptors(tmp_path):
    """A ZIP written to a pipe carries data descriptors after each member: still whole, still valid."""
    class Pipe(io.RawIOBase):  # not seekable: zipfile then writes descriptors
        def __init__(self):
            self.data = bytearray()

        def writable(self):
            return True

        def write(self, b):
            self.data += b
            return len(b)

    pipe = Pipe()
    with zipfile.ZipFile(pipe, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/one.dcm", b"first member " * 500)
        zf.writestr(zipfile.ZipInfo("a/two.dcm"), b"second " * 300, zipfile.ZIP_STORED)
    path = tmp_path / "streamed.zip"
    path.write_bytes(bytes(pipe.data))
    with zipfile.ZipFile(path) as zf:
        assert all(i.flag_bits & 0x08 for i in zf.infolist())
    assert [m.name for m in zipcheck.verify_zip(path, deep=True)] == ["a/one.dcm", "a/two.dcm"]
    if UNZIP:
        assert subprocess.run([UNZIP, "-t", "-qq", str(path)], capture_output=True).returncode == 0


def test_verify_deep_reads_zip64_local_headers(tmp_path):
    """A member over 4 GiB gets a ZIP64 local header (sizes 0xFFFFFFFF, real ones in the extra field),
    as force_zip64 makes for a small one: its sizes are read from there and checked."""
    path = tmp_path / "z64.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open(zipfile.ZipInfo("big/part.dcm"), "w", force_zip64=True) as member:
            member.write(b"pretend this is 4 GiB " * 1000)
        zf.writestr("after.dcm", b"small")
    data = path.read_bytes()
    if struct.unpack_from("<LL", data, 18) != (0xFFFFFFFF, 0xFFFFFFFF):
        # Python 3.9's zipfile rewrites a small member's local header with its real sizes; the same
        # checks run on the newer Pythons CI also uses.
        pytest.skip("this Python's zipfile writes no ZIP64 local header for a small member")
    assert len(zipcheck.verify_zip(path, deep=True)) == 2
    if UNZIP:
        assert subprocess.run([UNZIP, "-t", "-qq", str(path)], capture_output=True).returncode == 0
    damaged = bytearray(data)
    name_len = struct.unpack_from("<H", data, 26)[0]
    damaged[30 + name_len + 4] ^= 0x01  # the uncompressed size in the local ZIP64 extra field
    path.write_bytes(bytes(damaged))
    with pytest.raises(archive.ZipInvalid) as info:
        zipcheck.verify_zip(path, deep=True)
    assert info.value.member == "big/part.dcm"
