"""The one seam between macOS and Linux: syncing files and directories all the way to the device (and
keeping an idle Mac awake during a run, :func:`keep_awake`).

On macOS ``os.fsync`` only hands data to the drive, which may hold it in a volatile cache; only
``fcntl(F_FULLFSYNC)`` asks the drive to write it out (docs/design/durability.md §1 step 2). Some filesystems
(exFAT, FAT, SMB) refuse F_FULLFSYNC: we then fall back to ``os.fsync`` and say so once per
filesystem. On Linux ``os.fsync`` already is the full sync. Everything else in the package calls
:func:`full_fsync` and :func:`sync_dir` and never touches ``fcntl`` for syncing itself.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Set, Tuple, Union

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows is not supported, but importing must not crash
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

# Module-level so tests can swap in a fake fcntl and a fake flag to exercise the macOS branch on Linux.
_fcntl = fcntl
_FULLFSYNC: Optional[int] = getattr(fcntl, "F_FULLFSYNC", None)

# Errors meaning "this filesystem does not do F_FULLFSYNC" (ENOTTY is what exFAT returns on recent
# macOS). Anything else (EIO, ENXIO, ENOSPC...) means the data may not be on the device: it propagates.
_UNSUPPORTED = frozenset(
    e for e in (errno.EINVAL, getattr(errno, "ENOTSUP", None), errno.EOPNOTSUPP, errno.ENOTTY) if e
)

# Devices (st_dev) already reported as degraded: one warning per filesystem per process is enough.
_warned_devices: Set[int] = set()


def is_macos() -> bool:
    """True when running on macOS (where F_FULLFSYNC, launchd and exFAT quirks apply)."""
    return sys.platform == "darwin"


def full_fsync(fd: int) -> None:
    """Sync ``fd`` to the device: F_FULLFSYNC where it exists and is accepted, else ``os.fsync``.

    An OSError raised here means the file is NOT safe. The caller must not retry on the same
    descriptor (a failed fsync may have dropped the dirty pages, so a second call can "succeed"
    without the data ever reaching the disk) and must never record the file as done.
    """
    flag = _FULLFSYNC
    if flag is None or _fcntl is None:
        os.fsync(fd)
        return
    try:
        _fcntl.fcntl(fd, flag)
        return
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise
        reason = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    os.fsync(fd)
    _warn_degraded(fd, reason)


def sync_dir(path: Union[str, Path]) -> None:
    """Sync a directory so the renames and creations inside it survive a power cut."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(os.fspath(path), flags)
    try:
        full_fsync(fd)
    except OSError as exc:
        # Some filesystems (and some network mounts) reject fsync on a directory with EINVAL:
        # there is nothing more we can do for that entry, and the file itself is already synced.
        if exc.errno != errno.EINVAL:
            raise
        log.debug("directory sync not supported on %s (EINVAL); skipped", path)
    finally:
        os.close(fd)


def _warn_degraded(fd: int, reason: str) -> None:
    """Log once per filesystem that only a plain fsync protects data written there."""
    try:
        device = os.fstat(fd).st_dev
    except OSError:
        device = -1
    if device in _warned_devices:
        return
    _warned_devices.add(device)
    log.warning(
        "degraded durability on %s: F_FULLFSYNC refused (%s), using fsync; data may sit in the "
        "drive's cache after a power cut (prefer an APFS or HFS+ backup disk)",
        _describe_fs(fd),
        reason,
    )


def _describe_fs(fd: int) -> str:
    """Best-effort mount point of the filesystem holding ``fd``, for the degraded-durability log."""
    path = None
    getpath = getattr(_fcntl, "F_GETPATH", None)
    try:
        if getpath is not None:  # macOS: ask the kernel for the descriptor's path
            path = os.fsdecode(_fcntl.fcntl(fd, getpath, b"\0" * 1024).rstrip(b"\0"))
        elif os.path.exists(f"/proc/self/fd/{fd}"):
            path = os.readlink(f"/proc/self/fd/{fd}")
    except (OSError, TypeError, ValueError):
        path = None
    if not path:
        return f"the filesystem of descriptor {fd}"
    current = Path(path)
    while not os.path.ismount(current) and current.parent != current:
        current = current.parent
    return str(current)


LAUNCHD_LABEL = "org.horos-backup.agent"
"""The launchd job label of our LaunchAgent (``horos-backup launchd install`` writes it)."""


def state_home(env: Optional[dict] = None, home: Optional[Path] = None) -> Path:
    """Where this machine keeps horos-backup's own state, off the backup volume (the health file).

    macOS: ``~/Library/Application Support/horos-backup``; elsewhere ``$XDG_STATE_HOME/horos-backup``
    (``~/.local/state/horos-backup`` when the variable is unset or not absolute, as the XDG spec says).
    """
    env = os.environ if env is None else env
    home = Path(home or Path.home())
    if is_macos():
        return home / "Library" / "Application Support" / "horos-backup"
    xdg = env.get("XDG_STATE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else home / ".local" / "state"
    return base / "horos-backup"


def launchd_plist_path(home: Optional[Path] = None) -> Path:
    """``~/Library/LaunchAgents/org.horos-backup.agent.plist`` under ``home`` (default: this user's home)."""
    return Path(home or Path.home()) / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"


# -- Horos's index: clones, cache hints, preferences, the process list ---------------------------------
# (docs/design/horos-database.md §8 and §11: what ``index snapshot`` and ``index restore`` need from the OS)

_FICLONE = 0x40049409  # Linux ioctl: share the extents of another file (btrfs, XFS with reflink, bcachefs)
_CLONE_UNSUPPORTED = frozenset(
    e for e in (errno.EINVAL, getattr(errno, "ENOTSUP", None), errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV,
                errno.ENOSYS, errno.EPERM) if e
)


def clone_file(src_fd: int, dst: Path) -> bool:
    """Make ``dst`` a copy-on-write clone of the open file ``src_fd``; False when this filesystem cannot.

    What ``cp -c`` does on APFS (``fclonefileat``) and ``cp --reflink`` on Linux (the FICLONE ioctl):
    milliseconds whatever the size. ``dst`` must not exist and must be on the same volume. The caller
    keeps ``src_fd`` open: closing a descriptor of a SQLite file drops that process's locks on it.
    """
    if is_macos():
        return _fclonefileat(src_fd, dst)
    if _fcntl is None:  # pragma: no cover
        return False
    try:
        fd = os.open(os.fspath(dst), os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError:
        return False
    try:
        _fcntl.ioctl(fd, _FICLONE, src_fd)
    except OSError as exc:
        os.close(fd)
        os.unlink(dst)
        if exc.errno in _CLONE_UNSUPPORTED:
            return False
        raise
    os.close(fd)
    return True


def _fclonefileat(src_fd: int, dst: Path) -> bool:  # pragma: no cover - macOS only
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "fclonefileat", None)
    if fn is None:  # macOS before 10.13
        return False
    at_fdcwd = -2
    if fn(ctypes.c_int(src_fd), ctypes.c_int(at_fdcwd), os.fsencode(os.fspath(dst)), ctypes.c_uint32(0)) == 0:
        return True
    err = ctypes.get_errno()
    if err in _CLONE_UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), os.fspath(dst))


def advise_willneed(fd: int, length: int) -> None:
    """Ask the kernel to bring ``length`` bytes of ``fd`` into the page cache (best effort, no error)."""
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, length, os.POSIX_FADV_WILLNEED)
        elif _fcntl is not None and hasattr(_fcntl, "F_RDADVISE"):  # pragma: no cover - macOS
            import struct

            _fcntl.fcntl(fd, _fcntl.F_RDADVISE, struct.pack("qi", 0, min(length, 2**31 - 1)))
    except (OSError, ValueError, OverflowError):
        pass


HOROS_DOMAIN = "org.horosproject.horos"
"""Horos's preferences domain (docs/design/horos-database.md §4.2: the bundle-id prefix ``org.horosproject``)."""


def horos_preferences_path(home: Optional[Path] = None) -> Path:
    """``~/Library/Preferences/org.horosproject.horos.plist`` under ``home`` (default: this user's home)."""
    return Path(home or Path.home()) / "Library" / "Preferences" / f"{HOROS_DOMAIN}.plist"


def running_processes() -> List[Tuple[int, str]]:
    """(pid, program name) of every process this user can see: ``/proc`` on Linux, ``ps`` on macOS.

    The name is the executable's (``comm``) and, when it differs, the base name of ``argv[0]`` too, so
    ``exec -a Horos`` and a binary named ``Horos`` are both seen.
    """
    if os.path.isdir("/proc/self"):
        return _proc_processes()
    import subprocess

    try:  # macOS: comm is the executable's full path, e.g. /Applications/Horos.app/Contents/MacOS/Horos
        text = subprocess.run(["ps", "-axo", "pid=,comm="], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    out = []
    for line in text.splitlines():
        pid, _, comm = line.strip().partition(" ")
        if pid.isdigit():
            out.append((int(pid), os.path.basename(comm.strip())))
    return out


def _proc_processes() -> List[Tuple[int, str]]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm", "rb") as f:
                comm = f.read().decode("utf-8", "replace").strip()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv0 = f.read().split(b"\0", 1)[0].decode("utf-8", "replace")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        out.append((int(entry), comm))
        base = os.path.basename(argv0)
        if base and base != comm:
            out.append((int(entry), base))
    return out


def pids_named(name: str) -> List[int]:
    """Pids of running processes whose program name is exactly ``name`` (``Horos``), this one excluded."""
    me = os.getpid()
    return sorted({pid for pid, prog in running_processes() if prog == name and pid != me})


def keep_awake(pid: int, *, macos: Optional[bool] = None) -> Optional[subprocess.Popen]:
    """macOS: keep an idle Mac (and its disks) from sleeping while process ``pid`` runs, with
    ``caffeinate -i -m -w pid``; the assertion ends by itself when ``pid`` exits. A Mac that dozes off
    mid-backlog stops the run, and launchd fires no run while it sleeps (README "Install on the Horos
    Mac"). Elsewhere, or when caffeinate cannot start: None, and nothing changes."""
    if not (is_macos() if macos is None else macos):
        return None
    program = shutil.which("caffeinate") or "/usr/bin/caffeinate"
    try:
        return subprocess.Popen([program, "-i", "-m", "-w", str(pid)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True)
    except OSError as exc:
        log.warning("cannot start %s (%s): an idle Mac may sleep during this run; see README "
                    "'Install on the Horos Mac' to keep it awake", program, exc.strerror or exc)
        return None


def read_uncached(fd: int) -> None:
    """Ask that reads of ``fd`` come from the device, not the page cache, where the system allows it
    (the mirror's read-back after a copy: docs/design/mirror.md §4). macOS: ``F_NOCACHE`` on the
    descriptor; Linux: drop its cached pages (``POSIX_FADV_DONTNEED``, after the file was synced). A
    network share or tmpfs may still answer from memory; errors are ignored (the read is still checked)."""
    try:
        if is_macos() and _fcntl is not None and hasattr(_fcntl, "F_NOCACHE"):
            _fcntl.fcntl(fd, _fcntl.F_NOCACHE, 1)
        elif hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass


def copy_range(src_fd: int, dst_fd: int, count: int) -> int:
    """Copy up to ``count`` bytes from ``src_fd`` to ``dst_fd`` at their offsets, in the kernel where it
    can (Linux ``copy_file_range``/``sendfile``); 0 at the end of the source. Falls back to read/write."""
    if hasattr(os, "copy_file_range"):
        try:
            return os.copy_file_range(src_fd, dst_fd, count)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
    if sys.platform.startswith("linux"):
        try:
            return os.sendfile(dst_fd, src_fd, None, count)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS):
                raise
    data = os.read(src_fd, min(count, 1 << 20))
    view, done = memoryview(data), 0
    while done < len(view):
        done += os.write(dst_fd, view[done:])
    return len(data)
