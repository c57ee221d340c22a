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
from typing import Optional, Set, Union

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


def launchd_plist_path(home: Optional[Path] = None) -> Path:
    """``~/Library/LaunchAgents/org.horos-backup.agent.plist`` under ``home`` (default: this user's home)."""
    return Path(home or Path.home()) / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"


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
