"""``horos-backup run``: export every due study, batch after batch (what launchd runs).

A run goes on until nothing is due, its time budget (``max_run_minutes``, or ``--max-minutes``) is spent
or ``run_window`` closes, all three checked before every study; the run lock keeps launchd from
starting a second one meanwhile.

Every attempt, refused or not, is recorded in the health file off the backup volume (``attempts.record``)
here, where the run's errors become its exit code: a run refused before it could write anything still
leaves a trace that ``status`` shows (docs/design/durability.md §7).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from horos_async import guards, health, logs, notify, platform, schedule
from horos_async.cli.common import add_common, config_from, say
from horos_async.cli.signals import run_stoppable, stopped_code
from horos_async.codes import RunOutcome
from horos_async.config import Config
from horos_async.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_LOCKED, EXIT_OK, HorosBackupError, LockHeld
from horos_async.state import attempts
from horos_async.timezones import zone_for

log = logging.getLogger("horos_async")


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
    r.add_argument("--retry-failed", action="store_true",
                   help="retry every study waiting for its retry time now (after fixing what made it fail)")
    r.add_argument("--accept-horos-db", action="store_true",
                   help="take Horos's database as it is now, after a HOROS_DB_SHRANK refusal you checked")
    r.set_defaults(func=do_run)


@dataclass
class Trace:
    """What one attempt did, filled in as it goes, for its health record."""

    outcome: str = ""
    message: str = ""
    engine: Any = None
    """The Engine once built (its result and guard code hold the partial counts of a failed run)."""
    on_force: Optional[Callable[[str], None]] = None
    """Records the attempt as interrupted when a stop hangs and the process is ended (cli.signals)."""


def do_run(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    os.umask(0o027)  # ZIPs, ledger, logs: not world-readable (docs/design/durability.md §5)
    progress = args.progress or sys.stdout.isatty()
    return recorded(cfg, lambda trace: _run(cfg, args, progress, trace))


def _run(cfg: Config, args: argparse.Namespace, progress: bool, trace: Trace) -> int:
    if not args.now and not schedule.window_open(time.time(), cfg.run_window, zone_for(cfg.timezone)):
        trace.outcome = RunOutcome.OUTSIDE_WINDOW
        trace.message = f"outside run_window {cfg.run_window} ({cfg.timezone or 'local time'})"
        print(f"horos-backup: {trace.message}; nothing done (use --now to override)")
        return EXIT_OK
    guards.check_sentinel(cfg)  # before logging creates anything on the volume
    guards.check_volumes(cfg)
    guards.check_backup_writable(cfg)  # a read-only volume: one clear message (exit 7), not a traceback from the log
    logs.setup(cfg, verbose=args.verbose, interactive=progress)
    if args.accept_horos_db:
        from horos_async.backup import source_guard

        source_guard.accept(cfg)
    awake = platform.keep_awake(os.getpid())  # a long catch-up must not stop because the Mac dozed off
    try:
        code = run_engine(cfg, max_studies=args.max_studies, max_minutes=args.max_minutes,
                          ignore_window=args.now, progress=progress, retry_failed=args.retry_failed, trace=trace)
    finally:
        if awake is not None:
            awake.terminate()
            awake.wait()
    if code == EXIT_OK:
        code = run_index_upkeep(cfg, progress=progress)
        if code != EXIT_OK:  # stopped by a signal during the index upkeep
            trace.outcome = RunOutcome.INTERRUPTED
    if code == EXIT_OK and cfg.mirror:
        from horos_async.cli import mirror_cmd

        code = mirror_cmd.after_run(cfg, progress=progress)
        if code != EXIT_OK:  # stopped by a signal during the mirror
            trace.outcome = RunOutcome.INTERRUPTED
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


def recorded(cfg: Config, body: Callable[[Trace], int]) -> int:
    """Run ``body`` and record how it ended in the health file, whatever happened; returns its exit code.

    Errors are recorded, then raised on to ``cli.main``, which turns them into their message and exit
    code. A start that finds a run going (exit 4) is recorded as no failure (launchd starts one every
    interval while a long run goes on); ``cli.main`` says so in one quiet line.
    """
    trace = Trace()
    started = time.time()
    pinging = _alerts_start(cfg)
    trace.on_force = lambda message: _record(cfg, started, trace, EXIT_INTERRUPTED, RunOutcome.INTERRUPTED,
                                             message)
    try:
        code = body(trace)
    except LockHeld as exc:
        _record(cfg, started, trace, EXIT_LOCKED, RunOutcome.LOCK_HELD, str(exc), pinging)
        raise
    except HorosBackupError as exc:
        _record(cfg, started, trace, exc.exit_code, "", str(exc), pinging)
        raise
    except KeyboardInterrupt:
        _record(cfg, started, trace, EXIT_INTERRUPTED, RunOutcome.INTERRUPTED, "interrupted", pinging)
        raise
    except Exception as exc:  # a bug: cli.main prints the traceback; the health file says a run failed
        _record(cfg, started, trace, EXIT_INTERNAL, "", f"unexpected error (a bug): {type(exc).__name__}: {exc}",
                pinging)
        raise
    _record(cfg, started, trace, code, trace.outcome or (RunOutcome.OK if code == EXIT_OK else ""), trace.message,
            pinging)
    return code


def _alerts_start(cfg: Config):
    """The healthcheck ``/start`` ping, sent in the background (None when there is none to send)."""
    if not cfg.notify.channels:
        return None
    try:
        return notify.run_started(cfg)
    except Exception as exc:  # an alert never stops a backup
        log.warning("healthcheck start ping not sent: %s", exc)
        return None


def _record(cfg: Config, started: float, trace: Trace, exit_code: int, outcome: str, message: str,
            pinging=None) -> None:
    """Record the attempt in the health file, then send the alerts it gives (neither can change the run's code)."""
    engine = trace.engine
    result = engine.result if engine is not None else None
    code = health.condition_of(exit_code, engine.live.guard_code if engine is not None else "")
    attempt = health.Attempt(
        started=started, ended=time.time(), outcome=outcome or code or (result.outcome if result else ""),
        exit_code=exit_code, message=message or (result.message if result else ""), code=code,
        studies_done=result.done if result else 0, studies_failed=result.failed if result else 0,
        bytes=result.bytes_in if result else 0, pid=os.getpid(), backup_dir=str(cfg.backup_dir))
    try:
        attempts.record(cfg, attempt)
    except OSError as exc:  # the backup's own exit code stands; the person is told the trace is missing
        print(f"horos-backup: warning: could not record this run in {cfg.health_path} "
              f"({exc.strerror or exc}); 'status' will not show it. Check that folder ('state_dir')",
              file=sys.stderr, flush=True)
    if cfg.notify.channels:
        notify.after_run(cfg, attempt, pinging)  # bounded by its timeouts; never raises


def run_engine(cfg: Config, *, until_done: bool = True, max_studies: Optional[int] = None,
               max_minutes: Optional[float] = None, ignore_window: bool = False, progress: bool = False,
               retry_failed: bool = False, trace: Optional[Trace] = None) -> int:
    """Run the engine with SIGTERM/SIGINT wired to a clean stop; print the outcome. (``until_done`` is
    accepted for older callers: every run goes on until nothing is due.)"""
    from horos_async.backup.engine import Engine

    announce = say if progress else (lambda text: None)

    def make():
        engine = Engine(cfg, max_studies=max_studies, max_minutes=max_minutes, ignore_window=ignore_window,
                        announce=announce, retry_failed=retry_failed)
        if trace is not None:
            trace.engine = engine
        return engine.run, engine.request_stop

    t0 = time.monotonic()
    # The engine itself reports a stop as "interrupted" (exit 130); a stop that hangs ends the process.
    result, _stopped = run_stoppable(make, on_force=trace.on_force if trace is not None else None)
    took = time.monotonic() - t0
    if trace is not None:
        trace.outcome, trace.message = result.outcome, result.message
    summary = (f"{result.done} exported, {result.failed} not exported, {result.bytes_in / 1e6:.1f} MB read in "
               f"{took:.1f}s; archive: {result.eligible - result.pending}/{result.eligible} studies backed up")
    log.info("run ended (%s): %s", result.outcome, summary)
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
