"""Never trust a shrinking source: the ``HOROS_DB_SHRANK`` guard (docs/design/durability.md §7).

When its data volume is not mounted, Horos silently opens an empty ``~/Documents/Horos Data``; a
rebuilt or replaced ``Database.sql`` can also hold far fewer studies than before. A run that believed
such a database would report "nothing to do" while the archive is in fact out of reach. So after each
scan the engine calls :func:`check_source`, which refuses the run when

* the database is not the one the last run read (another path, another file, another Core Data store
  UUID), or
* it holds fewer CT/MR studies than ``shrink_threshold`` times the count of the last run (the first
  time: times the studies the ledger has backed up).

What the last run saw is kept per backup in ``backup_dir/.tmp/horos_source.json`` (this module owns
that file). ``horos-backup run --accept-horos-db`` (:func:`accept`) makes the next check take the
database as it is.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any, Dict

from horos_async import durable
from horos_async.config import Config
from horos_async.errors import HorosDbShrank

log = logging.getLogger(__name__)

BASELINE_FILE = "horos_source.json"
CODE = "HOROS_DB_SHRANK"
ACCEPT_HINT = "horos-backup run --accept-horos-db"


def baseline_path(cfg: Config) -> Path:
    """The file holding what the last run read."""
    return cfg.work_dir / BASELINE_FILE


def read_baseline(cfg: Config) -> Dict[str, Any]:
    """What the last run read ({} when nothing is recorded or the file is unreadable)."""
    try:
        data = json.loads(baseline_path(cfg).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s (%s); the next check starts afresh", baseline_path(cfg), exc)
        return {}
    return data if isinstance(data, dict) else {}


def accept(cfg: Config) -> None:
    """Make the next check take Horos's database as it is (after a deliberate rebuild, move or clean-up)."""
    base = read_baseline(cfg)
    base["accept"] = True
    _write(cfg, base)


async def check_source(cfg: Config, reader, ledger, totals) -> None:
    """Raise :class:`HorosDbShrank` when the database shrank or was replaced; else remember it.

    ``reader`` is the open ``HorosReader``, ``ledger`` the engine's ``Ledger``, ``totals`` the scan's
    ``planner.Totals``.
    """
    ident = await reader.identity()
    base = read_baseline(cfg)
    now = {"path": ident.path, "inode": ident.inode, "store_uuid": ident.store_uuid, "studies": totals.eligible}
    if base.get("accept"):
        log.warning("Horos database %s accepted as it is (%d CT/MR studies), as asked", ident.path,
                    totals.eligible)
        await _clear(ledger)
        await _write_off_loop(cfg, now)
        return
    problem = _replaced(base, now) or await _shrunk(cfg, base, now, ledger)
    if problem:
        message = (f"{problem}. Is the right Horos Data mounted? When its volume is not mounted Horos "
                   f"silently opens an empty ~/Documents/Horos Data. Nothing was exported and no backup "
                   f"record was touched. Mount the volume and check 'horos_data' in the config; if the "
                   f"change was deliberate (a rebuilt or moved database, studies removed on purpose), "
                   f"run once: {ACCEPT_HINT}")
        if await ledger.condition(CODE, True, message):
            await ledger.issue(CODE, message)
        raise HorosDbShrank(message)
    await _clear(ledger)
    if any(base.get(k) != v for k, v in now.items()):
        await _write_off_loop(cfg, now)


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
    counts = await ledger.counts()
    backed_up = counts.get("done", 0) + counts.get("partial", 0)
    if isinstance(base.get("studies"), int) and base["studies"] > 0:
        reference, what = base["studies"], f"the {base['studies']} it held at the last run"
    else:
        reference, what = backed_up, f"the {backed_up} already backed up"
    if reference and now["studies"] < cfg.shrink_threshold * reference:
        return (f"the Horos database {now['path']} holds {now['studies']} {'/'.join(cfg.modalities)} studies, under "
                f"{cfg.shrink_threshold:.0%} of {what} ({backed_up} backed up)")
    return ""


async def _clear(ledger) -> None:
    await ledger.condition(CODE, False)


async def _write_off_loop(cfg: Config, data: Dict[str, Any]) -> None:
    """The durable write (an fsync) in a thread, never on the event loop that drives the ZIP jobs."""
    await asyncio.get_running_loop().run_in_executor(None, _write, cfg, data)


def _write(cfg: Config, data: Dict[str, Any]) -> None:
    durable.write_atomic(baseline_path(cfg), json.dumps(data, indent=1).encode(), overwrite=True)
