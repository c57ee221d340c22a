"""The disk-side checks of ``horos-backup doctor``: the Horos data folder and its database, the backup
volume, its free space and filesystem. Each returns :class:`Check` findings; ``doctor`` runs them.

Only looks: the Horos database is opened read-only (URI ``mode=ro`` plus ``query_only``), and the one
write is a hidden temp file in ``backup_dir``, deleted at once, that proves the folder is writable.
The mount table and the ``/Volumes`` root are parameters so the tests can exercise every branch on Linux.
"""

from __future__ import annotations

import errno
import os
import re
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from horos_async import durable, guards
from horos_async.config import Config
from horos_async.errors import ConfigError

PASS, WARN, FAIL, INFO = "PASS", "WARN", "FAIL", "INFO"
SKIP = "SKIP"
"""A check that could not run (what it looks at is missing): never counted as a PASS."""
GB = guards.GB
Mounts = Sequence[Tuple[str, str]]
"""(mount point, filesystem type) pairs."""

_FAT = {"msdos", "vfat", "fat", "fat32", "fat16"}
_NETWORK = {"smbfs", "cifs", "smb3", "nfs", "nfs4", "afpfs", "webdav", "fuse.sshfs"}
_GOOD = {"apfs", "hfs", "ext4", "ext3", "xfs", "btrfs", "zfs", "tmpfs", "overlay", "f2fs"}
_MAC_MOUNT = re.compile(r"^(?P<dev>.+?) on (?P<mp>.+) \((?P<type>[^,)]+)")


@dataclass(frozen=True)
class Check:
    """One finding."""

    name: str
    """Short name of what was checked (``sentinel``, ``database``...)."""
    status: str
    """PASS, WARN, FAIL, SKIP (could not run: what it looks at is missing) or INFO."""
    message: str
    """What was found, naming the path at fault."""
    fix: str = ""
    """One line saying what to do (empty for PASS)."""


# -- Horos data ---------------------------------------------------------------------------------------
def check_horos(cfg: Config) -> List[Check]:
    """Horos Data folder, Database.sql (read-only), journal, schema, DATABASE.noindex, INCOMING."""
    if not cfg.horos_data.is_dir():
        return [Check("horos data", FAIL, f"{cfg.horos_data} not found",
                      "mount the Horos volume, or fix 'horos_data' (the folder holding Database.sql)")]
    out = [Check("horos data", PASS, f"{cfg.horos_data}")]
    journal = Path(str(cfg.database) + "-journal")
    hot = _size(journal) > 0
    if hot:
        out.append(Check("hot journal", WARN, f"{journal.name} exists and is not empty: Horos crashed mid-write? "
                         f"(or was saving this very second)", "open Horos so it recovers the database, then run "
                         "doctor again; runs meanwhile exit 'database unavailable' and retry"))
    out += check_database(cfg.database, hot_journal=hot, hint=cfg.horos_data_hint())
    try:
        root = cfg.data_root
    except ConfigError as exc:
        return out + [Check("DATABASE.noindex", FAIL, str(exc), "check the Horos data volume")]
    noindex = root / "DATABASE.noindex"
    if noindex.is_dir():
        out.append(Check("DATABASE.noindex", PASS, f"{noindex}"))
    elif noindex.exists() or noindex.is_symlink():
        out.append(Check("DATABASE.noindex", FAIL, f"{noindex} is not a folder (a Finder alias, or a broken link?)",
                         "replace it with the real folder or a symbolic link (ln -s), never a Finder alias"))
    else:
        out.append(Check("DATABASE.noindex", FAIL, f"{noindex} not found: no image can be read{cfg.horos_data_hint()}",
                         "check 'horos_data' and Horos Data/DBFOLDER_LOCATION point at the real data folder"))
    count = guards.incoming_count(cfg.incoming_dir, cfg.incoming_max_files)
    if count > cfg.incoming_max_files:
        out.append(Check("INCOMING", WARN, f"more than {cfg.incoming_max_files} files wait in {cfg.incoming_dir}: "
                         "Horos is importing, runs pause", "let Horos finish importing (keep it open)"))
    else:
        out.append(Check("INCOMING", PASS, f"{count} files waiting to be imported"))
    return out


def check_database(path: Path, *, hot_journal: bool = False, hint: str = "") -> List[Check]:
    """Open Database.sql read-only: readable, journal mode, tables and columns horos-backup needs."""
    from horos_async.horos_db import REQUIRED

    if not path.is_file():
        return [Check("database", FAIL, f"{path} not found{hint}", "fix 'horos_data': it must hold Horos's Database.sql")]
    if not os.access(path, os.R_OK):
        return [Check("database", FAIL, f"{path} is not readable by this user", f"check permissions: ls -l '{path}'")]
    try:
        # as_uri() quotes '#', '?' and spaces; mode=ro + query_only: never a write, never a journal rollback.
        con = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error as exc:
        return [_db_error(path, exc, hot_journal)]
    try:
        con.execute("PRAGMA query_only=1")
        mode = str(con.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        columns = {t: {r[1].upper() for r in con.execute(f"PRAGMA table_info({t})")} for t in REQUIRED}
    except sqlite3.Error as exc:
        return [_db_error(path, exc, hot_journal)]
    finally:
        con.close()
    out = [Check("database", PASS, f"{path} opens read-only")]
    if mode == "delete":
        out.append(Check("journal mode", PASS, "delete (rollback journal, as Horos uses since 2018)"))
    elif mode == "wal":
        out.append(Check("journal mode", PASS, "wal (older Horos/OsiriX store): reads never block Horos; the "
                         "-wal and -shm files must stay readable"))
    else:
        out.append(Check("journal mode", WARN, f"{mode}: not what Horos writes", "check this is Horos's live database"))
    problems = []
    for table, needed in REQUIRED.items():
        have = columns.get(table) or set()
        if not have:
            problems.append(f"table {table} missing")
        else:
            problems += [f"{table}.{c} missing" for c in needed if c not in have]
    if problems:
        out.append(Check("schema", FAIL, f"{path}: {', '.join(problems)}: not a Horos/OsiriX database, or an "
                         "unsupported version", "point 'horos_data' at the Horos Data folder of Horos itself"))
    else:
        out.append(Check("schema", PASS, "ZSTUDY, ZSERIES and ZIMAGE have the columns horos-backup reads"))
    return out


def _db_error(path: Path, exc: BaseException, hot_journal: bool) -> Check:
    text = str(exc).lower()
    if hot_journal or "readonly" in text or "read-only" in text:
        return Check("database", WARN, f"{path} cannot be read now ({exc}): a hot journal needs Horos to recover it",
                     "open Horos, let it start, then run doctor again")
    if "locked" in text or "busy" in text:
        return Check("database", WARN, f"{path} is busy ({exc}): Horos is writing", "run doctor again in a minute")
    return Check("database", FAIL, f"{path} cannot be read as an SQLite database ({exc})",
                 "check 'horos_data' names Horos's folder; a damaged Database.sql needs Horos's 'Rebuild Database'")


# -- backup volume ----------------------------------------------------------------------------------
def check_backup(cfg: Config, *, volumes_root: Path, mounts: Optional[Mounts]) -> List[Check]:
    """Backup folder: mounted volume, writable, other disk than Horos, free space, filesystem type."""
    out = [check_mount_point(cfg.backup_dir, volumes_root)]
    target = cfg.backup_dir
    if target.is_dir():
        out.append(check_writable(target))
    elif target.parent.is_dir():
        out.append(Check("backup folder", WARN, f"{target} does not exist yet; the first run creates it",
                         "fine on a first install; otherwise check the backup disk is mounted"))
        target = target.parent
    else:
        out.append(Check("backup folder", FAIL, f"neither {target} nor its parent exists",
                         "mount the backup disk, or fix 'backup_dir'"))
        skipped = f"not checked: the backup folder {target} and its parent were not found"
        return out + [Check(name, SKIP, skipped, "fix the 'backup folder' FAIL above, then run doctor again")
                      for name in ("same disk", "free space", "filesystem")]
    try:
        root = cfg.data_root
    except ConfigError:
        root = cfg.horos_data
    same = root.exists() and guards.same_device(target, root)
    if same:
        out.append(Check("same disk", WARN, f"{cfg.backup_dir} is on the same disk as the Horos data: one disk "
                         "failure loses both, and filling it can make Horos auto-clean (delete) old studies",
                         "back up to another disk; if you cannot, keep 'horos_free_gb' well above Horos's "
                         "auto-cleaning threshold"))
    elif not root.exists():  # nothing to compare with: never a PASS for a check that did not run
        out.append(Check("same disk", SKIP, f"not checked: the Horos data folder {root} was not found",
                         "fix the 'horos data' FAIL above, then run doctor again"))
    else:
        out.append(Check("same disk", PASS, "backup and Horos data are on different disks"))
    free = guards.free_bytes(target)
    floor = cfg.min_free_gb * GB
    if same:
        floor = max(floor, cfg.horos_free_gb * GB)
    if free < floor:
        out.append(Check("free space", WARN, f"{guards.human_bytes(free)} free, below the "
                         f"{guards.human_bytes(floor)} floor: runs stop with DISK_LOW",
                         "free space or use a larger disk"))
    else:
        out.append(Check("free space", PASS, f"{guards.human_bytes(free)} free (floor {guards.human_bytes(floor)})"))
    out.append(check_filesystem(target, read_mounts() if mounts is None else mounts))
    return out


def check_mount_point(path: Path, volumes_root: Path = Path("/Volumes")) -> Check:
    """Under ``/Volumes/NAME``, NAME must be a mount point, or writes land on the boot disk."""
    try:
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(volumes_root))
    except ValueError:
        return Check("backup volume", PASS, f"{path} is not under {volumes_root}")
    if not rel.parts:
        return Check("backup volume", FAIL, f"'backup_dir' is {volumes_root} itself", "use a folder on the backup disk")
    volume = Path(os.path.abspath(volumes_root)) / rel.parts[0]
    if not volume.exists():
        return Check("backup volume", FAIL, f"{volume} is not mounted", "connect and mount the backup disk")
    if not os.path.ismount(volume):
        return Check("backup volume", FAIL, f"{volume} is a plain folder, not a mounted disk: writes would land on "
                     "the boot disk", f"eject the disk, remove the stale folder {volume} (only if empty), and "
                     f"mount it again; meanwhile it may be mounted as '{volume.name} 1'")
    return Check("backup volume", PASS, f"{volume} is a mounted volume")


def check_writable(folder: Path) -> Check:
    """Create and delete a hidden temp file (the kind a crash cleanup would also remove)."""
    probe = durable.temp_path_for(folder / "doctor-write-test", str(os.getpid()))
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"horos-backup doctor\n")
        finally:
            os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        why = "Operation not permitted (macOS privacy)" if exc.errno == errno.EPERM else (exc.strerror or str(exc))
        return Check("backup folder", FAIL, f"cannot write in {folder}: {why}",
                     "check the disk is not read-only or full, and the folder's permissions (ls -ld)")
    return Check("backup folder", PASS, f"{folder} is writable")


def read_mounts() -> List[Tuple[str, str]]:
    """The mount table: /proc/mounts on Linux, ``mount`` output on macOS; empty when neither works."""
    try:
        with open("/proc/mounts", encoding="utf-8", errors="replace") as f:
            return parse_proc_mounts(f.read())
    except OSError:
        pass
    try:
        text = subprocess.run(["mount"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_mount_output(text)


def parse_proc_mounts(text: str) -> List[Tuple[str, str]]:
    """Linux ``/proc/mounts``: ``device mountpoint type options 0 0`` (spaces escaped as ``\\040``)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            mp = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[1])
            out.append((mp, parts[2].lower()))
    return out


def parse_mount_output(text: str) -> List[Tuple[str, str]]:
    """macOS ``mount``: ``/dev/disk4s1 on /Volumes/PACS (exfat, local, nodev, nosuid, noowners)``."""
    out = []
    for line in text.splitlines():
        m = _MAC_MOUNT.match(line)
        if m:
            out.append((m.group("mp"), m.group("type").strip().lower()))
    return out


def filesystem_type(path: Path, mounts: Mounts) -> str:
    """The type of the filesystem holding ``path`` (longest mount-point prefix); "" when unknown."""
    real = os.path.realpath(path)
    best, kind = "", ""
    for mp, fstype in mounts:
        prefix = mp.rstrip("/") + "/"
        if (real == mp or real.startswith(prefix) or mp == "/") and len(mp) >= len(best):
            best, kind = mp, fstype
    return kind


def check_filesystem(path: Path, mounts: Mounts) -> Check:
    """FAT32 cannot hold a file over 4 GiB; exFAT has no journal; network shares may ignore full syncs."""
    kind = filesystem_type(path, mounts)
    if kind in _FAT:
        return Check("filesystem", WARN, f"{path} is on FAT32 ({kind}): no file can exceed 4 GiB, so a large "
                     "study's ZIP fails, and there is no journal", "reformat the backup disk as APFS (Disk Utility)")
    if kind == "exfat":
        return Check("filesystem", WARN, f"{path} is on exFAT: no journal, so a power cut or unplugging can damage "
                     "the whole disk", "prefer APFS or Mac OS Extended (journaled) for the backup disk")
    if kind in _NETWORK or kind.startswith("nfs"):
        return Check("filesystem", WARN, f"{path} is on a network share ({kind}): locks and full syncs may be "
                     "ignored", "prefer a local disk; keep only one Mac writing to this folder")
    if kind in _GOOD:
        return Check("filesystem", PASS, f"{kind}")
    return Check("filesystem", INFO, f"type {kind or 'unknown'}", "")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


