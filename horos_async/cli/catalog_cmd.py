"""``horos-backup catalog``: list every backed-up study (patient, dates, UID, ZIP) from the ledger."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from horos_async import durable
from horos_async.cli.common import add_common, config_from
from horos_async.errors import EXIT_OK, ConfigError
from horos_async.ops import catalog


def build_parser_catalog(sub) -> None:
    c = sub.add_parser("catalog", help="list every backed-up study (patient, dates, UID, ZIP) from the ledger")
    add_common(c)
    c.add_argument("--csv", action="store_true", help="CSV (UTF-8 with BOM, for Excel) instead of a table")
    c.add_argument("--out", type=Path, metavar="FILE", help="write to FILE instead of the terminal")
    c.add_argument("--delimiter", default=",", help="CSV separator; ';' suits Excel in Portuguese")
    c.add_argument("--from-zips", action="store_true", help="read the ZIPs' own labels instead of the ledger")
    c.add_argument("--search", metavar="TEXT", help="only patients whose name contains TEXT (accents ignored), or UID")
    c.add_argument("--all", action="store_true", help="also list studies that have no ZIP yet (failed, pending)")
    c.add_argument("--only-in-backup", action="store_true",
                   help="only studies Horos's database no longer has (their ZIPs are the only copy)")
    c.add_argument("--wide", action="store_true",
                   help="one line per study with every column in full (default: fit the terminal's width)")
    c.set_defaults(func=do_catalog)


def do_catalog(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    if args.from_zips and args.only_in_backup:
        raise ConfigError("--only-in-backup needs the ledger (it records what Horos no longer has); drop --from-zips")
    rows = (catalog.from_zips(cfg) if args.from_zips
            else catalog.from_ledger(cfg, include_all=args.all, only_in_backup=args.only_in_backup))
    if args.search:
        rows = catalog.search(rows, args.search)
    if len(args.delimiter) != 1:
        raise ConfigError(f"--delimiter {args.delimiter!r}: one character, e.g. ',' or ';'")
    # In the terminal the table fits its width (80 columns over SSH); a file gets every column in full.
    width = None if args.wide or args.out else shutil.get_terminal_size((80, 24)).columns
    text = catalog.to_csv(rows, args.delimiter) if args.csv else catalog.to_table(rows, width=width) + "\n"
    if args.out:
        data = text.encode("utf-8")
        durable.write_atomic(args.out.expanduser().absolute(), data, overwrite=True)
        print(f"horos-backup: {len(rows)} studies written to {args.out}")
    elif args.csv:
        sys.stdout.flush()
        sys.stdout.buffer.write(text.encode("utf-8"))
        sys.stdout.buffer.flush()
    else:
        sys.stdout.write(text)
    return EXIT_OK
