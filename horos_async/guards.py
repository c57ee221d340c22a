"""Checks that stop a run before it can do harm: sentinel, volumes, run lock, INCOMING load, free space."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from pathlib import Path
from typing import Optional

from horos_async.config import Config
from horos_async.errors import LockHeld, SentinelMissing, VolumeError

GB = 1000 ** 3


def check_sentinel(cfg: Config) -> None:
    """Refuse to run unless the sentinel file exists (the right volume is mounted)."""
    if cfg.sentinel is None:
        return
    if not cfg.sentinel.exists():
        raise SentinelMissing(
            f"sentinel file {cfg.sentinel} is missing: the PACS volume is not mounted, or is mounted under "
            f"another name (e.g. '{cfg.sentinel.parent.name} 1'). Nothing was written. Mount the volume, or "
            f"create the sentinel on the right disk: touch '{cfg.sentinel}'")


def check_volumes(cfg: Config) -> None:
    """The Horos data folder must exist and the backup folder's parent must be mounted."""
    if not cfg.horos_data.is_dir():
        raise VolumeError(f"Horos data folder {cfg.horos_data} not found: is the Horos volume mounted? "
                          f"Check 'horos_data' in the config. Nothing was written")
    noindex = cfg.data_root / "DATABASE.noindex"
    if not noindex.is_dir():
        what = "is not a folder (a Finder alias? replace it with a symbolic link)" if noindex.exists() \
            else "does not exist (is the volume named in DBFOLDER_LOCATION mounted?)"
        raise VolumeError(f"Horos image folder {noindex} {what}. Nothing was written")
    if not cfg.backup_dir.is_dir() and not cfg.backup_dir.parent.is_dir():
        raise VolumeError(f"backup folder {cfg.backup_dir} and its parent do not exist: is the backup volume "
                          f"mounted? Check 'backup_dir' in the config. Nothing was written")


class RunLock:
    """Exclusive ``flock`` on ``.tmp/run.lock``; the kernel releases it if the process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        """Take the lock or raise LockHeld at once."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
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
    return f"{n / 1e6:.0f} MB"
