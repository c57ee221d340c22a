"""``horos-backup index restore``: a snapshot back as a complete Horos index (docs/design/horos-database.md §11).

``--to DIR`` writes ``Database.sql`` under its real name and the side files into an empty folder, to
inspect or to put in place by hand. ``--into-horos`` replaces the live index, only while Horos is not
running (the process list is checked, twice): the snapshot is first unpacked and verified beside the live
files, the current index is moved aside into ``Horos Data/Index before restore <time>/`` (never deleted),
the restored files are moved in, the result is verified again, and any failure puts the old index back.
Every file is checked against the manifest's SHA-256, and the database passes ``integrity_check`` with
the row counts the snapshot recorded, before anything is written where it counts.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from horos_async import durable, platform
from horos_async.config import Config
from horos_async.errors import ConfigError, RestoreError, SnapshotError
from horos_async.ops import index_snapshot, index_store
from horos_async.ops.restore import Refused, safe_members

DB = "Database.sql"
PREFERENCES_COPY = "horos-preferences-snapshot.plist"
"""Where ``--to DIR`` puts the Horos preferences of the snapshot (``defaults import`` reads it)."""
LIVE_COMPANIONS = ("-journal", "-wal", "-shm")
"""Files that belong to a live ``Database.sql`` and move aside with it."""


@dataclass
class Restored:
    """What a restore did."""

    snapshot: str
    dest: Path
    counts: Dict[str, int]
    moved_aside: Optional[Path] = None
    """``--into-horos``: where the index that was live now is (never deleted)."""
    added: int = 0
    """Report and ROI files restored because they were missing (never overwriting one)."""
    notes: List[str] = field(default_factory=list)


def checked(snap: index_store.Snapshot) -> index_store.Manifest:
    """The manifest of a snapshot fit to restore from; SnapshotError naming what is wrong otherwise."""
    if not snap.verified or snap.manifest is None:
        raise SnapshotError(f"snapshot {snap.path} cannot be restored: {snap.problem or 'not verified'}; pick "
                            f"another one ('horos-backup index list --check')")
    return snap.manifest


def restore_to(snap: index_store.Snapshot, dest: Path) -> Restored:
    """Write the snapshot's index into the empty (or new) folder ``dest``."""
    manifest = checked(snap)
    dest = Path(dest).expanduser().absolute()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise RestoreError(f"{dest} is not an empty folder; choose a new or empty folder, nothing was written")
    durable.ensure_dir(dest)
    _unpack_database(snap, manifest, dest / DB)
    side = _side_members(snap)
    for name, infos in side.items():
        _extract(snap, name, infos, dest / PREFERENCES_COPY if name == index_snapshot.PREFERENCES else dest / name)
    out = Restored(snap.name, dest, dict(manifest.counts))
    _final_check(dest / DB, manifest)
    if index_snapshot.PREFERENCES in side:
        out.notes.append(f"Horos's preferences as they were: {dest / PREFERENCES_COPY}; to bring them back, quit "
                         f"Horos and run: defaults import {platform.HOROS_DOMAIN} '{dest / PREFERENCES_COPY}'")
    if "DBFOLDER_LOCATION" in side:
        out.notes.append("the snapshot has a DBFOLDER_LOCATION: REPORTS/ and ROIs/ belong in the folder it names")
    return out


def restore_into_horos(cfg: Config, snap: index_store.Snapshot, *,
                       horos_pids: Callable[[], List[int]] = lambda: platform.pids_named("Horos"),
                       now: Optional[dt.datetime] = None) -> Restored:
    """Replace Horos's live index with the snapshot (Horos must not be running)."""
    manifest = checked(snap)
    _refuse_if_running(horos_pids)
    live = cfg.horos_data
    if not live.is_dir():
        raise RestoreError(f"{live} not found; check 'horos_data' and that the Horos volume is mounted")
    side = _side_members(snap)
    stage = live / f".horos-backup-restore-{secrets.token_hex(4)}{durable.TEMP_SUFFIX}"
    os.mkdir(stage, durable.DIR_MODE)
    try:
        _unpack_database(snap, manifest, stage / DB)
        replaced = [DB]
        for name in ("DB_VERSION", "Database.momd"):
            if name in side:
                _extract(snap, name, side[name], stage / name)
                replaced.append(name)
        _refuse_if_running(horos_pids)  # unpacking took a while: check again right before the swap
        stamp = (now or dt.datetime.now()).strftime("%Y-%m-%d_%H%M%S")
        aside = live / f"Index before restore {stamp}"
        moves = _swap(live, stage, aside, replaced)
        try:
            _final_check(cfg.database, manifest)
        except BaseException:
            _undo(moves)  # the old index back in place, the restored files back in the stage
            try:
                os.rmdir(aside)  # empty again
            except OSError:
                pass
            raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    out = Restored(snap.name, live, dict(manifest.counts), moved_aside=aside)
    out.added = _add_missing(snap, side, cfg)
    created = dt.datetime.fromtimestamp(manifest.created).strftime("%Y-%m-%d %H:%M")
    out.notes += [
        f"start Horos: it opens the restored index ({manifest.counts.get('studies', 0)} studies as of {created})",
        "studies Horos received after the snapshot are not in it: find them with 'horos-backup catalog' and "
        "bring them back with 'horos-backup restore ZIP... --into-horos' (Horos matches the files to the "
        "studies it knows, and re-links images whose files are missing)",
        f"the index that was live is in {aside} (never deleted): remove it yourself once all is well",
    ]
    if "DBFOLDER_LOCATION" in side and not (live / "DBFOLDER_LOCATION").exists():
        out.notes.append("the snapshot had a DBFOLDER_LOCATION that this Horos Data lacks; it was not restored "
                         "(check where the images are before adding it: 'index restore --to DIR' shows it)")
    return out


# -- steps --------------------------------------------------------------------------------------------
def _refuse_if_running(horos_pids: Callable[[], List[int]]) -> None:
    pids = horos_pids()
    if pids:
        raise RestoreError(f"Horos is running (pid {', '.join(map(str, pids))}): quit Horos (Horos > Quit Horos), "
                           f"then run this again. Nothing was changed")


def _unpack_database(snap: index_store.Snapshot, manifest: index_store.Manifest, final: Path) -> None:
    """Decompress the database next to ``final``, check its SHA-256, integrity and counts, publish it."""
    tmp = durable.temp_path_for(final, f"{os.getpid()}-{secrets.token_hex(4)}")
    try:
        digest = index_snapshot.gunzip_sha256(snap.path / index_store.DB_FILE, into=tmp)
        if digest != manifest.db_sha256:
            raise SnapshotError(f"{snap.path / index_store.DB_FILE} does not decompress to the database the "
                                f"manifest describes; pick another snapshot. Nothing was written")
        verdict = index_snapshot.verify_copy(tmp, manifest.counts)
        if verdict != "ok":
            raise SnapshotError(f"the database of snapshot {snap.name} fails its check ({verdict}); pick another "
                                f"snapshot. Nothing was written")
        durable.publish(tmp, final)
    except BaseException:
        durable.discard(tmp)
        raise


def _side_members(snap: index_store.Snapshot) -> Dict[str, List[zipfile.ZipInfo]]:
    """The verified members of ``side-files.zip``, grouped by side item (``REPORTS``, ``DB_VERSION``...)."""
    try:
        infos = safe_members(snap.path / index_store.SIDE_FILE)
    except Refused as exc:
        raise SnapshotError(f"{snap.path / index_store.SIDE_FILE} {exc}; pick another snapshot") from None
    out: Dict[str, List[zipfile.ZipInfo]] = {}
    for info in infos:
        item = next((i for i in index_snapshot.SIDE_ITEMS if info.filename == i or info.filename.startswith(i + "/")),
                    None)
        if item is not None:
            out.setdefault(item, []).append(info)
    return out


def _extract(snap: index_store.Snapshot, item: str, infos: List[zipfile.ZipInfo], target: Path, *,
             skip_existing: bool = False) -> int:
    """Write one side item (a file, or a folder and its files) at ``target``; returns files written."""
    written = 0
    with zipfile.ZipFile(snap.path / index_store.SIDE_FILE) as zf:
        for info in infos:
            rel = info.filename[len(item):].strip("/")
            path = target / rel if rel else target
            if info.is_dir():
                durable.ensure_dir(path)
                continue
            if skip_existing and path.exists():
                continue
            durable.write_atomic(path, zf.read(info))
            written += 1
    return written


def _swap(live: Path, stage: Path, aside: Path, replaced: List[str]) -> List[Tuple[Path, Path]]:
    """Move the live items being replaced into ``aside``, then the staged ones in; undone on failure."""
    moves: List[Tuple[Path, Path]] = []
    try:
        os.mkdir(aside, durable.DIR_MODE)
        for name in replaced + [DB + c for c in LIVE_COMPANIONS]:
            if os.path.lexists(live / name):
                os.rename(live / name, aside / name)
                moves.append((live / name, aside / name))
        for name in replaced:
            if os.path.lexists(live / name):
                raise RestoreError(f"{live / name} appeared while the index was being replaced; is Horos running?")
            os.rename(stage / name, live / name)
            moves.append((stage / name, live / name))
        durable.sync_dir(aside)
        durable.sync_dir(live)
    except BaseException:
        _undo(moves)
        raise
    return moves


def _undo(moves: List[Tuple[Path, Path]]) -> None:
    """Put back what :func:`_swap` moved, newest move first (the old index returns to its place)."""
    for src, dst in reversed(moves):
        if os.path.lexists(dst) and not os.path.lexists(src):
            os.rename(dst, src)
    for folder in {p.parent for pair in moves for p in pair}:
        if folder.is_dir():
            durable.sync_dir(folder)


def _add_missing(snap: index_store.Snapshot, side: Dict[str, List[zipfile.ZipInfo]], cfg: Config) -> int:
    """Report and ROI files of the snapshot that the live folders lack (an existing file is never replaced)."""
    try:
        root = cfg.data_root
    except ConfigError:
        root = cfg.horos_data
    added = 0
    for name in ("REPORTS", "ROIs"):
        if name in side:
            added += _extract(snap, name, side[name], root / name, skip_existing=True)
    return added


def _final_check(db: Path, manifest: index_store.Manifest) -> None:
    verdict = index_snapshot.verify_copy(db, manifest.counts)
    if verdict != "ok":
        raise SnapshotError(f"the restored {db} fails its check ({verdict}); the previous index was put back")
