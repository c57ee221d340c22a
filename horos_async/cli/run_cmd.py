"""``horos-backup run``: export the due studies (what launchd runs)."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import threading
import time
from typing import Optional

from horos_async import guards, logs, schedule
from horos_async.cli.common import add_common, config_from, say
from horos_async.cli.signals import run_stoppable, stopped_code
from horos_async.codes import RunOutcome
from horos_async.config import Config
from horos_async.errors import EXIT_OK


def build_parser_run(sub) -> None:
    r = sub.add_parser("run", help="export the next batch of due studies (what launchd runs)")
    add_common(r)
    r.add_argument("--until-done", action="store_true", help="keep going batch after batch until nothing is due")
    r.add_argument("--max-studies", type=int, metavar="N", help="stop after N studies")
    r.add_argument("--max-minutes", type=float, metavar="M", help="start no new batch after M minutes")
    r.add_argument("--now", action="store_true", help="ignore 'run_window' (run outside the allowed hours)")
    r.add_argument("--progress", action="store_true", help="print one line per finished study")
    r.add_argument("--retry-failed", action="store_true",
                   help="retry every study waiting for its retry time now (after fixing what made it fail)")
    r.set_defaults(func=do_run)


def do_run(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    os.umask(0o027)  # ZIPs, ledger, logs: not world-readable (docs/design/durability.md §5)
    if not args.now and not schedule.in_window(dt.datetime.now(), cfg.run_window):
        print(f"horos-backup: outside run_window {cfg.run_window}; nothing done (use --now to override)")
        return EXIT_OK
    guards.check_sentinel(cfg)  # before logging creates anything on the volume
    guards.check_volumes(cfg)
    guards.check_backup_writable(cfg)  # a read-only volume: one clear message (exit 7), not a traceback from the log
    progress = args.progress or sys.stdout.isatty()
    logs.setup(cfg, verbose=args.verbose, interactive=progress)
    code = run_engine(cfg, until_done=args.until_done, max_studies=args.max_studies,
                      max_minutes=args.max_minutes, progress=progress, retry_failed=args.retry_failed)
    if code == EXIT_OK:
        code = run_index_upkeep(cfg, progress=progress)
    return code


def run_index_upkeep(cfg: Config, *, progress: bool = False) -> int:
    """After an export that ended well: record which studies Horos no longer has and, when due, snapshot
    Horos's index (ops/index_upkeep). Its problems are issues, never the run's exit code; a stop signal
    exits 130."""
    from horos_async.ops import index_upkeep

    cancel = threading.Event()

    def make():
        return (lambda: index_upkeep.after_run(cfg, cancel=cancel, announce=say if progress else lambda text: None),
                cancel.set)

    _done, stopped = run_stoppable(make)
    return stopped_code(EXIT_OK, stopped)


def run_engine(cfg: Config, *, until_done: bool = False, max_studies: Optional[int] = None,
               max_minutes: Optional[float] = None, progress: bool = False, retry_failed: bool = False) -> int:
    """Run the engine with SIGTERM/SIGINT wired to a clean stop; print the outcome."""
    from horos_async.backup.engine import Engine

    announce = say if progress else (lambda text: None)

    def make():
        engine = Engine(cfg, until_done=until_done, max_studies=max_studies, max_minutes=max_minutes,
                        announce=announce, retry_failed=retry_failed)
        return engine.run, engine.request_stop

    t0 = time.monotonic()
    result, _stopped = run_stoppable(make)  # the engine itself reports a stop as "interrupted" (exit 130)
    took = time.monotonic() - t0
    summary = (f"{result.done} exported, {result.failed} not exported, {result.bytes_in / 1e6:.1f} MB read in "
               f"{took:.1f}s; archive: {result.eligible - result.pending}/{result.eligible} studies backed up")
    logging.getLogger("horos_async").info("run ended (%s): %s", result.outcome, summary)
    if result.outcome == RunOutcome.PAUSED:
        say(f"horos-backup: paused: {result.message}")
    elif result.outcome == RunOutcome.INTERRUPTED:
        print(f"horos-backup: {result.message}", file=sys.stderr)
    say(f"horos-backup: {summary}")
    if result.failed:
        say(f"horos-backup: see {cfg.issues_csv} for why studies were not exported")
    return result.exit_code
