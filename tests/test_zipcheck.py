"""Verifying study ZIPs: every kind of damage a disk can do is found, and nothing else is called damage."""

from __future__ import annotations

import struct
import warnings
import zipfile
from pathlib import Path

import pytest

from horos_async.backup import archive, zipcheck
from horos_async.backup.archive import BuiltMember

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
