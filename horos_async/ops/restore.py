"""``horos-backup restore``: get studies back out of their ZIPs, safely.

Each ZIP is verified first (every member's CRC, ``zipcheck.verify_zip``), and refused whole if any
member name could escape the destination (absolute, ``..``, backslash, drive letter) or is a symbolic
link. Files are written under a hidden temp name, synced, and moved into place without ever replacing
an existing file (an existing file is skipped and reported).

``--into-horos`` feeds Horos's ``INCOMING.noindex`` instead: flat unique names (Horos indexes whatever
lands there), in chunks that keep INCOMING under ``incoming_max_files``, each file renamed into view
only when complete (Horos skips names starting with ``.``), so Horos never imports half a file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from horos_async.backup import archive, zipcheck
from horos_async import durable, guards
from horos_async.config import Config
from horos_async.errors import RestoreError

CHUNK = 1 << 20
_MAX_NAME = 240  # bytes; every filesystem we meet allows 255 per name, the temp name adds a little


class Refused(Exception):
    """This ZIP is not restored: it failed verification or holds a hostile member."""


@dataclass
class Restored:
    """What happened to one ZIP."""

    zip: Path
    dest: Path
    restored: int = 0
    skipped: int = 0
    bytes: int = 0
    error: str = ""

    def line(self) -> str:
        """One line for a person."""
        if self.error:
            return f"REFUSED {self.zip}: {self.error}"
        skipped = f"; {self.skipped} skipped (already there, never overwritten)" if self.skipped else ""
        return f"restored {self.restored} files ({self.bytes / 1e6:.1f} MB) from {self.zip.name} into {self.dest}{skipped}"


def safe_members(path: Path) -> List[zipfile.ZipInfo]:
    """Verify the whole ZIP (CRCs included) and return its members; raise Refused otherwise."""
    try:
        zipcheck.verify_zip(path, deep=True)
    except archive.ZipInvalid as exc:
        raise Refused(f"fails verification: {exc}") from None
    except OSError as exc:
        raise Refused(f"cannot be read: {exc.strerror or exc}") from None
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    for info in infos:
        if not archive.safe_member_name(info.filename):  # verify_zip checks this too; never rely on one check
            raise Refused(f"member {info.filename!r} has an unsafe name (absolute, '..', backslash or drive letter)")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise Refused(f"member {info.filename!r} is a symbolic link")
    return infos


def _inside(root: Path, target: Path) -> bool:
    root_s, target_s = os.path.abspath(root), os.path.abspath(target)
    return os.path.commonpath([root_s, target_s]) == root_s and target_s != root_s


def _extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, final: Path) -> Optional[int]:
    """Write one member to ``final`` via a hidden temp file; None when ``final`` already exists."""
    if os.path.lexists(final):
        return None
    created = durable.ensure_dir(final.parent)
    tmp = durable.temp_path_for(final, f"{os.getpid()}-restore")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), durable.FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as out, zf.open(info) as src:  # zipfile checks the CRC at the end
            shutil.copyfileobj(src, out, CHUNK)
            durable.sync_file(out, path=tmp)
        stamp = time.mktime(info.date_time + (0, 0, -1))
        os.utime(tmp, (stamp, stamp))
        durable.publish(tmp, final, created_dirs=created)
    except durable.AlreadyExists:
        durable.discard(tmp)
        return None
    except BaseException:
        durable.discard(tmp)
        raise
    return info.file_size


def restore_to(path: Path, dest: Path) -> Restored:
    """Extract one ZIP into ``dest/<zip name without .zip>/``; existing files are skipped."""
    root = Path(dest) / Path(path).stem
    report = Restored(Path(path), root)
    try:
        infos = safe_members(path)
        with zipfile.ZipFile(path) as zf:
            for info in infos:
                final = root.joinpath(*info.filename.rstrip("/").split("/"))
                if not _inside(root, final):
                    raise Refused(f"member {info.filename!r} would land outside {root}")
                if info.is_dir():
                    durable.ensure_dir(final)
                    continue
                n = _extract(zf, info, final)
                if n is None:
                    report.skipped += 1
                else:
                    report.restored, report.bytes = report.restored + 1, report.bytes + n
    except (Refused, zipfile.BadZipFile) as exc:
        report.error = str(exc)
    return report


def flat_name(zip_path: Path, member: str) -> str:
    """``<zip stem>_<member with / replaced by _>``, shortened with a hash if too long."""
    name = f"{Path(zip_path).stem}_{member.replace('/', '_')}"
    if len(os.fsencode(name)) > _MAX_NAME:
        digest = hashlib.sha256(Path(zip_path).stem.encode("utf-8")).hexdigest()[:16]
        name = f"{digest}_{member.replace('/', '_')}"[-_MAX_NAME:]
    return name


def wait_for_room(folder: Path, limit: int, *, wait_seconds: float, poll_seconds: float,
                  sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                  say: Callable[[str], None] = lambda line: None) -> int:
    """How many files may be added to INCOMING now; waits (polling) until there is room."""
    deadline = clock() + wait_seconds
    told = False
    while True:
        count = guards.incoming_count(folder, limit)
        if count < limit:
            return limit - count
        if clock() >= deadline:
            raise RestoreError(f"{folder} still holds {count} files (limit incoming_max_files = {limit}) after "
                               f"{wait_seconds:g}s: is Horos running and importing? Open Horos, then run the same "
                               f"restore again (files Horos already took are sent again)")
        if not told:
            say(f"INCOMING holds {count} files (limit {limit}); waiting for Horos to import them ...")
            told = True
        sleep(poll_seconds)


def restore_into_horos(path: Path, cfg: Config, *, wait_seconds: float = 600.0, poll_seconds: float = 3.0,
                       sleep: Callable[[float], None] = time.sleep, say: Callable[[str], None] = lambda line: None,
                       limit: Optional[int] = None) -> Restored:
    """Feed one ZIP's files into Horos's INCOMING.noindex in chunks that respect the limit."""
    incoming = cfg.incoming_dir
    limit = cfg.incoming_max_files if limit is None else limit
    report = Restored(Path(path), incoming)
    try:
        infos = [i for i in safe_members(path) if not i.is_dir()]
    except Refused as exc:
        report.error = str(exc)
        return report
    todo: List[Tuple[zipfile.ZipInfo, Path]] = [(i, incoming / flat_name(path, i.filename)) for i in infos]
    try:
        with zipfile.ZipFile(path) as zf:
            i = 0
            while i < len(todo):
                room = wait_for_room(incoming, limit, wait_seconds=wait_seconds, poll_seconds=poll_seconds,
                                     sleep=sleep, say=say)
                for info, final in todo[i:i + room]:
                    n = _extract(zf, info, final)
                    if n is None:
                        report.skipped += 1
                    else:
                        report.restored, report.bytes = report.restored + 1, report.bytes + n
                i += room
    except zipfile.BadZipFile as exc:
        report.error = str(exc)
    return report


def check_incoming(cfg: Config) -> Path:
    """INCOMING.noindex must exist (Horos creates it); we never create it on a guess."""
    guards.check_sentinel(cfg)
    incoming = cfg.incoming_dir
    if not incoming.is_dir():
        raise RestoreError(f"{incoming} not found: check 'horos_data' points at Horos's data folder and that "
                           f"Horos has been started once")
    return incoming
