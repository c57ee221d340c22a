"""``horos-backup restore``: get studies back out of their ZIPs, safely.

Each ZIP is verified first (every member's CRC, ``zipcheck.verify_zip``), and refused whole if any
member name could escape the destination (absolute, ``..``, backslash, drive letter) or is a symbolic
link. Files are written under a hidden temp name, synced, and moved into place without ever replacing
an existing file (an existing file is skipped and reported).

``--into-horos`` feeds Horos's ``INCOMING.noindex`` instead: flat unique names (Horos indexes whatever
lands there), in chunks that keep INCOMING under ``incoming_max_files``, each file renamed into view
only when complete (Horos skips names starting with ``.``), so Horos never imports half a file.

Restoring one ZIP never stops the others. Before a ZIP is extracted its declared sizes are checked
against the free space of the destination (nothing is written when they do not fit); a member that
cannot be written (a name too long for the destination's filesystem, a file in the way of a folder) is
listed and the rest go on; a full or failing destination ends that ZIP with a clear line. Names that
would collide on a case-insensitive filesystem (APFS, HFS+, exFAT: ``S0001_CT_Head/`` and
``S0001_CT_HEAD/``), or a member that is both a file and a folder, are given distinct names
(``..._2``) and listed, so nothing is skipped as "already there" by mistake.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set, Tuple

from horos_async.backup import archive, zip_manifest, zipcheck
from horos_async import durable, guards
from horos_async.config import Config
from horos_async.errors import ConfigError, RestoreError, VolumeError

NOT_FOR_HOROS = zip_manifest.SPECIAL
"""Members ``--into-horos`` leaves out: they describe the ZIP, they are not images (docs/design/manifest.md)."""
CHUNK = 1 << 20
_MAX_NAME = 240  # bytes; every filesystem we meet allows 255 per name, the temp name adds a little
_SLACK = 4096  # bytes per file on top of its size: the last block and its directory entry
_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
_SHOWN = 5  # members listed by name when some could not be written or were renamed

# What happened to one ZIP, worst first (README "Exit codes": restore exits 6 for NO_SPACE, else 9).
REFUSED = "refused"  # failed verification or holds a hostile member: nothing written
NO_SPACE = "no space"  # the destination is (or became) too full: stopped, temp file removed
FAILED = "failed"  # the destination failed (I/O error, read-only): stopped at that member
INCOMPLETE = "incomplete"  # some members could not be written (listed); the others were


class Refused(Exception):
    """This ZIP is not restored: it failed verification or holds a hostile member."""


class _Stop(Exception):
    """End this ZIP (destination full or failing); ``kind`` is NO_SPACE or FAILED."""

    def __init__(self, kind: str, text: str) -> None:
        super().__init__(text)
        self.kind = kind


@dataclass
class Restored:
    """What happened to one ZIP."""

    zip: Path
    dest: Path
    restored: int = 0
    skipped: int = 0
    bytes: int = 0
    error: str = ""
    """Why the ZIP was refused or stopped ("" when every member was handled)."""
    kind: str = ""
    """REFUSED, NO_SPACE, FAILED, INCOMPLETE, or "" when all went well."""
    not_written: List[str] = field(default_factory=list)
    """``member: why`` for each member that could not be written."""
    renamed: List[str] = field(default_factory=list)
    """``member -> name used`` for names that would have collided (case, or a file and a folder)."""

    def line(self) -> str:
        """What happened, for a person: one line, plus the members that were renamed or not written."""
        if self.kind == REFUSED:
            return f"REFUSED {self.zip}: {self.error}"
        skipped = f"; {self.skipped} skipped (already there, never overwritten)" if self.skipped else ""
        head = f"restored {self.restored} files ({self.bytes / 1e6:.1f} MB) from {self.zip.name} into {self.dest}{skipped}"
        if self.kind in (NO_SPACE, FAILED):
            before = f"; before that, {head}" if self.restored or self.skipped else ""
            head = f"STOPPED {self.zip}: {self.error}{before}"
        lines = [head]
        if self.renamed:
            lines.append(f"  {len(self.renamed)} renamed (names that differ only by case, or a file and a folder "
                         f"with one name, would collide on a Mac disk): " + _some(self.renamed))
        if self.not_written:
            lines.append(f"  NOT WRITTEN {len(self.not_written)}: " + _some(self.not_written))
        return "\n".join(lines)


def _some(items: List[str]) -> str:
    shown = "; ".join(items[:_SHOWN])
    return shown + (f"; and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


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


def _numbered(name: str, n: int, is_dir: bool) -> str:
    """``name`` with ``_n`` added before a file's extension: ``IM00001_2.dcm``, ``S0001_CT_HEAD_2``."""
    stem, dot, ext = name.rpartition(".")
    if is_dir or not dot or not stem:
        return f"{name}_{n}"
    return f"{stem}_{n}.{ext}"


def unique_paths(names: List[str]) -> Dict[str, str]:
    """Member name -> relative path to write, unique case-insensitively, a file never where a folder is.

    APFS, HFS+ and exFAT are case-insensitive: ``S0001_CT_Head/IM00001.dcm`` and
    ``S0001_CT_HEAD/IM00001.dcm`` are one file there, so the second would be skipped as "already
    there". Likewise ``a/b`` cannot be both a file and a folder. The later name gets ``_2`` (``_3``...)
    at the component that collides; the result is the same on every run, so a repeated restore still
    skips what it already wrote.
    """
    chosen: Dict[Tuple[str, bool], str] = {}  # (member prefix as written in the ZIP, is a folder) -> path used
    taken: Set[str] = set()  # casefolded paths used
    out: Dict[str, str] = {}
    for name in names:
        parts = [p for p in name.split("/") if p]
        if not parts:
            continue
        prefix, used = "", ""
        for i, part in enumerate(parts):
            is_dir = i < len(parts) - 1 or name.endswith("/")
            prefix = f"{prefix}/{part}" if prefix else part
            known = chosen.get((prefix, is_dir))
            if known is None:
                candidate, n = part, 1
                while (f"{used}/{candidate}" if used else candidate).casefold() in taken:
                    n += 1
                    candidate = _numbered(part, n, is_dir)
                known = f"{used}/{candidate}" if used else candidate
                chosen[(prefix, is_dir)] = known
                taken.add(known.casefold())
            used = known
        out[name] = used
    return out


def _why(exc: OSError) -> str:
    if exc.errno == errno.ENAMETOOLONG:
        return "name too long for this filesystem"
    if exc.errno in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
        return "a file or folder of that name is in the way"
    return exc.strerror or str(exc)


def _member_problem(exc: OSError) -> bool:
    """True when the error belongs to this one member (skip it, go on), not to the destination."""
    return exc.errno in (errno.ENAMETOOLONG, errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.EINVAL,
                         getattr(errno, "EILSEQ", errno.EINVAL))


def free_bytes(dest: Path) -> int:
    """Free bytes (for this user) on the filesystem that ``dest`` is, or will be created, on."""
    return guards.free_bytes(existing_ancestor(dest))


def existing_ancestor(path: Path) -> Path:
    """``path`` itself, or its nearest parent that exists."""
    current = Path(os.path.abspath(path))
    while not os.path.lexists(current) and current.parent != current:
        current = current.parent
    return current


def needed_bytes(infos: List[zipfile.ZipInfo], targets: List[Path]) -> int:
    """What writing these members needs: their declared sizes (plus a block each), those already there excepted."""
    return sum(i.file_size + _SLACK for i, t in zip(infos, targets) if not i.is_dir() and not os.path.lexists(t))


def check_room(infos: List[zipfile.ZipInfo], targets: List[Path], dest: Path) -> None:
    """Raise _Stop(NO_SPACE) when the members do not fit in the free space at ``dest``."""
    need, free = needed_bytes(infos, targets), free_bytes(dest)
    if need > free:
        raise _Stop(NO_SPACE, f"needs {guards.human_bytes(need)}, only {guards.human_bytes(free)} free at "
                              f"{existing_ancestor(dest)}; nothing was written from it. Free space there, or "
                              f"restore to a larger disk")


def check_destination(dest: Path) -> Path:
    """``--to DIR`` must be a folder, or creatable, on a writable volume; returns it absolute.

    ConfigError (exit 2) when it names a file; VolumeError (exit 7) when it cannot be written. Checked
    once, before any ZIP, so a mistyped destination writes nothing.
    """
    dest = Path(os.path.abspath(os.path.expanduser(str(dest))))
    base = existing_ancestor(dest)
    if not base.is_dir():
        what = "is a file" if base == dest else f"lies under {base}, which is a file"
        raise ConfigError(f"--to {dest} {what}, not a folder: name a folder (it is created if missing)")
    why = guards.not_writable(base)
    if why:
        raise VolumeError(f"cannot restore into {dest}: cannot write in {base}: {why}. Nothing was written")
    return dest


def _extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, final: Path) -> Optional[int]:
    """Write one member to ``final`` via a hidden temp file; None when ``final`` already exists."""
    if os.path.lexists(final):
        return None
    stamp = time.mktime(info.date_time + (0, 0, -1))
    with zf.open(info) as src:  # zipfile checks the CRC at the end
        return durable.write_stream(final, src, tag="restore", mtime=stamp, chunk=CHUNK)


def _write_members(zf: zipfile.ZipFile, todo: List[Tuple[zipfile.ZipInfo, Path]], report: Restored) -> None:
    """Extract each (member, target); a member's own problem is listed and the rest go on; a full or
    failing destination raises _Stop."""
    for info, final in todo:
        try:
            if info.is_dir():
                durable.ensure_dir(final)
                continue
            n = _extract(zf, info, final)
        except OSError as exc:
            if exc.errno in _SPACE:
                raise _Stop(NO_SPACE, f"the destination filled up ({exc.strerror}) while writing "
                                      f"{info.filename}; its temp file was removed") from None
            if _member_problem(exc):
                report.not_written.append(f"{info.filename}: {_why(exc)}")
                continue
            raise _Stop(FAILED, f"cannot write {final}: {_why(exc)}") from None
        if n is None:
            report.skipped += 1
        else:
            report.restored, report.bytes = report.restored + 1, report.bytes + n


def _targets(root: Path, infos: List[zipfile.ZipInfo], report: Restored) -> List[Path]:
    paths = unique_paths([i.filename for i in infos])
    out = []
    for info in infos:
        rel = paths.get(info.filename, info.filename.rstrip("/"))
        if rel != info.filename.rstrip("/"):
            report.renamed.append(f"{info.filename} -> {rel}")
        final = root.joinpath(*rel.split("/"))
        if not _inside(root, final):
            raise Refused(f"member {info.filename!r} would land outside {root}")
        out.append(final)
    return out


def _finish(report: Restored) -> Restored:
    if not report.kind and report.not_written:
        report.kind = INCOMPLETE
    return report


def restore_to(path: Path, dest: Path) -> Restored:
    """Extract one ZIP into ``dest/<zip name without .zip>/``; existing files are skipped.

    Never raises for this ZIP's own problems: they are in the returned report (``kind``, ``error``).
    """
    root = Path(dest) / Path(path).stem
    report = Restored(Path(path), root)
    try:
        infos = safe_members(path)
        targets = _targets(root, infos, report)
        check_room(infos, targets, Path(dest))
        with zipfile.ZipFile(path) as zf:
            _write_members(zf, list(zip(infos, targets)), report)
    except (Refused, zipfile.BadZipFile) as exc:
        report.error, report.kind = str(exc), REFUSED
    except _Stop as exc:
        report.error, report.kind = str(exc), exc.kind
    except OSError as exc:  # reading the ZIP itself failed after verification (its disk went away)
        report.error, report.kind = f"cannot read {path}: {_why(exc)}", FAILED
    return _finish(report)


def flat_name(zip_path: Path, member: str) -> str:
    """``<zip stem>_<member with / replaced by _>``, shortened with a hash if too long."""
    name = f"{Path(zip_path).stem}_{member.replace('/', '_')}"
    if len(os.fsencode(name)) > _MAX_NAME:
        digest = hashlib.sha256(Path(zip_path).stem.encode("utf-8")).hexdigest()[:16]
        name = f"{digest}_{member.replace('/', '_')}"[-_MAX_NAME:]
    return name


def flat_names(zip_path: Path, members: List[str], used: Optional[Set[str]] = None) -> List[str]:
    """One flat INCOMING name per member, unique case-insensitively (also across the ZIPs of one restore,
    through ``used``): a name already given gets ``_2`` before its extension."""
    used = set() if used is None else used
    out = []
    for member in members:
        base = flat_name(zip_path, member)
        name, n = base, 1
        while name.casefold() in used:
            n += 1
            name = _numbered(base, n, False)
        used.add(name.casefold())
        out.append(name)
    return out


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
                       limit: Optional[int] = None, used: Optional[Set[str]] = None) -> Restored:
    """Feed one ZIP's files into Horos's INCOMING.noindex in chunks that respect the limit.

    ``used`` carries the flat names given so far in this restore (case-insensitive uniqueness across
    ZIPs). RestoreError when INCOMING stays full; every other problem is in the returned report.
    """
    incoming = cfg.incoming_dir
    limit = cfg.incoming_max_files if limit is None else limit
    report = Restored(Path(path), incoming)
    try:
        # The manifest and a DICOMDIR describe the ZIP; Horos would file them as unreadable files.
        infos = [i for i in safe_members(path) if not i.is_dir() and i.filename not in NOT_FOR_HOROS]
    except Refused as exc:
        report.error, report.kind = str(exc), REFUSED
        return report
    names = flat_names(path, [i.filename for i in infos], used)
    todo: List[Tuple[zipfile.ZipInfo, Path]] = [(i, incoming / n) for i, n in zip(infos, names)]
    try:
        check_room(infos, [t for _, t in todo], incoming)
        with zipfile.ZipFile(path) as zf:
            i = 0
            while i < len(todo):
                room = wait_for_room(incoming, limit, wait_seconds=wait_seconds, poll_seconds=poll_seconds,
                                     sleep=sleep, say=say)
                _write_members(zf, todo[i:i + room], report)
                i += room
    except zipfile.BadZipFile as exc:
        report.error, report.kind = str(exc), REFUSED
    except _Stop as exc:
        report.error, report.kind = str(exc), exc.kind
    except OSError as exc:
        report.error, report.kind = f"cannot read {path}: {_why(exc)}", FAILED
    return _finish(report)


def check_incoming(cfg: Config) -> Path:
    """INCOMING.noindex must exist (Horos creates it); we never create it on a guess."""
    guards.check_sentinel(cfg)
    incoming = cfg.incoming_dir
    if not incoming.is_dir():
        raise RestoreError(f"{incoming} not found: check 'horos_data' points at Horos's data folder and that "
                           f"Horos has been started once")
    return incoming
