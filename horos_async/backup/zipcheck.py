"""Blocking ZIP reading: prove a ZIP on disk is whole, and read its archive comment.

The reading half of the ZIP work (``archive`` writes); docs/design/durability.md §3. ``zipfile``'s
reader trusts the central directory alone: it ignores each local header's CRC, sizes and method, stops
inflating once it has the bytes it expects (a damaged end of a stream goes unseen) and reads past a
damaged name length. ``unzip -t`` rejects all of these, so :func:`verify_zip` parses the records itself:

* the file ends exactly at its end record, and the central directory fills exactly the space that
  record gives it, entry after entry;
* each entry: a safe, unique name, no unknown flag bits, stored or deflated, a version we can read,
  and attributes of a regular file (one flipped bit makes a member a symbolic link, which
  ``restore`` refuses);
* with ``deep``, each local header says what the central directory says (name, flags, method, date,
  CRC, sizes), every member is inflated to the end of its stream, which must end exactly where its
  data does, and the members tile the file from byte 0 to the central directory without gaps.

Every defect is a :class:`~horos_async.backup.archive.ZipInvalid` naming the member. Errors of the
disk (EIO, ENXIO, a vanished file) propagate as the original ``OSError``: a loose cable must never
make a good ZIP look bad. For a ZIP already on the backup disk, :func:`verify_stored` reads it a second
time before anyone calls it bad: one transient read error must not send a good ZIP to quarantine.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import stat
import struct
import threading
import time
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from horos_async.backup.archive import BuiltMember, Cancelled, Progress, Stream, ZipInvalid, safe_member_name
from horos_async.naming import redact_zip_path

log = logging.getLogger(__name__)

# Errors that mean the disk or volume failed, not that the ZIP is bad: they propagate from
# verify_zip so the engine never deletes a good ZIP because a cable was loose.
_DEVICE_ERRNOS = frozenset(e for e in (errno.EIO, errno.ENXIO, errno.ENODEV, errno.ENOENT, errno.EACCES, errno.EPERM,
                                        getattr(errno, "ESTALE", None), errno.ENOTCONN, errno.ETIMEDOUT) if e)
_END = struct.Struct("<4s4H2LH")  # end of central directory record
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")  # central directory file header
_LOCAL = struct.Struct("<4s2B4HL2L2H")  # local file header
_STORED, _DEFLATED = zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED
_MAX_VERSION = 45  # 4.5: ZIP64; what zipfile writes for stored and deflated members
_UTF8, _DESCRIPTOR, _DEFLATE_OPTIONS = 0x800, 0x08, 0x06
_KNOWN_FLAGS = _UTF8 | _DESCRIPTOR | _DEFLATE_OPTIONS  # encryption and the rest are not ours
_SAT32 = 0xFFFFFFFF
_FADV_DONTNEED = getattr(os, "POSIX_FADV_DONTNEED", None) if hasattr(os, "posix_fadvise") else None

RETRY_PAUSE = 1.0
"""Seconds between the two readings of a ZIP whose first reading failed (a USB hiccup passes)."""


@dataclass(frozen=True)
class _Entry:
    """One central directory entry, as stored (ZIP64 values resolved)."""

    name: str
    raw_name: bytes
    flags: int
    method: int
    dos_time: Tuple[int, int]
    crc: int
    compressed_size: int
    size: int
    offset: int
    attributes: int


class _End(NamedTuple):
    """What the end record (or the ZIP64 end record) says: entry count, directory offset and size."""

    entries: int
    cd_offset: int
    cd_size: int


def verify_zip(path: Path, expected: Optional[Sequence[BuiltMember]] = None, *, deep: bool = True,
               progress: Progress = None, cancel: Optional[threading.Event] = None,
               chunk_size: int = 1 << 20, hashes: bool = False) -> List[BuiltMember]:
    """Check a ZIP's structure (and with ``deep`` every header and every member's bytes); return its members.

    With ``deep`` and ``hashes`` each member's SHA-256 is computed from its inflated bytes too (for the
    manifest check of ``verify --deep``). Raises :class:`ZipInvalid` for any defect, ``OSError`` when
    the file or its disk cannot be read.
    """
    run = Stream(progress, cancel, chunk_size)
    run.hashes = {} if hashes and deep else None
    with open(path, "rb") as f:
        member = None
        try:
            end = _check_end(f)
            entries = _read_directory(f, end)
            found = [BuiltMember(e.name, e.crc, e.size, e.compressed_size) for e in entries]
            if expected is not None:
                _compare(found, expected)
            if not deep:
                _check_layout(entries, end)
            else:  # in file order (sequential reads); by entry, never by name
                at = 0
                for e in sorted(entries, key=lambda e: e.offset):
                    member = e.name
                    if e.offset != at:
                        raise ZipInvalid("bytes before or between members, or members overlapping", e.name)
                    at = _check_member(f, e, run)
                    run.file_done()
                member = None
                if at != end.cd_offset:
                    raise ZipInvalid("bytes between the last member and the central directory, or overlapping it")
                if run.hashes is not None:
                    found = [replace(m, sha256=run.hashes.get(m.name, "")) for m in found]
        except (ZipInvalid, Cancelled):
            raise
        except Exception as exc:
            if isinstance(exc, OSError) and exc.errno in _DEVICE_ERRNOS:
                raise
            raise ZipInvalid(f"{type(exc).__name__}: {exc}", member) from exc
    return found


def verify_stored(path: Path, *, deep: bool = True, progress: Progress = None,
                  cancel: Optional[threading.Event] = None, on_retry: Optional[Callable[[str], None]] = None,
                  pause: float = RETRY_PAUSE, hashes: bool = False) -> List[BuiltMember]:
    """:func:`verify_zip` for a ZIP on the backup disk, read twice before it is called bad.

    A first reading that fails (a defect, or a read error such as EIO) is reported to ``on_retry`` and
    logged, then the file is read again, from the disk rather than the page cache where the system
    allows; only that second reading decides. A missing file, a permission error or a cancel is final
    at once (reading again cannot change them).
    """
    try:
        return verify_zip(path, deep=deep, progress=progress, cancel=cancel, hashes=hashes)
    except ZipInvalid as exc:
        first = str(exc)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) or exc.errno in (errno.EACCES, errno.EPERM):
            raise
        first = f"read error: {exc.strerror or exc}"
    log.warning("%s failed its first reading (%s); reading it again", redact_zip_path(Path(path).name), first)
    if on_retry is not None:
        on_retry(first)
    _drop_cached(path)
    if cancel is not None:
        cancel.wait(pause)  # a stop request cuts the pause short; the second reading then stops at once
    else:
        time.sleep(pause)
    return verify_zip(path, deep=deep, progress=progress, cancel=cancel, hashes=hashes)


def _drop_cached(path: Path) -> None:
    """Ask the kernel to forget the file's cached pages, so a second reading comes from the disk (Linux;
    macOS has no posix_fadvise and simply reads again). Errors are ignored: the reading reports them."""
    if _FADV_DONTNEED is not None:
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, _FADV_DONTNEED)
            finally:
                os.close(fd)


def member_count(path: Path) -> Optional[int]:
    """How many members the ZIP's end record says it holds (one small read at the end of the file), or
    None when that record cannot be read: the cheap first look at a ZIP that changed on disk."""
    try:
        with open(path, "rb") as f:
            return _check_end(f).entries
    except (ZipInvalid, OSError, struct.error):
        return None


def read_comment(path: Path) -> bytes:
    """The ZIP's archive comment (the engine's identity JSON), or b"" when it cannot be read."""
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.comment
    except Exception as exc:  # any failure means "no identity": the caller then treats it as unknown
        log.debug("no readable comment in %s: %s", redact_zip_path(Path(path).name), exc)
        return b""


def _check_end(f: IO[bytes]) -> _End:
    """Check the file ends exactly at its end-of-central-directory record; return what it says."""
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
        fields = _END.unpack(tail[pos:pos + 22]) if pos + 22 <= len(tail) else None
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
    return _End(entries, cd_offset, cd_size)


def _read_directory(f: IO[bytes], end: _End) -> List[_Entry]:
    """Parse the central directory entry by entry; it must hold exactly ``end.entries`` entries."""
    f.seek(end.cd_offset)
    cd = f.read(end.cd_size)
    if len(cd) != end.cd_size:
        raise ZipInvalid("the central directory is cut short")
    entries: List[_Entry] = []
    seen = set()
    pos = 0
    while pos < len(cd):
        if pos + 46 > len(cd) or cd[pos:pos + 4] != b"PK\x01\x02":
            raise ZipInvalid(f"central directory entry {len(entries) + 1} is damaged (no signature where "
                             f"the previous entry ends)")
        (_, _made_by, _system, version, _, flags, method, time_, date, crc, csize, usize, nlen, xlen, klen,
         disk, _internal, attributes, offset) = _CENTRAL.unpack_from(cd, pos)
        stop = pos + 46 + nlen + xlen + klen
        if stop > len(cd):
            raise ZipInvalid(f"central directory entry {len(entries) + 1} runs past the end of the directory")
        raw = cd[pos + 46:pos + 46 + nlen]
        name = raw.decode("utf-8" if flags & _UTF8 else "cp437")
        extra = _extra_fields(cd[pos + 46 + nlen:pos + 46 + nlen + xlen], name)
        usize, csize, offset = _zip64_values(extra.get(1, b""), name, (usize, csize, offset))
        e = _Entry(name, raw, flags, method, (time_, date), crc, csize, usize, offset, attributes)
        if name in seen:
            raise ZipInvalid("duplicate member name", name)
        seen.add(name)
        if not safe_member_name(name):
            raise ZipInvalid("unsafe member name (absolute, '..', backslash or drive)", name)
        if flags & ~_KNOWN_FLAGS or method not in (_STORED, _DEFLATED):
            raise ZipInvalid("encrypted, unknown flags or unexpected compression method", name)
        if version > _MAX_VERSION or disk:  # (a disk of 0xFFFF, "see ZIP64", is no single-file ZIP either)
            raise ZipInvalid(f"needs ZIP version {version / 10:.1f} or another disk to extract", name)
        if method == _STORED and csize != usize:
            raise ZipInvalid(f"stored member of {usize} bytes takes {csize} bytes", name)
        _check_attributes(e)
        entries.append(e)
        pos = stop
    if len(entries) != end.entries:
        raise ZipInvalid(f"central directory holds {len(entries)} entries, its end record says {end.entries}")
    return entries


def _extra_fields(data: bytes, name: str) -> Dict[int, bytes]:
    """An extra field as ``{header id: data}``; it must be whole blocks, end to end."""
    out: Dict[int, bytes] = {}
    pos = 0
    while pos < len(data):
        hid, size = struct.unpack_from("<HH", data, pos) if pos + 4 <= len(data) else (0, len(data))
        if pos + 4 + size > len(data):
            raise ZipInvalid("damaged extra field", name)
        out[hid] = data[pos + 4:pos + 4 + size]
        pos += 4 + size
    return out


def _zip64_values(z64: bytes, name: str, values: Tuple[int, ...]) -> Tuple[int, ...]:
    """Replace each saturated 32-bit value by the next 64-bit one of ``z64`` (a ZIP64 extra field)."""
    out, pos = [], 0
    for v in values:
        if v == _SAT32:
            if pos + 8 > len(z64):
                raise ZipInvalid("ZIP64 size or offset missing from the extra field", name)
            v = struct.unpack_from("<Q", z64, pos)[0]
            pos += 8
        out.append(v)
    return tuple(out)


def _check_attributes(e: _Entry) -> None:
    """A member is a regular file (a folder for ``name/``): anything else is damage, and ``restore``
    refuses a symbolic link."""
    is_dir = e.name.endswith("/")
    kind = stat.S_IFMT(e.attributes >> 16)
    if kind not in (0, stat.S_IFDIR if is_dir else stat.S_IFREG) or (e.attributes & 0x10 and not is_dir):
        what = "a symbolic link" if kind == stat.S_IFLNK else f"file type {kind:o}"
        raise ZipInvalid(f"its attributes ({e.attributes >> 16:o}) make it {what}, not a "
                         f"{'folder' if is_dir else 'regular file'}", e.name)


def _check_layout(entries: Sequence[_Entry], end: _End) -> None:
    """Without reading local headers: members start at 0 and do not overlap each other or the directory."""
    at = 0
    for e in sorted(entries, key=lambda e: e.offset):
        if e.offset < at or (at == 0 and e.offset != 0):
            raise ZipInvalid("bytes before the first member, or members overlapping", e.name)
        at = e.offset + 30 + len(e.raw_name) + e.compressed_size
    if at > end.cd_offset:
        raise ZipInvalid("the last member overlaps the central directory")


def _check_member(f: IO[bytes], e: _Entry, run: Stream) -> int:
    """Check one member's local header against ``e``, read its data to the end; return where it ends."""
    f.seek(e.offset)
    head = f.read(30)
    if len(head) < 30 or head[:4] != b"PK\x03\x04":
        raise ZipInvalid("local header missing or damaged", e.name)
    _, version, _, flags, method, time_, date, crc, csize, usize, nlen, xlen = _LOCAL.unpack(head)
    raw = f.read(nlen)
    extra = _extra_fields(f.read(xlen), e.name)
    if raw != e.raw_name:
        raise ZipInvalid("its local header names another file", e.name)
    if (flags, method, (time_, date)) != (e.flags, e.method, e.dos_time) or version > _MAX_VERSION:
        raise ZipInvalid("its local header differs from the central directory (flags, method, date or "
                         "version)", e.name)
    zip64 = _SAT32 in (csize, usize)
    if zip64:  # a ZIP64 local header carries both sizes, in this order
        z64 = extra.get(1, b"")
        if len(z64) < 16:
            raise ZipInvalid("ZIP64 sizes missing from the local header", e.name)
        usize, csize = struct.unpack_from("<2Q", z64)
    # With a data descriptor (our writer's append-only ZIPs, docs/design/durability.md §8) the local
    # header holds zeros, or, from some writers, the real values; anything else is damage.
    allowed = {(e.crc, e.compressed_size, e.size)} | ({(0, 0, 0)} if flags & _DESCRIPTOR else set())
    if (crc, csize, usize) not in allowed:
        raise ZipInvalid(f"its local header says CRC {crc:08x}, {csize}/{usize} bytes; the central directory "
                         f"{e.crc:08x}, {e.compressed_size}/{e.size}", e.name)
    start = e.offset + 30 + nlen + xlen
    _check_data(f, e, run)
    stop = start + e.compressed_size
    if flags & _DESCRIPTOR:
        stop = _check_descriptor(f, e, stop, zip64)
    return stop


def _check_data(f: IO[bytes], e: _Entry, run: Stream) -> None:
    """Read the member's stored bytes (``f`` is at their start); inflate a deflated one to its very end."""
    inflater = run.inflater() if e.method == _DEFLATED else None
    crc = size = 0
    sha = hashlib.sha256() if getattr(run, "hashes", None) is not None else None
    remaining = e.compressed_size
    while remaining:
        run.check_cancel()
        chunk = f.read(min(run.chunk_size, remaining))
        if not chunk:
            raise ZipInvalid("the member's data is cut short", e.name)
        remaining -= len(chunk)
        if inflater is None:
            crc, size = run.crc32(chunk, crc), size + len(chunk)
            if sha is not None:
                sha.update(chunk)
            run.add(len(chunk))
        else:
            if inflater.eof:
                raise ZipInvalid("data after the end of the compressed stream", e.name)
            buf = chunk
            while True:  # bounded output per call: a corrupt stream cannot balloon in memory
                out = inflater.decompress(buf, run.chunk_size)
                buf = inflater.unconsumed_tail
                if out:
                    crc, size = run.crc32(out, crc), size + len(out)
                    if sha is not None:
                        sha.update(out)
                    run.add(len(out))
                    if size > e.size:
                        raise ZipInvalid(f"inflates to more than the {e.size} bytes the directory says", e.name)
                if inflater.eof or not (buf or out):
                    break
                del out  # see below
            if inflater.eof and (buf or inflater.unused_data):
                raise ZipInvalid("data after the end of the compressed stream", e.name)
        # Free the buffer before the next read allocates one: two live 1 MiB buffers make glibc
        # map and fault in fresh pages for every chunk, a measurable cost at these speeds.
        del chunk
    if inflater is not None and not inflater.eof:
        raise ZipInvalid("the compressed stream does not end where the member's data does (damaged)", e.name)
    if (size, crc) != (e.size, e.crc):
        raise ZipInvalid(f"content {size} bytes/CRC {crc:08x}, directory says {e.size}/{e.crc:08x}", e.name)
    if sha is not None:
        run.hashes[e.name] = sha.hexdigest()


def _check_descriptor(f: IO[bytes], e: _Entry, at: int, zip64: bool) -> int:
    """The data descriptor after a streamed member agrees with the directory; return where it ends."""
    f.seek(at)
    width = 8 if zip64 else 4
    data = f.read(4 + 4 + 2 * width)
    if data[:4] == b"PK\x07\x08":  # the signature is optional
        data, at = data[4:], at + 4
    else:
        data = data[:4 + 2 * width]
    if len(data) < 4 + 2 * width:
        raise ZipInvalid("data descriptor cut short", e.name)
    crc, csize, usize = struct.unpack("<L2Q" if zip64 else "<3L", data)
    if (crc, csize, usize) != (e.crc, e.compressed_size, e.size):
        raise ZipInvalid("its data descriptor differs from the central directory", e.name)
    return at + 4 + 2 * width


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
