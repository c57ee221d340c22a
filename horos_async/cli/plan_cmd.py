"""``horos-backup plan``: what the next run would export (reads only)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from horos_async import guards
from horos_async.cli.common import add_common, config_from
from horos_async.errors import EXIT_OK
from horos_async.ops import plan_view


def build_parser_plan(sub) -> None:
    pl = sub.add_parser("plan", help="show what the next run would export (reads only)")
    add_common(pl)
    pl.add_argument("--json", action="store_true", help="one JSON document with resolved file paths")
    pl.add_argument("--limit", type=int, metavar="N", help="studies to list (default: batch_size)")
    pl.set_defaults(func=do_plan)


def do_plan(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    guards.check_sentinel(cfg)  # the same guards as 'run': the same exit codes for an unmounted volume
    guards.check_volumes(cfg)
    doc = asyncio.run(plan_view.build(cfg, limit=args.limit or cfg.batch_size))
    if args.json:
        json.dump(doc, sys.stdout, indent=2, ensure_ascii=False)
        print()
    else:
        print(plan_view.render(doc))
    return EXIT_OK
