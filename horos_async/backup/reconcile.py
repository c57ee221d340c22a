"""Make the ledger and the backup folder agree before a run exports anything (resume after a crash).

- temp files left by a crash are removed;
- a ZIP of ours on disk that the ledger does not know (crash between rename and commit, or a lost
  ledger) is verified and adopted, never written twice;
- a recorded ZIP renamed (or moved to another month folder) by someone is found by its identity
  comment: when a ZIP unknown to the ledger carries the study key, version, size and members of a
  recorded ZIP no longer at its path, the ledger follows the new name (the person's name is kept), and
  the study is not exported again;
- a recorded ZIP that is missing is reported and its study queued again; one whose size changed is
  looked at: its end record's member count against the ledger's (cheap: a tool such as ``zip -d``
  removed a member), then a full verification; a ZIP that lost members or no longer verifies is
  moved to ``.quarantine/`` (never deleted), reported ``ZIP_INVALID`` and its study queued again;
- an unknown ``.zip`` that is not a valid ZIP (truncated, garbage, CRC error; a ZIP of ours whose end
  and comment were cut off looks like this) is moved to ``.quarantine/`` and reported ``ZIP_INVALID``,
  so its study is exported under its normal name; a *valid* ZIP without our identity comment is
  someone else's file: left alone, reported once (``FOREIGN_FILE``), its name never reused.

Log lines and issue details name a ZIP by :func:`naming.redact_zip_path` unless ``log_patient_names``.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from horos_async.backup import archive, zip_manifest, zipcheck
from horos_async.backup.identity import members_digest
from horos_async import durable, naming, platform
from horos_async.blocking import Offload, offload as default_offload
from horos_async.codes import IssueCode
from horos_async.config import Config
from horos_async.errors import VolumeError
from horos_async.state.ledger import Ledger
from horos_async.state.ledger_records import ZipRecord

log = logging.getLogger(__name__)
MONTH_DIR = re.compile(r"^(\d{4}_\d{2}|undated)$")
_READABLE_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
DEEP_ADOPT_LIMIT = 50
"""Adopting more unknown ZIPs than this (a rebuild) checks central directories only; ``verify --deep``
re-reads every byte later."""


def month_folders(backup_dir: Path) -> List[os.DirEntry]:
    """The month folders of the backup. A month folder moved to another disk and replaced by a symlink
    is still that month, as the writer sees it (it follows the link); a link whose target cannot be
    reached (that disk not mounted) stops the run: its ZIPs are not missing, only out of reach."""
    try:
        with os.scandir(backup_dir) as it:
            entries = [e for e in it if MONTH_DIR.match(e.name)]
    except FileNotFoundError:
        return []
    months = []
    for e in sorted(entries, key=lambda e: e.name):
        if e.is_dir():  # follows a symlink
            months.append(e)
        elif e.is_symlink():
            raise VolumeError(f"the month folder {e.path} links to {os.readlink(e.path)}, which cannot be "
                              f"reached: mount the disk that holds it (or remove the link), then run again; "
                              f"nothing was changed")
    return months


def zips_on_disk(backup_dir: Path) -> Dict[str, int]:
    """``relpath -> size`` of every ``*.zip`` in the month folders (see :func:`month_folders`)."""
    out: Dict[str, int] = {}
    for m in month_folders(backup_dir):
        with os.scandir(m.path) as it:
            for e in it:
                if e.name.endswith(".zip") and not e.name.startswith(".") and e.is_file(follow_symlinks=False):
                    out[f"{m.name}/{e.name}"] = e.stat().st_size
    return out


def check_zip(path: Path, deep: bool) -> Tuple[Optional[List[archive.BuiltMember]], str]:
    """(members, "") when the ZIP is valid, (None, reason) when not: invalid on a second reading too
    (``zipcheck.verify_stored``), so one transient read error never quarantines a good ZIP."""
    try:
        return zipcheck.verify_stored(path, deep=deep), ""
    except archive.ZipInvalid as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}"


def shown(cfg: Config, rel) -> str:
    """How a ZIP (or temp file) path appears in the log and issues: redacted unless ``log_patient_names``."""
    return naming.redact_zip_path(str(rel), keep_names=cfg.log_patient_names)


def quarantine(cfg: Config, rel: str) -> Optional[Path]:
    """Move an invalid ZIP out of its month folder into ``.quarantine/`` (never deleted); ``ensure_dir``
    syncs the parents of the folders it creates, so ``.quarantine/<month>`` itself survives a power cut."""
    src = cfg.backup_dir / rel
    dst = cfg.quarantine_dir / rel
    durable.ensure_dir(dst.parent)
    n = 1
    while dst.exists():
        n += 1
        dst = dst.with_name(f"{Path(rel).stem}.{n}.zip")
    try:
        os.rename(src, dst)
        # Sync both folders: after a power cut the bad ZIP must not reappear beside its re-export.
        platform.sync_dir(dst.parent)
        platform.sync_dir(src.parent)
    except OSError as exc:
        log.error("could not move invalid ZIP %s aside: %s", shown(cfg, src), exc.strerror or exc)
        return None
    return dst


def readable_zip(path: Path, deep: bool) -> str:
    """"" when ``path`` reads as a ZIP (with ``deep``, every member's CRC too), else the reason.

    Lenient on purpose, for files not written by us: a password-protected member, or one in a method
    Python cannot decompress, is someone else's choice, not damage. Our own ZIPs get
    :func:`check_zip`, which is strict.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist() if deep else ():
                if info.flag_bits & 0x1 or info.compress_type not in _READABLE_METHODS:
                    continue
                with zf.open(info) as member:  # zipfile checks the CRC when the member is read to its end
                    while member.read(1 << 20):
                        pass
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    except Exception as exc:  # BadZipFile, zlib.error, EOFError...: every failure means "not a valid ZIP"
        return f"{type(exc).__name__}: {exc}"
    return ""


async def reconcile(cfg: Config, ledger: Ledger, offload: Offload = default_offload, announce=lambda text: None,
                    deep_limit: int = DEEP_ADOPT_LIMIT) -> Dict[str, int]:
    """Bring ledger and disk into agreement; returns counts of what was done (every file check, walk and
    move runs through ``offload``). A backup folder that cannot be read (no permission, an I/O error, the
    volume gone) raises VolumeError naming the folder: the run cannot know what is on disk."""
    try:
        return await _reconcile(cfg, ledger, offload, announce, deep_limit)
    except OSError as exc:
        raise folder_fault(cfg, exc) from None


def folder_fault(cfg: Config, exc: OSError) -> VolumeError:
    """The run-level error for an OSError met while reading the backup folders."""
    where = exc.filename or cfg.backup_dir
    if exc.errno in (errno.EACCES, errno.EPERM):
        return VolumeError(f"cannot read {where} in the backup folder: {exc.strerror}; this user (uid {os.getuid()}) "
                           f"needs to read and write every folder there: check the owner and permissions "
                           f"(ls -ld '{where}'). Nothing was exported")
    return VolumeError(f"cannot read {where} in the backup folder ({exc.strerror or exc}): is the backup volume "
                       f"still mounted? Nothing was exported")


async def _reconcile(cfg: Config, ledger: Ledger, offload: Offload, announce, deep_limit: int) -> Dict[str, int]:
    stats = {"temps_removed": 0, "adopted": 0, "renamed": 0, "missing": 0, "invalid": 0, "foreign": 0}
    removed = await offload(durable.remove_stale_temps, cfg.backup_dir, 2)
    stats["temps_removed"] = len(removed)
    for p in removed:
        log.info("removed temp file left by an interrupted run: %s", shown(cfg, _relative(cfg, p)))
    disk = await offload(zips_on_disk, cfg.backup_dir)
    stats["on_disk"] = len(disk)
    known = await ledger.zip_rows()
    unknown = [rel for rel in sorted(disk) if rel not in known]
    gone: Dict[str, List[str]] = {}  # study key -> its recorded ZIPs no longer at their path
    for rel, z in known.items():
        if z.status == "ok" and rel not in disk:
            gone.setdefault(z.key, []).append(rel)
    deep = len(unknown) <= deep_limit
    if len(unknown) > deep_limit:
        announce(f"rebuilding the ledger from {len(unknown)} ZIPs on disk (central directories checked; "
                 f"run 'horos-backup verify --deep' for a full re-read)")
    for rel in unknown:
        path = cfg.backup_dir / rel
        described = await offload(zip_manifest.describe, path)
        ident = described.identity
        if ident is None:
            await _no_identity(cfg, ledger, offload, rel, stats)
            continue
        members, why = await offload(check_zip, path, deep)
        if members is None:
            stats["invalid"] += 1
            moved = await offload(quarantine, cfg, rel)
            await ledger.issue(IssueCode.ZIP_INVALID,
                               f"unrecorded ZIP {shown(cfg, rel)} failed verification ({why}); "
                               f"{_where(cfg, moved)}; the study will be exported again",
                               ident.get("key", ""), ident.get("uid", ""), rel)
            continue
        digest = members_digest(members)
        old = await _renamed_from(ledger, gone, known, ident, rel, disk[rel], members, digest)
        if old is not None:
            stats["renamed"] += 1
            del known[old]  # followed, not missing
            log.info("the ZIP of study %s was renamed by someone (%s -> %s): the ledger follows the new name; "
                     "nothing is exported again", ident.get("uid", ""), shown(cfg, old), shown(cfg, rel))
            continue
        bytes_in = int(ident.get("bytes_in") or 0) or sum(m.size for m in members if m.name not in zip_manifest.SPECIAL)
        await ledger.adopt_zip(ident, rel, disk[rel], len(members), bytes_in, digest, crc_checked=deep,
                               manifest_sha256=described.manifest_sha256,
                               study=zip_manifest.study_fields(described.manifest or {}))
        stats["adopted"] += 1
        log.info("adopted verified ZIP %s (written before an interruption, or found by a rebuild)", shown(cfg, rel))
    for rel, z in known.items():
        key = z.key
        if z.status != "ok":
            continue
        if rel not in disk:
            stats["missing"] += 1
            await ledger.mark_zip_bad(rel, "missing", IssueCode.ZIP_MISSING,
                                      f"{shown(cfg, rel)} is recorded but not on disk")
            await ledger.issue(IssueCode.ZIP_MISSING, f"{shown(cfg, rel)} is recorded as done but is not on disk; "
                               f"the study is queued for export again", key, key.split("|", 1)[0], rel)
        elif disk[rel] != z.zip_size:
            why = await offload(_changed_zip_fault, cfg.backup_dir / rel, z.files)
            if why:
                stats["invalid"] += 1
                moved = await offload(quarantine, cfg, rel)
                await ledger.mark_zip_bad(rel, "bad", IssueCode.ZIP_INVALID, why)
                await ledger.issue(IssueCode.ZIP_INVALID, f"{shown(cfg, rel)} changed on disk ({why}); "
                                   f"{_where(cfg, moved)}; the study is queued again", key, key.split("|", 1)[0], rel)
    return stats


async def _renamed_from(ledger: Ledger, gone: Dict[str, List[str]], known: Dict[str, ZipRecord], ident: dict,
                        rel: str, size: int, members, digest: str) -> Optional[str]:
    """The recorded path that the unknown ZIP ``rel`` was renamed from, after moving its ledger row there;
    None when it matches no recorded ZIP that left its path (same key, version, size, member count and
    members)."""
    for old in gone.get(ident.get("key", ""), []):
        z = known[old]
        if ((z.version, z.files, z.zip_size) == (int(ident.get("version", 1)), len(members), size)
                and await ledger.move_zip(old, rel, digest)):
            gone[ident["key"]].remove(old)
            return old
    return None


def _changed_zip_fault(path: Path, files: int) -> str:
    """Why a recorded ZIP whose size changed is no longer the backup the ledger recorded, or "" when it
    still is (valid, with the recorded number of members)."""
    count = zipcheck.member_count(path)  # cheap: one read at the end of the file
    if count is not None and count != files:
        return f"holds {count} members, the ledger recorded {files}: members were removed or added"
    members, why = check_zip(path, True)
    if members is not None and len(members) != files:
        return f"holds {len(members)} members, the ledger recorded {files}: members were removed or added"
    return why


async def _no_identity(cfg: Config, ledger: Ledger, offload: Offload, rel: str, stats: Dict[str, int]) -> None:
    """A ``.zip`` in a month folder without our identity comment: quarantine it if it is not a valid ZIP,
    otherwise it is someone else's file: report it once and leave it (the engine never reuses its name).

    A ZIP of ours cut short (lost end, lost comment) lands here too; left in place it would make the
    engine write its study as ``_d2`` beside it, and ``verify`` (which checks recorded ZIPs) never see it.
    """
    path = cfg.backup_dir / rel
    why = await offload(readable_zip, path, False)  # central directory only: cheap, on every run
    condition = f"{IssueCode.FOREIGN_FILE} {rel}"  # one condition per file: reported once, not every run
    if not why:
        detail = (f"{shown(cfg, rel)} is a valid ZIP not written by horos-backup (no identity comment); left "
                  f"alone, and its name is never used for a backup; move it out of the month folder if it "
                  f"does not belong there")
        if not await ledger.condition(condition, True, detail):
            log.debug("foreign ZIP %s already reported", shown(cfg, rel))
            return
        # First sight: read every byte once, so a damaged file is not mistaken for someone else's.
        why = await offload(readable_zip, path, True)
        if not why:
            stats["foreign"] += 1
            log.warning("%s", detail)
            await ledger.issue(IssueCode.FOREIGN_FILE, detail, "", _uid_of(rel), rel)
            return
    await ledger.condition(condition, False)
    stats["invalid"] += 1
    moved = await offload(quarantine, cfg, rel)
    detail = (f"{shown(cfg, rel)} is not a valid ZIP ({why}); {_where(cfg, moved)}; its study, if any, "
              f"is exported again under its normal name")
    log.warning("%s", detail)
    await ledger.issue(IssueCode.ZIP_INVALID, detail, "", _uid_of(rel), rel)


def _uid_of(rel: str) -> str:
    """The Study UID a ZIP name carries, or "" when the name is not one of ours (a foreign name's last
    part may be a patient's, so it is taken only from a name the redaction recognises)."""
    redacted = naming.redact_zip_path(rel.rsplit("/", 1)[-1])
    parsed = naming.parse_zip_name(redacted) if redacted.startswith("…_") else None
    return parsed[0] if parsed else ""


def _where(cfg: Config, moved: Optional[Path]) -> str:
    """Where a quarantined file went, for an issue detail."""
    if moved is None:
        return "could NOT be moved aside (see the log): do not restore from it"
    return f"moved to {shown(cfg, _relative(cfg, moved))}"


def _relative(cfg: Config, path: Path) -> str:
    """``path`` relative to ``backup_dir`` when it lies inside it (log lines stay short)."""
    try:
        return Path(path).relative_to(cfg.backup_dir).as_posix()
    except ValueError:
        return str(path)
