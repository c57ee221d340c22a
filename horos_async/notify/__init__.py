"""Alerts that reach a person: e-mail, a webhook (ntfy, Slack, Teams) and a healthchecks.io ping.

docs/design/durability.md §7: a failure reaches a person once per episode, again daily while it lasts,
and once more when it recovers; a failing channel never blocks or fails a backup. ``channels`` sends
(standard library only), ``messages`` says it in English or Portuguese, ``episodes`` remembers what was
told (in ``state_dir``), ``dispatch`` decides what a run or a ``verify`` has to tell.
"""

from __future__ import annotations

from horos_async.notify.dispatch import Delivery, after_run, mirror_alerts, run_started, send_test, verify_found_bad

__all__ = ["Delivery", "after_run", "mirror_alerts", "run_started", "send_test", "verify_found_bad"]
