"""``horos-backup status``: archive progress, last runs, recent issues (reads only)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys

from horos_async import status
from horos_async.cli.common import add_common, config_from, defaults_note


def build_parser_status(sub) -> None:
    st = sub.add_parser("status", help="archive progress, last runs, recent issues (reads only)")
    add_common(st)
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=do_status)


def do_status(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    snap = status.read_snapshot(cfg)
    if args.json:  # also when unreadable: scripts get "engine": "unreadable" and the reason
        print(json.dumps(status.to_json(snap), indent=2, ensure_ascii=False))
    elif not snap.exit_code:
        print(status.render(snap, width=shutil.get_terminal_size((80, 24)).columns))
    if snap.exit_code:  # the state could not be read: an error with its exit code, never "0 backed up"
        sys.stdout.flush()
        print(f"horos-backup: status unknown: {snap.detail}", file=sys.stderr)
        defaults_note(args)
    return snap.exit_code
