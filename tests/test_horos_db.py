"""The Horos reader and planner on real Horos-shaped databases: selection, files, dates, identity, locks."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
import time

import pytest

from horos_async.backup import planner
from horos_async.errors import DatabaseUnavailable, SchemaError, VolumeError
from horos_async.horos_db import HorosReader

from helpers import key_of, make_config


def scan_and_plan(cfg, limit=100, index=None):
    async def go():
        async with HorosReader(cfg) as reader:
            cands, totals = await planner.scan(reader, index or {}, cfg, time.time(), limit)
            plans = await planner.plan_batch(reader, cands, cfg, index or {})
            return cands, totals, plans, reader.journal_mode
    return asyncio.run(go())


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_selection_files_and_identity_match_the_library(demo_lib_factory, tmp_path, journal):
    lib = demo_lib_factory(studies=3, journal_mode=journal)
    cfg = make_config(lib, tmp_path / "B")
    cands, totals, plans, mode = scan_and_plan(cfg)
    assert mode == journal
    due = [s for s in lib.studies if s.due]
    assert totals.eligible == len({key_of(s) for s in due})
    assert totals.waiting == 1  # the study still arriving
    by_key = {p.study.key: p for p in plans}
    assert set(by_key) == {key_of(s) for s in due if s.note != "arriving"}
    for s in due:
        if s.note == "arriving":
            continue
        p = by_key[key_of(s)]
        present = {f.source.path for f in p.files}
        assert present == set(s.files) - set(s.missing), s.note
        assert {str(m) for m in s.missing} == set(p.missing), s.note
        assert p.image_rows == s.image_rows, s.note
        assert all(f.size == f.source.path.stat().st_size for f in p.files)
    # never selected: only PET, only SR
    assert key_of(lib.study("pet-only")) not in by_key and key_of(lib.study("sr-only")) not in by_key
    # a multi-frame file's rows are one file
    mf = by_key[key_of(lib.study("multi-frame"))]
    assert len(mf.files) < mf.image_rows
    # the two rows that share a Study UID are two studies
    a, b = lib.study("duplicate-uid-a"), lib.study("duplicate-uid-b")
    assert by_key[key_of(a)].zip_relpath != by_key[key_of(b)].zip_relpath
    # members are unique within each ZIP, ZIP paths unique across studies
    for p in plans:
        names = [f.member for f in p.files]
        assert len(set(names)) == len(names)
    assert len({p.zip_relpath for p in plans}) == len(plans)


def test_dates_are_read_in_the_macs_zone(demo_lib_factory, tmp_path):
    lib = demo_lib_factory(studies=0)
    cands, _, plans, _ = scan_and_plan(make_config(lib, tmp_path / "B"))
    s = lib.study("month-boundary")
    p = next(p for p in plans if p.study.key == key_of(s))
    assert p.study.study_date.replace(tzinfo=None) == s.study_date_local.replace(tzinfo=None)
    assert p.zip_relpath.startswith("2024_03/") and "_19800517_20240331_" in p.zip_relpath
    # read as if the Mac were in UTC, the study would land in April: the zone matters
    _, _, plans_utc, _ = scan_and_plan(make_config(lib, tmp_path / "C", timezone="UTC"))
    p_utc = next(p for p in plans_utc if p.study.key == key_of(s))
    assert p_utc.zip_relpath.startswith("2024_04/")
    undated = next(p for p in plans if p.study.key == key_of(lib.study("undated")))
    assert undated.zip_relpath.startswith("undated/")


def test_order_by_study_date_then_uid_and_batch_limit(demo_lib_factory, tmp_path):
    lib = demo_lib_factory(studies=4)
    cfg = make_config(lib, tmp_path / "B")
    cands, totals, _, _ = scan_and_plan(cfg, limit=5)
    assert len(cands) == 5 and totals.due > 5
    assert [c.sort_key for c in cands] == sorted(c.sort_key for c in cands)
    all_cands, _, _, _ = scan_and_plan(cfg, limit=1000)
    assert cands == all_cands[:5]


def test_small_pages_give_the_same_result(demo_lib_factory, tmp_path):
    lib = demo_lib_factory(studies=3)
    cfg = make_config(lib, tmp_path / "B")

    async def go(page):
        async with HorosReader(cfg, page_size=page) as r:
            return [s.pk async for s in r.iter_studies()]

    assert asyncio.run(go(2)) == asyncio.run(go(10_000))


def test_modalities_are_configurable(demo_lib_factory, tmp_path):
    lib = demo_lib_factory(studies=0)
    _, totals, plans, _ = scan_and_plan(make_config(lib, tmp_path / "B", modalities=["PT"]))
    keys = {p.study.key for p in plans}
    assert key_of(lib.study("pet-only")) in keys and key_of(lib.study("pet-ct")) in keys
    assert key_of(lib.study("accented")) not in keys


def test_locked_database_is_reported_unavailable(demo_lib, tmp_path):
    holder = sqlite3.connect(demo_lib.database, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        t0 = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match="busy|locked"):
            scan_and_plan(make_config(demo_lib, tmp_path / "B", db_busy_seconds=0.6))
        assert time.monotonic() - t0 < 10
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_hot_journal_means_try_later_not_no_studies(demo_lib, tmp_path):
    db = demo_lib.database
    code = (f"import sqlite3, os\nc = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
            "c.execute('PRAGMA cache_size=1')\nc.execute('BEGIN')\n"
            "for i in range(3000): c.execute(\"UPDATE ZSTUDY SET ZCOMMENT=? \", ('x'*500,))\n"
            "os.kill(os.getpid(), 9)\n")
    subprocess.run([sys.executable, "-c", code])
    assert os.path.getsize(str(db) + "-journal") > 0
    with pytest.raises(DatabaseUnavailable, match="hot journal"):
        scan_and_plan(make_config(demo_lib, tmp_path / "B", db_busy_seconds=0.3))
    # the database itself was not touched: the journal is still there for Horos to roll back
    assert os.path.getsize(str(db) + "-journal") > 0


def test_missing_database_and_wrong_schema(tmp_path, demo_lib):
    cfg = make_config(demo_lib, tmp_path / "B")
    shutil.move(str(demo_lib.database), str(tmp_path / "moved.sql"))
    with pytest.raises(VolumeError, match="not found"):  # nothing to wait for: exit 7, not 5 "will retry"
        scan_and_plan(cfg)
    con = sqlite3.connect(demo_lib.database)
    con.execute("CREATE TABLE ZSTUDY (Z_PK INTEGER PRIMARY KEY)")
    con.close()
    with pytest.raises(SchemaError, match="ZSERIES|ZSTUDYINSTANCEUID"):
        scan_and_plan(cfg)
    demo_lib.database.write_bytes(b"garbage" * 1000)
    with pytest.raises(DatabaseUnavailable, match="doctor"):
        scan_and_plan(cfg)


def test_path_with_hash_and_question_mark_opens_the_right_file(demo_lib_factory, tmp_path):
    lib = demo_lib_factory(studies=1, root=tmp_path / "odd #1 ?dir")
    cands, totals, _, _ = scan_and_plan(make_config(lib, tmp_path / "B"))
    assert totals.eligible > 5
    assert not (tmp_path / "odd ").exists()


def test_reader_never_writes(demo_lib, tmp_path):
    before = demo_lib.database.read_bytes()
    mtime = demo_lib.database.stat().st_mtime_ns
    scan_and_plan(make_config(demo_lib, tmp_path / "B"))
    assert demo_lib.database.read_bytes() == before and demo_lib.database.stat().st_mtime_ns == mtime
    assert not os.path.exists(str(demo_lib.database) + "-journal")


def test_dbfolder_location_and_path_map(demo_lib_factory, tmp_path):
    lib = demo_lib_factory(studies=1)
    moved = tmp_path / "elsewhere"
    shutil.move(str(lib.horos_data / "DATABASE.noindex"), str(moved / "DATABASE.noindex"))
    (lib.horos_data / "DBFOLDER_LOCATION").write_text(str(moved), encoding="utf-8")
    linked_new = tmp_path / "mounted-cd"
    shutil.move(str(lib.linked_dir), str(linked_new))
    cfg = make_config(lib, tmp_path / "B", path_map={str(lib.linked_dir): str(linked_new)})
    _, _, plans, _ = scan_and_plan(cfg)
    for p in plans:
        s = next(s for s in lib.studies if key_of(s) == p.study.key)
        assert len(p.missing) == len(s.missing), s.note
