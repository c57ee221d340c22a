"""ZIP names, month folders and member names."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from horos_async import naming
from horos_async.models import SourceFile, StudyRow

SP = ZoneInfo("America/Sao_Paulo")
UID = "1.2.826.0.1.3680043.10.1234.1.123456789012345678901234567890"


def study(name="José^Conceição", uid=UID, date=dt.datetime(2024, 3, 31, 22, 30, tzinfo=SP),
          dob=dt.date(1980, 5, 17), patient_uid="JOSE CONCEICAO-1-19800517") -> StudyRow:
    return StudyRow(pk=1, uid=uid, patient_uid=patient_uid, patient_name=name, patient_id="1", birth_date=dob,
                    study_date=date, date_added=0.0, modalities="CT", description="", accession="")


def test_classic_name_transliterates_and_keeps_uid():
    rel = naming.zip_relpath(study())
    assert rel == f"2024_03/Jose_Conceicao_19800517_20240331_{UID}.zip"


@pytest.mark.parametrize("name", ["../../etc/passwd^<script>\x07", "/", "..", "🙂🙂", "", "a/b\\c:d*e?f",
                                  "\u0000\u001f", "CON", " . "])
def test_hostile_names_stay_inside_the_month_folder(name):
    rel = naming.zip_relpath(study(name=name))
    month, file = rel.split("/")
    assert month == "2024_03"
    assert "/" not in file and "\\" not in file and not file.startswith(".")
    assert file.isascii() and file.isprintable()
    assert file.endswith(f"_{UID}.zip")


def test_empty_name_becomes_unknown_and_missing_dates_have_placeholders():
    s = study(name="", date=None, dob=None)
    assert naming.zip_relpath(s) == f"undated/UNKNOWN_NODOB_NODATE_{UID}.zip"


def test_long_name_is_shortened_to_the_limit_uid_kept():
    s = study(name="Maria " * 60)
    for limit in (100, 128, 200):
        stem = naming.zip_stem(s, max_length=limit)
        assert len(stem) <= limit and stem.endswith(UID) and stem.startswith("Maria_Maria")


def test_versions_and_dedup_suffixes_are_distinct_and_parse_back():
    a = naming.zip_relpath(study(), version=1)
    b = naming.zip_relpath(study(), version=2)
    c = naming.zip_relpath(study(), version=2, dedup=3)
    assert len({a, b, c}) == 3
    assert naming.parse_zip_name(a.split("/")[1]) == (UID, 1)
    assert naming.parse_zip_name(c.split("/")[1]) == (UID, 2)


def test_pseudonymous_naming_hides_the_patient():
    rel = naming.zip_relpath(study(), naming="pseudonymous")
    assert "Jose" not in rel and "19800517" not in rel
    assert rel.startswith("2024_03/P") and rel.endswith(f"_20240331_{UID}.zip")
    assert rel == naming.zip_relpath(study(), naming="pseudonymous")  # stable


def test_same_accented_name_in_nfc_and_nfd_gives_one_name():
    import unicodedata
    nfc = unicodedata.normalize("NFC", "José^Conceição")
    nfd = unicodedata.normalize("NFD", "José^Conceição")
    assert naming.zip_relpath(study(name=nfc)) == naming.zip_relpath(study(name=nfd))


def src(series_pk, number, desc, path, inst=None, modality="CT"):
    return SourceFile(path=Path(path), series_pk=series_pk, series_number=number, series_description=desc,
                      modality=modality, instance_number=inst)


def test_member_names_grouped_by_series_unique_and_portable():
    files = naming.sort_files([
        src(2, 2, "Abdômen c/ contraste", "/d/20000/10002.dcm", 2),
        src(2, 2, "Abdômen c/ contraste", "/d/20000/10001.dcm", 1),
        src(3, 2, "Abdômen c/ contraste", "/d/20000/10003.dcm", 1),  # same number+desc, other Horos series
        src(1, 1, "../../x", "/ext/IM0001", None, "SR"),
    ])
    names = naming.member_names(files)
    assert names == ["S0001_SR_x/IM00001", "S0002_CT_Abdomen_c_contraste/IM00001.dcm",
                     "S0002_CT_Abdomen_c_contraste/IM00002.dcm", "S0002_CT_Abdomen_c_contraste_2/IM00001.dcm"]
    assert files[1].path.name == "10001.dcm"  # instance order inside a series
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("path, shown", [
    (f"2024_03/Souza_Vitoria_19900101_20240305_{UID}.zip", f"2024_03/…_{UID}.zip"),
    (f"2024_03/Souza_Vitoria_19900101_20240305_{UID}_v2_d2.zip", f"2024_03/…_{UID}_v2_d2.zip"),
    (f"undated/UNKNOWN_NODOB_NODATE_{UID}.zip", f"undated/…_{UID}.zip"),
    (f"2024_03/P0123456789ab_20240305_{UID}.zip", f"2024_03/…_{UID}.zip"),
    (f"2024_01/.Almeida_Natalia_19920416_20240101_{UID}.zip.4242-1.partial",
     f"2024_01/.…_{UID}.zip.4242-1.partial"),
    (f"/B/.quarantine/2024_03/Souza_Vitoria_19900101_20240305_{UID}.2.zip", f"/B/.quarantine/2024_03/…_{UID}.2.zip"),
    (f"2024_03/Ana_12345678_19900101_20240305_{UID}.zip", f"2024_03/…_{UID}.zip"),  # digits in the name
    (f"2024_03/…_{UID}_v2.zip", f"2024_03/…_{UID}_v2.zip"),  # already redacted: unchanged
    ("2024_03/Maria_Silva.zip", "2024_03/<hidden>.zip"),  # not ours: nothing of it shown
    ("2024_03/My scan.zip", "2024_03/<hidden>.zip"),
    ("2024_03/.Very_long_name~.4242-1.partial", "2024_03/<hidden>.partial"),
    ("2024_03/.Maria_Silva.zip.4242-1.partial", "2024_03/<hidden>.partial"),
    (".tmp/.status.json.4242-ab12.partial", ".tmp/.status.json.4242-ab12.partial"),  # no name in it
    ("2024_03/.month_done", "2024_03/.month_done"),
])
def test_redact_zip_path_keeps_folder_and_uid_only(path, shown):
    assert naming.redact_zip_path(path) == shown
    assert naming.redact_zip_path(path, keep_names=True) == path


def test_redacted_name_of_every_naming_keeps_the_uid():
    for kind in ("classic", "pseudonymous"):
        rel = naming.zip_relpath(study(), naming=kind, version=2, dedup=3)
        assert naming.redact_zip_path(rel) == f"2024_03/…_{UID}_v2_d3.zip"


def test_series_folders_differing_only_by_case_get_distinct_names():
    """APFS, HFS+ and exFAT ignore case: "Head" and "HEAD" would be one folder on a Mac (hardening 17)."""
    files = naming.sort_files([src(1, 1, "Head", "/d/1.dcm", 1), src(2, 1, "HEAD", "/d/2.dcm", 1),
                               src(3, 1, "head", "/d/3.dcm", 1), src(4, 1, "Head_2", "/d/4.dcm", 1)])
    names = naming.member_names(files)
    assert names == ["S0001_CT_Head/IM00001.dcm", "S0001_CT_HEAD_2/IM00001.dcm", "S0001_CT_head_3/IM00001.dcm",
                     "S0001_CT_Head_2_2/IM00001.dcm"]
    folders = [n.split("/")[0] for n in names]
    assert len({f.casefold() for f in folders}) == len(folders)


def test_a_study_with_head_and_HEAD_series_gives_a_zip_a_mac_can_extract(tmp_path):
    """End to end: the Horos rows say series 1 "Head" and series 1 "HEAD"; the ZIP's folders differ
    case-insensitively and every image is in it."""
    import sqlite3
    import zipfile

    from horos_async import demo
    from helpers import key_of, make_config, run, study_members, zips_by_key

    lib = demo.build_demo(tmp_path / "lib", studies=0)
    study = lib.study("accented")
    con = sqlite3.connect(lib.horos_data / "Database.sql")
    pks = [pk for (pk,) in con.execute("SELECT Z_PK FROM ZSERIES WHERE ZSTUDY = ? ORDER BY Z_PK", (study.pk,))]
    assert len(pks) == 2
    for pk, name in zip(pks, ("Head", "HEAD")):
        con.execute("UPDATE ZSERIES SET ZID = 1, ZNAME = ? WHERE Z_PK = ?", (name, pk))
    con.commit()
    con.close()
    cfg = make_config(lib, tmp_path / "Backup")
    run(cfg, until_done=True)
    (zip_path,) = zips_by_key(cfg.backup_dir)[key_of(study)]
    with zipfile.ZipFile(zip_path) as zf:
        names = [i.filename for i in study_members(zf)]  # the manifest beside the series folders
    folders = sorted({n.split("/")[0] for n in names})
    assert folders == ["S0001_CT_HEAD_2", "S0001_CT_Head"]
    assert len({n.casefold() for n in names}) == len(names) == len(set(study.files))


@pytest.mark.parametrize("name, patient", [
    ("Иванов^Пётр", "Ivanov_Petr"),  # anyascii's reading of ё is "e" (not "yo"): "Petr", as in Russian passports
    ("Παπαδόπουλος^Γιώργος", "Papadopoylos_Giorgos"),
    ("王^小明", "Wang_XiaoMing"),
    ("山田^太郎", "ShanTian_TaiLang"),  # kanji get their Chinese reading; a romaji group in the name is kept as is
    ("محمد^علي", "mhmd_ly"),  # Arabic is written without most vowels, and so is its transliteration
])
def test_names_in_other_scripts_are_transliterated_not_unknown(name, patient):
    """Hardening 18: NFKD maps nothing of these scripts; they used to become UNKNOWN."""
    assert naming.zip_stem(study(name=name)) == f"{patient}_19800517_20240331_{UID}"


@pytest.mark.parametrize("name, patient", [
    ("José^Conceição", "Jose_Conceicao"), ("MARÍA^PEÑA", "MARIA_PENA"), ("Gonçalves^Ângela", "Goncalves_Angela"),
    ("Straße^Jürgen", "Strasse_Jurgen"), ("Æsir^Øyvind", "AEsir_Oyvind"), ("Łukasz^Þór", "Lukasz_THor"),
    ("Ünïcödé 🙂^Test", "Unicode_Test"), ("", "UNKNOWN"), ("🙂", "UNKNOWN"),
])
def test_latin_names_keep_their_earlier_form(name, patient):
    assert naming.zip_stem(study(name=name)) == f"{patient}_19800517_20240331_{UID}"
