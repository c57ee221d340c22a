"""``horos-backup doctor``: check everything a safe run needs; PASS/WARN/FAIL/SKIP with the fix (reads only)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from horos_async.cli.common import HIDDEN, add_common, config_from
from horos_async.errors import EXIT_CHECK, EXIT_OK, ConfigError
from horos_async.ops import doctor


def build_parser_doctor(sub) -> None:
    d = sub.add_parser("doctor", help="check everything a safe run needs; PASS/WARN/FAIL/SKIP with the fix (reads only)")
    add_common(d)
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.add_argument("--volumes-root", type=Path, default=Path("/Volumes"), help=HIDDEN)
    d.set_defaults(func=do_doctor)


def do_doctor(args: argparse.Namespace) -> int:
    try:
        cfg = config_from(args)
    except ConfigError as exc:
        checks = [doctor.config_failure(exc)]
    else:
        checks = doctor.run_checks(cfg, volumes_root=args.volumes_root)
    if args.json:
        print(json.dumps(doctor.to_json(checks), indent=2, ensure_ascii=False))
    else:
        print(doctor.render(checks))
    return EXIT_CHECK if doctor.exit_failed(checks) else EXIT_OK
