"""Blocking ZIP work: build one study's ZIP into a new file (the reading side is ``zipcheck``).

No asyncio here: the engine calls these from a worker thread. The writer streams each source in
fixed chunks (memory stays flat whatever the study size), checks every member's CRC against the
bytes actually read, and fully syncs the file before returning. Errors of the *output* disk
(ENOSPC, EIO, ENXIO) propagate as the original ``OSError``; a source's are the study's
(:class:`SourceMissing`, :class:`SourceReadError`).

The SHA-256 of the whole ZIP is computed from the bytes as they are written (:class:`HashingWriter`),
never by reading the file again: the writer is append-only, so zipfile puts each member's CRC and sizes
in a data descriptor after its data instead of seeking back into its local header
(docs/design/durability.md §8).
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import queue
import stat
import threading
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Dict, List, Optional, Sequence, Tuple


from horos_async import durable
from horos_async.backup import dicom_header
from horos_async.naming import redact_zip_path

try:  # ISA-L writes the same raw deflate stream as zlib, 5-20x faster at low levels.
    from isal import isal_zlib as _isal
except ImportError:  # pragma: no cover - the wheel is missing on some platforms
    _isal = None

log = logging.getLogger(__name__)

USE_ISAL = _isal is not None
"""Compress and checksum with ISA-L when it is installed; tests set this False to force zlib."""

if _isal is not None and getattr(zipfile, "crc32", None) is zlib.crc32:
    # zipfile checksums every byte written and read with its module-level crc32 (zlib's, ~3 GB/s);
    # ISA-L's computes the same CRC-32 ~3.5x faster. The values are identical, so every reader of our
    # ZIPs, and any other zipfile user in this process, sees no difference but the speed.
    zipfile.crc32 = _isal.crc32

Progress = Optional[Callable[[int, int], None]]
_PROGRESS_STEP = 64 << 20  # report at least this often (bytes) inside a large member
_DOS_MIN = (1980, 1, 1, 0, 0, 0)  # ZIP dates cannot say earlier: zipfile raises ValueError
_DOS_MAX = (2107, 12, 31, 23, 59, 58)
_DEFLATED_TS = "1.2.840.10008.1.2.1.99"
_ENCAPSULATED_UNCOMPRESSED_TS = "1.2.840.10008.1.2.1.98"  # encapsulated, yet the pixels are raw
_COMPRESSED_TS_PREFIX = "1.2.840.10008.1.2.4."  # JPEG, JPEG-LS, JPEG 2000, HTJ2K, MPEG, HEVC


class Cancelled(Exception):
    """The cancel event was set; the partial ZIP has been removed."""


class SourceMissing(Exception):
    """A source file vanished (ENOENT) between plan and zip."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"source file vanished: {path} (Horos may have removed it; retried next run)")
        self.path = path


class SourceReadError(Exception):
    """A source file could not be read (``errno`` set), or its size changed while it was read."""

    def __init__(self, path: Path, err: Optional[int], detail: str) -> None:
        super().__init__(f"cannot read source file {path}: {detail} (retried next run)")
        self.path, self.errno = path, err


class SourceNotFile(SourceReadError):
    """A source path is a FIFO, a device or a folder: reading it could block for ever or never end."""

    def __init__(self, path: Path, kind: str) -> None:
        super().__init__(path, None, f"it is a {kind}, not a regular file")
        self.kind = kind


class Heartbeat:
    """When a build last read a source chunk (``time.monotonic()``), and which source it is reading (None
    before the first and after the last): the job's stall watchdog reads both from the event loop
    (docs/design/durability.md §7)."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.source: Optional[Path] = None
        """The source file being opened or read, None between files."""

    def beat(self) -> None:
        self.last = time.monotonic()


class ZipInvalid(Exception):
    """A ZIP failed verification; ``member`` names the bad entry when there is one."""

    def __init__(self, reason: str, member: Optional[str] = None) -> None:
        super().__init__(f"{member}: {reason}" if member else reason)
        self.reason, self.member = reason, member


@dataclass(frozen=True)
class Member:
    """One file to put in a ZIP."""

    source: Path
    """Absolute path of the source file."""
    name: str
    """Member name inside the ZIP (portable, ``/``-separated, see :func:`safe_member_name`)."""
    size: int
    """Size in bytes from ``stat`` at plan time; a different size at zip time is a read error."""
    compress: bool
    """Deflate it (True) or store it (False, for already-compressed DICOM)."""


@dataclass(frozen=True)
class BuiltMember:
    """One member as written to, or found in, a ZIP."""

    name: str
    """Member name inside the ZIP."""
    crc: int
    """CRC-32 of the uncompressed bytes."""
    size: int
    """Uncompressed size in bytes."""
    compressed_size: int
    """Size in bytes as stored in the ZIP."""
    sha256: str = field(default="", compare=False)
    """SHA-256 (hex) of the uncompressed bytes, when the writer or a hashing verify computed it."""
    header: Optional[Dict[str, object]] = field(default=None, compare=False)
    """What the file's DICOM header says (``dicom_header.facts``), when the writer read it."""
    source: Optional[Path] = field(default=None, compare=False)
    """The source file it was written from (None for an in-memory member such as the manifest)."""


Trailer = Optional[Callable[[List[BuiltMember]], List[Tuple[str, bytes]]]]
"""Given the members written, the in-memory members to write after them (the DICOMDIR, the manifest)."""


class Built(List[BuiltMember]):
    """The members :func:`build_zip` wrote (a list), with the SHA-256 of the whole file."""

    sha256: str = ""
    """Hex SHA-256 of every byte of the ZIP, computed as the bytes were written."""


class HashingWriter(io.RawIOBase):
    """An append-only file object over ``out`` that hashes every byte written (SHA-256).

    It says it cannot seek, so zipfile never rewrites a local header: the bytes hashed are exactly the
    bytes of the file, in order (docs/design/durability.md §8). ``tell`` is its own count of bytes.
    """

    def __init__(self, out: IO[bytes]) -> None:
        super().__init__()
        self.out = out
        self.hash = hashlib.sha256()
        self.pos = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def seek(self, *args):  # zipfile's probe: "not seekable" makes it write data descriptors
        raise io.UnsupportedOperation("append-only: the SHA-256 is computed as the bytes are written")

    def tell(self) -> int:
        return self.pos

    def write(self, b) -> int:
        n = self.out.write(b)
        if n is None:  # a raw, non-blocking stream would say None: never ours, but never hash what was not written
            raise OSError(errno.EIO, "short write to the ZIP")
        view = memoryview(b)
        if n != len(view):
            # Buffered files write everything or raise; a short raw write is written again by the caller.
            view = view[:n]
        self.hash.update(view)
        self.pos += n
        return n

    def flush(self) -> None:
        if not self.closed:
            self.out.flush()

    def fileno(self) -> int:
        return self.out.fileno()

    @property
    def name(self):  # durable.sync_file's trace names the file
        return getattr(self.out, "name", None)

    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()  # flushes `out` first
        finally:
            self.out.close()


def build_zip(out_path: Path, members: Sequence[Member], *, level: int = 1, comment: bytes = b"",
              progress: Progress = None, cancel: Optional[threading.Event] = None,
              opener: Optional[Callable[[Path], IO[bytes]]] = None, chunk_size: int = 1 << 20,
              trace: durable.Trace = None, trailer: Trailer = None, hashes: bool = True,
              heartbeat: Optional[Heartbeat] = None) -> Built:
    """Write ``members`` into a new, fully synced ZIP at ``out_path``; remove it on any failure.

    With ``hashes`` each source is read by a thread of its own that computes its SHA-256 and CRC-32 and
    reads its DICOM header facts while this thread deflates and writes (docs/design/manifest.md §3);
    ``trailer`` then gives the members written last (the manifest needs every hash). Returns the members
    written, with ``.sha256`` of the whole file (hashed as written, docs/design/durability.md §8).
    ``heartbeat`` tells the job's stall watchdog when a source byte was last read (durability.md §7)."""
    names = [m.name for m in members]
    bad = [n for n in names if not safe_member_name(n)]
    if bad or len(set(names)) != len(names) or not 0 <= level <= 9 or len(comment) > 0xFFFF:
        raise ValueError(f"bad ZIP plan: unsafe names {bad[:3]}, duplicates {len(names) - len(set(names))}, "
                         f"level {level} (0-9), comment {len(comment)} bytes (max 65535)")
    out_path = Path(out_path)
    if opener is None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        out = os.fdopen(os.open(out_path, flags, durable.FILE_MODE), "wb")
    else:
        out = opener(out_path)
    hashed = HashingWriter(out)
    try:
        built = Built(_write_zip(hashed, members, level, comment, Stream(progress, cancel, chunk_size, heartbeat),
                                 trailer, hashes))
        durable.sync_file(hashed, path=out_path, trace=trace)
        built.sha256 = hashed.hash.hexdigest()
        hashed.close()
    except BaseException:
        _discard(hashed, out_path)
        raise
    return built


def safe_member_name(name: str) -> bool:
    """True when ``name`` is a relative path that cannot escape the folder it is extracted into."""
    if not name or name.startswith("/") or "\\" in name or any(ord(c) < 0x20 for c in name):
        return False
    if len(name) >= 2 and name[1] == ":" and name[0].isascii() and name[0].isalpha():
        return False  # "C:..." is absolute, or drive-relative, on Windows
    parts = name.split("/")
    if parts[-1] == "":  # a directory entry, "series/"
        parts.pop()
    return bool(parts) and all(p not in ("", ".", "..") for p in parts)


def needs_deflate(path: Path) -> bool:
    """False for DICOM whose transfer syntax is already compressed; True otherwise (safe default)."""
    # Imported here: pydicom (with numpy) costs a third of a second of start-up that `store` mode,
    # verify and restore never need.
    from pydicom import filereader
    from pydicom.uid import UID

    try:
        with open_source(path) as fp:  # a FIFO or device is refused here, never waited on
            read_meta = getattr(filereader, "_read_file_meta_info", None)
            if read_meta is None:  # pragma: no cover - a pydicom without the helper: by name
                meta = filereader.read_file_meta_info(path)
            else:
                filereader.read_preamble(fp, False)
                meta = read_meta(fp)
        ts = str(meta.get("TransferSyntaxUID") or "").strip("\0 ")
    except Exception:  # not DICOM, truncated, unreadable: deflating is always correct, only slower
        return True
    if not ts or ts == _ENCAPSULATED_UNCOMPRESSED_TS:
        return True
    if ts == _DEFLATED_TS:  # pydicom does not count Deflated as "compressed", but it is
        return False
    try:
        return not UID(ts).is_compressed
    except ValueError:  # unknown to this pydicom: 2.4 (Python 3.9) predates HTJ2K, for one
        return not ts.startswith(_COMPRESSED_TS_PREFIX)  # every standard .4.x syntax is compressed


class Stream:
    """One build or verify pass: chunk size, checksum, cancel checks and ``progress(files, bytes)`` calls.

    Shared with ``zipcheck``; the checksum (ISA-L or zlib) follows :data:`USE_ISAL` when it is made.
    """

    def __init__(self, progress: Progress, cancel: Optional[threading.Event], chunk_size: int,
                 heartbeat: Optional[Heartbeat] = None) -> None:
        self.progress, self.cancel, self.chunk_size = progress, cancel, chunk_size
        self.heartbeat = heartbeat
        self.use_isal = USE_ISAL and _isal is not None
        self.crc32 = _isal.crc32 if self.use_isal else zlib.crc32
        self.files, self.bytes, self.next_report = 0, 0, _PROGRESS_STEP
        self.hashes: Optional[Dict[str, str]] = None
        """Member name -> SHA-256 of its bytes, filled by a hashing verify (None: not hashing)."""

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("cancelled")

    def add(self, nbytes: int) -> None:
        self.bytes += nbytes
        if self.heartbeat is not None:
            self.heartbeat.last = time.monotonic()
        if self.progress and self.bytes >= self.next_report:  # at least every 64 MiB in a big member
            self.next_report = self.bytes + _PROGRESS_STEP
            self.progress(self.files, self.bytes)

    def inflater(self):
        """A raw-deflate decompressor: ISA-L's (2-3x zlib) when :data:`USE_ISAL`, else zlib's."""
        return _isal.decompressobj(-15) if self.use_isal else zlib.decompressobj(-15)

    def file_done(self) -> None:
        self.files, self.next_report = self.files + 1, self.bytes + _PROGRESS_STEP
        if self.progress:
            self.progress(self.files, self.bytes)


def _write_zip(out, members: Sequence[Member], level: int, comment: bytes, run: Stream, trailer: Trailer = None,
               hashes: bool = False) -> List[BuiltMember]:
    zf = zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True)
    built: List[BuiltMember] = []
    reader = _Reader(members, run) if hashes else None
    try:
        for member in members[:PREFETCH_FILES]:
            _prefetch(member.source, run.heartbeat)
        if reader is not None:
            reader.start()
        for i, member in enumerate(members):
            run.check_cancel()
            if i + PREFETCH_FILES < len(members):
                _prefetch(members[i + PREFETCH_FILES].source, run.heartbeat)
            if reader is None:
                built.append(_write_member(zf, member, level, run))
            else:
                built.append(_write_piped(zf, member, level, run, reader))
            run.file_done()
        if run.heartbeat is not None:
            run.heartbeat.source = None  # every source read: what is left writes the backup volume only
        for name, data in (trailer(built) if trailer is not None else ()):
            built.append(_write_bytes(zf, name, data, level))
        zf.comment = comment
        zf.close()  # writes the central directory; `out` stays open (a passed file object)
    except BaseException:
        # ZipFile.__del__ calls close(), which would write a central directory into the doomed
        # file; close() returns at once when fp is None.
        zf.fp = None
        raise
    finally:
        if reader is not None:
            reader.finish()
    return built


_QUEUE_CHUNKS = 4
"""Chunks the reading thread may run ahead of the deflating one (4 MiB per job at 1 MiB chunks)."""


class _Reader(threading.Thread):
    """Reads the sources in order and hands their chunks to the writer; hashes as it reads.

    The SHA-256, the CRC-32 and the header facts of each source are computed here, in the thread that
    reads, so they run on the other core while the writer deflates (hashlib and ISA-L release the GIL).
    Items: ``(chunk, mtime, end)`` per chunk, ``mtime`` on a file's first chunk only (else None), ``end``
    = ``(crc, sha256, facts)`` on its last (else None): a file of one chunk is one hand-over;
    ``("error", exc)`` ends the stream.
    """

    def __init__(self, members: Sequence[Member], run: Stream) -> None:
        super().__init__(name="zip-reader", daemon=True)
        self.members, self.run_ = members, run
        self.items: "queue.Queue[tuple]" = queue.Queue(_QUEUE_CHUNKS)
        self.stop = threading.Event()

    def _put(self, item: tuple) -> bool:
        while not self.stop.is_set():
            try:
                self.items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        run = self.run_
        try:
            for m in self.members:
                if run.heartbeat is not None:  # the stall watchdog names the source being opened or read
                    run.heartbeat.source = m.source
                    run.heartbeat.beat()
                src = _open_source(m.source)
                with src:
                    mtime: Optional[float] = os.fstat(src.fileno()).st_mtime
                    sha, crc, remaining, facts = hashlib.sha256(), 0, m.size, None
                    chunk = b""
                    while True:
                        if remaining > 0:
                            chunk = _read(src, m.source, min(run.chunk_size, remaining))
                            if not chunk:
                                raise SourceReadError(m.source, None,
                                                      f"changed while reading (shrank below {m.size} bytes)")
                            if facts is None:  # the header is in the first chunk (1 MiB); never the pixels
                                facts = dicom_header.facts(chunk, m.source)
                            sha.update(chunk)
                            crc, remaining = run.crc32(chunk, crc), remaining - len(chunk)
                        end = None
                        if remaining <= 0:
                            if _read(src, m.source, 1):
                                raise SourceReadError(m.source, None,
                                                      f"changed while reading (grew past {m.size} bytes)")
                            end = (crc, sha.hexdigest(), facts if facts is not None else dicom_header.facts(b""))
                        if not self._put((chunk, mtime, end)):
                            return
                        mtime, chunk = None, b""
                        if end is not None:
                            break
        except BaseException as exc:  # handed to the writer, which raises it in its own thread
            self._put(("error", exc))

    def take(self) -> tuple:
        """The next item; a reading error is raised here, in the writer's thread."""
        while True:
            self.run_.check_cancel()
            try:
                item = self.items.get(timeout=0.1)
            except queue.Empty:
                if not self.is_alive() and self.items.empty():
                    raise ZipInvalid("the reading thread ended early")
                continue
            if item[0] == "error":
                raise item[1]
            return item

    def finish(self) -> None:
        """Stop the thread (it may be blocked handing over a chunk) and wait for it."""
        self.stop.set()
        self.join(timeout=10)  # a source read stuck on a dead volume must not hang the job for ever


def _write_piped(zf: zipfile.ZipFile, member: Member, level: int, run: Stream, reader: _Reader) -> BuiltMember:
    """One member whose bytes, CRC and SHA-256 come from the reading thread."""
    chunk, mtime, end = reader.take()
    if mtime is None:
        raise ZipInvalid("reading thread out of step", member.name)
    zinfo = _zinfo(member, mtime, level)
    writer = zf.open(zinfo, "w")
    try:
        if member.compress:
            _install_fast_compressor(writer, level)
        while True:
            if chunk:
                writer.write(chunk)
                run.add(len(chunk))
            if end is not None:
                break
            del chunk  # see _check_member
            chunk, _, end = reader.take()
    except BaseException:
        io.IOBase.close(writer)  # see _write_member
        raise
    writer.close()
    crc, digest, facts = end
    if zinfo.CRC != crc or zinfo.file_size != member.size:
        raise ZipInvalid("CRC or size written differs from the source bytes read", member.name)
    return BuiltMember(member.name, crc, member.size, zinfo.compress_size, digest, facts, member.source)


def _write_bytes(zf: zipfile.ZipFile, name: str, data: bytes, level: int) -> BuiltMember:
    """An in-memory member (the manifest, a DICOMDIR), deflated, dated now."""
    if not safe_member_name(name):
        raise ValueError(f"bad ZIP plan: unsafe member name {name!r}")
    zinfo = zipfile.ZipInfo(name, date_time=_dos_time(time.time()))
    zinfo.compress_type = zipfile.ZIP_DEFLATED
    zinfo.external_attr = (stat.S_IFREG | 0o644) << 16
    zf.writestr(zinfo, data, compresslevel=max(1, min(level, 9)))
    crc = zlib.crc32(data)
    if zinfo.CRC != crc:
        raise ZipInvalid("CRC written differs from the bytes given", name)
    return BuiltMember(name, crc, len(data), zinfo.compress_size, hashlib.sha256(data).hexdigest())


def _zinfo(member: Member, mtime: float, level: int) -> zipfile.ZipInfo:
    zinfo = zipfile.ZipInfo(member.name, date_time=_dos_time(mtime))
    zinfo.compress_type = zipfile.ZIP_DEFLATED if member.compress else zipfile.ZIP_STORED
    zinfo.external_attr = (stat.S_IFREG | 0o644) << 16
    zinfo.file_size = member.size  # zipfile decides ZIP64 from this before writing the header
    # The stdlib compressor's level: ZipInfo.compress_level from Python 3.13, _compresslevel before.
    setattr(zinfo, "compress_level" if hasattr(zinfo, "compress_level") else "_compresslevel", level)
    return zinfo


def _write_member(zf: zipfile.ZipFile, member: Member, level: int, run: Stream) -> BuiltMember:
    if run.heartbeat is not None:
        run.heartbeat.source = member.source
        run.heartbeat.beat()
    src = _open_source(member.source)
    with src:
        zinfo = _zinfo(member, os.fstat(src.fileno()).st_mtime, level)
        writer = zf.open(zinfo, "w")
        try:
            if member.compress:
                _install_fast_compressor(writer, level)
            crc, remaining = 0, member.size
            while remaining > 0:
                run.check_cancel()
                chunk = _read(src, member.source, min(run.chunk_size, remaining))
                if not chunk:
                    raise SourceReadError(member.source, None, f"changed while reading (shrank below {member.size} bytes)")
                crc, remaining = run.crc32(chunk, crc), remaining - len(chunk)
                writer.write(chunk)
                run.add(len(chunk))
                del chunk  # see _check_member
            if _read(src, member.source, 1):
                raise SourceReadError(member.source, None, f"changed while reading (grew past {member.size} bytes)")
        except BaseException:
            # Do not let zipfile finish the member (more writes to a failing disk); the whole file
            # is deleted anyway. IOBase.close only marks the writer closed.
            io.IOBase.close(writer)
            raise
        writer.close()
    if zinfo.CRC != crc or zinfo.file_size != member.size:
        raise ZipInvalid("CRC or size written differs from the source bytes read", member.name)
    return BuiltMember(member.name, crc, member.size, zinfo.compress_size, source=member.source)


def _install_fast_compressor(writer, level: int) -> bool:
    """Swap zipfile's zlib compressor for ISA-L's; return whether it did."""
    # Relies on the private attribute _ZipWriteFile._compressor (CPython 3.6-3.14), read only by
    # write() and close(): replacing it before the first write changes nothing else. If a future
    # zipfile renames it, we keep the stdlib compressor: slower, still correct.
    if not USE_ISAL or _isal is None or getattr(writer, "_compressor", None) is None:
        return False
    isal_level = min(level, _isal.ISAL_BEST_COMPRESSION)  # ISA-L has levels 0-3 only
    writer._compressor = _isal.compressobj(isal_level, _isal.DEFLATED, -15)
    return True


def _prefetch(path: Path, heartbeat: Optional[Heartbeat] = None) -> None:
    """Ask the kernel to start reading the next source while this one is compressed (Linux; a no-op
    where posix_fadvise is missing, e.g. macOS, which reads ahead on its own). Errors are ignored:
    the real read reports them. An open on a stuck volume blocks here first: the heartbeat names it."""
    if _FADV_WILLNEED is None:
        return
    if heartbeat is not None:
        heartbeat.source = path
        heartbeat.beat()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _CLOEXEC)  # a FIFO must not block here either
    except OSError:
        return
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.posix_fadvise(fd, 0, 0, _FADV_WILLNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


PREFETCH_FILES = 4
"""Sources the kernel is asked to read ahead of the one being compressed (page cache only)."""
_FADV_WILLNEED = getattr(os, "POSIX_FADV_WILLNEED", None) if hasattr(os, "posix_fadvise") else None


_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_KINDS = ((stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
          (stat.S_ISDIR, "folder"), (stat.S_ISSOCK, "socket"))


def open_source(path: Path) -> IO[bytes]:
    """Open a source file for reading, refusing anything but a regular file (:class:`SourceNotFile`).

    Opened non-blocking, because opening a FIFO for reading blocks until a writer comes, for ever;
    checked on the open descriptor, because the path may have been replaced since it was planned;
    then switched back to blocking reads (docs/design/durability.md §7).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _CLOEXEC)
    except FileNotFoundError:
        raise SourceMissing(path) from None
    except OSError as exc:
        raise SourceReadError(path, exc.errno, exc.strerror or str(exc)) from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise SourceNotFile(path, next((kind for test, kind in _KINDS if test(mode)), "special file"))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except OSError as exc:
        os.close(fd)
        raise SourceReadError(path, exc.errno, exc.strerror or str(exc)) from exc
    except BaseException:
        os.close(fd)
        raise


_open_source = open_source


def _read(src: IO[bytes], path: Path, n: int) -> bytes:
    """Read from a source; its I/O errors are the study's problem, not the run's."""
    try:
        return src.read(n)
    except OSError as exc:
        raise SourceReadError(path, exc.errno, exc.strerror or str(exc)) from exc


def _dos_time(mtime: float) -> Tuple[int, int, int, int, int, int]:
    """The file's local mtime, clamped into the range a ZIP header can hold."""
    try:
        stamp = tuple(time.localtime(mtime)[:6])
    except (OverflowError, OSError, ValueError):
        return _DOS_MIN if mtime < 0 else _DOS_MAX
    return max(_DOS_MIN, min(_DOS_MAX, stamp))  # type: ignore[return-value]


def _discard(out: IO[bytes], out_path: Path) -> None:
    """Close and delete a failed output; the original exception is what the caller must see."""
    try:
        out.close()
    except (OSError, ValueError) as exc:  # a full disk fails the final flush too
        log.debug("closing failed ZIP %s: %s", redact_zip_path(out_path.name), exc)
    try:
        os.unlink(out_path)
    except FileNotFoundError:
        pass
    except OSError as exc:  # the next run's durable.remove_stale_temps deletes it
        log.warning("could not remove failed ZIP %s in %s: %s", redact_zip_path(out_path.name), out_path.parent, exc)


