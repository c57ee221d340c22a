"""Direct table tests of the two small decisions everything else rests on: what is due, and when runs may run."""

from __future__ import annotations

import datetime as dt

import pytest

from horos_async import config as config_mod
from horos_async.backup.planner import classify
from horos_async.schedule import in_window, parse_window
from horos_async.state.ledger_records import Entry

NOW = 1_750_000_000.0
HOUR = 3600.0
CFG = config_mod.validate(config_mod.Config(stability_minutes=30.0))


def entry(state: str, date_added=NOW - 48 * HOUR, next_attempt=None) -> Entry:
    return Entry(state=state, version=1, date_added=date_added, fingerprint="f", next_attempt=next_attempt,
                 zip_path="2024_01/x.zip" if state == "done" else "", code="")


@pytest.mark.parametrize("name, ledger, added, expected", [
    ("never seen, settled", None, NOW - 2 * HOUR, "new"),
    ("never seen, imported 10 min ago", None, NOW - 600, "waiting"),
    ("never seen, date unknown", None, None, "new"),
    ("done, same import", entry("done"), NOW - 48 * HOUR, "done"),
    ("done, import within 0.5 s (float noise)", entry("done"), NOW - 48 * HOUR + 0.3, "done"),
    ("done, Horos added images since, settled", entry("done"), NOW - 2 * HOUR, "changed"),
    ("done, Horos adding images right now", entry("done"), NOW - 60, "waiting"),
    ("done, newer version failed and waits", entry("done", next_attempt=NOW + HOUR), NOW - 2 * HOUR, "done"),
    ("done, ledger date unknown", entry("done", date_added=None), NOW - 2 * HOUR, "done"),
    ("failed, backoff over", entry("failed", next_attempt=NOW - 1), NOW - 48 * HOUR, "retry"),
    ("failed, in backoff", entry("failed", next_attempt=NOW + HOUR), NOW - 48 * HOUR, "backoff"),
    ("pending (verify re-queued it)", entry("pending"), NOW - 48 * HOUR, "requeued"),
    ("failed, but Horos is importing into it", entry("failed"), NOW - 60, "waiting"),
])
def test_classify(name, ledger, added, expected):
    assert classify(ledger, added, CFG, NOW) == expected, name


def at(hh: int, mm: int = 0) -> dt.datetime:
    return dt.datetime(2026, 3, 10, hh, mm)


@pytest.mark.parametrize("window, moment, inside", [
    ("", at(12), True),                      # no window: any time
    ("20:00-06:00", at(19, 59), False),
    ("20:00-06:00", at(20, 0), True),        # start is inside
    ("20:00-06:00", at(23, 59), True),
    ("20:00-06:00", at(0, 0), True),         # wraps past midnight
    ("20:00-06:00", at(5, 59), True),
    ("20:00-06:00", at(6, 0), False),        # end is outside
    ("08:00-18:00", at(7, 59), False),
    ("08:00-18:00", at(8, 0), True),
    ("08:00-18:00", at(17, 59), True),
    ("08:00-18:00", at(18, 0), False),
    (" 8:00 - 9:30 ", at(9, 29), True),      # spaces and one-digit hours
    (" 8:00 - 9:30 ", at(9, 30), False),
])
def test_in_window(window, moment, inside):
    assert in_window(moment, window) is inside


@pytest.mark.parametrize("bad", ["20:00", "24:00-06:00", "20:60-06:00", "06:00-06:00", "night", "20-06"])
def test_parse_window_refuses(bad):
    with pytest.raises(ValueError):
        parse_window(bad)
