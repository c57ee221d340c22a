"""``horos-backup rebuild-ledger``: rebuild a lost ledger from the ZIPs on disk (no re-export)."""

from __future__ import annotations

import argparse
import asyncio

from horos_async import guards
from horos_async.cli.common import add_common, config_from
from horos_async.errors import EXIT_OK
from horos_async.ops import rebuild


def build_parser_rebuild(sub) -> None:
    rb = sub.add_parser("rebuild-ledger", help="rebuild a lost ledger from the ZIPs on disk (no re-export)")
    add_common(rb)
    rb.add_argument("--deep", action="store_true", help="re-read every member's CRC while adopting")
    rb.set_defaults(func=do_rebuild)


def do_rebuild(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    guards.check_backup_writable(cfg)
    stats = asyncio.run(rebuild.rebuild(cfg, deep=args.deep, announce=print))
    print(f"horos-backup: {summary(stats)}")
    return EXIT_OK


def summary(stats) -> str:
    """What rebuild-ledger did, in words; "nothing to rebuild" when the ledger already knew every ZIP."""
    changed = {k: stats.get(k, 0) for k in ("adopted", "invalid", "missing", "foreign", "temps_removed")}
    if not any(changed.values()):
        return (f"nothing to rebuild: the ledger already records every ZIP on disk ({stats.get('on_disk', 0)} "
                f"ZIPs); nothing was changed")
    parts = [f"{changed['adopted']} ZIPs adopted", f"{changed['invalid']} invalid moved to .quarantine"]
    if changed["missing"]:
        parts.append(f"{changed['missing']} recorded ZIPs missing (queued for export)")
    if changed["foreign"]:
        parts.append(f"{changed['foreign']} ZIPs not written by horos-backup left alone")
    parts.append(f"{changed['temps_removed']} temp files removed")
    return "ledger rebuilt: " + ", ".join(parts)
