"""``horos-backup rebuild-ledger``: a lost ledger is rebuilt from the ZIPs on disk, nothing re-exported."""

from __future__ import annotations

from typing import Dict

from horos_async import durable, guards
from horos_async.backup import reconcile
from horos_async.blocking import offload
from horos_async.codes import IssueCode
from horos_async.config import Config
from horos_async.state.ledger import Ledger


async def rebuild(cfg: Config, *, deep: bool = False, announce=lambda text: None) -> Dict[str, int]:
    """Adopt every valid ZIP of ours into the ledger (creating it); refuses while another run holds the lock."""
    guards.check_sentinel(cfg)
    guards.check_volumes(cfg)
    await offload(durable.ensure_dir, cfg.work_dir)  # creating a folder syncs its parent
    with guards.RunLock(cfg.lock_path):
        async with Ledger(cfg.ledger_path, cfg.issues_csv, names_in_csv=cfg.log_patient_names) as ledger:
            limit = 10 ** 9 if deep else 0
            stats = await reconcile.reconcile(cfg, ledger, offload, announce, deep_limit=limit)
            if stats["adopted"]:
                await ledger.issue(IssueCode.LEDGER_REBUILT, f"{stats['adopted']} ZIPs adopted from disk")
            return stats
