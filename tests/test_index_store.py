"""Retention of index snapshots on a made-up calendar: what is kept, what goes, and what is never deleted."""

from __future__ import annotations

import datetime as dt
import os

from horos_async.ops import index_snapshot, index_store

from helpers import make_config

UTC = dt.timezone.utc


def at(day: dt.date, hour: int = 2) -> float:
    return dt.datetime(day.year, day.month, day.day, hour, tzinfo=UTC).timestamp()


def daily(start: dt.date, days: int, studies: int = 1000):
    return [(f"s{i:04d}", at(start + dt.timedelta(days=i)), studies) for i in range(days)]


def test_daily_weekly_monthly_on_a_two_year_calendar():
    snaps = daily(dt.date(2024, 1, 1), 730)  # one snapshot a day, 2024-01-01 .. 2025-12-30
    keep = index_store.plan_retention(snaps, keep_daily=7, keep_weekly=5, keep_monthly=12, zone=UTC)
    by_reason = {}
    for name, why in keep.items():
        by_reason.setdefault(why, []).append(name)
    assert by_reason["newest"] == ["s0729"]
    assert sorted(by_reason["daily"]) == [f"s{i:04d}" for i in range(723, 729)]  # + the newest: 7 days
    # weeks: the newest of each of the last 5 ISO weeks, those already kept as daily count once
    kept_days = {dt.date(2024, 1, 1) + dt.timedelta(days=int(n[1:])) for n in keep}
    weeks = {d.isocalendar()[:2] for d in kept_days}
    assert len(weeks) >= 5
    months = {(d.year, d.month) for d in kept_days}
    assert len(months) == 12 and min(months) == (2025, 1)
    # every monthly keeper is the last day of its month that had a snapshot
    for d in kept_days:
        if keep[f"s{(d - dt.date(2024, 1, 1)).days:04d}"] == "monthly":
            assert (d + dt.timedelta(days=1)).month != d.month
    assert len(keep) < 7 + 5 + 12 + 1


def test_losses_pin_the_snapshot_before_them_forever():
    snaps = daily(dt.date(2024, 1, 1), 400)
    # Horos lost most of its index on day 100 (the next snapshot has far fewer studies)...
    snaps = [(n, t, 900 if i < 100 else 50) for i, (n, t, _) in enumerate(snaps)]
    # ...and the mass-drop guard reported HOROS_DB_SHRANK in the evening of day 200
    shrank = at(dt.date(2024, 1, 1) + dt.timedelta(days=200), hour=20)
    keep = index_store.plan_retention(snaps, keep_daily=7, keep_weekly=5, keep_monthly=12, zone=UTC,
                                      events=[(shrank, "the Horos database shrank")])
    assert "studies dropped from 900 to 50" in keep["s0099"]
    assert keep["s0200"].startswith("last before the Horos database shrank")
    # without those events both would be long gone
    plain = index_store.plan_retention(snaps, keep_daily=7, keep_weekly=5, keep_monthly=12, zone=UTC)
    assert "s0200" not in plain and "s0099" in keep and plain.get("s0099", "").startswith("last before")


def test_prune_deletes_only_our_verified_snapshots_on_disk(demo_lib, tmp_path):
    cfg = make_config(demo_lib, tmp_path / "Backup", index_keep_daily=2, index_keep_weekly=0, index_keep_monthly=0)
    day0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=UTC).timestamp()
    for i in range(5):  # five daily snapshots, each taken at its made-up time
        index_snapshot.take(cfg, clock=lambda i=i: day0 + i * 86400)
    names = [s.name for s in index_store.list_snapshots(cfg.index_dir)]
    assert names[0].startswith("2025-03-01_") and len(names) == 5
    damaged = cfg.index_dir / names[0] / index_store.SIDE_FILE
    os.unlink(damaged)  # a damaged snapshot is left for a person to look at, never deleted
    foreign = cfg.index_dir / "2025-01-01_000000"
    foreign.mkdir()  # not ours (no manifest): never touched
    (foreign / "notes.txt").write_text("mine")
    taken = index_snapshot.take_and_prune(cfg, clock=lambda: day0 + 5 * 86400)
    left = [s.name for s in index_store.list_snapshots(cfg.index_dir)]
    assert taken.snapshot.name in left and sorted(taken.pruned) == sorted(names[1:4])
    assert names[0] in left and foreign.name in left and names[4] in left
    assert not [p for p in cfg.index_dir.iterdir() if p.name.startswith(".")]  # no temp folder left
    # with a single verified snapshot nothing is ever deleted
    lone = make_config(demo_lib, tmp_path / "Lone", index_keep_daily=1, index_keep_weekly=0, index_keep_monthly=0)
    index_snapshot.take(lone, clock=lambda: day0)
    assert index_store.prune(lone.index_dir, keep_daily=1, keep_weekly=0, keep_monthly=0) == []
