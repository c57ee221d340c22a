"""Run window: an optional local time window (e.g. nights only) outside which scheduled runs do nothing."""

from __future__ import annotations

import datetime as dt
import re
from typing import Optional, Tuple

_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


def parse_window(text: str) -> Tuple[dt.time, dt.time]:
    """Parse ``"HH:MM-HH:MM"``; the window may wrap past midnight (``"20:00-06:00"``)."""
    m = _WINDOW.match(text)
    if not m:
        raise ValueError('expected "HH:MM-HH:MM", e.g. "20:00-06:00"')
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if not (h1 < 24 and h2 < 24 and m1 < 60 and m2 < 60):
        raise ValueError("hours must be 00-23 and minutes 00-59")
    start, end = dt.time(h1, m1), dt.time(h2, m2)
    if start == end:
        raise ValueError("start and end are equal; leave run_window empty to run at any time")
    return start, end


def in_window(now: dt.datetime, text: str) -> bool:
    """True when ``now`` (local wall-clock time: the caller reads it in the configured ``timezone``) is
    inside the window, or when no window is configured."""
    if not text:
        return True
    start, end = parse_window(text)
    t = now.time()
    if start < end:
        return start <= t < end
    return t >= start or t < end


def window_open(unix: float, text: str, zone: Optional[dt.tzinfo]) -> bool:
    """:func:`in_window` at the instant ``unix`` read in ``zone`` (the configured ``timezone``; None:
    this machine's local time)."""
    if not text:
        return True
    now = dt.datetime.fromtimestamp(unix, zone) if zone is not None else dt.datetime.fromtimestamp(unix)
    return in_window(now, text)
