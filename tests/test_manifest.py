"""The manifest in every ZIP: what it says is what the ZIP holds, byte for byte, and the commands read it.

Real demo libraries, real engine runs, real ZIPs read back; hashes are recomputed here from the bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import sqlite3
import struct
import zipfile
import zlib
from pathlib import Path

import aiosqlite
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from horos_async import demo
from horos_async.backup import dicom_header, zip_manifest
from horos_async.ops import catalog, rebuild, verify
from horos_async.state import ledger as ledger_mod

from helpers import key_of, make_config, run, sha, zips, zips_by_key

NAME = zip_manifest.MANIFEST_NAME


@pytest.fixture(scope="module")
def backed_up(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest")
    lib = demo.build_demo(root / "lib", studies=1)
    cfg = make_config(lib, root / "Backup")
    assert run(cfg, until_done=True).exit_code == 0
    return lib, cfg


def manifest_of(path: Path) -> dict:
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read(NAME).decode("utf-8"))


def ledger_rows(cfg, sql, *params):
    con = sqlite3.connect(cfg.ledger_path)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def test_manifest_matches_every_member_byte_for_byte(backed_up):
    lib, cfg = backed_up
    s = lib.study("accented")
    (path,) = zips_by_key(cfg.backup_dir)[key_of(s)]
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        assert infos[-1].filename == NAME, "the manifest is written last (it needs every hash)"
        data = {i.filename: zf.read(i) for i in infos}
    doc = json.loads(data[NAME])
    assert doc["format"] == "horos-backup-manifest" and doc["tool"]["name"] == "horos-backup"
    assert doc["layout"] == "series" and doc["exported_at"]
    listed = {m["path"]: m for m in doc["members"]}
    assert set(listed) == set(data) - {NAME}
    sources = {str(p) for p in s.files}
    for name, blob in data.items():
        if name == NAME:
            continue
        m = listed[name]
        assert m["size"] == len(blob)
        assert m["sha256"] == hashlib.sha256(blob).hexdigest()
        assert m["crc32"] == f"{zlib.crc32(blob):08x}"
        assert m["source"] in sources and sha(Path(m["source"])) == m["sha256"]
        ds = pydicom.dcmread(io.BytesIO(blob), stop_before_pixels=True)
        assert m["sop_instance_uid"] == ds.SOPInstanceUID
        assert m["series_instance_uid"] == ds.SeriesInstanceUID
        assert m["transfer_syntax"] == ds.file_meta.TransferSyntaxUID
        assert m["lossy"] is False  # explicit VR and RLE lossless in the demo
    assert {m["transfer_syntax"] for m in listed.values()} >= {ExplicitVRLittleEndian}
    study = doc["study"]
    assert study["study_instance_uid"] == s.uid and study["patient_uid"] == s.patient_uid
    assert study["horos_pk"] == s.pk and study["patient_name"] == "José^Conceição"
    assert study["patient_id"] and study["accession_number"] and study["modalities"]
    assert doc["identity"]["key"] == key_of(s) and doc["files"] == len(set(s.files))
    # The ledger keeps the manifest's digest and counts every member.
    (digest, files), = ledger_rows(cfg, "SELECT manifest_sha256, files FROM zips WHERE key=?", key_of(s))
    assert digest == hashlib.sha256(data[NAME]).hexdigest() and files == len(data)
    (pid, acc), = ledger_rows(cfg, "SELECT patient_id, accession FROM studies WHERE key=?", key_of(s))
    assert (pid, acc) == (study["patient_id"], study["accession_number"])


def test_every_new_zip_has_a_manifest_and_passes_verify_deep(backed_up):
    lib, cfg = backed_up
    for path in zips(cfg.backup_dir):
        doc = manifest_of(path)
        with zipfile.ZipFile(path) as zf:
            assert len(doc["members"]) == len(zf.infolist()) - 1
    result = asyncio.run(verify.Verifier(cfg, deep=True, restart=True).run())
    assert result.good == len(zips(cfg.backup_dir)) and result.bad == 0


def _patch_crc(path: Path, info: zipfile.ZipInfo, crc: int) -> None:
    """Write ``crc`` where the member's CRC is kept: its local header, or (a streamed member, bit 3 of its
    flags) its data descriptor, and its central directory entry."""
    data = bytearray(path.read_bytes())
    flags, = struct.unpack_from("<H", data, info.header_offset + 6)
    if flags & 0x08:  # the CRC follows the data, in a data descriptor (with or without its signature)
        nlen, xlen = struct.unpack_from("<HH", data, info.header_offset + 26)
        end = info.header_offset + 30 + nlen + xlen + info.compress_size
        at = end + 4 if bytes(data[end:end + 4]) == b"PK\x07\x08" else end
        struct.pack_into("<L", data, at, crc)
    else:
        struct.pack_into("<L", data, info.header_offset + 14, crc)
    cd = data.rfind(b"PK\x01\x02" + data[info.header_offset + 4:info.header_offset + 6], 0)
    name = info.filename.encode()
    pos = 0
    while True:  # the central entry of this member
        pos = data.find(b"PK\x01\x02", pos)
        assert pos >= 0
        nlen = struct.unpack_from("<H", data, pos + 28)[0]
        if bytes(data[pos + 46:pos + 46 + nlen]) == name:
            break
        pos += 4
    del cd
    struct.pack_into("<L", data, pos + 16, crc)
    path.write_bytes(bytes(data))


def test_a_flipped_byte_with_a_matching_crc_is_caught_by_the_manifest(tmp_path):
    """A byte flipped and the CRC-32 forged to match: only the SHA-256 in the manifest can tell."""
    lib = demo.build_demo(tmp_path / "lib", studies=1)
    cfg = make_config(lib, tmp_path / "Backup", compression="store")
    run(cfg, until_done=True)
    victim = zips(cfg.backup_dir)[0]
    with zipfile.ZipFile(victim) as zf:
        info = max((i for i in zf.infolist() if i.filename != NAME), key=lambda i: i.file_size)
        blob = bytearray(zf.read(info))
    with open(victim, "r+b") as f:
        f.seek(info.header_offset + 26)
        nlen, xlen = struct.unpack("<HH", f.read(4))
        at = info.header_offset + 30 + nlen + xlen + len(blob) // 2
        blob[len(blob) // 2] ^= 0x01
        f.seek(at)
        f.write(bytes([blob[len(blob) // 2]]))
    _patch_crc(victim, info, zlib.crc32(bytes(blob)))
    with zipfile.ZipFile(victim) as zf:
        assert zf.testzip() is None  # every CRC agrees: zipfile sees nothing wrong
    result = asyncio.run(verify.Verifier(cfg, deep=True).run())
    assert result.invalid == 1, result.problems
    assert "differ from the manifest" in result.problems[0] and info.filename in result.problems[0]
    assert (cfg.quarantine_dir / victim.relative_to(cfg.backup_dir)).exists()


def test_rebuild_ledger_from_manifest_bearing_zips(tmp_path):
    lib = demo.build_demo(tmp_path / "lib", studies=1)
    cfg = make_config(lib, tmp_path / "Backup")
    run(cfg, until_done=True)
    before = {p: p.stat().st_mtime_ns for p in zips(cfg.backup_dir)}
    digests = {p.relative_to(cfg.backup_dir).as_posix(): hashlib.sha256(zipfile.ZipFile(p).read(NAME)).hexdigest()
               for p in before}
    # One ZIP loses its archive comment (another tool rewrote it): its manifest still says whose it is.
    stripped = zips(cfg.backup_dir)[0]
    with zipfile.ZipFile(stripped, "a") as zf:
        zf.comment = b""
    digests.pop(stripped.relative_to(cfg.backup_dir).as_posix())
    before.pop(stripped)
    cfg.ledger_path.unlink()
    stats = asyncio.run(rebuild.rebuild(cfg, deep=True))
    assert stats["adopted"] == len(before) + 1 and stats["invalid"] == 0 and stats["foreign"] == 0
    rows = dict(ledger_rows(cfg, "SELECT zip_path, manifest_sha256 FROM zips"))
    for rel, digest in digests.items():
        assert rows[rel] == digest
    ident = zip_manifest.describe(stripped).identity
    assert ident is not None and ledger_rows(cfg, "SELECT state FROM studies WHERE key=?", ident["key"]) == [("done",)]
    files = dict(ledger_rows(cfg, "SELECT key, files FROM studies"))
    for s in lib.studies:
        if key_of(s) in files:
            assert files[key_of(s)] == len(set(s.files))  # the study's files, not the ZIP's members
    assert all(pid for (pid,) in ledger_rows(cfg, "SELECT patient_id FROM studies"))
    assert run(cfg, until_done=True).done == 0  # nothing exported again
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_catalog_from_zips_reads_the_manifest(backed_up):
    lib, cfg = backed_up
    rows = catalog.from_zips(cfg)
    s = lib.study("accented")
    row = next(r for r in rows if r.study_uid == s.uid)
    assert row.patient_name == "José Conceição" and row.files == len(set(s.files))


def test_zips_without_a_manifest_still_verify_rebuild_and_list(tmp_path, monkeypatch):
    """ZIPs written before manifests (the benchmark's switch writes them today) are read as before."""
    monkeypatch.setenv("HOROS_BACKUP_MANIFEST", "0")
    lib = demo.build_demo(tmp_path / "lib", studies=1)
    cfg = make_config(lib, tmp_path / "Backup")
    run(cfg, until_done=True)
    for path in zips(cfg.backup_dir):
        assert NAME not in zipfile.ZipFile(path).namelist()
        assert "manifest" not in json.loads(zipfile.ZipFile(path).comment)
    assert asyncio.run(verify.Verifier(cfg, deep=True).run()).bad == 0
    cfg.ledger_path.unlink()
    assert asyncio.run(rebuild.rebuild(cfg)).get("adopted") == len(zips(cfg.backup_dir))
    assert len(catalog.from_zips(cfg)) == len(zips(cfg.backup_dir))
    assert asyncio.run(verify.Verifier(cfg, deep=True, restart=True).run()).bad == 0


def test_a_manifest_removed_from_a_recorded_zip_is_caught(backed_up, tmp_path):
    lib, cfg = backed_up
    copy_root = tmp_path / "copy"
    import shutil
    shutil.copytree(cfg.backup_dir, copy_root / "Backup")
    cfg2 = make_config(lib, copy_root / "Backup")
    victim = zips(cfg2.backup_dir)[0]
    with zipfile.ZipFile(victim) as zf:
        comment = zf.comment
        items = [(i, zf.read(i)) for i in zf.infolist() if i.filename != NAME]
    size = victim.stat().st_size
    victim.unlink()
    with zipfile.ZipFile(victim, "w") as zf:  # rewritten without its manifest, the same size recorded
        for info, data in items:
            zf.writestr(info, data)
        zf.comment = comment
    pad = size - victim.stat().st_size
    assert pad > 0
    with zipfile.ZipFile(victim, "a") as zf:
        zf.comment = comment + b" " * min(pad, 65535 - len(comment))
    result = asyncio.run(verify.Verifier(cfg2, deep=True, restart=True).run())
    assert result.invalid == 1


# -- the bounded header read ------------------------------------------------------------------------------
def _dicom(ts: str, *, lossy: str = "", with_sequences: bool = True) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = sop = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", sop
    ds.PatientName = "Test^Patient"
    if with_sequences:  # nested, undefined-length sequences before the Series UID
        inner = Dataset()
        inner.CodeValue, inner.CodeMeaning = "1", "x"
        item = Dataset()
        item.ReferencedSOPInstanceUID = generate_uid()
        item.PurposeOfReferenceCodeSequence = Sequence([inner])
        ds.ReferencedImageSequence = Sequence([item, item])
        for s in (ds.ReferencedImageSequence, item.PurposeOfReferenceCodeSequence):
            s.is_undefined_length = True
        item.is_undefined_length_sequence_item = True
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    if lossy:
        ds.LossyImageCompression = lossy
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated, ds.SamplesPerPixel = 16, 1
    compressed = ts.startswith("1.2.840.10008.1.2.4.")
    ds.PixelData = encapsulate([b"\0" * 8]) if compressed else b"\0" * 8
    buf = io.BytesIO()
    try:  # pydicom 3
        ds.save_as(buf, implicit_vr=ts == ImplicitVRLittleEndian, little_endian=True, enforce_file_format=True)
    except TypeError:  # pydicom 2.4 (Python 3.9)
        ds.is_implicit_VR, ds.is_little_endian = ts == ImplicitVRLittleEndian, True
        ds.save_as(buf, write_like_original=False)
    return buf.getvalue()


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_header_scan_reads_uids_past_nested_sequences(ts, tmp_path):
    blob = _dicom(ts, lossy="01")
    ds = pydicom.dcmread(io.BytesIO(blob))
    got = dicom_header.facts(blob)
    assert got == {"transfer_syntax": ts, "sop_instance_uid": ds.SOPInstanceUID,
                   "series_instance_uid": ds.SeriesInstanceUID, "lossy": True}
    # Cut inside the header: the file itself is read (header only) for the same answer.
    path = tmp_path / "f.dcm"
    path.write_bytes(blob)
    assert dicom_header.facts(blob[:300], path) == got
    assert dicom_header.facts(b"not dicom at all") == {"sop_instance_uid": None, "series_instance_uid": None,
                                                       "transfer_syntax": "", "lossy": None}


def test_lossy_follows_the_transfer_syntax_when_the_file_does_not_say():
    assert dicom_header.facts(_dicom("1.2.840.10008.1.2.4.50"))["lossy"] is True
    assert dicom_header.facts(_dicom("1.2.840.10008.1.2.4.90"))["lossy"] is False
    assert dicom_header.facts(_dicom("1.2.840.10008.1.2.4.91"))["lossy"] is None  # JPEG 2000: either
    assert dicom_header.facts(_dicom("1.2.840.10008.1.2.4.91", lossy="00"))["lossy"] is False


# -- ledger schema step 4 ---------------------------------------------------------------------------------
def test_schema_step_4_is_idempotent_and_self_contained(tmp_path):
    async def go():
        db = await aiosqlite.connect(str(tmp_path / "l.sqlite"))
        try:
            await db.executescript(ledger_mod.SCHEMA)
            await ledger_mod.MIGRATIONS[4](db)
            await ledger_mod.MIGRATIONS[4](db)  # twice: changes nothing
            for step in sorted(ledger_mod.MIGRATIONS):
                await ledger_mod.MIGRATIONS[step](db)
            zips_cols = await ledger_mod._columns(db, "zips")
            studies_cols = await ledger_mod._columns(db, "studies")
        finally:
            await db.close()
        return zips_cols, studies_cols

    zips_cols, studies_cols = asyncio.run(go())
    assert "manifest_sha256" in zips_cols and {"patient_id", "accession"} <= studies_cols
