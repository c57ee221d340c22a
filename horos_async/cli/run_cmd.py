"""``horos-backup run``: export every due study, batch after batch (what launchd runs).

A run goes on until nothing is due, its time budget (``max_run_minutes``, or ``--max-minutes``) is spent
or ``run_window`` closes, all three checked before every study; the run lock keeps launchd from
starting a second one meanwhile.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Optional

from horos_async import guards, logs, platform, schedule
from horos_async.cli.common import add_common, config_from, say
from horos_async.cli.signals import run_stoppable
from horos_async.codes import RunOutcome
from horos_async.config import Config
from horos_async.errors import EXIT_OK
from horos_async.timezones import zone_for


def build_parser_run(sub) -> None:
    r = sub.add_parser("run", help="export every due study, batch after batch (what launchd runs)")
    add_common(r)
    r.add_argument("--until-done", action="store_true",
                   help="keep going until nothing is due: the default now (kept for scripts that pass it)")
    r.add_argument("--max-studies", type=int, metavar="N", help="stop after N studies")
    r.add_argument("--max-minutes", type=float, metavar="M",
                   help="start no new study after M minutes (overrides max_run_minutes)")
    r.add_argument("--now", action="store_true", help="ignore 'run_window' (run outside the allowed hours)")
    r.add_argument("--progress", action="store_true", help="print one line per finished study")
    r.set_defaults(func=do_run)


def do_run(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    os.umask(0o027)  # ZIPs, ledger, logs: not world-readable (docs/design/durability.md §5)
    if not args.now and not schedule.window_open(time.time(), cfg.run_window, zone_for(cfg.timezone)):
        where = cfg.timezone or "this Mac's time"
        print(f"horos-backup: outside run_window {cfg.run_window} ({where}); nothing done "
              f"(use --now to override)")
        return EXIT_OK
    guards.check_sentinel(cfg)  # before logging creates anything on the volume
    guards.check_volumes(cfg)
    guards.check_backup_writable(cfg)  # a read-only volume: one clear message (exit 7), not a traceback from the log
    progress = args.progress or sys.stdout.isatty()
    logs.setup(cfg, verbose=args.verbose, interactive=progress)
    awake = platform.keep_awake(os.getpid())  # a long catch-up must not stop because the Mac dozed off
    try:
        return run_engine(cfg, max_studies=args.max_studies, max_minutes=args.max_minutes,
                          ignore_window=args.now, progress=progress)
    finally:
        if awake is not None:
            awake.terminate()
            awake.wait()


def run_engine(cfg: Config, *, until_done: bool = True, max_studies: Optional[int] = None,
               max_minutes: Optional[float] = None, ignore_window: bool = False, progress: bool = False) -> int:
    """Run the engine with SIGTERM/SIGINT wired to a clean stop; print the outcome. (``until_done`` is
    accepted for older callers: every run goes on until nothing is due.)"""
    from horos_async.backup.engine import Engine

    announce = say if progress else (lambda text: None)

    def make():
        engine = Engine(cfg, max_studies=max_studies, max_minutes=max_minutes, ignore_window=ignore_window,
                        announce=announce)
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
    elif result.message:  # stopped at run_window's end or the time budget
        say(f"horos-backup: {result.message}")
    say(f"horos-backup: {summary}")
    if result.failed:
        say(f"horos-backup: see {cfg.issues_csv} for why studies were not exported")
    return result.exit_code
