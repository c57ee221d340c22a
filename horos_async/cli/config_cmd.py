"""``horos-backup config``: print the effective configuration as TOML (validates it)."""

from __future__ import annotations

import argparse

from horos_async import config as config_mod
from horos_async.cli.common import add_common, config_from
from horos_async.errors import EXIT_OK


def build_parser_config(sub) -> None:
    c = sub.add_parser("config", help="print the effective configuration as TOML (validates it)")
    add_common(c)
    c.set_defaults(func=do_config)


def do_config(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    print(f"# effective configuration (from {cfg.source or 'built-in defaults'})")
    print(config_mod.render_toml(cfg), end="")
    return EXIT_OK
