"""``horos-backup mirror``: copy every done ZIP, the SHA256SUMS files and the index snapshots not yet at each
configured destination, each copy verified before it is recorded (ops/mirror_run)."""

from __future__ import annotations

import argparse
import os
import threading
import time

from horos_async import notify
from horos_async.cli.common import add_common, config_from, err, say
from horos_async.cli.signals import run_stoppable, stopped_code
from horos_async.config import Config
from horos_async.errors import EXIT_MIRROR, EXIT_OK
from horos_async.ops import mirror_run


def build_parser_mirror(sub) -> None:
    p = sub.add_parser("mirror", help="copy the archive to each [mirror] destination (a NAS, a second disk, "
                                      "an rclone remote), every copy verified")
    add_common(p)
    p.add_argument("--dest", metavar="DEST", help="only this destination (its 'dest' as configured)")
    p.add_argument("--now", action="store_true", help="ignore each destination's window (and run_window)")
    p.add_argument("--max-minutes", type=float, metavar="M", help="stop after M minutes (the next mirror goes on)")
    p.set_defaults(func=do_mirror)


def do_mirror(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    os.umask(0o027)
    return mirror(cfg, only=args.dest, ignore_window=args.now,
                  max_seconds=args.max_minutes * 60 if args.max_minutes else None, progress=True)


def mirror(cfg: Config, *, only=None, ignore_window: bool = False, max_seconds=None, scheduled: bool = False,
           progress: bool = False) -> int:
    """Run the mirror with SIGTERM/SIGINT wired to a clean stop; print one line per destination; send the
    alerts it gives. Exit 12 when a destination failed, 130 when stopped by a signal."""
    def make():
        m = mirror_run.Mirror(cfg, only=only, ignore_window=ignore_window, max_seconds=max_seconds,
                              scheduled=scheduled, announce=say if progress else (lambda line: None))
        return m.run, m.request_stop

    result, stopped = run_stoppable(make)
    for line in mirror_run.summary(result):
        (err if line and ": failed" in line else say)(line)
    if cfg.notify.channels:
        notify.mirror_alerts(cfg)  # never raises
    return stopped_code(EXIT_MIRROR if result.failed else EXIT_OK, stopped)


def after_run(cfg: Config, *, progress: bool = False) -> int:
    """The scheduled run's mirror, after its export ended well: inside each destination's window, for at
    most ``start_interval`` seconds (new studies are never held up longer), the rest left to the next
    run. Its failures are alerts and issues, never the run's exit code; a stop signal exits 130."""
    if not cfg.mirror:
        return EXIT_OK
    code = mirror(cfg, max_seconds=float(cfg.start_interval), scheduled=True, progress=progress)
    return code if code != EXIT_MIRROR else EXIT_OK
