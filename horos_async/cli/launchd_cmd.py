"""``horos-backup launchd install|uninstall|print``: the LaunchAgent that runs backups on schedule."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from horos_async import platform
from horos_async.cli.common import HIDDEN, add_common, config_from, err
from horos_async.errors import EXIT_OK, ConfigError
from horos_async.ops import launchd


def build_parser_launchd(sub) -> None:
    ld = sub.add_parser("launchd", help="install, remove or show the LaunchAgent that runs backups on schedule")
    lsub = ld.add_subparsers(dest="launchd_action", metavar="ACTION")
    lsub.required = True
    inst = lsub.add_parser("install", help="write ~/Library/LaunchAgents/org.horos-backup.agent.plist and load it")
    add_common(inst)
    inst.add_argument("--calendar", metavar="HH:MM[,HH:MM...]",
                      help="run at these local times (StartCalendarInterval) instead of every start_interval seconds")
    inst.add_argument("--dry-run", action="store_true", help="print the plist and the launchctl commands; change nothing")
    inst.add_argument("--home", type=Path, help=HIDDEN)
    inst.set_defaults(func=do_install)
    un = lsub.add_parser("uninstall", help="unload the LaunchAgent and remove its plist")
    add_common(un)
    un.add_argument("--home", type=Path, help=HIDDEN)
    un.set_defaults(func=do_uninstall)
    pr = lsub.add_parser("print", help="show the installed plist (or the one install would write)")
    add_common(pr)
    pr.add_argument("--calendar", metavar="HH:MM[,HH:MM...]", help="render with these calendar times")
    pr.add_argument("--home", type=Path, help=HIDDEN)
    pr.set_defaults(func=do_print)


def _home(args: argparse.Namespace) -> Path:
    return (args.home or Path.home()).expanduser().absolute()


def _launchd_config(args: argparse.Namespace):
    if getattr(args, "horos_data", None) or getattr(args, "backup_dir", None):
        raise ConfigError("launchd runs with the config file only: put 'horos_data' and 'backup_dir' in the config "
                          "instead of passing --horos-data/--backup-dir")
    return config_from(args)


def do_install(args: argparse.Namespace) -> int:
    cfg = _launchd_config(args)
    calendar = launchd.parse_calendar(args.calendar) if args.calendar else []
    if calendar and cfg.run_window:
        outside = launchd.calendar_outside_window(calendar, cfg.run_window)
        if outside:
            err(f"horos-backup: warning: {', '.join(outside)} is outside run_window {cfg.run_window}: "
                f"runs started then do nothing")
    if args.dry_run:
        data = launchd.render(cfg, calendar=calendar)
        launchd.validate(data)
        sys.stdout.write(data.decode("utf-8"))  # stdout is the plist alone: '> agent.plist' gives a valid file
        err(f"# would be written to {launchd.plist_path(_home(args))} and loaded with:")
        uid = os.getuid()
        err(f"#   launchctl bootout gui/{uid}/{launchd.LABEL}\n#   launchctl enable gui/{uid}/{launchd.LABEL}")
        err(f"#   launchctl bootstrap gui/{uid} {launchd.plist_path(_home(args))}")
        return EXIT_OK
    if not platform.is_macos():
        print("not macOS: the plist is written and checked, and the launchctl commands are printed, not run:")
    path = launchd.install(cfg, home=_home(args), calendar=calendar)
    times = ", ".join("%02d:%02d" % (c["Hour"], c["Minute"]) for c in calendar)
    when = f"at {times}" if calendar else f"every {cfg.start_interval} s"
    print(f"horos-backup: LaunchAgent {launchd.LABEL} installed ({path}); it runs 'horos-backup run' {when} "
          f"with {launchd.config_file(cfg)}; output in {cfg.log_dir}")
    print("check it with: horos-backup doctor" + (f" --config '{cfg.source}'" if cfg.source else ""))
    return EXIT_OK


def do_uninstall(args: argparse.Namespace) -> int:
    if not platform.is_macos():
        print("not macOS: the launchctl command is printed, not run:")
    launchd.uninstall(home=_home(args))
    return EXIT_OK


def do_print(args: argparse.Namespace) -> int:
    """The plist on stdout and nothing else (``launchd print > agent.plist`` is a valid plist); where it
    comes from goes to stderr."""
    path = launchd.plist_path(_home(args))
    if path.exists() and not args.calendar:
        err(f"# installed: {path}")
        sys.stdout.write(path.read_text(encoding="utf-8"))
        return EXIT_OK
    cfg = _launchd_config(args)
    data = launchd.render(cfg, calendar=launchd.parse_calendar(args.calendar) if args.calendar else [])
    launchd.validate(data)
    err(f"# not installed at {path}; this is what 'horos-backup launchd install' would write:")
    sys.stdout.write(data.decode("utf-8"))
    return EXIT_OK
