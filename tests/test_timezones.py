"""Core Data dates read in the Mac's zone (docs/design/horos-database.md §5 worked examples)."""

from __future__ import annotations

import datetime as dt

from horos_async.timezones import cocoa_to_local, cocoa_to_unix, load_zone

SP = load_zone("America/Sao_Paulo")
TOKYO = load_zone("Asia/Tokyo")


def test_worked_examples_from_the_spec():
    assert cocoa_to_local(732216600, SP).replace(tzinfo=None) == dt.datetime(2024, 3, 15, 14, 30)
    assert cocoa_to_local(732207600, SP).replace(tzinfo=None) == dt.datetime(2024, 3, 15, 12, 0)
    assert cocoa_to_local(-650926800, SP).date() == dt.date(1980, 5, 17)
    assert cocoa_to_local(-650970000, TOKYO).date() == dt.date(1980, 5, 17)
    # read as UTC, the Tokyo birth date would be a day early: that is the bug this module exists for
    assert cocoa_to_local(-650970000, dt.timezone.utc).date() == dt.date(1980, 5, 16)


def test_month_boundary_in_sao_paulo_stays_in_march():
    local = dt.datetime(2024, 3, 31, 22, 30, tzinfo=SP)
    cocoa = local.timestamp() - 978307200
    assert cocoa_to_local(cocoa, SP).month == 3
    assert cocoa_to_local(cocoa, dt.timezone.utc).month == 4


def test_int_float_and_null_values():
    assert cocoa_to_unix(0) == 978307200.0
    assert cocoa_to_unix(0.5) == 978307200.5
    assert cocoa_to_unix(None) is None and cocoa_to_local(None, SP) is None
