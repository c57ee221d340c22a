"""Never trust a shrinking source: the ``HOROS_DB_SHRANK`` guard (docs/design/durability.md §7).

When its data volume is not mounted, Horos silently opens an empty ``~/Documents/Horos Data``; a
rebuilt or replaced ``Database.sql`` can also hold far fewer studies than before. A run that believed
such a database would report "nothing to do" while the archive is in fact out of reach. So after each
scan the engine calls :func:`check_source`, which refuses the run when

* the database is not the one the last run read (another path, another file, another Core Data store
  UUID), or
* it holds fewer CT/MR studies than ``shrink_threshold`` times the count of the last run (the first
  time: times the studies the ledger has backed up).

What the last run saw is kept per backup in ``Config.source_baseline_path``
(``backup_dir/.tmp/horos_source.json``; this module owns that file). ``horos-backup run
--accept-horos-db`` (:func:`accept`) makes the next check take the database as it is.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Dict

from horos_async import durable
from horos_async.blocking import Offload, offload as default_offload
from horos_async.codes import IssueCode
from horos_async.config import Config
from horos_async.errors import HorosDbShrank

log = logging.getLogger(__name__)

ACCEPT_HINT = "horos-backup run --accept-horos-db"


def read_baseline(cfg: Config) -> Dict[str, Any]:
    """What the last run read ({} when nothing is recorded or the file is unreadable)."""
    try:
        data = json.loads(cfg.source_baseline_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s (%s); the next check starts afresh", cfg.source_baseline_path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def accept(cfg: Config) -> None:
    """Make the next check take Horos's database as it is (after a deliberate rebuild, move or clean-up)."""
    base = read_baseline(cfg)
    base["accept"] = True
    _write(cfg, base)


async def check_source(cfg: Config, reader, ledger, totals, offload: Offload = default_offload) -> None:
    """Raise :class:`HorosDbShrank` when the database shrank or was replaced; else remember it.

    ``reader`` is the open ``HorosReader``, ``ledger`` the engine's ``Ledger``, ``totals`` the scan's
    ``planner.Totals``; the baseline's durable write goes through ``offload`` (docs/design/architecture.md
    "Blocking work").
    """
    ident = await reader.identity()
    base = read_baseline(cfg)
    now = {"path": ident.path, "inode": ident.inode, "store_uuid": ident.store_uuid, "studies": totals.eligible}
    if base.get("accept"):
        log.warning("Horos database %s accepted as it is (%d CT/MR studies), as asked", ident.path,
                    totals.eligible)
        await _clear(ledger)
        await offload(_write, cfg, now)
        return
    problem = _replaced(base, now) or await _shrunk(cfg, base, now, ledger)
    if problem:
        message = (f"{problem}. Is the right Horos Data mounted? When its volume is not mounted Horos "
                   f"silently opens an empty ~/Documents/Horos Data. Nothing was exported and no backup "
                   f"record was touched. Mount the volume and check 'horos_data' in the config; if the "
                   f"change was deliberate (a rebuilt or moved database, studies removed on purpose), "
                   f"run once: {ACCEPT_HINT}")
        if await ledger.condition(IssueCode.HOROS_DB_SHRANK, True, message):
            await ledger.issue(IssueCode.HOROS_DB_SHRANK, message)
        raise HorosDbShrank(message)
    await _clear(ledger)
    if any(base.get(k) != v for k, v in now.items()):
        await offload(_write, cfg, now)


def _replaced(base: Dict[str, Any], now: Dict[str, Any]) -> str:
    """Why the database is another one than the last run's, or ""."""
    if not base.get("path"):
        return ""
    if base["path"] != now["path"]:
        return f"the Horos database read is {now['path']}, not {base['path']} as at the last run"
    if base.get("store_uuid") and now["store_uuid"] and base["store_uuid"] != now["store_uuid"]:
        return (f"the Horos database {now['path']} is a different database than at the last run (store UUID "
                f"{base['store_uuid']} is now {now['store_uuid']}: rebuilt or replaced)")
    if base.get("inode") not in (None, now["inode"]):
        return f"the Horos database {now['path']} is a new file since the last run (replaced or restored)"
    return ""


async def _shrunk(cfg: Config, base: Dict[str, Any], now: Dict[str, Any], ledger) -> str:
    """Why the database holds far fewer studies than before, or ""."""
    if not cfg.shrink_threshold:
        return ""
    backed_up = await ledger.backed_up()
    if isinstance(base.get("studies"), int) and base["studies"] > 0:
        reference, what = base["studies"], f"the {base['studies']} it held at the last run"
    else:
        reference, what = backed_up, f"the {backed_up} already backed up"
    if reference and now["studies"] < cfg.shrink_threshold * reference:
        return (f"the Horos database {now['path']} holds {now['studies']} {'/'.join(cfg.modalities)} studies, under "
                f"{cfg.shrink_threshold:.0%} of {what} ({backed_up} backed up)")
    return ""


async def _clear(ledger) -> None:
    await ledger.condition(IssueCode.HOROS_DB_SHRANK, False)


def _write(cfg: Config, data: Dict[str, Any]) -> None:
    durable.write_atomic(cfg.source_baseline_path, json.dumps(data, indent=1).encode(), overwrite=True)
