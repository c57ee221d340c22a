"""``horos-backup demo``: build the demo Horos library and back it up (the main job, end to end)."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from horos_async import config as config_mod, logs
from horos_async.cli.common import program
from horos_async.cli.run_cmd import run_engine
from horos_async.errors import EXIT_OK


def build_parser_demo(sub) -> None:
    d = sub.add_parser("demo", help="build a demo Horos library and back it up")
    d.add_argument("--dir", type=Path, default=Path("horos-demo"), help="folder for the demo (default ./horos-demo)")
    d.add_argument("--studies", type=int, default=8, help="ordinary CT/MR studies besides the special cases")
    d.add_argument("--plan-only", action="store_true", help="build and show the plan, export nothing")
    d.add_argument("-v", "--verbose", action="store_true")
    d.set_defaults(func=do_demo)


def do_demo(args: argparse.Namespace) -> int:
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

        # The same limit as 'plan' and the next run: one batch (batch_size studies).
        print(plan_view.render(asyncio.run(plan_view.build(cfg, limit=cfg.batch_size))))
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
