"""catalog (ledger and --from-zips, CSV for Excel, search) and every query in docs/queries.sql."""

from __future__ import annotations

import csv
import io
import re
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest

from horos_async.ops import catalog
from horos_async import cli, config as config_mod

from helpers import backed_up_library, exportable, make_config, zips

QUERIES = Path(__file__).resolve().parent.parent / "docs" / "queries.sql"


@pytest.fixture(scope="module")
def backed_up(tmp_path_factory):
    lib, cfg = backed_up_library(tmp_path_factory.mktemp("catalog"), studies=2)
    cfg.source.write_text(config_mod.render_toml(cfg), encoding="utf-8")
    return lib, cfg


def parse_csv(text: str, delimiter: str = ","):
    assert text.startswith("\ufeff"), "no BOM: Excel would garble the accents"
    return list(csv.DictReader(io.StringIO(text[1:]), delimiter=delimiter))


def test_csv_lists_every_done_study_with_accents(backed_up):
    lib, cfg = backed_up
    rows = parse_csv(catalog.to_csv(catalog.from_ledger(cfg)))
    assert list(rows[0]) == catalog.HEADER
    assert sorted(r["study_uid"] for r in rows) == sorted(s.uid for s in exportable(lib))
    assert {r["state"] for r in rows} == {"done"}
    jose = next(r for r in rows if r["study_uid"] == lib.study("accented").uid)
    assert jose["patient_name"] == "José Conceição"
    assert jose["birth_date"] == "1975-08-02" and jose["study_date"].startswith("2024-01-15 09:12")
    assert jose["modalities"] == "CT" and jose["zip_path"].startswith("2024_01/Jose_Conceicao_")
    assert int(jose["zip_bytes"]) == (cfg.backup_dir / jose["zip_path"]).stat().st_size
    assert int(jose["version"]) == 1 and re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", jose["exported_at"])
    assert "Ünïcödé 🙂 Test" in {r["patient_name"] for r in rows}


def test_all_adds_studies_without_a_zip(backed_up):
    lib, cfg = backed_up
    states = {r.study_uid: r.state for r in catalog.from_ledger(cfg, include_all=True)}
    assert states[lib.study("no-files").uid] == "failed"


def test_from_zips_reads_the_zip_labels(backed_up):
    lib, cfg = backed_up
    rows = catalog.from_zips(cfg)
    assert len(rows) == len(zips(cfg.backup_dir))
    assert {r.study_uid for r in rows} == {s.uid for s in exportable(lib)}
    by_uid = {r.study_uid: r for r in rows}
    assert by_uid[lib.study("accented").uid].patient_name == "José Conceição"
    assert all(r.state == "on disk" for r in rows)
    ledger_rows = {r.zip_path: r for r in catalog.from_ledger(cfg)}
    for r in rows:  # the same facts, whichever source
        assert (r.patient_name, r.birth_date, r.study_date) == (ledger_rows[r.zip_path].patient_name,
                                                                ledger_rows[r.zip_path].birth_date,
                                                                ledger_rows[r.zip_path].study_date)


def test_search_ignores_accents_and_case_and_matches_uids(backed_up):
    lib, cfg = backed_up
    rows = catalog.from_ledger(cfg)
    for text in ("conceicao", "CONCEIÇÃO", "josé conc"):
        assert [r.study_uid for r in catalog.search(rows, text)] == [lib.study("accented").uid], text
    uid = lib.study("month-boundary").uid
    assert [r.study_uid for r in catalog.search(rows, uid[-10:])] == [uid]
    assert catalog.search(rows, "nobody-has-this-name") == []


def test_search_finds_names_in_other_scripts_by_their_latin_spelling():
    rows = [catalog.Row("Иванов Пётр", "", "", "CT", "1.2.3", "2024_01/Ivanov_Petr_1.2.3.zip", 1, 1, "", 1, "done"),
            catalog.Row("José Conceição", "", "", "CT", "1.2.4", "2024_01/Jose_1.2.4.zip", 1, 1, "", 1, "done")]
    assert [r.study_uid for r in catalog.search(rows, "ivanov petr")] == ["1.2.3"]
    assert [r.study_uid for r in catalog.search(rows, "ИВАНОВ")] == ["1.2.3"]


def test_text_table_is_aligned(backed_up):
    lib, cfg = backed_up
    text = catalog.to_table(catalog.from_ledger(cfg))
    lines = text.splitlines()
    assert lines[0].startswith("Patient") and lines[-1].endswith("studies")
    zip_col = lines[0].index("ZIP")
    assert all(line[zip_col - 2:zip_col] == "  " for line in lines[1:-1])


def test_terminal_table_fits_80_columns_and_wide_shows_everything(backed_up, capsys, monkeypatch):
    """Hardening 23: catalog lines were 316 columns; over SSH every one wrapped."""
    lib, cfg = backed_up
    rows = catalog.from_ledger(cfg)
    monkeypatch.setenv("COLUMNS", "80")
    assert cli.main(["catalog", "--config", str(cfg.source)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(columns(line) for line in lines) <= 80, max(lines, key=columns)
    assert len(lines) == 2 + 2 * len(rows) + 2 and "--wide" in lines[-1]
    hostile = next(line for line in lines if "etc/passwd" in line)
    assert hostile.isprintable(), "a control character in a patient name reached the terminal"
    accented = lines.index(next(line for line in lines if line.startswith("José Conceição")))
    assert lines[accented + 1].startswith("  done  2024_01/Jose_Conceicao_") and "…" in lines[accented + 1]
    assert cli.main(["catalog", "--wide", "--config", str(cfg.source)]) == 0
    wide = capsys.readouterr().out
    assert all(r.zip_path in wide for r in rows)  # every ZIP path in full, to copy into restore


def test_cli_csv_out_and_search(backed_up, tmp_path, capsys):
    lib, cfg = backed_up
    out = tmp_path / "catalogo.csv"
    assert cli.main(["catalog", "--csv", "--delimiter", ";", "--out", str(out), "--config", str(cfg.source)]) == 0
    rows = parse_csv(out.read_bytes().decode("utf-8"), ";")
    assert len(rows) == len(exportable(lib))
    assert cli.main(["catalog", "--search", "conceicao", "--config", str(cfg.source)]) == 0
    text = capsys.readouterr().out
    assert "José Conceição" in text and "1 study" in text
    assert cli.main(["catalog", "--csv", "--from-zips", "--config", str(cfg.source)]) == 0
    assert capsys.readouterr().out.startswith("\ufeffpatient_name,")
    missing = make_config(lib, tmp_path / "Empty")
    missing.source.write_text(config_mod.render_toml(missing), encoding="utf-8")
    assert cli.main(["catalog", "--config", str(missing.source)]) == 8
    assert "--from-zips" in capsys.readouterr().err


def statements(text: str, ledger: Path):
    """Every statement of queries.sql, comments removed, the ATTACH pointed at ``ledger``."""
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    for stmt in re.split(r";[ \t]*$", body, flags=re.M):
        stmt = stmt.strip()
        if stmt.upper().startswith("ATTACH"):
            stmt = re.sub(r"'file:[^']*'", "'" + ledger.resolve().as_uri() + "?mode=ro'", stmt)
        if stmt:
            yield stmt


@pytest.fixture
def horos_zone(backed_up, monkeypatch):
    """SQLite's 'localtime' uses the process zone: make it the demo Mac's, as on the real Horos Mac."""
    monkeypatch.setenv("TZ", backed_up[0].timezone)
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_every_documented_query_runs(backed_up, horos_zone):
    lib, cfg = backed_up
    before = (lib.database.read_bytes(), cfg.ledger_path.read_bytes())
    con = sqlite3.connect(lib.database.resolve().as_uri() + "?mode=ro", uri=True)
    con.execute("PRAGMA query_only=1")
    results = []
    try:
        for stmt in statements(QUERIES.read_text(encoding="utf-8"), cfg.ledger_path):
            results.append((stmt, con.execute(stmt).fetchall()))
    finally:
        con.close()
    assert len(results) >= 12 and results[4][0].upper().startswith("ATTACH")
    due = [s for s in lib.studies if s.due]
    truth = Counter(s.study_date_local.strftime("%Y_%m") if s.study_date_local else "undated" for s in due)
    # the CT/MR rule and the local month, as the engine applies them (month-boundary stays in March)
    assert dict(results[0][1]) == dict(truth)
    left = [r for stmt, rows in results if "left_to_back_up" in stmt for r in rows]
    done = sum(r[2] for r in left)
    assert done == len(exportable(lib))
    assert sum(r[3] for r in left) == len(due) - done
    assert (lib.database.read_bytes(), cfg.ledger_path.read_bytes()) == before, "a query wrote something"


def test_unmounted_backup_volume_is_a_volume_error_and_a_lost_ledger_a_ledger_error(backed_up, tmp_path):
    from horos_async.errors import LedgerError, VolumeError

    lib, cfg = backed_up
    gone = make_config(lib, tmp_path / "not-mounted" / "Backup")
    with pytest.raises(VolumeError, match="mounted"):
        catalog.from_ledger(gone)
    empty = make_config(lib, tmp_path / "Backup")
    (tmp_path / "Backup").mkdir()
    with pytest.raises(LedgerError, match="--from-zips"):
        catalog.from_ledger(empty)


def columns(line: str) -> int:
    """Terminal columns of ``line`` (wide CJK/emoji characters take two), measured independently of the code."""
    import unicodedata

    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in line)
