"""Operations commands: ``launchd``, ``doctor``, ``verify``, ``restore``, ``catalog``.

``cli.build_parser`` calls :func:`add_parsers`; each subparser sets ``func`` to a handler
``handler(args) -> int``. The handlers only parse flags, call the module that does the work and print;
errors propagate as ``HorosBackupError`` for ``cli.main`` to turn into exit codes. ``cli`` is imported
inside the handlers (it imports this module while building its parser).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Callable, List

from horos_async.errors import EXIT_CHECK, EXIT_OK, ConfigError

HIDDEN = argparse.SUPPRESS


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def add_parsers(sub, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the operations subcommands to the main parser."""
    ld = sub.add_parser("launchd", help="install, remove or show the LaunchAgent that runs backups on schedule")
    lsub = ld.add_subparsers(dest="launchd_action", metavar="ACTION")
    lsub.required = True
    inst = lsub.add_parser("install", help="write ~/Library/LaunchAgents/org.horos-backup.agent.plist and load it")
    common(inst)
    inst.add_argument("--calendar", metavar="HH:MM[,HH:MM...]",
                      help="run at these local times (StartCalendarInterval) instead of every start_interval seconds")
    inst.add_argument("--dry-run", action="store_true", help="print the plist and the launchctl commands; change nothing")
    inst.add_argument("--home", type=Path, help=HIDDEN)
    inst.set_defaults(func=cmd_launchd_install)
    un = lsub.add_parser("uninstall", help="unload the LaunchAgent and remove its plist")
    common(un)
    un.add_argument("--home", type=Path, help=HIDDEN)
    un.set_defaults(func=cmd_launchd_uninstall)
    pr = lsub.add_parser("print", help="show the installed plist (or the one install would write)")
    common(pr)
    pr.add_argument("--calendar", metavar="HH:MM[,HH:MM...]", help="render with these calendar times")
    pr.add_argument("--home", type=Path, help=HIDDEN)
    pr.set_defaults(func=cmd_launchd_print)

    d = sub.add_parser("doctor", help="check everything a safe run needs; PASS/WARN/FAIL with the fix (reads only)")
    common(d)
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.add_argument("--volumes-root", type=Path, default=Path("/Volumes"), help=HIDDEN)
    d.set_defaults(func=cmd_doctor)

    v = sub.add_parser("verify", help="re-check the ZIPs on disk against the ledger; queue bad ones for re-export")
    common(v)
    v.add_argument("--deep", action="store_true", help="re-read every member and check its CRC (finds bit rot)")
    v.add_argument("--restart", action="store_true", help="start a new pass instead of continuing the last one")
    v.add_argument("--since", metavar="YYYY-MM-DD", help="only ZIPs exported on or after this date")
    v.add_argument("--month", metavar="YYYY_MM", help="only ZIPs in this month folder")
    v.add_argument("--max-mb-per-s", type=float, metavar="MB", help="read at most this many MB per second")
    v.add_argument("--max-zips", type=int, metavar="N", help="stop after N ZIPs (the next verify continues)")
    v.add_argument("--max-minutes", type=float, metavar="M", help="stop after M minutes (the next verify continues)")
    v.add_argument("--progress-every", type=int, default=100, metavar="N", help="a progress line every N ZIPs")
    v.set_defaults(func=cmd_verify)

    r = sub.add_parser("restore", help="extract studies from their ZIPs (verified, never overwriting)")
    common(r)
    r.add_argument("zips", nargs="+", type=Path, metavar="ZIP",
                   help="ZIP files (absolute, or relative to backup_dir such as 2024_03/NAME.zip)")
    where = r.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", type=Path, metavar="DIR", help="extract each ZIP into DIR/<zip name>/")
    where.add_argument("--into-horos", action="store_true",
                       help="feed the files to Horos's INCOMING.noindex, respecting incoming_max_files")
    r.add_argument("--wait-seconds", type=float, default=600.0, metavar="S",
                   help="with --into-horos: give up when INCOMING stays full this long (default 600)")
    r.add_argument("--poll-seconds", type=float, default=3.0, help=HIDDEN)
    r.set_defaults(func=cmd_restore)

    c = sub.add_parser("catalog", help="list every backed-up study (patient, dates, UID, ZIP) from the ledger")
    common(c)
    c.add_argument("--csv", action="store_true", help="CSV (UTF-8 with BOM, for Excel) instead of a table")
    c.add_argument("--out", type=Path, metavar="FILE", help="write to FILE instead of the terminal")
    c.add_argument("--delimiter", default=",", help="CSV separator; ';' suits Excel in Portuguese")
    c.add_argument("--from-zips", action="store_true", help="read the ZIPs' own labels instead of the ledger")
    c.add_argument("--search", metavar="TEXT", help="only patients whose name contains TEXT (accents ignored), or UID")
    c.add_argument("--all", action="store_true", help="also list studies that have no ZIP yet (failed, pending)")
    c.set_defaults(func=cmd_catalog)


def _config(args: argparse.Namespace):
    from horos_async import cli

    return cli.load_config(args)


# -- launchd ------------------------------------------------------------------------------------------
def _home(args: argparse.Namespace) -> Path:
    return (args.home or Path.home()).expanduser().absolute()


def _launchd_config(args: argparse.Namespace):
    if getattr(args, "horos_data", None) or getattr(args, "backup_dir", None):
        raise ConfigError("launchd runs with the config file only: put 'horos_data' and 'backup_dir' in the config "
                          "instead of passing --horos-data/--backup-dir")
    return _config(args)


def cmd_launchd_install(args: argparse.Namespace) -> int:
    from horos_async.ops import launchd

    cfg = _launchd_config(args)
    calendar = launchd.parse_calendar(args.calendar) if args.calendar else []
    if calendar and cfg.run_window:
        outside = launchd.calendar_outside_window(calendar, cfg.run_window)
        if outside:
            _err(f"horos-backup: warning: {', '.join(outside)} is outside run_window {cfg.run_window}: "
                 f"runs started then do nothing")
    if args.dry_run:
        data = launchd.render(cfg, calendar=calendar)
        launchd.validate(data)
        sys.stdout.write(data.decode("utf-8"))
        print(f"# would be written to {launchd.plist_path(_home(args))} and loaded with:")
        uid = os.getuid()
        print(f"#   launchctl bootout gui/{uid}/{launchd.LABEL}\n#   launchctl enable gui/{uid}/{launchd.LABEL}")
        print(f"#   launchctl bootstrap gui/{uid} {launchd.plist_path(_home(args))}")
        return EXIT_OK
    from horos_async import platform

    if not platform.is_macos():
        print("not macOS: the plist is written and checked, and the launchctl commands are printed, not run:")
    path = launchd.install(cfg, home=_home(args), calendar=calendar)
    times = ", ".join("%02d:%02d" % (c["Hour"], c["Minute"]) for c in calendar)
    when = f"at {times}" if calendar else f"every {cfg.start_interval} s"
    print(f"horos-backup: LaunchAgent {launchd.LABEL} installed ({path}); it runs 'horos-backup run' {when} "
          f"with {launchd.config_file(cfg)}; output in {cfg.log_dir}")
    print("check it with: horos-backup doctor" + (f" --config '{cfg.source}'" if cfg.source else ""))
    return EXIT_OK


def cmd_launchd_uninstall(args: argparse.Namespace) -> int:
    from horos_async.ops import launchd
    from horos_async import platform

    if not platform.is_macos():
        print("not macOS: the launchctl command is printed, not run:")
    launchd.uninstall(home=_home(args))
    return EXIT_OK


def cmd_launchd_print(args: argparse.Namespace) -> int:
    from horos_async.ops import launchd

    path = launchd.plist_path(_home(args))
    if path.exists() and not args.calendar:
        print(f"# {path}")
        sys.stdout.write(path.read_text(encoding="utf-8"))
        return EXIT_OK
    cfg = _launchd_config(args)
    data = launchd.render(cfg, calendar=launchd.parse_calendar(args.calendar) if args.calendar else [])
    launchd.validate(data)
    print(f"# not installed at {path}; this is what 'horos-backup launchd install' would write:")
    sys.stdout.write(data.decode("utf-8"))
    return EXIT_OK


# -- doctor -------------------------------------------------------------------------------------------
def cmd_doctor(args: argparse.Namespace) -> int:
    from horos_async.ops import doctor

    try:
        cfg = _config(args)
    except ConfigError as exc:
        checks = [doctor.config_failure(exc)]
    else:
        checks = doctor.run_checks(cfg, volumes_root=args.volumes_root)
    if args.json:
        print(json.dumps(doctor.to_json(checks), indent=2, ensure_ascii=False))
    else:
        print(doctor.render(checks))
    return EXIT_CHECK if doctor.exit_failed(checks) else EXIT_OK


# -- verify -------------------------------------------------------------------------------------------
def cmd_verify(args: argparse.Namespace) -> int:
    from horos_async import guards
    from horos_async.ops import verify

    cfg = _config(args)
    guards.check_sentinel(cfg)
    guards.check_volumes(cfg)
    if cfg.ledger_path.exists():  # (no ledger: verify says so itself, with what to do)
        guards.check_backup_writable(cfg)  # verify records its findings: a read-only volume is exit 7
    os.umask(0o027)
    verifier = verify.Verifier(cfg, deep=args.deep, since=args.since, month=args.month, restart=args.restart,
                               max_mb_per_s=args.max_mb_per_s, max_zips=args.max_zips,
                               max_minutes=args.max_minutes, progress_every=args.progress_every, progress=_err)

    async def go():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, verifier.request_stop)
        return await verifier.run()

    result = asyncio.run(go())
    print(verify.summary(cfg, result, args.deep))
    return EXIT_CHECK if result.bad else EXIT_OK


# -- restore ------------------------------------------------------------------------------------------
def _zip_paths(args: argparse.Namespace, cfg_box: List) -> List[Path]:
    out = []
    for p in args.zips:
        p = p.expanduser()
        if not p.exists() and not p.is_absolute():
            if not cfg_box:
                cfg_box.append(_config(args))
            candidate = cfg_box[0].backup_dir / p
            p = candidate if candidate.exists() else p
        if not p.is_file():
            raise ConfigError(f"{p} is not a file; name a ZIP by its path, or relative to backup_dir "
                              f"(e.g. 2024_03/NAME.zip); 'horos-backup catalog --search NAME' finds it")
        out.append(p.absolute())
    return out


def cmd_restore(args: argparse.Namespace) -> int:
    from horos_async.ops import restore

    os.umask(0o027)
    cfg_box: List = []
    paths = _zip_paths(args, cfg_box)
    reports = []
    if args.into_horos:
        cfg = cfg_box[0] if cfg_box else _config(args)
        restore.check_incoming(cfg)
        for p in paths:
            rep = restore.restore_into_horos(p, cfg, wait_seconds=args.wait_seconds, poll_seconds=args.poll_seconds,
                                             say=_err)
            print(rep.line())
            reports.append(rep)
    else:
        for p in paths:
            rep = restore.restore_to(p, args.to.expanduser().absolute())
            print(rep.line())
            reports.append(rep)
    refused = [r for r in reports if r.error]
    if refused:
        _err(f"horos-backup: {len(refused)} ZIP(s) refused: nothing was extracted from them. Use another copy "
             f"(an older version, or a re-export: 'horos-backup verify --deep' queues bad ZIPs)")
    return EXIT_CHECK if refused else EXIT_OK


# -- catalog ------------------------------------------------------------------------------------------
def cmd_catalog(args: argparse.Namespace) -> int:
    from horos_async.ops import catalog
    from horos_async import durable

    cfg = _config(args)
    rows = catalog.from_zips(cfg) if args.from_zips else catalog.from_ledger(cfg, include_all=args.all)
    if args.search:
        rows = catalog.search(rows, args.search)
    if len(args.delimiter) != 1:
        raise ConfigError(f"--delimiter {args.delimiter!r}: one character, e.g. ',' or ';'")
    text = catalog.to_csv(rows, args.delimiter) if args.csv else catalog.to_table(rows) + "\n"
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
