"""Core Data timestamps to local dates, in the zone of the Mac that ran Horos (docs/design/horos-database.md §5).

Horos parsed DICOM dates as wall-clock time of the Mac's default zone, so the stored instant must be
read back in that zone, never in UTC: 22:30 on 31 March in São Paulo is 01:30 UTC on 1 April.
"""

from __future__ import annotations

import datetime as dt
from typing import Optional

try:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
except ImportError:  # pragma: no cover - Python 3.9+ always has zoneinfo
    ZoneInfo = None  # type: ignore

COCOA_EPOCH_OFFSET = 978307200
"""Seconds from 1970-01-01 UTC to 2001-01-01 UTC (NSDate reference date)."""


def load_zone(name: str) -> dt.tzinfo:
    """Return the IANA zone ``name`` or raise ValueError with a hint."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError("unknown time zone; use an IANA name such as America/Sao_Paulo "
                         "(see `ls /usr/share/zoneinfo`)") from None


def system_zone() -> Optional[dt.tzinfo]:
    """This machine's IANA zone as a ZoneInfo (fast conversions), from $TZ or /etc/localtime; None if unknown.

    macOS links /etc/localtime to /var/db/timezone/zoneinfo/<Area/City>; Linux to /usr/share/zoneinfo/...
    """
    import os

    candidates = []
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz:
        candidates.append(tz)
    try:
        target = os.path.realpath("/etc/localtime")
    except OSError:
        target = ""
    if "zoneinfo/" in target:
        candidates.append(target.split("zoneinfo/", 1)[1])
    for name in candidates:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            continue
    return None


def zone_for(name: str) -> Optional[dt.tzinfo]:
    """The config's ``timezone`` as a zone: the IANA zone ``name``, or this machine's zone when empty
    (None when even that is unknown: then local time is this machine's, as ``to_local`` reads it)."""
    return load_zone(name) if name else system_zone()


def cocoa_to_unix(value: Optional[float]) -> Optional[float]:
    """Core Data seconds-since-2001 (int or float) to Unix seconds; None stays None."""
    if value is None or value == "":
        return None
    try:
        return float(value) + COCOA_EPOCH_OFFSET
    except (TypeError, ValueError):
        return None


def to_local(unix: Optional[float], zone: Optional[dt.tzinfo]) -> Optional[dt.datetime]:
    """An aware datetime in ``zone`` (None = this machine's zone, DST rules included)."""
    if unix is None:
        return None
    try:
        if zone is not None:
            return dt.datetime.fromtimestamp(unix, zone)
        return dt.datetime.fromtimestamp(unix).astimezone()
    except (OverflowError, OSError, ValueError):
        return None


def cocoa_to_local(value: Optional[float], zone: Optional[dt.tzinfo]) -> Optional[dt.datetime]:
    """Core Data timestamp straight to an aware local datetime."""
    return to_local(cocoa_to_unix(value), zone)


def zone_of(name: str) -> Optional[dt.tzinfo]:
    """The zone of ``Config.timezone`` (None when empty: this machine's zone). Raises ValueError when unknown."""
    return load_zone(name) if name else None


_display_zone: Optional[dt.tzinfo] = None


def use_display_zone(zone: Optional[dt.tzinfo]) -> None:
    """Set the zone this process writes times in where no config reaches (``issues.csv`` rows); the
    command line sets it from ``Config.timezone`` once the config is loaded (None: this machine's zone)."""
    global _display_zone
    _display_zone = zone


def display_zone() -> Optional[dt.tzinfo]:
    """The zone set by :func:`use_display_zone` (None: this machine's zone)."""
    return _display_zone


def local_iso(unix: float, zone: Optional[dt.tzinfo] = None) -> str:
    """``2024-03-02T14:02:11-03:00``: ISO 8601 in ``zone`` (default :func:`display_zone`), offset included."""
    when = to_local(unix, zone if zone is not None else _display_zone)
    return when.isoformat(timespec="seconds") if when is not None else ""
