"""The one helper every durable write goes through (docs/design/durability.md §1, borg's SaveFile pattern).

The order is always: write a temp file in the same directory as the final name, flush and fully sync
it, move it to the final name *without ever replacing an existing file*, then sync the directory (and
the parents of any directory just created) so the rename itself survives a power cut. Callers record
"done" only after :func:`publish` or :func:`write_atomic` returns.

``trace`` arguments take an optional ``callable(event, path)`` called with ``"fsync-file"``,
``"rename"`` and ``"fsync-dir"`` as each step completes; the order tests use it.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import secrets
import threading
from pathlib import Path
from typing import IO, Callable, List, Optional, Sequence

from horos_async import naming, platform

log = logging.getLogger(__name__)

Trace = Optional[Callable[[str, Path], None]]

TEMP_SUFFIX = ".partial"
"""Suffix of every temp file we write; a leftover one is always safe to delete."""

FILE_MODE = 0o640
DIR_MODE = 0o750

# Errors meaning "this filesystem has no hard links" (exFAT and FAT on macOS, some network mounts).
_NO_LINKS = frozenset(
    e for e in (errno.EPERM, getattr(errno, "ENOTSUP", None), errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS)
    if e
)
_NAME_MAX = 255  # bytes in one path component, on APFS, HFS+, exFAT and ext4 alike
_DIRS_LOCK = threading.Lock()  # see ensure_dir


class AlreadyExists(FileExistsError):
    """The final file already exists; publish refused to replace it."""


def temp_path_for(final: Path, tag: str) -> Path:
    """Temp name next to ``final``: ``.<final name>.<tag>.partial`` (hidden, easy to clean up)."""
    if not tag or "/" in tag or "\0" in tag:
        raise ValueError(f"bad temp tag {tag!r}: must be non-empty, without '/' or NUL")
    name = f".{final.name}.{tag}{TEMP_SUFFIX}"
    excess = len(os.fsencode(name)) - _NAME_MAX
    if excess > 0:
        # A long patient name can push the temp name past NAME_MAX. Temp files are never adopted,
        # only deleted, so shortening the middle is harmless; the prefix and suffix stay recognisable.
        stem = os.fsencode(final.name)[: -excess - 1].decode("utf-8", "ignore")
        name = f".{stem}~.{tag}{TEMP_SUFFIX}"
    return final.with_name(name)


def sync_dir(path: Path) -> None:
    """Sync a directory (re-exported from ``platform`` so callers need only this module)."""
    platform.sync_dir(path)


def is_temp_name(name: str) -> bool:
    """True for a name :func:`temp_path_for` could have produced."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def sync_file(f: IO[bytes], *, path: Optional[Path] = None, trace: Trace = None) -> None:
    """Flush Python's buffers and fully sync the open file ``f`` (``path`` names it for ``trace``)."""
    f.flush()
    platform.full_fsync(f.fileno())
    if trace:
        name = getattr(f, "name", None)
        trace("fsync-file", Path(path if path is not None else name if isinstance(name, str) else ""))


def ensure_dir(path: Path, mode: int = DIR_MODE) -> List[Path]:
    """``mkdir -p path``; return the directories it newly created, outermost first.

    A folder it creates is durable when it returns: the parent of each new folder is synced first
    (docs/design/durability.md §1). One lock covers the check, the creation and the syncs, so a second
    caller (another job in the same new month) waits until then: nobody can publish into a folder, and
    record a ZIP there as done, while the folder's own entry could still vanish in a power cut.
    """
    with _DIRS_LOCK:
        missing: List[Path] = []
        current = Path(path)
        while not current.is_dir():
            missing.append(current)
            if current.parent == current:
                break
            current = current.parent
        created: List[Path] = []
        for directory in reversed(missing):
            try:
                os.mkdir(directory, mode)
            except FileExistsError:
                if not directory.is_dir():
                    raise
                continue
            created.append(directory)
        for directory in reversed(created):  # innermost first, as _sync_dirs
            platform.sync_dir(directory.parent)
        return created


def publish(tmp: Path, final: Path, *, created_dirs: Sequence[Path] = (), trace: Trace = None) -> None:
    """Move the already-synced ``tmp`` to ``final`` without replacing anything, then sync directories.

    Raises :class:`AlreadyExists` when ``final`` exists; ``tmp`` is then left in place for the
    caller to verify, adopt or delete.
    """
    try:
        # link() fails if the target exists, unlike rename(): the kernel does the no-clobber check.
        os.link(tmp, final)
    except FileExistsError:
        raise _already_exists(final, tmp) from None
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        # No hard links here. Check-then-rename is only race-free because every writer to the
        # backup folder holds the run lock (guards.RunLock), so nothing can create `final` between
        # the check and the rename.
        if os.path.lexists(final):
            raise _already_exists(final, tmp) from None
        os.rename(tmp, final)
    else:
        os.unlink(tmp)
    if trace:
        trace("rename", final)
    _sync_dirs(final, created_dirs, trace)


def publish_dir(tmp: Path, final: Path, *, created_dirs: Sequence[Path] = (), trace: Trace = None) -> None:
    """Move the folder ``tmp`` to ``final`` without replacing anything, then sync the directories.

    The caller has synced every file in ``tmp`` and then ``tmp`` itself (:func:`sync_dir`), so the
    folder appears whole or not at all. Raises :class:`AlreadyExists` when ``final`` exists (``rename``
    would silently replace an empty folder); race-free because every writer to the backup folder holds
    the run lock (guards.RunLock).
    """
    if os.path.lexists(final):
        raise _already_exists(final, tmp) from None
    os.rename(tmp, final)
    if trace:
        trace("rename", final)
    _sync_dirs(final, created_dirs, trace)


def write_atomic(final: Path, data: bytes, *, mode: int = FILE_MODE, overwrite: bool = False,
                 trace: Trace = None) -> None:
    """Durably write a small file (marker, plist, status JSON) in one step.

    ``overwrite=False`` refuses to replace an existing ``final`` (raises :class:`AlreadyExists`);
    ``overwrite=True`` atomically replaces it, for files meant to be rewritten.
    """
    final = Path(final)
    created = ensure_dir(final.parent)
    tmp = temp_path_for(final, f"{os.getpid()}-{secrets.token_hex(4)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            sync_file(f, path=tmp, trace=trace)
        if overwrite:
            os.replace(tmp, final)
            if trace:
                trace("rename", final)
            _sync_dirs(final, created, trace)
        else:
            publish(tmp, final, created_dirs=created, trace=trace)
    except BaseException:
        # Never leave our own temp behind; `final` is untouched on every failure path.
        discard(tmp)
        raise


def write_stream(final: Path, source: IO[bytes], *, tag: str, sha256: str = "", mtime: Optional[float] = None,
                 check: Optional[Callable[[Path], None]] = None, chunk: int = 1 << 20) -> Optional[int]:
    """Stream ``source`` into a new ``final`` through a hidden temp file (temp → sync → publish without
    replacing); the bytes written, or None when ``final`` already exists (nothing is written then).

    ``sha256``, when given, must be the SHA-256 of the bytes read (ValueError otherwise); ``check(tmp)``
    runs on the synced temp before it is named and may raise to refuse it; ``mtime`` dates the file.
    On any failure the temp is removed and ``final`` is untouched.
    """
    if os.path.lexists(final):
        return None
    created = ensure_dir(final.parent)
    tmp = temp_path_for(final, f"{os.getpid()}-{tag}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    h, size = (hashlib.sha256() if sha256 else None), 0
    try:
        with os.fdopen(fd, "wb") as out:
            while True:
                data = source.read(chunk)
                if not data:
                    break
                if h is not None:
                    h.update(data)
                out.write(data)
                size += len(data)
            sync_file(out, path=tmp)
        if h is not None and h.hexdigest() != sha256:
            raise ValueError(f"{final.name}: the bytes read differ from the verified ones (SHA-256)")
        if check is not None:
            check(tmp)
        if mtime is not None:
            os.utime(tmp, (mtime, mtime))
        publish(tmp, final, created_dirs=created)
    except AlreadyExists:
        discard(tmp)
        return None
    except BaseException:
        discard(tmp)
        raise
    return size


def discard(path: Path) -> None:
    """Remove a temp file on a failure path: a missing one is fine, any other error is logged, never
    raised (it would hide the error being handled)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        # Named without the patient part: this module does not know `log_patient_names`, so it never
        # shows names (the Study UID in the name still identifies the study).
        log.warning("could not remove temp file %s: %s", naming.redact_zip_path(str(path)), exc.strerror or exc)


def is_own_temp(name: str, pid: Optional[int] = None) -> bool:
    """True for a temp name whose tag starts with this process's pid (``.x.<pid>.partial``,
    ``.x.<pid>-<n>.partial``): a file this process is writing now, not one a crash left."""
    if not is_temp_name(name):
        return False
    tag = name[:-len(TEMP_SUFFIX)].rsplit(".", 1)[-1]
    mine = str(os.getpid() if pid is None else pid)
    return tag == mine or tag.startswith(mine + "-")


def remove_stale_temps(directory: Path, max_depth: int = 2) -> List[Path]:
    """Delete temp files a crash left under ``directory`` (and ``max_depth`` levels below it).

    A folder that is a symlink is followed, as the writer follows it (a month folder moved to another
    disk and linked back); ``max_depth`` bounds the walk, so a link loop cannot run away.

    This process's own temp files (the live status file being replaced while the run starts) are
    kept: they are not left by anyone. A crashed process whose pid we now have left one only by
    chance; the next run, with another pid, removes it.
    """
    removed: List[Path] = []
    root = Path(directory)
    if not root.is_dir():
        return removed
    pending = [(root, 0)]
    while pending:
        folder, depth = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir():
                    if depth < max_depth:
                        pending.append((Path(entry.path), depth + 1))
                elif is_temp_name(entry.name) and not is_own_temp(entry.name) and entry.is_file(follow_symlinks=False):
                    try:
                        os.unlink(entry.path)
                    except FileNotFoundError:
                        continue
                    removed.append(Path(entry.path))
    return removed


def _sync_dirs(final: Path, created_dirs: Sequence[Path], trace: Trace) -> None:
    """Sync the folder holding ``final``, then the parent of each newly created folder, innermost first."""
    done = set()
    for directory in [final.parent] + [Path(d).parent for d in reversed(list(created_dirs))]:
        if directory in done:
            continue
        done.add(directory)
        platform.sync_dir(directory)
        if trace:
            trace("fsync-dir", directory)


def _already_exists(final: Path, tmp: Path) -> AlreadyExists:
    """The error for a refused publish, naming both files and what to do."""
    return AlreadyExists(
        errno.EEXIST,
        f"{final} already exists and is never replaced; the new copy stays at {tmp} "
        "(verify and adopt one of them, or delete the temp)",
        str(final),
    )
