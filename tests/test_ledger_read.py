"""The ledger's read-only reader: each answer checked against the ledger of a real backup, nothing written."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from horos_async.ops import plan_view
from horos_async.state.ledger_read import LedgerReader, read_index
from horos_async.state.ledger_records import RunRecord, StateTotals

from helpers import backed_up_library


@pytest.fixture
def backed_up(tmp_path):
    return backed_up_library(tmp_path)


def sql(cfg, query, *params):
    con = sqlite3.connect(cfg.ledger_path)
    try:
        return con.execute(query, params).fetchall()
    finally:
        con.close()


def test_answers_match_the_ledger_and_nothing_is_written(backed_up):
    _lib, cfg = backed_up
    before = cfg.ledger_path.read_bytes()
    with LedgerReader.open(cfg.ledger_path) as led:
        assert led.is_ready() and led.quick_check() == "ok"
        totals = led.state_totals()
        months = led.done_per_month()
        runs = led.recent_runs(10)
        issues = led.recent_issues(50)
        catalog = led.catalog()
        everything = led.catalog(include_all=True)
        index = led.index()
        ok_zips = led.ok_zips()
    assert cfg.ledger_path.read_bytes() == before
    (done, bytes_in, zip_bytes), = sql(cfg, "SELECT COUNT(*), SUM(bytes_in), SUM(zip_size) FROM studies "
                                            "WHERE state='done'")
    assert done > 0 and totals["done"] == StateTotals(done, bytes_in, zip_bytes)
    assert sum(t.studies for t in totals.values()) == sql(cfg, "SELECT COUNT(*) FROM studies")[0][0]
    assert sum(months.values()) == done
    assert ok_zips == sql(cfg, "SELECT COUNT(*) FROM zips WHERE status='ok'")[0][0] >= done
    ids = [r[0] for r in sql(cfg, "SELECT id FROM runs ORDER BY id")]
    assert runs and [r.id for r in runs] == ids[::-1][:10] and isinstance(runs[0], RunRecord)
    assert [i.code for i in issues] == [r[0] for r in sql(cfg, "SELECT code FROM issues ORDER BY id DESC LIMIT 50")]
    assert len(catalog) == sql(cfg, "SELECT COUNT(*) FROM studies WHERE zip_path != ''")[0][0]
    assert all(r.zip_path and r.zip_status == "ok" for r in catalog if r.state == "done")
    assert len(everything) == sql(cfg, "SELECT COUNT(*) FROM studies")[0][0]
    assert set(index) == {r[0] for r in sql(cfg, "SELECT key FROM studies")} == set(read_index(cfg.ledger_path))
    assert all(e.horos_pk is not None and index.by_pk[e.horos_pk][1] == k for k, e in index.items())


def test_a_ledger_being_created_is_not_ready(tmp_path):
    path = tmp_path / "export_state.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE studies (key TEXT PRIMARY KEY)")
    con.close()
    with LedgerReader.open(path) as led:
        assert not led.is_ready()


def test_plan_totals_come_from_the_ledger(backed_up):
    """``plan`` reports source and ZIP bytes of the done studies and how many fail, read-only."""
    _lib, cfg = backed_up
    failing = sql(cfg, "SELECT COUNT(*) FROM studies WHERE state='failed'")[0][0]
    key, = sql(cfg, "SELECT key FROM studies WHERE state='done' ORDER BY key LIMIT 1")[0]
    con = sqlite3.connect(cfg.ledger_path)
    with con:
        con.execute("UPDATE studies SET state='failed' WHERE key=?", (key,))
    con.close()
    totals = asyncio.run(plan_view.build(cfg, limit=1))["totals"]
    (bytes_in, zip_bytes), = sql(cfg, "SELECT SUM(bytes_in), SUM(zip_size) FROM studies WHERE state='done'")
    assert (totals["source_bytes_done"], totals["zip_bytes"], totals["failing"]) == (bytes_in, zip_bytes, failing + 1)
