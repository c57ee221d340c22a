"""The monitor's fixed settings and the zone it shows times in (shared by ``app`` and ``monitor``)."""

from __future__ import annotations

import datetime as dt
from typing import Optional

from horos_async.config import Config

HISTORY_POINTS = 600
"""INCOMING counts kept for the history strip (ten minutes at the default refresh)."""
HUNG_SECONDS = 10.0
"""A status read taking longer than this is shown as unreadable (volume not responding?)."""


def display_zone(cfg: Config) -> Optional[dt.tzinfo]:
    """Zone for local times: the Horos Mac's configured zone, else this machine's (None)."""
    if not cfg.timezone:
        return None
    from horos_async.timezones import load_zone

    return load_zone(cfg.timezone)
