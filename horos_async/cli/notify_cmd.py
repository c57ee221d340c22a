"""``horos-backup notify test``: one message through every channel of ``[notify]``, and which worked."""

from __future__ import annotations

import argparse

from horos_async import notify
from horos_async.cli.common import add_common, config_from, err
from horos_async.errors import EXIT_CHECK, EXIT_CONFIG, EXIT_OK


def build_parser_notify(sub) -> None:
    n = sub.add_parser("notify", help="alerts: 'notify test' sends one message through every configured channel")
    n.add_argument("action", choices=["test"], help="test: send a test message through every channel")
    add_common(n)
    n.set_defaults(func=do_notify)


def do_notify(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    if not cfg.notify.channels:
        err(f"horos-backup: no alert channel is configured: add a [notify] table with email_to, webhook_url or "
            f"healthcheck_url to {cfg.source or 'your config file'} (README 'Alerts')")
        return EXIT_CONFIG
    results = notify.send_test(cfg)
    for r in results:
        print(f"{r.channel:<12} {'OK' if r.ok else 'FAILED'}  {r.detail}")
    failed = [r.channel for r in results if not r.ok]
    if failed:
        err(f"horos-backup: {len(failed)} of {len(results)} channels failed: {', '.join(failed)}")
        return EXIT_CHECK
    print(f"all {len(results)} channels worked")
    return EXIT_OK
