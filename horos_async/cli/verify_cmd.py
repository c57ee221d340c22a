"""``horos-backup verify``: re-check the ZIPs on disk against the ledger; queue bad ones for re-export."""

from __future__ import annotations

import argparse
import os

from horos_async import guards, notify
from horos_async.cli.common import add_common, config_from, err
from horos_async.cli.signals import run_stoppable, stopped_code
from horos_async.errors import EXIT_CHECK, EXIT_MIRROR, EXIT_OK
from horos_async.ops import verify


def build_parser_verify(sub) -> None:
    v = sub.add_parser("verify", help="re-check the ZIPs on disk against the ledger; queue bad ones for re-export")
    add_common(v)
    v.add_argument("--deep", action="store_true", help="re-read every member and check its CRC (finds bit rot)")
    v.add_argument("--restart", action="store_true", help="start a new pass instead of continuing the last one")
    v.add_argument("--since", metavar="YYYY-MM-DD", help="only ZIPs exported on or after this date")
    v.add_argument("--month", metavar="YYYY_MM", help="only ZIPs in this month folder")
    v.add_argument("--max-mb-per-s", type=float, metavar="MB", help="read at most this many MB per second")
    v.add_argument("--max-zips", type=int, metavar="N", help="stop after N ZIPs (the next verify continues)")
    v.add_argument("--max-minutes", type=float, metavar="M", help="stop after M minutes (the next verify continues)")
    v.add_argument("--progress-every", type=int, default=100, metavar="N", help="a progress line every N ZIPs")
    v.add_argument("--mirror", action="store_true",
                   help="check the primary and each mirror copy by SHA-256: copy a bad mirror copy again, restore "
                        "a bad primary ZIP from a good mirror copy")
    v.add_argument("--dest", metavar="DEST", help="with --mirror: only this destination")
    v.set_defaults(func=do_verify)


def do_verify(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    guards.check_sentinel(cfg)
    if args.mirror:  # needs no Horos: restoring from the mirror is for when Horos may have lost the study
        guards.check_backup_writable(cfg)
        os.umask(0o027)
        return _verify_mirror(cfg, args)
    guards.check_volumes(cfg)
    if cfg.ledger_path.exists():  # (no ledger: verify says so itself, with what to do)
        guards.check_backup_writable(cfg)  # verify records its findings: a read-only volume is exit 7
    os.umask(0o027)

    def make():
        verifier = verify.Verifier(cfg, deep=args.deep, since=args.since, month=args.month, restart=args.restart,
                                   max_mb_per_s=args.max_mb_per_s, max_zips=args.max_zips,
                                   max_minutes=args.max_minutes, progress_every=args.progress_every, progress=err)
        return verifier.run, verifier.request_stop

    result, stopped = run_stoppable(make)
    print(verify.summary(cfg, result, args.deep))
    if result.bad:  # a person hears of it, not only whoever reads this output (never changes the code)
        notify.verify_found_bad(cfg, result.bad)
    if stopped:
        err("horos-backup: verify interrupted: stopped cleanly; the next verify continues where this one stopped")
    return stopped_code(EXIT_CHECK if result.bad else EXIT_OK, stopped)


def _verify_mirror(cfg, args: argparse.Namespace) -> int:
    """``verify --mirror``: exit 9 when a ZIP is bad on both sides, 12 when a destination failed."""
    from horos_async.ops import mirror_verify

    def make():
        v = mirror_verify.MirrorVerifier(cfg, only=args.dest, restart=args.restart, max_zips=args.max_zips,
                                         max_minutes=args.max_minutes, progress=err)
        return v.run, v.request_stop

    results, stopped = run_stoppable(make)
    for line in mirror_verify.summary(results):
        print(line)
    bad = sum(r.both_bad for r in results)
    if bad:
        notify.verify_found_bad(cfg, bad)
    code = EXIT_MIRROR if any(r.failed for r in results) else EXIT_CHECK if bad else EXIT_OK
    return stopped_code(code, stopped)
