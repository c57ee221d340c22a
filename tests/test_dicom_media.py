"""zip_layout = "dicom-media": DICOM PS3.12 Annex V ZIPs whose DICOMDIR pydicom and DCMTK read back.

Real engine runs on the demo library; the ZIPs are extracted and their DICOMDIR read with pydicom's
FileSet and, where installed, DCMTK (``dcmdump``, ``dcmmkdir``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pydicom
import pytest
from pydicom.fileset import FileSet

from horos_async import demo
from horos_async.backup import dicom_media, zip_manifest
from horos_async.ops import restore, verify

from helpers import exportable, key_of, make_config, run, sha, zips, zips_by_key

SPECIAL = {zip_manifest.MANIFEST_NAME, zip_manifest.DICOMDIR_NAME}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    lib = demo.build_demo(root / "lib", studies=2)
    cfg = make_config(lib, root / "Backup", zip_layout="dicom-media")
    assert run(cfg, until_done=True).exit_code == 0
    return lib, cfg, root


def extract(path: Path, dest: Path) -> Path:
    with zipfile.ZipFile(path) as zf:
        zf.extractall(dest)
    return dest


def test_every_zip_is_a_file_set_whose_dicomdir_references_every_image(media):
    lib, cfg, root = media
    by_key = zips_by_key(cfg.backup_dir)
    checked = 0
    for s in exportable(lib):
        (path,) = by_key[key_of(s)]
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        assert "DICOMDIR" in names and names[-1] == zip_manifest.MANIFEST_NAME
        files = [n for n in names if n not in SPECIAL]
        assert len(files) == len(set(s.files))
        for n in files:
            assert dicom_media.conformant(n), n  # <= 8 levels of <= 8 chars A-Z 0-9 _, no extension
            assert "." not in n
        out = extract(path, root / "x" / path.stem)
        fs = FileSet(out / "DICOMDIR")
        referenced = {str(i.FileID).replace("\\", "/") for i in fs}
        assert referenced == {n for n in files if not n.startswith(dicom_media.UNREFERENCED + "/")}
        assert len(referenced) == len(files), "every demo file is an image the DICOMDIR references"
        doc = json.loads((out / zip_manifest.MANIFEST_NAME).read_text(encoding="utf-8"))
        listed = zip_manifest.by_path(doc)
        assert doc["layout"] == "dicom-media"
        assert listed["DICOMDIR"]["sha256"] == sha(out / "DICOMDIR")
        for inst in fs:
            ds = inst.load()  # the real file, pixels and all
            fid = str(inst.FileID).replace("\\", "/")
            assert ds.SOPInstanceUID == inst.ReferencedSOPInstanceUIDInFile == listed[fid]["sop_instance_uid"]
            assert hashlib.sha256((out / fid).read_bytes()).hexdigest() == listed[fid]["sha256"]
            assert Path(listed[fid]["source"]) in set(s.files)
        kinds = {r.DirectoryRecordType for r in fs._ds.DirectoryRecordSequence}
        assert {"PATIENT", "STUDY", "SERIES", "IMAGE"} <= kinds
        checked += 1
    assert checked >= 3


@pytest.mark.skipif(shutil.which("dcmdump") is None, reason="DCMTK (dcmdump) not installed")
def test_dcmtk_reads_the_dicomdir(media):
    lib, cfg, root = media
    s = lib.study("accented")
    (path,) = zips_by_key(cfg.backup_dir)[key_of(s)]
    out = extract(path, root / "dcmtk" / path.stem)
    dump = subprocess.run(["dcmdump", "DICOMDIR"], cwd=out, capture_output=True, text=True)
    assert dump.returncode == 0, dump.stderr
    for kind in ("PATIENT", "STUDY", "SERIES", "IMAGE"):
        assert f"CS [{kind}]" in dump.stdout
    ids = [line.split("[", 1)[1].split("]", 1)[0].replace("\\", "/")
           for line in dump.stdout.splitlines() if "ReferencedFileID" in line]
    assert ids and all((out / i).is_file() for i in ids)
    if shutil.which("dcmmkdir") is None:
        return
    # dcmmkdir (General Purpose profile: uncompressed files) accepts our file IDs and headers as they are.
    plain = [i for i in ids if pydicom.dcmread(out / i, stop_before_pixels=True).file_meta.TransferSyntaxUID
             == pydicom.uid.ExplicitVRLittleEndian]
    assert plain
    made = subprocess.run(["dcmmkdir", "-Pgp", "+D", "DCMTKDIR", *plain], cwd=out, capture_output=True, text=True)
    assert made.returncode == 0 and "cannot be added" not in made.stderr, made.stderr


def test_dicom_media_zips_verify_and_feed_horos_without_the_dicomdir(media, tmp_path):
    lib, cfg, root = media
    result = asyncio.run(verify.Verifier(cfg, deep=True, restart=True).run())
    assert result.bad == 0 and result.good == len(zips(cfg.backup_dir))
    path = zips(cfg.backup_dir)[0]
    cfg2 = make_config(lib, tmp_path / "B2")
    cfg2.incoming_dir.mkdir(parents=True, exist_ok=True)
    before = set(cfg2.incoming_dir.iterdir())
    report = restore.restore_into_horos(path, cfg2, wait_seconds=1, poll_seconds=0.01)
    new = set(cfg2.incoming_dir.iterdir()) - before
    with zipfile.ZipFile(path) as zf:
        images = [n for n in zf.namelist() if n not in SPECIAL]
    assert report.restored == len(images) == len(new)
    assert not any(p.name.endswith(("DICOMDIR", ".json")) for p in new)


def test_files_the_dicomdir_cannot_reference_are_kept_beside_it(tmp_path):
    """A file that is not DICOM, and a second file with the same SOP Instance UID, stay in the ZIP under
    NODIR/, unreferenced (Annex V allows other files); the rest is a normal File-set."""
    lib = demo.build_demo(tmp_path / "lib", studies=1)
    s = lib.study("accented")
    files = sorted(set(s.files))
    files[0].write_bytes(b"not a DICOM file at all" * 100)
    shutil.copyfile(files[1], files[2])  # the same instance twice
    cfg = make_config(lib, tmp_path / "Backup", zip_layout="dicom-media", stability_minutes=0)
    run(cfg, until_done=True)
    (path,) = zips_by_key(cfg.backup_dir)[key_of(s)]
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    extra = [n for n in names if n.startswith("NODIR/")]
    assert len(extra) == 2 and all(dicom_media.conformant(n) for n in extra)
    out = extract(path, tmp_path / "x")
    fs = FileSet(out / "DICOMDIR")
    assert len(fs) == len(files) - 2
