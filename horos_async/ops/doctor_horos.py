"""``doctor``'s checks of what makes Horos lose studies or its index (docs/design/horos-database.md §11).

* Auto-cleaning (on by default): when the data disk runs low, Horos deletes studies and their files;
* ``Database.sql - old``: Horos rebuilt its index (comments, albums, ``dateAdded``, linked studies lost);
* the Horos data in a cloud-synced folder (iCloud Drive, OneDrive, Dropbox, Google Drive);
* studies auto-cleaning would delete first that are not backed up yet;
* the age of the newest verified snapshot of the index.

Read only: Horos's preferences with ``plistlib``, its database read-only, the ledger read-only. Each
finding is a ``doctor_checks.Check``; ``doctor.run_checks`` runs them after the disk-side Horos checks.
"""

from __future__ import annotations

import datetime as dt
import plistlib
import sqlite3
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from horos_async import platform
from horos_async.config import Config
from horos_async.errors import ConfigError, HorosBackupError
from horos_async.horos_db import AUTOCLEAN_MODES, autoclean_first, connect_readonly
from horos_async.models import DONE, PARTIAL, study_key
from horos_async.ops import index_store, index_upkeep
from horos_async.ops.doctor_checks import INFO, PASS, WARN, Check
from horos_async.state.ledger_read import read_index

MAX_STUDY_DELETE = 50
"""Studies one auto-cleaning round deletes at most (``MAXSTUDYDELETE`` in ``DicomDatabase+Clean.mm``)."""
CLOUD_MARKERS = (("Library/Mobile Documents", "iCloud Drive"), ("Library/CloudStorage", "a cloud storage provider"),
                 ("Dropbox", "Dropbox"), ("OneDrive", "OneDrive"), ("Google Drive", "Google Drive"),
                 ("iCloud Drive", "iCloud Drive"))


def checks(cfg: Config, *, home: Optional[Path] = None, now: Optional[float] = None) -> List[Check]:
    """Every check of this module, in the order a person would act on them."""
    now = time.time() if now is None else now
    prefs, prefs_problem = read_preferences(platform.horos_preferences_path(home))
    out = [check_autoclean(prefs, prefs_problem, home)]
    if cfg.horos_data.is_dir():  # else doctor's own "horos data" check has said so
        out.append(check_rebuild(cfg))
        out.append(check_cloud(cfg, home))
        at_risk = check_at_risk(cfg, prefs, now)
        if at_risk is not None:
            out.append(at_risk)
    out.append(check_snapshots(cfg, now))
    return out


def read_preferences(path: Path) -> Tuple[Optional[Dict[str, Any]], str]:
    """Horos's preferences (None and why when they cannot be read)."""
    try:
        with open(path, "rb") as f:
            data = plistlib.load(f)
    except FileNotFoundError:
        return None, f"{path} not found"
    except (OSError, plistlib.InvalidFileException, ValueError) as exc:
        return None, f"{path} cannot be read ({exc})"
    return (data if isinstance(data, dict) else {}), ""


def flag(prefs: Dict[str, Any], key: str, default: bool) -> bool:
    """A boolean user default as Horos reads it (``boolForKey``: YES/NO, 1/0, "1"/"0", true/false)."""
    value = prefs.get(key, default)
    if isinstance(value, str):
        return value.strip().lower() in ("1", "yes", "true", "y")
    return bool(value)


def number(prefs: Dict[str, Any], key: str, default: float) -> float:
    try:
        return float(prefs.get(key, default))
    except (TypeError, ValueError):
        return default


def check_autoclean(prefs: Optional[Dict[str, Any]], problem: str, home: Optional[Path]) -> Check:
    """Auto-cleaning by free space is on (Horos's default) or by age."""
    if prefs is None:
        return Check("auto-cleaning", INFO, f"Horos preferences: {problem}; if Horos runs as this user with its "
                     f"defaults, auto-cleaning is ON", "run doctor as the user who runs Horos, on the Horos Mac")
    off = ("Horos > Settings > Database > Auto-Cleaning: turn it off, or with Horos quit: defaults write "
           f"{platform.HOROS_DOMAIN} AUTOCLEANINGSPACE -bool NO")
    if flag(prefs, "AUTOCLEANINGSPACE", True):
        size = number(prefs, "AUTOCLEANINGSPACESIZE", 1024)
        limit = f"{-size:g} % of the disk" if size < 0 else f"{size:g} MB"
        mode = AUTOCLEAN_MODES.get(int(number(prefs, "AutocleanSpaceMode", 2)), "least recently added")
        return Check("auto-cleaning", WARN, f"Horos's auto-cleaning is on: when its data disk has less than {limit} "
                     f"free, Horos deletes up to {MAX_STUDY_DELETE} studies at a time ({mode} first), image files "
                     f"and all; such a study then exists only in the backup", off)
    if flag(prefs, "AUTOCLEANINGDATE", False) and (flag(prefs, "AUTOCLEANINGDATEPRODUCED", False)
                                                    or flag(prefs, "AUTOCLEANINGDATEOPENED", False)):
        days = number(prefs, "AUTOCLEANINGDATEPRODUCEDDAYS", 90)
        return Check("auto-cleaning", WARN, f"Horos's auto-cleaning by date is on: studies older than about "
                     f"{days:g} days are deleted", "Horos > Settings > Database > Auto-Cleaning: turn it off, or "
                     "check 'horos-backup status' shows nothing pending older than that")
    return Check("auto-cleaning", PASS, "Horos's auto-cleaning is off")


def check_rebuild(cfg: Config) -> Check:
    """``Database.sql - old`` exists: Horos rebuilt its index (and will delete this file at the next one)."""
    old = cfg.old_database
    try:
        when = old.stat().st_mtime
    except OSError:
        return Check("Horos rebuild", PASS, "no 'Database.sql - old': Horos has not rebuilt its index here")
    day = dt.datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M")
    before = [s for s in index_store.list_snapshots(cfg.index_dir) if s.verified and s.created < when]
    if before:
        fix = (f"compare with the snapshot from before it: horos-backup index restore {before[-1].name} --to "
               f"~/Desktop/index-before-rebuild (README 'When Horos loses its database')")
    else:
        fix = ("no snapshot from before it exists; keep a copy of 'Database.sql - old' outside Horos Data "
               "(Horos deletes it at its next rebuild)")
    return Check("Horos rebuild", WARN, f"{old} exists: Horos rebuilt its index around {day}; comments, report "
                 f"status, albums, dates added and linked (not copied) studies may be lost", fix)


def check_cloud(cfg: Config, home: Optional[Path]) -> Check:
    """The Horos data sits in a folder a cloud service syncs."""
    try:
        places = {cfg.horos_data, cfg.data_root}
    except ConfigError:
        places = {cfg.horos_data}
    home = Path(home or Path.home())
    documents_synced = (home / "Library" / "Mobile Documents" / "com~apple~CloudDocs" / "Documents").is_dir()
    for place in sorted(places):
        text = str(place.resolve()) if place.exists() else str(place)
        service = next((name for marker, name in CLOUD_MARKERS if f"/{marker}" in text), None)
        if service is None and documents_synced:
            for folder in ("Documents", "Desktop"):
                if text.startswith(str(home / folder) + "/") or text.startswith(str(home.resolve() / folder) + "/"):
                    service = f"iCloud Drive (Desktop & Documents Folders sync your {folder} folder)"
        if service:
            return Check("cloud folder", WARN, f"the Horos data {place} is in a folder synced by {service}: syncing "
                         "moves and evicts files under Horos, and a synced copy of a live Database.sql is torn",
                         "move the Horos Data folder to a local folder that is not synced (Horos > Settings > "
                         "Database), and keep the backup on its own disk")
    return Check("cloud folder", PASS, "the Horos data is not in a cloud-synced folder")


def check_at_risk(cfg: Config, prefs: Optional[Dict[str, Any]], now: float) -> Optional[Check]:
    """Studies auto-cleaning would delete first that the backup does not hold yet (None: nothing to say)."""
    if prefs is None or not flag(prefs, "AUTOCLEANINGSPACE", True) or not cfg.database.is_file():
        return None
    mode = int(number(prefs, "AutocleanSpaceMode", 2))
    try:
        con = connect_readonly(cfg.database, timeout=1.0)
        try:
            con.execute("BEGIN")  # one short read
            try:
                first = autoclean_first(con, mode, MAX_STUDY_DELETE, list(cfg.modalities),
                                        spare_commented=flag(prefs, "dontDeleteStudiesWithComments", True), now=now)
            finally:
                con.execute("COMMIT")
        finally:
            con.close()
        index = read_index(cfg.ledger_path)
    except (sqlite3.Error, HorosBackupError) as exc:
        return Check("oldest studies", INFO, f"cannot tell which studies auto-cleaning would delete first ({exc})", "")
    missing = [c for c in first if c.eligible and _not_backed_up(index.get(study_key(c.uid, c.patient_uid)))]
    order = AUTOCLEAN_MODES.get(mode, "least recently added")
    if not missing:
        return Check("oldest studies", PASS, f"the {len(first)} studies auto-cleaning would delete first "
                     f"({order}) are backed up, or not CT/MR")
    oldest = next((c.when for c in missing if c.when is not None), None)
    since = f"; the oldest dates from {dt.datetime.fromtimestamp(oldest):%Y-%m-%d}" if oldest else ""
    wanted = "study_date" if mode == 0 else "date_added"
    return Check("oldest studies", WARN, f"{len(missing)} of the {len(first)} studies Horos's auto-cleaning would "
                 f"delete first ({order}) are not backed up yet{since}",
                 f"set order_by = \"{wanted}\" so they go first and run 'horos-backup run --until-done' now; or turn "
                 f"auto-cleaning off")


def _not_backed_up(entry) -> bool:
    return entry is None or entry.state not in (DONE, PARTIAL) or not entry.zip_path


def check_snapshots(cfg: Config, now: float) -> Check:
    """The newest verified snapshot of Horos's index is recent enough."""
    snaps = index_store.list_snapshots(cfg.index_dir)
    good = [s for s in snaps if s.verified]
    bad = len(snaps) - len(good)
    extra = f"; {bad} damaged or incomplete (see 'horos-backup index list')" if bad else ""
    if not good:
        off = " (automatic snapshots are off: index_snapshot_hours = 0)" if cfg.index_snapshot_hours <= 0 else ""
        return Check("index snapshots", WARN, f"no verified snapshot of Horos's index in {cfg.index_dir}{off}{extra}: "
                     "if Horos loses its database, comments, albums and linked studies cannot come back",
                     "horos-backup index snapshot (scheduled runs then take one every index_snapshot_hours)")
    gap = index_upkeep.snapshot_gap(cfg, now)
    if gap:
        return Check("index snapshots", WARN, gap + extra, "run 'horos-backup index snapshot' and read what it says; "
                     "scheduled runs take one every index_snapshot_hours inside run_window")
    newest = good[-1]
    return Check("index snapshots", PASS if not bad else WARN, f"newest {newest.name} "
                 f"({(now - newest.created) / 3600:.0f} h old, {newest.manifest.counts.get('studies', 0)} studies), "
                 f"{len(good)} kept{extra}", "" if not bad else "look at them with 'horos-backup index list --check'")
