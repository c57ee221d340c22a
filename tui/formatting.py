"""Plain-text formatters for what the TUI shows: local times, durations, sizes, rates, bars.

Engine timestamps are Unix seconds; the operator reads local wall-clock times in the zone of the Horos
Mac (``cfg.timezone``, else this machine's zone). Sizes use decimal units (1 GB = 10^9 bytes), the same
units as the engine's MB/s. No Textual here, so these are tested as plain functions.
"""

from __future__ import annotations

import datetime as dt
from typing import Optional, Sequence

from horos_async.timezones import to_local

DASH = "–"
BAR_FULL = "█"
BAR_EMPTY = "░"
_LEVELS = " ▁▂▃▄▅▆▇█"


def duration(seconds: Optional[float]) -> str:
    """``45s``, ``3m 12s``, ``2h 05m``, ``3d 4h``; a dash when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return DASH
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m {s:02d}s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h}h {m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d {h}h"


def size(n: Optional[float]) -> str:
    """``512 B``, ``1.2 MB``, ``182.3 GB``, ``1.05 TB`` (decimal units); a dash when unknown."""
    if n is None:
        return DASH
    value = float(n)
    if abs(value) < 1000:
        return f"{int(value)} B"
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000.0
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.2f} {unit}" if unit == "TB" else f"{value:.1f} {unit}"
    return f"{value:.1f} TB"  # pragma: no cover - loop always returns


def count(n: Optional[int]) -> str:
    """Thousands separated by commas; a dash when unknown."""
    return DASH if n is None else f"{n:,}"


def rate(value: float) -> str:
    """``4.2`` below 100, ``5,670`` from 100 on (three significant figures are plenty for a rate)."""
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def percent(part: float, whole: Optional[float]) -> Optional[float]:
    """``part / whole`` as 0..100, or None when ``whole`` is unknown or zero."""
    if not whole:
        return None
    return max(0.0, min(100.0, 100.0 * part / whole))


def clock_time(unix: Optional[float], zone: Optional[dt.tzinfo], now: Optional[float] = None) -> str:
    """Local time: ``14:02:11`` when on the same day as ``now``, else ``2024-03-02 14:02``."""
    when = to_local(unix, zone)
    if when is None:
        return DASH
    today = to_local(now, zone) if now is not None else None
    if today is not None and today.date() == when.date():
        return when.strftime("%H:%M:%S")
    return when.strftime("%Y-%m-%d %H:%M")


def ago(unix: Optional[float], now: float) -> str:
    """``12s ago`` / ``in 3m 00s`` relative to ``now``."""
    if unix is None:
        return DASH
    delta = now - unix
    return f"{duration(delta)} ago" if delta >= 0 else f"in {duration(-delta)}"


def bar(fraction: Optional[float], width: int) -> str:
    """A text progress bar ``width`` cells wide (``░`` only when the fraction is unknown)."""
    width = max(1, width)
    if fraction is None:
        return BAR_EMPTY * width
    filled = int(round(max(0.0, min(1.0, fraction)) * width))
    return BAR_FULL * filled + BAR_EMPTY * (width - filled)


def levels(values: Sequence[Optional[float]]) -> str:
    """One block character per value in 0..1 (``·`` for None): a heat strip such as month coverage."""
    out = []
    for v in values:
        if v is None:
            out.append("·")
        else:
            out.append(_LEVELS[max(1, int(round(max(0.0, min(1.0, v)) * (len(_LEVELS) - 1))))])
    return "".join(out)


def shorten(text: str, width: int) -> str:
    """Cut ``text`` to ``width`` cells with an ellipsis in the middle (keeps the UID end of ZIP names)."""
    if width <= 0:
        return ""
    if len(text) <= width:
        return text
    if width <= 3:
        return text[:width]
    head = (width - 1) // 2
    tail = width - 1 - head
    return text[:head] + "…" + text[-tail:]
