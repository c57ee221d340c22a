"""The demo library has the shape docs/design/horos-database.md describes, real DICOM files, and is deterministic."""

from __future__ import annotations

import datetime as dt
import sqlite3
import warnings
import zlib
from pathlib import Path
from typing import Dict, List, Set

import numpy as np
import pydicom
import pytest

from horos_async.demo import dicom as dd
from horos_async.demo import (REFERENCE_UNIX, DemoLibrary, add_images, add_study, build_demo,
                              build_large_database, horos_study_modality)

NOW = 1_750_000_000.5  # a fixed "now" (June 2025) so every value below is exact
RLE = "1.2.840.10008.1.2.5"
SPECIAL_NOTES = {
    "accented", "hostile", "emoji", "empty-name", "long-name", "month-boundary", "undated", "date-only",
    "pet-ct", "pet-only", "sr-only", "mr-with-sr", "multi-frame", "linked", "relative-pathstring",
    "missing-file", "duplicate-uid-a", "duplicate-uid-b", "sample-ct", "sample-mr", "arriving", "no-files",
}


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> DemoLibrary:
    """One default build shared by the read-only checks (a build per test would be slow)."""
    return build_demo(tmp_path_factory.mktemp("demo") / "lib", now=NOW)


@pytest.fixture(scope="module")
def db(lib: DemoLibrary):
    conn = sqlite3.connect(f"file:{lib.database}?mode=ro", uri=True)
    yield conn
    conn.close()


def read(path: Path, **kwargs) -> pydicom.Dataset:
    with warnings.catch_warnings():  # the hostile names break PN length rules on purpose
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(str(path), **kwargs)
        ds.get("PatientName")  # values are decoded (and validated) lazily: do it while warnings are off
        return ds


def unpack_uid(blob: bytes) -> str:
    """Inverse of Horos's nibble packing (docs/design/horos-database.md §4.7)."""
    chars = []
    for nibble in blob.hex():
        if nibble == "0":
            break
        chars.append("0123456789."[int(nibble, 16) - 1])
    return "".join(chars)


def resolve(lib: DemoLibrary, number, string) -> Path:
    """Path resolution of docs/design/horos-database.md §4, written independently of the demo."""
    if number is None and string.startswith("/"):
        return Path(string)
    name = f"{number}.dcm" if number is not None else string
    n = int(name.split(".")[0])
    return lib.horos_data / "DATABASE.noindex" / str((n // lib.folder_size + 1) * lib.folder_size) / name


def study_files(conn: sqlite3.Connection, lib: DemoLibrary) -> Dict[int, Set[Path]]:
    out: Dict[int, Set[Path]] = {}
    for pk, number, string in conn.execute(
            "SELECT s.ZSTUDY, i.ZPATHNUMBER, i.ZPATHSTRING FROM ZIMAGE i JOIN ZSERIES s ON i.ZSERIES = s.Z_PK"):
        out.setdefault(pk, set()).add(resolve(lib, number, string))
    return out


def column_types(conn: sqlite3.Connection, table: str) -> Dict[str, str]:
    return {row[1]: row[2] for row in conn.execute(f"PRAGMA table_info({table})")}


# --- database shape ---------------------------------------------------------------------------------

def test_tables_columns_and_primary_keys(db: sqlite3.Connection) -> None:
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"ZSTUDY", "ZSERIES", "ZIMAGE", "ZALBUM", "ZLOGENTRY", "Z_1STUDIES", "Z_PRIMARYKEY", "Z_METADATA",
            "Z_MODELCACHE"} <= tables
    study, series, image = (column_types(db, t) for t in ("ZSTUDY", "ZSERIES", "ZIMAGE"))
    assert (len(study), len(series), len(image)) == (31, 32, 36)  # as in docs/design/horos-database.md §3
    for cols in (study, series, image):
        assert cols["Z_PK"] == cols["Z_ENT"] == cols["Z_OPT"] == "INTEGER"
    assert study["ZDATE"] == study["ZDATEADDED"] == study["ZDATEOFBIRTH"] == image["ZDATE"] == "TIMESTAMP"
    assert study["ZSTUDYINSTANCEUID"] == study["ZPATIENTUID"] == series["ZSERIESDICOMUID"] == "VARCHAR"
    assert image["ZPATHNUMBER"] == image["ZSTOREDINDATABASEFOLDER"] == series["ZSTUDY"] == "INTEGER"
    assert image["ZCOMPRESSEDSOPINSTANCEUID"] == "BLOB" and image["ZSLICELOCATION"] == "FLOAT"
    assert set(column_types(db, "Z_1STUDIES")) == {"Z_1ALBUMS", "Z_5STUDIES"}
    indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"ZIMAGE_ZSERIES_INDEX", "ZSERIES_ZSTUDY_INDEX", "ZSTUDY_ZSTUDYINSTANCEUID_INDEX"} <= indexes

    keys = {name: (ent, mx) for ent, name, mx in db.execute("SELECT Z_ENT, Z_NAME, Z_MAX FROM Z_PRIMARYKEY")}
    assert {n: e for n, (e, _) in keys.items()} == {"Album": 1, "Image": 2, "LogEntry": 3, "Series": 4, "Study": 5}
    for name, table in (("Album", "ZALBUM"), ("Image", "ZIMAGE"), ("LogEntry", "ZLOGENTRY"),
                        ("Series", "ZSERIES"), ("Study", "ZSTUDY")):
        ents, top = db.execute(f"SELECT GROUP_CONCAT(DISTINCT Z_ENT), MAX(Z_PK) FROM {table}").fetchone()
        assert (str(keys[name][0]), keys[name][1]) == (ents, top)
    assert db.execute("SELECT COUNT(*) FROM Z_METADATA WHERE Z_UUID IS NOT NULL").fetchone() == (1,)


def test_folders_and_version_file(lib: DemoLibrary) -> None:
    assert (lib.horos_data / "DB_VERSION").read_text() == "2.5"
    for name in ("DATABASE.noindex", "INCOMING.noindex", "TEMP.noindex", "REPORTS"):
        assert (lib.horos_data / name).is_dir()
    assert lib.database == lib.horos_data / "Database.sql" and lib.root.is_absolute()


def test_journal_modes(lib: DemoLibrary, demo_lib_factory) -> None:
    with sqlite3.connect(str(lib.database)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    old = demo_lib_factory(studies=0, journal_mode="wal")
    with sqlite3.connect(str(old.database)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    with pytest.raises(ValueError):
        demo_lib_factory(journal_mode="truncate")


def test_every_special_case_is_present(lib: DemoLibrary) -> None:
    notes = [s.note for s in lib.studies]
    assert SPECIAL_NOTES <= set(notes)
    assert len(notes) == len(set(notes)) == len(SPECIAL_NOTES) + 12
    assert [s.pk for s in lib.studies] == list(range(1, len(notes) + 1))
    with pytest.raises(KeyError):
        lib.study("no such note")


def test_study_rows_match_the_truth(db: sqlite3.Connection, lib: DemoLibrary) -> None:
    rows = {r[0]: r[1:] for r in db.execute(
        "SELECT Z_PK, ZSTUDYINSTANCEUID, ZPATIENTUID, ZNAME, ZMODALITY FROM ZSTUDY")}
    counts = dict(db.execute("SELECT s.ZSTUDY, COUNT(*) FROM ZIMAGE i JOIN ZSERIES s ON i.ZSERIES = s.Z_PK "
                             "GROUP BY s.ZSTUDY"))
    for s in lib.studies:
        uid, patient_uid, name, modality = rows[s.pk]
        assert (uid, patient_uid, name) == (s.uid, s.patient_uid, s.patient_name)
        assert modality == horos_study_modality(list(s.modalities)), s.note
        assert counts[s.pk] == s.image_rows
        assert s.due == any(m in ("CT", "MR") for m in s.modalities)


# --- files ------------------------------------------------------------------------------------------

def test_files_exist_except_the_deliberately_missing(db: sqlite3.Connection, lib: DemoLibrary) -> None:
    referenced = study_files(db, lib)
    for s in lib.studies:
        assert referenced[s.pk] == set(s.files), s.note
        assert set(s.missing) <= set(s.files)
        for path in s.files:
            assert path.is_absolute() and path == path.resolve()
            assert path.exists() == (path not in s.missing), path
            if path.exists():
                assert path.stat().st_mode & 0o777 == 0o644
    assert len(lib.study("missing-file").missing) == 1
    assert set(lib.study("no-files").missing) == set(lib.study("no-files").files)
    assert sum(len(s.missing) for s in lib.studies) == 1 + len(lib.study("no-files").files)


def test_files_are_dicom_matching_the_database(db: sqlite3.Connection, lib: DemoLibrary) -> None:
    query = ("SELECT st.ZSTUDYINSTANCEUID, st.ZNAME, se.ZSERIESDICOMUID, se.ZSERIESSOPCLASSUID, se.ZMODALITY, "
             "i.ZCOMPRESSEDSOPINSTANCEUID, i.ZPATHNUMBER, i.ZPATHSTRING FROM ZIMAGE i "
             "JOIN ZSERIES se ON i.ZSERIES = se.Z_PK JOIN ZSTUDY st ON se.ZSTUDY = st.Z_PK")
    seen = 0
    for study_uid, name, series_uid, sop_class, modality, packed, number, string in db.execute(query):
        path = resolve(lib, number, string)
        if not path.exists():
            continue
        ds = read(path)
        assert ds.StudyInstanceUID == study_uid and ds.SeriesInstanceUID == series_uid
        assert ds.SOPInstanceUID == unpack_uid(packed) == ds.file_meta.MediaStorageSOPInstanceUID
        assert ds.SOPClassUID == sop_class and ds.Modality == modality
        assert str(ds.PatientName) == name
        if not name.isascii():
            assert ds.SpecificCharacterSet == "ISO_IR 192"
        if "PixelData" in ds:
            assert ds.pixel_array.shape[-1] == ds.Columns
        seen += 1
    assert seen > 100


def test_special_names_survive_in_files(lib: DemoLibrary) -> None:
    for note in ("accented", "hostile", "emoji", "empty-name", "long-name"):
        s = lib.study(note)
        assert str(read(s.files[0]).PatientName) == s.patient_name
    assert len(lib.study("long-name").patient_name) == 200
    hostile = lib.study("hostile").patient_name
    assert "/" in hostile and ".." in hostile and "\x07" in hostile
    assert lib.study("accented").patient_uid == "JOSÉ CONCEIÇÃO-P-ACC-001-19750802"


def test_rle_files(lib: DemoLibrary) -> None:
    syntaxes = {p: str(read(p, stop_before_pixels=True).file_meta.TransferSyntaxUID)
                for s in lib.studies for p in s.files if p.exists()}
    assert RLE in syntaxes.values()
    accented = lib.study("accented").files
    assert [syntaxes[p] for p in accented] == [pydicom.uid.ExplicitVRLittleEndian] * 3 + [RLE] * 3
    ds = read(accented[-1])
    assert ds.pixel_array.shape == (64, 64) and ds.pixel_array.max() > 1000


@pytest.mark.parametrize("shape", [(64, 64), (7, 300), (1, 1), (3, 129), (5, 1)])
def test_rle_encoder_round_trips_through_pydicom(tmp_path: Path, shape) -> None:
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 65536, shape).astype(np.uint16)
    pixels[:, : shape[1] // 2] = 300  # long runs, longer than 128 where the row allows
    ds = dd.base_dataset("PT", "1.2.3.4", {})
    dd.add_pixels(ds, pixels, "PT", rle=True)  # PT stores all 16 bits
    dd.write(ds, tmp_path / "x.dcm")
    back = read(tmp_path / "x.dcm")
    assert str(back.file_meta.TransferSyntaxUID) == RLE
    assert np.array_equal(back.pixel_array.reshape(shape), pixels)


def test_pixels_compress_like_real_ct(lib: DemoLibrary) -> None:
    data = lib.study("month-boundary").files[0].read_bytes()
    assert 0.4 < len(zlib.compress(data, 1)) / len(data) < 0.7


def test_multi_frame_rows_share_one_file(db: sqlite3.Connection, lib: DemoLibrary) -> None:
    s = lib.study("multi-frame")
    rows = db.execute("SELECT i.ZFRAMEID, i.ZPATHNUMBER, i.ZSTOREDNUMBEROFFRAMES FROM ZIMAGE i JOIN ZSERIES se "
                      "ON i.ZSERIES = se.Z_PK WHERE se.ZSTUDY = ? AND i.ZFRAMEID IS NOT NULL ORDER BY i.ZFRAMEID",
                      (s.pk,)).fetchall()
    assert [r[0] for r in rows] == [0, 1, 2, 3, 4] and {r[2] for r in rows} == {5}
    assert len({r[1] for r in rows}) == 1
    assert s.image_rows == 8 and len(s.files) == 4
    assert read(resolve(lib, rows[0][1], None)).NumberOfFrames == 5


def test_path_kinds(db: sqlite3.Connection, lib: DemoLibrary) -> None:
    def rows(note: str) -> List[tuple]:
        return db.execute("SELECT i.ZPATHNUMBER, i.ZPATHSTRING, i.ZSTOREDINDATABASEFOLDER, se.ZID FROM ZIMAGE i "
                          "JOIN ZSERIES se ON i.ZSERIES = se.Z_PK WHERE se.ZSTUDY = ?", (lib.study(note).pk,)).fetchall()

    assert all(r[0] is None and r[1].startswith(str(lib.linked_dir)) and r[2] == 0 for r in rows("linked"))
    relative = rows("relative-pathstring")
    assert all(r[0] is None and r[1][0].isdigit() and r[2] is None for r in relative)
    assert {r[1].rsplit(".", 1)[1] for r in relative} == {"dcm", "dicm"}
    roi = [r for r in rows("mr-with-sr") if r[3] == 5002]
    assert len(roi) == 1 and roi[0][1].startswith(str(lib.horos_data / "ROIs")) and roi[0][2] == 0
    assert all(r[0] is not None and r[1] is None and r[2] is None for r in rows("accented"))
    # Numbering starts at 9995, so the first study straddles the 10000 bucket boundary (§4.2).
    names = {p.parent.name + "/" + p.name for p in lib.study("accented").files}
    assert {"10000/9999.dcm", "20000/10000.dcm"} <= names


def test_series_keys_and_modalities(db: sqlite3.Connection, lib: DemoLibrary) -> None:
    for key, uid, number in db.execute("SELECT ZSERIESINSTANCEUID, ZSERIESDICOMUID, ZID FROM ZSERIES"):
        assert key.startswith(f"{number:08d} {uid}")
    modality = dict(db.execute("SELECT Z_PK, ZMODALITY FROM ZSTUDY"))
    assert modality[lib.study("pet-ct").pk] == "PT\\CT" and lib.study("pet-ct").modalities == ("PT", "CT")
    assert modality[lib.study("mr-with-sr").pk] == "MR" and lib.study("mr-with-sr").due
    assert modality[lib.study("sr-only").pk] == "SR"
    assert not lib.study("pet-only").due and not lib.study("sr-only").due and lib.study("pet-ct").due
    a, b = lib.study("duplicate-uid-a"), lib.study("duplicate-uid-b")
    assert a.uid == b.uid and a.patient_uid != b.patient_uid and a.pk != b.pk
    assert not set(a.files) & set(b.files)
    ct, mr = lib.study("sample-ct"), lib.study("sample-mr")
    assert ct.uid == read(dd.sample_file("CT_small.dcm")).StudyInstanceUID and ct.files[0].exists()
    assert mr.patient_name == "CompressedSamples^MR1" and mr.modalities == ("MR",)


# --- dates (§5) -------------------------------------------------------------------------------------

def test_dates_decode_in_local_time(db: sqlite3.Connection, lib: DemoLibrary) -> None:
    def study(note: str) -> tuple:
        return db.execute("SELECT ZDATE, typeof(ZDATE), ZDATEOFBIRTH, ZDATEADDED, typeof(ZDATEADDED) FROM ZSTUDY "
                          "WHERE Z_PK = ?", (lib.study(note).pk,)).fetchone()

    date, kind, birth, _, added_kind = study("month-boundary")
    assert dt.datetime.fromtimestamp(date + REFERENCE_UNIX, dt.timezone.utc) == \
        dt.datetime(2024, 4, 1, 1, 30, tzinfo=dt.timezone.utc)
    assert kind == "integer" and added_kind == "real"
    assert birth == -650926800  # 1980-05-17 00:00 in São Paulo (docs/design/horos-database.md §5)
    local = lib.study("month-boundary").study_date_local
    assert (local.year, local.month, local.day, local.hour, local.minute) == (2024, 3, 31, 22, 30)
    assert str(local.tzinfo) == "America/Sao_Paulo"

    assert study("undated")[0] is None and lib.study("undated").study_date_local is None
    sentinel = db.execute("SELECT DISTINCT i.ZDATE FROM ZIMAGE i JOIN ZSERIES se ON i.ZSERIES = se.Z_PK "
                          "WHERE se.ZSTUDY = ?", (lib.study("undated").pk,)).fetchall()
    assert len(sentinel) == 1 and dt.datetime.fromtimestamp(sentinel[0][0] + REFERENCE_UNIX).year in (1900, 1901)
    assert lib.study("date-only").study_date_local.hour == 12
    assert study("arriving")[3] == pytest.approx(NOW - 60 - REFERENCE_UNIX)
    assert study("accented")[3] < NOW - 4 * 86400 - REFERENCE_UNIX


# --- determinism ------------------------------------------------------------------------------------

def dump(lib: DemoLibrary) -> List[tuple]:
    """Every row of every table, with the library's own root replaced so two folders compare equal."""
    conn = sqlite3.connect(str(lib.database))
    try:
        rows = []
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
            for row in conn.execute(f"SELECT * FROM {table} ORDER BY 1"):
                rows.append((table,) + tuple(v.replace(str(lib.root), "<root>") if isinstance(v, str) else v
                                             for v in row))
        return rows
    finally:
        conn.close()


def file_bytes(lib: DemoLibrary) -> Dict[str, bytes]:
    return {str(p.relative_to(lib.root)): p.read_bytes() for p in lib.root.rglob("*") if p.is_file()
            and p.name != "Database.sql"}


def test_same_seed_same_library(demo_lib_factory) -> None:
    one = demo_lib_factory(studies=2, now=NOW)
    two = demo_lib_factory(studies=2, now=NOW)
    assert dump(one) == dump(two)
    assert file_bytes(one) == file_bytes(two)
    other = demo_lib_factory(studies=2, now=NOW, seed=99)
    assert other.study("accented").uid != one.study("accented").uid


# --- growing a library ------------------------------------------------------------------------------

def test_add_study_and_add_images(demo_lib_factory) -> None:
    lib = demo_lib_factory(studies=1, now=NOW)
    top = max(s.pk for s in lib.studies)
    new = add_study(lib, modality="MR", images=4, date_added=NOW + 10, now=NOW + 20)
    assert new.pk == top + 1 and new.modalities == ("MR",) and new.due and new.image_rows == 4
    assert all(p.exists() for p in new.files)
    with sqlite3.connect(str(lib.database)) as conn:
        added, = conn.execute("SELECT ZDATEADDED FROM ZSTUDY WHERE Z_PK = ?", (new.pk,)).fetchone()
        assert added == pytest.approx(NOW + 10 - REFERENCE_UNIX)
        assert conn.execute("SELECT Z_MAX FROM Z_PRIMARYKEY WHERE Z_NAME = 'Study'").fetchone() == (new.pk,)

    before = lib.study("accented")
    grown = add_images(lib, before, 2, now=NOW + 3600)
    assert grown.image_rows == before.image_rows + 2 and len(grown.files) == len(before.files) + 2
    assert set(before.files) < set(grown.files) and all(p.exists() for p in grown.files)
    with sqlite3.connect(str(lib.database)) as conn:
        date, added, opt = conn.execute("SELECT ZDATE, ZDATEADDED, Z_OPT FROM ZSTUDY WHERE Z_PK = ?",
                                        (before.pk,)).fetchone()
        assert added == pytest.approx(NOW + 3600 - REFERENCE_UNIX) and opt == 4
        assert dt.datetime.fromtimestamp(date + REFERENCE_UNIX).astimezone(before.study_date_local.tzinfo) \
            == before.study_date_local
        (maxpath,) = conn.execute("SELECT MAX(ZPATHNUMBER) FROM ZIMAGE").fetchone()
        assert conn.execute("SELECT COUNT(DISTINCT ZPATHNUMBER) = COUNT(ZPATHNUMBER) FROM ZIMAGE "
                            "WHERE ZFRAMEID IS NULL").fetchone() == (1,)
    assert grown.files[-1].name == f"{maxpath}.dcm"
    assert read(grown.files[-1]).StudyInstanceUID == before.uid


def test_build_refuses_an_existing_library(demo_lib_factory, tmp_path: Path) -> None:
    demo_lib_factory(root=tmp_path / "x", studies=0)
    with pytest.raises(FileExistsError):
        build_demo(tmp_path / "x", studies=0)


def test_default_fixture(demo_lib: DemoLibrary) -> None:
    assert len(demo_lib.studies) == len(SPECIAL_NOTES) + 12 and demo_lib.timezone == "America/Sao_Paulo"


# --- large database for planning benchmarks ---------------------------------------------------------

def test_build_large_database(tmp_path: Path) -> None:
    path = tmp_path / "large" / "Database.sql"
    build_large_database(path, studies=50, images_per_study=7, seed=3)
    conn = sqlite3.connect(str(path))
    try:
        counts = [conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("ZSTUDY", "ZSERIES", "ZIMAGE")]
        assert counts[0] == 50 and counts[2] == 350 and 50 <= counts[1] <= 100
        assert conn.execute("SELECT SUM(ZNUMBEROFIMAGES) FROM ZSERIES").fetchone() == (350,)
        maxima = dict(conn.execute("SELECT Z_NAME, Z_MAX FROM Z_PRIMARYKEY"))
        assert (maxima["Study"], maxima["Series"], maxima["Image"]) == tuple(counts)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert conn.execute("SELECT COUNT(*) FROM ZIMAGE i LEFT JOIN ZSERIES s ON i.ZSERIES = s.Z_PK "
                            "WHERE s.Z_PK IS NULL").fetchone() == (0,)
        blob, = conn.execute("SELECT ZCOMPRESSEDSOPINSTANCEUID FROM ZIMAGE WHERE Z_PK = 1").fetchone()
        assert pydicom.uid.UID(unpack_uid(blob)).is_valid
        assert "ZSERIES_ZSTUDY_INDEX" in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()
    with pytest.raises(FileExistsError):
        build_large_database(path, studies=1)


def test_copy_library_shares_nothing_with_its_source(pristine_demo, tmp_path):
    """The per-test copy of the session's pristine library resolves every file inside the copy, linked ones too."""
    from horos_async.demo import copy_library

    copy = copy_library(pristine_demo, tmp_path / "copy")
    linked = copy.study("linked")
    assert linked.files and all(str(f).startswith(str(copy.root)) for f in linked.files)
    con = sqlite3.connect(str(copy.database))
    try:
        paths = [p for (p,) in con.execute("SELECT ZPATHSTRING FROM ZIMAGE WHERE ZPATHSTRING LIKE '/%'")]
    finally:
        con.close()
    assert paths and all(p.startswith(str(copy.root) + "/") for p in paths)
    for f in linked.files:  # a test that damages its copy leaves the pristine library whole
        f.unlink()
    assert all(f.exists() for f in pristine_demo.study("linked").files)
