"""Checks that stop a run before it can do harm: sentinel, volumes, run lock, INCOMING load, free space."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from pathlib import Path
from typing import Optional, Tuple

from horos_async.config import Config
from horos_async.errors import LockHeld, SentinelMissing, VolumeError

GB = 1000 ** 3


def check_sentinel(cfg: Config) -> None:
    """Refuse to run unless the sentinel file exists (the right volume is mounted)."""
    if cfg.sentinel is None:
        return
    if not cfg.sentinel.exists():
        raise SentinelMissing(
            f"sentinel file {cfg.sentinel} is missing: the backup volume is not mounted, or is mounted under "
            f"another name (e.g. '{cfg.sentinel.parent.name} 1'). Nothing was written. Mount the volume, or "
            f"create the sentinel on the right disk: touch '{cfg.sentinel}'")


def check_volumes(cfg: Config) -> None:
    """The Horos data folder must exist and the backup folder's parent must be mounted."""
    check_horos_data(cfg)
    noindex = cfg.data_root / "DATABASE.noindex"
    if not noindex.is_dir():
        if noindex.exists():
            what = "is not a folder (a Finder alias? replace it with a symbolic link)"
        elif (cfg.horos_data / "DBFOLDER_LOCATION").exists():
            what = f"does not exist (is the volume named in {cfg.horos_data / 'DBFOLDER_LOCATION'} mounted?)"
        else:
            what = "does not exist" + (cfg.horos_data_hint() or "; check 'horos_data' names the 'Horos Data' folder")
        raise VolumeError(f"Horos image folder {noindex} {what}. Nothing was written")
    problem = backup_dir_missing(cfg)
    if problem:
        raise VolumeError(f"{problem}. Nothing was written")


def check_horos_data(cfg: Config) -> None:
    """The Horos data folder must exist (the Horos volume is mounted)."""
    if not cfg.horos_data.is_dir():
        raise VolumeError(f"Horos data folder {cfg.horos_data} not found: is the Horos volume mounted? "
                          f"Check 'horos_data' in the config. Nothing was written")


def horos_data_gone(cfg: Config) -> str:
    """Why the Horos data is no longer where the run found it (its volume unmounted mid-run), or "" while
    it is. Asked before a study is called missing or unreadable (docs/design/durability.md §7): a vanished
    volume makes every study look missing, and recording that would put them all in backoff."""
    noindex = cfg.data_root / "DATABASE.noindex"
    if not cfg.horos_data.is_dir():
        return f"the Horos data folder {cfg.horos_data} vanished during the run (is the Horos volume still mounted?)"
    if not noindex.is_dir():
        return f"the Horos image folder {noindex} vanished during the run (is its volume still mounted?)"
    if not cfg.database.is_file():
        return f"the Horos database {cfg.database} vanished during the run (is the Horos volume still mounted?)"
    if cfg.sentinel is not None and not cfg.sentinel.exists():
        return f"the sentinel file {cfg.sentinel} vanished during the run (is the backup volume still mounted?)"
    return ""


def folder_identity(folder: Path) -> Optional[Tuple[int, int]]:
    """(device, inode) of ``folder``, or None when it cannot be read."""
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def backup_dir_gone(cfg: Config, identity: Optional[Tuple[int, int]]) -> str:
    """Why the backup folder is no longer the one the run started with, or "" while it is.

    Asked before each study creates its month folder: when the backup volume is pulled away, its path
    may still name a folder (the empty mount point, on the boot disk), and creating a month folder there
    would put "done" ZIPs on the wrong disk.
    """
    now = folder_identity(cfg.backup_dir)
    if now is None:
        return f"the backup folder {cfg.backup_dir} vanished during the run (is the backup volume still mounted?)"
    if identity is not None and now != identity:
        return (f"the backup folder {cfg.backup_dir} is no longer the folder the run started in (its volume was "
                f"unmounted: the path now names another disk)")
    return ""


def backup_dir_missing(cfg: Config) -> str:
    """Why the backup folder cannot be there (its volume is not mounted), or "" when it is or can be created.

    A missing ``backup_dir`` whose parent exists is a first install (the run creates it), except directly
    under ``/Volumes``: there the parent always exists and the missing folder is an unmounted disk.
    """
    folder = cfg.backup_dir
    if folder.is_dir():
        return ""
    if folder.exists():
        return f"backup folder {folder} is not a folder; check 'backup_dir' in the config"
    if not folder.parent.is_dir() or folder.parent == Path("/Volumes"):
        return (f"backup folder {folder} does not exist: is the backup volume mounted? "
                f"Check 'backup_dir' in the config")
    return ""


def check_backup_writable(cfg: Config) -> None:
    """The backup folder (or, before the first run, its parent) must be writable: raise VolumeError if not.

    Checked before anything is written (the log, the run lock), so a read-only or locked-down volume stops
    the run with one clear message instead of a traceback from whichever write came first.
    """
    folder = cfg.backup_dir if cfg.backup_dir.is_dir() else cfg.backup_dir.parent
    why = not_writable(folder)
    if why:
        raise VolumeError(f"cannot write in the backup folder {folder}: {why}. Nothing was written")


def not_writable(folder: Path) -> str:
    """Why ``folder`` cannot be written to (read-only volume, no permission), or "" when it can."""
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return ("the volume is mounted read-only (macOS mounts NTFS disks read-only, and may mount a disk "
                    "with errors so: run First Aid in Disk Utility, or reformat it as APFS)")
    except OSError as exc:
        return f"{exc.strerror or exc}; is the backup volume still mounted?"
    if not os.access(folder, os.W_OK | os.X_OK):
        return (f"this user (uid {os.getuid()}) has no write permission; check the folder's owner and "
                f"permissions (ls -ld '{folder}')")
    return ""


class RunLock:
    """Exclusive ``flock`` on ``.tmp/run.lock``; the kernel releases it if the process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        """Take the lock or raise LockHeld at once."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as exc:  # read-only volume, no permission, volume gone: not a bug
            why = not_writable(self.path.parent) or exc.strerror or str(exc)
            raise VolumeError(f"cannot create the run lock {self.path}: {why}. Nothing was written") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                holder = read_lock_pid(self.path)
                raise LockHeld(f"another horos-backup run holds {self.path}"
                               + (f" (pid {holder})" if holder else "") + "; this run exits") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        """Release the lock (closing the descriptor drops it)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def read_lock_pid(path: Path) -> Optional[int]:
    """The pid written by the lock holder, if any (informational only; the flock is the truth)."""
    try:
        return int(path.read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def pid_alive(pid: Optional[int]) -> bool:
    """True when a process with this pid exists on this machine (informational: the flock is the truth)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def incoming_count(folder: Path, limit: int) -> int:
    """Files waiting in INCOMING.noindex, counting at most ``limit + 1`` (early exit); hidden files skipped."""
    count = 0
    stack = [folder]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                for e in it:
                    if e.name.startswith("."):
                        continue
                    if e.is_dir(follow_symlinks=False):
                        stack.append(Path(e.path))
                    else:
                        count += 1
                        if count > limit:
                            return count
        except FileNotFoundError:
            continue
    return count


def free_bytes(path: Path) -> int:
    """Free bytes available to us on the volume holding ``path``."""
    return shutil.disk_usage(path).free


def same_device(a: Path, b: Path) -> bool:
    """True when both paths live on the same filesystem."""
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


def space_needed(cfg: Config, study_bytes: int, shares_horos_disk: bool) -> int:
    """Bytes that must be free before starting a study of ``study_bytes``."""
    floor = cfg.min_free_gb * GB
    if shares_horos_disk:
        floor = max(floor, cfg.horos_free_gb * GB)
    return int(study_bytes + floor)


def human_bytes(n: float) -> str:
    """Sizes for people: "850 MB", "1.4 GB", "2.1 TB" (decimal units, as Finder and df -H show)."""
    if abs(n) >= 1e12:
        return f"{n / 1e12:.1f} TB"
    if abs(n) >= 1e9:
        return f"{n / 1e9:.1f} GB"
    if abs(n) >= 10e6:
        return f"{n / 1e6:.0f} MB"
    return f"{n / 1e6:.1f} MB"  # never "0 MB" for a nearly full disk
