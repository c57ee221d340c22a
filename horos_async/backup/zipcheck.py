"""Blocking ZIP reading: prove a ZIP on disk is whole, and read its archive comment.

The reading half of the ZIP work (``archive`` writes). It follows docs/design/durability.md §3:
member by member from ``infolist()`` (never ``testzip``), every error turned into
:class:`~horos_async.backup.archive.ZipInvalid` naming the member, and a check that the file ends
exactly at its end record. Errors of the disk (EIO, ENXIO, a vanished file) propagate as the original
``OSError``: a loose cable must never make a good ZIP look bad.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import threading
import zipfile
from pathlib import Path
from typing import IO, List, Optional, Sequence

from horos_async.backup.archive import BuiltMember, Cancelled, Progress, Stream, ZipInvalid, safe_member_name
from horos_async.naming import redact_zip_path

log = logging.getLogger(__name__)

# Errors that mean the disk or volume failed, not that the ZIP is bad: they propagate from
# verify_zip so the engine never deletes a good ZIP because a cable was loose.
_DEVICE_ERRNOS = frozenset(e for e in (errno.EIO, errno.ENXIO, errno.ENODEV, errno.ENOENT, errno.EACCES, errno.EPERM,
                                        getattr(errno, "ESTALE", None), errno.ENOTCONN, errno.ETIMEDOUT) if e)


def verify_zip(path: Path, expected: Optional[Sequence[BuiltMember]] = None, *, deep: bool = True,
               progress: Progress = None, cancel: Optional[threading.Event] = None,
               chunk_size: int = 1 << 20) -> List[BuiltMember]:
    """Check a ZIP's structure (and with ``deep`` every member's bytes); return its members.

    Raises :class:`ZipInvalid` for any defect, ``OSError`` when the file or its disk cannot be read.
    """
    run = Stream(progress, cancel, chunk_size)
    with open(path, "rb") as f:
        member = None
        try:
            entries = _check_end(f)
            with zipfile.ZipFile(f) as zf:
                infos = zf.infolist()
                found = _check_directory(infos, entries)
                if expected is not None:
                    _compare(found, expected)
                for info in infos if deep else ():  # by ZipInfo, never by name (duplicates hide members)
                    member = info.filename
                    _check_member(zf, info, run)
                    run.file_done()
        except (ZipInvalid, Cancelled):
            raise
        except Exception as exc:
            if isinstance(exc, OSError) and exc.errno in _DEVICE_ERRNOS:
                raise
            raise ZipInvalid(f"{type(exc).__name__}: {exc}", member) from exc
    return found


def read_comment(path: Path) -> bytes:
    """The ZIP's archive comment (the engine's identity JSON), or b"" when it cannot be read."""
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.comment
    except Exception as exc:  # any failure means "no identity": the caller then treats it as unknown
        log.debug("no readable comment in %s: %s", redact_zip_path(Path(path).name), exc)
        return b""


def _check_end(f: IO[bytes]) -> int:
    """Check the file ends exactly at its end-of-central-directory record; return the entry count."""
    size = f.seek(0, os.SEEK_END)
    tail_len = min(size, 22 + 0xFFFF)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    pos = len(tail)
    while True:  # the rightmost record whose comment ends exactly at end of file
        pos = tail.rfind(b"PK\x05\x06", 0, pos)
        if pos < 0:
            raise ZipInvalid("the file does not end with an end-of-central-directory record "
                             "(truncated, or data appended after the ZIP)")
        fields = struct.unpack("<4s4H2LH", tail[pos:pos + 22]) if pos + 22 <= len(tail) else None
        if fields and pos + 22 + fields[-1] == len(tail):
            break
    _, disk, cd_disk, disk_entries, entries, cd_size, cd_offset, _ = fields
    eocd = end_of_cd = size - tail_len + pos
    f.seek(max(eocd - 20, 0))
    locator = f.read(20) if eocd >= 20 else b""
    if locator[:4] == b"PK\x06\x07":  # ZIP64: the real counts and offsets are in the ZIP64 record
        z_offset = struct.unpack("<4sLQL", locator)[2]
        f.seek(z_offset)
        record = f.read(56)
        if len(record) < 56 or record[:4] != b"PK\x06\x06":
            raise ZipInvalid("ZIP64 end record missing where its locator points")
        (_, rec_size, _, _, disk, cd_disk, disk_entries, entries, cd_size,
         cd_offset) = struct.unpack("<4sQ2H2L4Q", record)
        if z_offset + 12 + rec_size != eocd - 20:
            raise ZipInvalid("unexpected data between the ZIP64 end record and its locator")
        end_of_cd = z_offset
    if disk or cd_disk or disk_entries != entries:
        raise ZipInvalid("multi-disk ZIP archives are not supported")
    if cd_offset + cd_size != end_of_cd:
        raise ZipInvalid("the central directory does not end where the end record says")
    return entries


def _check_directory(infos: List[zipfile.ZipInfo], entries: int) -> List[BuiltMember]:
    if len(infos) != entries:
        raise ZipInvalid(f"central directory holds {len(infos)} entries, its end record says {entries}")
    seen = set()
    for info in infos:
        if info.filename in seen:
            raise ZipInvalid("duplicate member name", info.filename)
        if not safe_member_name(info.filename):
            raise ZipInvalid("unsafe member name (absolute, '..', backslash or drive)", info.filename)
        if info.flag_bits & 0x1 or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ZipInvalid("encrypted or unexpected compression method", info.filename)
        seen.add(info.filename)
    return [BuiltMember(i.filename, i.CRC, i.file_size, i.compress_size) for i in infos]


def _compare(found: List[BuiltMember], expected: Sequence[BuiltMember]) -> None:
    if len(found) != len(expected):
        raise ZipInvalid(f"holds {len(found)} members, expected {len(expected)}")
    by_name = {m.name: m for m in found}
    for want in expected:
        got = by_name.get(want.name)
        if got is None:
            raise ZipInvalid("expected member is missing", want.name)
        if (got.size, got.crc) != (want.size, want.crc):
            raise ZipInvalid(f"size/CRC {got.size}/{got.crc:08x}, expected {want.size}/{want.crc:08x}", want.name)


def _check_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, run: Stream) -> None:
    crc = size = 0
    with zf.open(info) as member:
        _install_fast_decompressor(member, info, run)
        while True:
            run.check_cancel()
            chunk = member.read(run.chunk_size)
            if not chunk:
                break
            crc, size = run.crc32(chunk, crc), size + len(chunk)
            run.add(len(chunk))
            # Free the buffer before the next read allocates one: two live 1 MiB buffers make glibc
            # map and fault in fresh pages for every chunk, a measurable cost at these speeds.
            del chunk
    if (size, crc) != (info.file_size, info.CRC):
        raise ZipInvalid(f"content {size} bytes/CRC {crc:08x}, directory says {info.file_size}/{info.CRC:08x}",
                         info.filename)


def _install_fast_decompressor(reader, info: zipfile.ZipInfo, run: Stream) -> bool:
    """Inflate a deflated member with ISA-L (2-3x zlib); same private-attribute reliance as the compressor.

    Only swapped before any byte is read, so the zlib object it replaces holds no state yet.
    """
    if not run.use_isal or info.compress_type != zipfile.ZIP_DEFLATED or getattr(reader, "_decompressor", None) is None:
        return False
    reader._decompressor = run.inflater()
    return True
