"""What the scheduled run does for Horos's index after exporting (``horos-backup run``, inside ``run_window``).

1. The presence scan (``presence``): which studies Horos no longer has ("only in the backup since").
2. An index snapshot when the newest verified one is older than ``index_snapshot_hours``, then retention.

A snapshot that cannot be taken now (Horos kept saving, a hot journal...) is tried again at every later
run. When a whole day passes without a consistent copy, the ledger records the issue
``INDEX_SNAPSHOT_SKIPPED`` once and keeps the condition of that name active until a snapshot succeeds;
a copy that fails verification (Horos's database may be damaged) is recorded at once. The ledger
condition ``INDEX_SNAPSHOT_FAILING`` (never an issue row) is active while attempts fail; its start begins
that day when there is no snapshot yet. For alerts:
:func:`snapshot_gap` says, from the snapshot folder alone, whether and why it is overdue.

Runs under the run lock (a second process skips the step), after the engine has released it; its own
faults are logged and recorded, and never change the run's exit code.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

from horos_async import durable, guards
from horos_async.blocking import offload
from horos_async.codes import IssueCode
from horos_async.config import Config
from horos_async.errors import HorosBackupError, LockHeld
from horos_async.ops import index_snapshot, index_store, presence
from horos_async.state.ledger import Ledger
from horos_async.state.ledger_read import issue_times

log = logging.getLogger(__name__)
SHRANK = "HOROS_DB_SHRANK"
"""The mass-drop guard's issue code: retention keeps the last snapshot before each one."""
DAY = 24 * 3600.0


@dataclass
class Upkeep:
    """What the step did."""

    presence: Optional[presence.Presence] = None
    snapshot: Optional[index_store.Snapshot] = None
    pruned: List[str] = field(default_factory=list)
    skipped: str = ""
    """Why no snapshot was taken although one was due (empty when taken or not due)."""


def newest_verified(cfg: Config) -> Optional[index_store.Snapshot]:
    """The newest verified snapshot in ``backup_dir/HorosIndex`` (None when there is none)."""
    good = [s for s in index_store.list_snapshots(cfg.index_dir) if s.verified]
    return good[-1] if good else None


def snapshot_due(cfg: Config, now: float) -> bool:
    """An automatic snapshot is due: none yet, or the newest is ``index_snapshot_hours`` old."""
    if cfg.index_snapshot_hours <= 0:
        return False
    newest = newest_verified(cfg)
    return newest is None or now - newest.created >= cfg.index_snapshot_hours * 3600 - 60


def snapshot_gap(cfg: Config, now: Optional[float] = None) -> Optional[str]:
    """For alerts: a sentence when the newest verified snapshot is overdue by a day or more (or there is
    none), else None. Reads only ``backup_dir/HorosIndex``."""
    now = time.time() if now is None else now
    if cfg.index_snapshot_hours <= 0:
        return None
    newest = newest_verified(cfg)
    if newest is None:
        return f"no verified snapshot of Horos's index in {cfg.index_dir}"
    late = now - newest.created - cfg.index_snapshot_hours * 3600
    if late < DAY:
        return None
    return (f"the newest verified snapshot of Horos's index is {newest.name}, "
            f"{(now - newest.created) / 3600:.0f} hours old")


def retention_events(cfg: Config) -> List[Tuple[float, str]]:
    """Moments after which the snapshot before them must stay: HOROS_DB_SHRANK issues, Horos rebuilds
    (``Database.sql - old`` appears when Horos rebuilds its index, docs/design/horos-database.md §11)."""
    events = [(t, "the Horos database shrank") for t in issue_times(cfg.ledger_path, SHRANK)]
    old = cfg.old_database
    try:
        events.append((old.stat().st_mtime, "a Horos database rebuild"))
    except OSError:
        pass
    return events


async def after_run(cfg: Config, *, now: Optional[float] = None, cancel: Optional[threading.Event] = None,
                    announce: Callable[[str], None] = lambda text: None) -> Upkeep:
    """The step itself (see the module docstring); returns what it did."""
    now = time.time() if now is None else now
    out = Upkeep()
    await offload(durable.ensure_dir, cfg.work_dir)  # the engine made it; a caller without a run may not have
    try:
        lock = guards.RunLock(cfg.lock_path).acquire()
    except LockHeld:
        log.info("index upkeep skipped: another horos-backup process holds the run lock")
        return out
    try:
        ledger = await Ledger(cfg.ledger_path, cfg.issues_csv, names_in_csv=cfg.log_patient_names).open()
        try:
            try:
                out.presence = await presence.record_presence(cfg, ledger, now)
                if out.presence.gone:
                    log.warning("%d backed-up studies are no longer in Horos's database (see 'horos-backup "
                                "catalog'); their backups are kept", out.presence.gone)
            except HorosBackupError as exc:
                log.warning("presence scan skipped: %s", exc)
            if await offload(snapshot_due, cfg, now):
                await _snapshot(cfg, ledger, now, out, cancel, announce)
            else:
                await ledger.condition(IssueCode.INDEX_SNAPSHOT_FAILING, False)
                await ledger.condition(IssueCode.INDEX_SNAPSHOT_SKIPPED, False)
        finally:
            await ledger.close()
    finally:
        lock.release()
    return out


async def _snapshot(cfg: Config, ledger: Ledger, now: float, out: Upkeep, cancel: Optional[threading.Event],
                    announce: Callable[[str], None]) -> None:
    events = await offload(retention_events, cfg)
    try:
        taken = await offload(index_snapshot.take_and_prune, cfg, events, cancel=cancel, log_line=log.info)
    except index_snapshot.Stopped:
        return
    except index_snapshot.Refused as exc:
        out.skipped = str(exc)
        log.error("index snapshot refused: %s", exc)
        await ledger.condition(IssueCode.INDEX_SNAPSHOT_FAILING, True, str(exc))
        if await ledger.condition(IssueCode.INDEX_SNAPSHOT_SKIPPED, True, str(exc)):
            await ledger.issue(IssueCode.INDEX_SNAPSHOT_SKIPPED, str(exc))
        return
    except (index_snapshot.Busy, HorosBackupError, OSError) as exc:
        out.skipped = _reason(exc)
        log.warning("index snapshot not taken this time: %s", out.skipped)
        await _skipped(cfg, ledger, now, out.skipped)
        return
    out.snapshot, out.pruned = taken.snapshot, taken.pruned
    m = taken.snapshot.manifest
    announce(f"horos-backup: index snapshot {m.name}: {m.counts.get('studies', 0)} studies, "
             f"Horos's database locked {m.lock_ms:.0f} ms ({m.method})")
    await ledger.condition(IssueCode.INDEX_SNAPSHOT_FAILING, False)
    await ledger.condition(IssueCode.INDEX_SNAPSHOT_SKIPPED, False)


async def _skipped(cfg: Config, ledger: Ledger, now: float, reason: str) -> None:
    """Record a failed attempt; the issue once a day has passed without a consistent copy."""
    await ledger.condition(IssueCode.INDEX_SNAPSHOT_FAILING, True, reason)
    newest = await offload(newest_verified, cfg)
    started = await ledger.condition_since(IssueCode.INDEX_SNAPSHOT_FAILING) or now
    # Overdue since the newest snapshot's next one was due, or (none yet) since the first failed attempt.
    due_since = newest.created + cfg.index_snapshot_hours * 3600 if newest is not None else started
    if now - due_since < DAY:
        return
    detail = (f"no consistent snapshot of Horos's index for a day ({reason}); the newest is "
              f"{newest.name if newest else 'none'}. See README 'When Horos loses its database'")
    if await ledger.condition(IssueCode.INDEX_SNAPSHOT_SKIPPED, True, detail):
        await ledger.issue(IssueCode.INDEX_SNAPSHOT_SKIPPED, detail)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, HorosBackupError):
        return f"cannot write the snapshot ({exc.strerror or exc}) in {getattr(exc, 'filename', '') or 'HorosIndex'}"
    return str(exc)
