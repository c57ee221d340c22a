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
    print(f"horos-backup: ledger rebuilt: {stats['adopted']} ZIPs adopted, {stats['invalid']} invalid moved to "
          f".quarantine, {stats['temps_removed']} temp files removed")
    return EXIT_OK
