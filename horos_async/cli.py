"""Command line: ``horos-backup <command>``. ``main(argv) -> int`` is the only place errors become exit codes."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import List, Optional

from horos_async import __version__, config as config_mod, logs
from horos_async.config import Config
from horos_async.errors import EXIT_BROKEN_PIPE, EXIT_INTERNAL, EXIT_OK, HorosBackupError

log = logging.getLogger("horos_async.cli")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="config file (default: $HOROS_BACKUP_CONFIG, else built-in defaults)")
    p.add_argument("--horos-data", type=Path, help="override 'horos_data': the 'Horos Data' folder")
    p.add_argument("--backup-dir", type=Path, help="override 'backup_dir': where ZIPs and the ledger go")
    p.add_argument("-v", "--verbose", action="store_true", help="more detail on stderr")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by README examples and tests)."""
    p = argparse.ArgumentParser(prog="horos-backup", description="One verified ZIP per CT/MR study of a Horos archive.")
    p.add_argument("--version", action="version", version=f"horos-backup {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    r = sub.add_parser("run", help="export the next batch of due studies (what launchd runs)")
    _common(r)
    r.add_argument("--until-done", action="store_true", help="keep going batch after batch until nothing is due")
    r.add_argument("--max-studies", type=int, metavar="N", help="stop after N studies")
    r.add_argument("--max-minutes", type=float, metavar="M", help="start no new batch after M minutes")
    r.add_argument("--now", action="store_true", help="ignore 'run_window' (run outside the allowed hours)")
    r.add_argument("--progress", action="store_true", help="print one line per finished study")

    pl = sub.add_parser("plan", help="show what the next run would export (reads only)")
    _common(pl)
    pl.add_argument("--json", action="store_true", help="one JSON document with resolved file paths")
    pl.add_argument("--limit", type=int, metavar="N", help="studies to list (default: batch_size)")

    st = sub.add_parser("status", help="archive progress, last runs, recent issues (reads only)")
    _common(st)
    st.add_argument("--json", action="store_true", help="machine-readable output")

    d = sub.add_parser("demo", help="build a demo Horos library and back it up")
    d.add_argument("--dir", type=Path, default=Path("horos-demo"), help="folder for the demo (default ./horos-demo)")
    d.add_argument("--studies", type=int, default=8, help="ordinary CT/MR studies besides the special cases")
    d.add_argument("--plan-only", action="store_true", help="build and show the plan, export nothing")
    d.add_argument("-v", "--verbose", action="store_true")

    rb = sub.add_parser("rebuild-ledger", help="rebuild a lost ledger from the ZIPs on disk (no re-export)")
    _common(rb)
    rb.add_argument("--deep", action="store_true", help="re-read every member's CRC while adopting")

    c = sub.add_parser("config", help="print the effective configuration as TOML (validates it)")
    _common(c)

    from horos_async import ops_cli
    ops_cli.add_parsers(sub, _common)
    return p


def load_config(args: argparse.Namespace) -> Config:
    """Config from --config / $HOROS_BACKUP_CONFIG / defaults, with flag overrides, validated."""
    cfg = config_mod.load(getattr(args, "config", None))
    over = {}
    if getattr(args, "horos_data", None):
        over["horos_data"] = args.horos_data.expanduser().absolute()
    if getattr(args, "backup_dir", None):
        over["backup_dir"] = args.backup_dir.expanduser().absolute()
    return config_mod.validate(cfg.with_overrides(**over)) if over else cfg


def main(argv: Optional[List[str]] = None) -> int:
    """Run one command; returns the process exit code (README "Exit codes")."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logger = logging.getLogger("horos_async")
    try:
        handler = COMMANDS.get(args.command) or args.func  # operations commands set func themselves
        code = handler(args)
        sys.stdout.flush()  # a reader that went away (``| head``) shows up here, not at interpreter exit
        return code
    except BrokenPipeError:
        # The reader of our output closed the pipe (``status | head -1``): nothing is wrong, say nothing.
        # https://docs.python.org/3/library/signal.html#note-on-sigpipe
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except HorosBackupError as exc:
        print(f"horos-backup: {exc}", file=sys.stderr)
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


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the flush at interpreter exit does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout replaced by a test harness: nothing to silence
        pass


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


# -- commands -------------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from horos_async import schedule

    cfg = load_config(args)
    os.umask(0o027)  # ZIPs, ledger, logs: not world-readable (RELIABILITY §5)
    if not args.now and not schedule.in_window(dt.datetime.now(), cfg.run_window):
        print(f"horos-backup: outside run_window {cfg.run_window}; nothing done (use --now to override)")
        return EXIT_OK
    from horos_async.guards import check_backup_writable, check_sentinel, check_volumes

    check_sentinel(cfg)  # before logging creates anything on the volume
    check_volumes(cfg)
    check_backup_writable(cfg)  # a read-only volume: one clear message (exit 7), not a traceback from the log
    progress = args.progress or sys.stdout.isatty()
    logs.setup(cfg, verbose=args.verbose, interactive=progress)
    return run_engine(cfg, until_done=args.until_done, max_studies=args.max_studies,
                      max_minutes=args.max_minutes, progress=progress)


def run_engine(cfg: Config, *, until_done: bool = False, max_studies: Optional[int] = None,
               max_minutes: Optional[float] = None, progress: bool = False) -> int:
    """Run the engine with SIGTERM/SIGINT wired to a clean stop; print the outcome."""
    early: List[int] = []  # a signal before the event loop runs: remembered, then honoured (exit 130)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: early.append(signum))
    from horos_async.backup.engine import Engine

    announce = _say if progress else (lambda text: None)
    engine = Engine(cfg, until_done=until_done, max_studies=max_studies, max_minutes=max_minutes,
                    announce=announce)

    async def go():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, engine.request_stop)
        if early:
            engine.request_stop()
        return await engine.run()

    t0 = time.monotonic()
    result = asyncio.run(go())
    took = time.monotonic() - t0
    summary = (f"{result.done} exported, {result.failed} not exported, {result.bytes_in / 1e6:.1f} MB read in "
               f"{took:.1f}s; archive: {result.eligible - result.pending}/{result.eligible} studies backed up")
    logging.getLogger("horos_async").info("run ended (%s): %s", result.outcome, summary)
    if result.outcome == "paused":
        _say(f"horos-backup: paused: {result.message}")
    elif result.outcome == "interrupted":
        print(f"horos-backup: {result.message}", file=sys.stderr)
    _say(f"horos-backup: {summary}")
    if result.failed:
        _say(f"horos-backup: see {cfg.issues_csv} for why studies were not exported")
    return result.exit_code


def _say(text: str) -> None:
    """One progress or summary line of a run. A reader that went away (``run --progress | head``) must not
    stop the backup or change its exit code: the rest of the output goes to /dev/null."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        _silence_stdout()


def cmd_plan(args: argparse.Namespace) -> int:
    from horos_async import guards
    from horos_async.ops import plan_view

    cfg = load_config(args)
    guards.check_sentinel(cfg)  # the same guards as 'run': the same exit codes for an unmounted volume
    guards.check_volumes(cfg)
    doc = asyncio.run(plan_view.build(cfg, limit=args.limit or cfg.batch_size))
    if args.json:
        json.dump(doc, sys.stdout, indent=2, ensure_ascii=False)
        print()
    else:
        print(plan_view.render(doc))
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from horos_async import status

    cfg = load_config(args)
    snap = status.read_snapshot(cfg)
    if args.json:  # also when unreadable: scripts get "engine": "unreadable" and the reason
        print(json.dumps(status.to_json(snap), indent=2, ensure_ascii=False))
    elif not snap.exit_code:
        print(status.render(snap))
    if snap.exit_code:  # the state could not be read: an error with its exit code, never "0 backed up"
        sys.stdout.flush()
        print(f"horos-backup: status unknown: {snap.detail}", file=sys.stderr)
    return snap.exit_code


def cmd_demo(args: argparse.Namespace) -> int:
    from horos_async import demo

    root = args.dir.expanduser().absolute()
    cfg_path = root / "horos-backup.toml"
    if not (root / "Horos Data" / "Database.sql").exists():
        print(f"building a demo Horos library in {root} ...", flush=True)
        lib = demo.build_demo(root, studies=args.studies, images_per_series=12, ct_size=512, mr_size=256)
        sentinel = root / ".pacs_sentinel"
        sentinel.touch()
        cfg = config_mod.from_mapping({
            "horos_data": str(lib.horos_data), "backup_dir": str(root / "Backup"), "sentinel": str(sentinel),
            "timezone": lib.timezone, "sleep_between_studies": 0, "batch_size": 8,
        }, source=cfg_path)
        cfg_path.write_text("# horos-backup configuration for the demo library (see README 'Configuration')\n"
                            + config_mod.render_toml(cfg), encoding="utf-8")
    cfg = config_mod.load(cfg_path)
    print(f"config: {cfg_path}")
    if args.plan_only:
        from horos_async.ops import plan_view

        print(plan_view.render(asyncio.run(plan_view.build(cfg, limit=50))))
        return EXIT_OK
    os.umask(0o027)
    logs.setup(cfg, verbose=args.verbose, interactive=True)
    code = run_engine(cfg, until_done=True, progress=True)
    print(f"\nZIPs are in {cfg.backup_dir} (one folder per month); issues in {cfg.issues_csv}.")
    print("Next: look at the archive with")
    backup, tui = program("horos-backup"), program("horos-tui")
    print(f"  {backup} status --config '{cfg_path}'")
    print(f"  {tui} --config '{cfg_path}'")
    print(f"  {backup} verify --deep --config '{cfg_path}'")
    return code


def program(name: str) -> str:
    """How to type ``name`` in a shell: the bare name when it is on PATH, else its path beside this Python.

    ``make demo`` installs into ``.venv/bin``, which is usually not on PATH: a bare "horos-backup" there
    would answer "command not found".
    """
    import shlex
    import shutil

    here = Path(sys.argv[0]).absolute().parent if Path(sys.argv[0]).name.startswith("horos-") else None
    for folder in (here, Path(sys.executable).parent):
        if folder is not None and (folder / name).is_file():
            beside = folder / name
            break
    else:
        return name
    on_path = shutil.which(name)
    if on_path and Path(on_path).resolve() == beside.resolve():
        return name
    return shlex.quote(str(beside))


def cmd_rebuild_ledger(args: argparse.Namespace) -> int:
    from horos_async import guards
    from horos_async.ops import rebuild

    cfg = load_config(args)
    guards.check_backup_writable(cfg)
    stats = asyncio.run(rebuild.rebuild(cfg, deep=args.deep, announce=print))
    print(f"horos-backup: ledger rebuilt: {stats['adopted']} ZIPs adopted, {stats['invalid']} invalid moved to "
          f".quarantine, {stats['temps_removed']} temp files removed")
    return EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    print(f"# effective configuration (from {cfg.source or 'built-in defaults'})")
    print(config_mod.render_toml(cfg), end="")
    return EXIT_OK


COMMANDS = {"run": cmd_run, "plan": cmd_plan, "status": cmd_status, "demo": cmd_demo,
            "rebuild-ledger": cmd_rebuild_ledger, "config": cmd_config}
