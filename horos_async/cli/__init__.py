"""Command line: ``horos-backup <command>``, one module per command (borg's archiver layout).

Each ``*_cmd`` module holds its command's parser (``build_parser_<name>(sub)``) next to its handler
(``do_<name>(args) -> int``, set as the subparser's ``func``); handlers parse flags, call the module that
does the work, and print. :func:`main` is the only place errors become exit codes (README "Exit codes").
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from horos_async import __version__, logs
from horos_async.cli import (catalog_cmd, config_cmd, demo_cmd, doctor_cmd, export_cmd, index_cmd, launchd_cmd,
                             mirror_cmd, notify_cmd, plan_cmd, rebuild_cmd, restore_cmd, run_cmd, status_cmd,
                             verify_cmd)
from horos_async.cli.common import defaults_note, program, silence_stdout  # noqa: F401 (program: the demo's "Next:" lines)
from horos_async.errors import EXIT_BROKEN_PIPE, EXIT_INTERNAL, HorosBackupError, LockHeld

# The order of ``horos-backup --help``.
PARSER_BUILDERS = (
    run_cmd.build_parser_run, plan_cmd.build_parser_plan, status_cmd.build_parser_status,
    demo_cmd.build_parser_demo, rebuild_cmd.build_parser_rebuild, config_cmd.build_parser_config,
    launchd_cmd.build_parser_launchd, doctor_cmd.build_parser_doctor, verify_cmd.build_parser_verify,
    restore_cmd.build_parser_restore, export_cmd.build_parser_export, catalog_cmd.build_parser_catalog,
    index_cmd.build_parser_index, notify_cmd.build_parser_notify, mirror_cmd.build_parser_mirror,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by README examples and tests)."""
    p = argparse.ArgumentParser(prog="horos-backup", description="One verified ZIP per CT/MR study of a Horos archive.")
    p.add_argument("--version", action="version", version=f"horos-backup {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for build in PARSER_BUILDERS:
        build(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Run one command; returns the process exit code (README "Exit codes")."""
    args = build_parser().parse_args(argv)
    logger = logging.getLogger("horos_async")
    try:
        code = args.func(args)
        sys.stdout.flush()  # a reader that went away (``| head``) shows up here, not at interpreter exit
        return code
    except BrokenPipeError:
        # The reader of our output closed the pipe (``status | head -1``): nothing is wrong, say nothing.
        # https://docs.python.org/3/library/signal.html#note-on-sigpipe
        silence_stdout()
        return EXIT_BROKEN_PIPE
    except LockHeld as exc:
        # Expected: launchd starts a run every 10 minutes while a long one (or a verify) goes on. One
        # quiet line (stdout, so launchd.err.log keeps only real errors) and one INFO line in the log.
        print(f"horos-backup: {exc}", flush=True)
        if logger.handlers:
            logger.info("skipped (exit %d): %s", exc.exit_code, exc, extra=logs.FILE_ONLY)
        return exc.exit_code
    except HorosBackupError as exc:
        print(f"horos-backup: {exc}", file=sys.stderr)
        defaults_note(args)
        if logger.handlers:  # for the log file; the line above already told the person at the terminal
            logger.error("%s: %s", type(exc).__name__, exc, extra=logs.FILE_ONLY)
        return exc.exit_code
    except KeyboardInterrupt:
        print("horos-backup: interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug: keep the traceback for the log and the user
        if logger.handlers:
            logger.exception("unexpected error", extra=logs.FILE_ONLY)
        import traceback

        traceback.print_exc()
        print("horos-backup: unexpected error (a bug); please report it with the lines above", file=sys.stderr)
        return EXIT_INTERNAL


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
