"""``horos-backup restore``: extract studies from their ZIPs (verified, never overwriting)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import List

from horos_async.cli.common import HIDDEN, add_common, config_from, err
from horos_async.errors import EXIT_CHECK, EXIT_DISK, EXIT_OK, ConfigError
from horos_async.ops import restore


def build_parser_restore(sub) -> None:
    r = sub.add_parser("restore", help="extract studies from their ZIPs (verified, never overwriting)")
    add_common(r)
    r.add_argument("zips", nargs="+", type=Path, metavar="ZIP",
                   help="ZIP files (absolute, or relative to backup_dir such as 2024_03/NAME.zip)")
    where = r.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", type=Path, metavar="DIR", help="extract each ZIP into DIR/<zip name>/")
    where.add_argument("--into-horos", action="store_true",
                       help="feed the files to Horos's INCOMING.noindex, respecting incoming_max_files")
    r.add_argument("--wait-seconds", type=float, default=600.0, metavar="S",
                   help="with --into-horos: give up when INCOMING stays full this long (default 600)")
    r.add_argument("--poll-seconds", type=float, default=3.0, help=HIDDEN)
    r.set_defaults(func=do_restore)


def _zip_paths(args: argparse.Namespace, cfg_box: List) -> List[Path]:
    out = []
    for p in args.zips:
        p = p.expanduser()
        if not p.exists() and not p.is_absolute():
            if not cfg_box:
                cfg_box.append(config_from(args))
            candidate = cfg_box[0].backup_dir / p
            p = candidate if candidate.exists() else p
        if not p.is_file():
            raise ConfigError(f"{p} is not a file; name a ZIP by its path, or relative to backup_dir "
                              f"(e.g. 2024_03/NAME.zip); 'horos-backup catalog --search NAME' finds it")
        out.append(p.absolute())
    return out


def do_restore(args: argparse.Namespace) -> int:
    os.umask(0o027)
    cfg_box: List = []
    paths = _zip_paths(args, cfg_box)
    reports = []
    if args.into_horos:
        cfg = cfg_box[0] if cfg_box else config_from(args)
        restore.check_incoming(cfg)
        used: set = set()  # flat names given so far: unique across the ZIPs, case-insensitively
        for p in paths:
            rep = restore.restore_into_horos(p, cfg, wait_seconds=args.wait_seconds, poll_seconds=args.poll_seconds,
                                             say=err, used=used)
            print(rep.line())
            reports.append(rep)
    else:
        dest = restore.check_destination(args.to)  # a file, or a read-only volume: stop before any ZIP
        for p in paths:
            rep = restore.restore_to(p, dest)  # one ZIP's problem never stops the next
            print(rep.line())
            reports.append(rep)
    return _summary(reports)


def _summary(reports: List[restore.Restored]) -> int:
    """The closing stderr lines and the exit code (README "Exit codes": 6 when a ZIP did not fit, else 9)."""
    refused = [r for r in reports if r.kind == restore.REFUSED]
    no_space = [r for r in reports if r.kind == restore.NO_SPACE]
    failed = [r for r in reports if r.kind in (restore.FAILED, restore.INCOMPLETE)]
    if refused:
        err(f"horos-backup: {len(refused)} ZIP(s) refused: nothing was extracted from them. Use another copy "
            f"(an older version, or a re-export: 'horos-backup verify --deep' queues bad ZIPs)")
    if no_space:
        err(f"horos-backup: {len(no_space)} ZIP(s) did not fit in the free space of the destination; free space "
            f"or choose a larger disk, then run the same restore again (files already restored are skipped)")
    if failed:
        err(f"horos-backup: {len(failed)} ZIP(s) not completely restored: see the STOPPED and NOT WRITTEN lines "
            f"above (a name too long for the destination's filesystem: restore onto an APFS disk, or extract "
            f"those files with unzip); running the same restore again skips what is already there")
    if no_space:
        return EXIT_DISK
    return EXIT_CHECK if refused or failed else EXIT_OK
