"""Make the ledger and the backup folder agree before a run exports anything (resume after a crash).

- temp files left by a crash are removed;
- a ZIP of ours on disk that the ledger does not know (crash between rename and commit, or a lost
  ledger) is verified and adopted, never written twice;
- a recorded ZIP that is missing, or whose size changed and no longer verifies, is reported and its
  study queued again; an invalid file is moved to ``.quarantine/``, never deleted.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from horos_async import archive, durable, platform
from horos_async.config import Config
from horos_async.ledger import Ledger

log = logging.getLogger("horos_async.reconcile")
MONTH_DIR = re.compile(r"^(\d{4}_\d{2}|undated)$")
DEEP_ADOPT_LIMIT = 50
"""Adopting more unknown ZIPs than this (a rebuild) checks central directories only; ``verify --deep``
re-reads every byte later."""


def zips_on_disk(backup_dir: Path) -> Dict[str, int]:
    """``relpath -> size`` of every ``*.zip`` in the month folders."""
    out: Dict[str, int] = {}
    try:
        months = [e for e in os.scandir(backup_dir) if e.is_dir(follow_symlinks=False) and MONTH_DIR.match(e.name)]
    except FileNotFoundError:
        return out
    for m in months:
        with os.scandir(m.path) as it:
            for e in it:
                if e.name.endswith(".zip") and not e.name.startswith(".") and e.is_file(follow_symlinks=False):
                    out[f"{m.name}/{e.name}"] = e.stat().st_size
    return out


def read_identity(path: Path) -> Optional[dict]:
    """The study identity JSON in a ZIP's comment, or None when the ZIP is not ours."""
    try:
        data = json.loads(archive.read_comment(path).decode("ascii") or "null")
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("horos_backup") and data.get("key") else None


def check_zip(path: Path, deep: bool) -> Tuple[Optional[List[archive.BuiltMember]], str]:
    """(members, "") when the ZIP is valid, (None, reason) when not."""
    try:
        return archive.verify_zip(path, None, deep=deep), ""
    except archive.ZipInvalid as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}"


def quarantine(cfg: Config, rel: str) -> Optional[Path]:
    """Move an invalid ZIP out of its month folder into ``.quarantine/`` (never deleted)."""
    src = cfg.backup_dir / rel
    dst = cfg.backup_dir / ".quarantine" / rel
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
        log.error("could not move invalid ZIP %s aside: %s", src, exc)
        return None
    return dst


async def reconcile(cfg: Config, ledger: Ledger, offload, announce=lambda text: None,
                    deep_limit: int = DEEP_ADOPT_LIMIT) -> Dict[str, int]:
    """Bring ledger and disk into agreement; returns counts of what was done."""
    from horos_async.engine import members_digest

    stats = {"temps_removed": 0, "adopted": 0, "missing": 0, "invalid": 0}
    removed = await offload(durable.remove_stale_temps, cfg.backup_dir, 2)
    stats["temps_removed"] = len(removed)
    for p in removed:
        log.info("removed temp file left by an interrupted run: %s", p)
    disk = await offload(zips_on_disk, cfg.backup_dir)
    known = await ledger.zip_rows()
    unknown = [rel for rel in sorted(disk) if rel not in known]
    deep = len(unknown) <= deep_limit
    if len(unknown) > deep_limit:
        announce(f"rebuilding the ledger from {len(unknown)} ZIPs on disk (central directories checked; "
                 f"run 'horos-backup verify --deep' for a full re-read)")
    for rel in unknown:
        path = cfg.backup_dir / rel
        ident = await offload(read_identity, path)
        if ident is None:
            log.warning("ZIP %s was not written by horos-backup (no identity comment); left alone", rel)
            continue
        members, why = await offload(check_zip, path, deep)
        if members is None:
            stats["invalid"] += 1
            moved = await offload(quarantine, cfg, rel)
            await ledger.issue("ZIP_INVALID", f"unrecorded ZIP failed verification ({why}); moved to {moved}; "
                               f"the study will be exported again", ident.get("key", ""), ident.get("uid", ""), rel)
            continue
        await ledger.adopt_zip(ident, rel, disk[rel], len(members), sum(m.size for m in members),
                               members_digest(members))
        stats["adopted"] += 1
        log.info("adopted verified ZIP %s (written before an interruption, or found by a rebuild)", rel)
    for rel, (key, _version, _files, size, status) in known.items():
        if status != "ok":
            continue
        if rel not in disk:
            stats["missing"] += 1
            await ledger.mark_zip_bad(rel, "missing", "ZIP_MISSING", f"{rel} is recorded but not on disk")
            await ledger.issue("ZIP_MISSING", f"{rel} is recorded as done but is not on disk; the study is "
                               f"queued for export again", key, key.split("|", 1)[0], rel)
        elif disk[rel] != size:
            members, why = await offload(check_zip, cfg.backup_dir / rel, True)
            if members is None:
                stats["invalid"] += 1
                moved = await offload(quarantine, cfg, rel)
                await ledger.mark_zip_bad(rel, "bad", "ZIP_INVALID", why)
                await ledger.issue("ZIP_INVALID", f"{rel} changed size on disk and fails verification ({why}); "
                                   f"moved to {moved}; the study is queued again", key, key.split("|", 1)[0], rel)
    return stats
