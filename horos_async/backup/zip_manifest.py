"""The manifest in every study ZIP: ``horos-backup-manifest.json``, the ZIP explaining itself.

One owner for the format (docs/design/manifest.md): the job builds it (:func:`build`) from the plan
and the members the writer has just written (their SHA-256, CRC-32 and header facts, computed in one
pass while the sources were read); it is the **last** member of the ZIP, because it needs every hash.
``verify --deep``, ``rebuild-ledger``, ``catalog --from-zips`` and ``export`` read it (:func:`read`);
ZIPs written before manifests existed have none and are read as before (the identity comment).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import zipfile
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence

from horos_async import __version__
from horos_async.backup.archive import BuiltMember
from horos_async.backup.identity import MANIFEST_NAME, read_identity
from horos_async.models import StudyPlan

__all__ = ["MANIFEST_NAME", "build", "read", "parse", "digest", "check_members"]
DICOMDIR_NAME = "DICOMDIR"
FORMAT = "horos-backup-manifest"
FORMAT_VERSION = 1
MAX_BYTES = 256 << 20
"""A manifest larger than this is not read (no real study comes near: ~400 bytes a file)."""
SPECIAL = frozenset({MANIFEST_NAME, DICOMDIR_NAME})
"""Members that are not one of the study's files (restore --into-horos leaves them out)."""


def build(plan: StudyPlan, built: Sequence[BuiltMember], *, layout: str, identity: dict,
          header_study: Optional[Dict[str, str]] = None, exported_at: Optional[float] = None) -> bytes:
    """The manifest of a ZIP holding ``built`` (every member but the manifest itself), as UTF-8 JSON."""
    s = plan.study
    hs = header_study or {}

    def pick(db_value, header_key: str):
        return db_value if db_value not in (None, "") else hs.get(header_key) or None

    study = {
        "study_instance_uid": s.uid,
        "patient_id": pick(s.patient_id, "patient_id"),
        "patient_name": pick(s.patient_name, "patient_name"),
        "birth_date": s.birth_date.isoformat() if s.birth_date else pick(None, "birth_date"),
        "study_date": s.study_date.isoformat() if s.study_date else pick(None, "study_date"),
        "accession_number": pick(s.accession, "accession_number"),
        "description": pick(s.description, "description"),
        "modalities": s.modalities,
        "horos_pk": s.pk,
        "horos_pks": list(plan.pks),
        "patient_uid": s.patient_uid,
        "from_file_header": sorted(k for k, v in hs.items() if v) if hs else [],
    }
    members = []
    for m in built:
        h = m.header or {}
        members.append({
            "path": m.name, "source": str(m.source) if m.source is not None else None, "size": m.size,
            "sha256": m.sha256, "crc32": f"{m.crc:08x}",
            "sop_instance_uid": h.get("sop_instance_uid"), "series_instance_uid": h.get("series_instance_uid"),
            "transfer_syntax": h.get("transfer_syntax") or None, "lossy": h.get("lossy"),
        })
    stamp = exported_at if exported_at is not None else identity.get("exported_at")
    doc = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "tool": {"name": "horos-backup", "version": __version__},
        "exported_at": _iso(stamp), "layout": layout,
        "study": study, "identity": identity, "files": len(plan.files), "members": members,
    }
    return json.dumps(doc, ensure_ascii=False, indent=1).encode("utf-8")


def digest(data: bytes) -> str:
    """The SHA-256 the ledger keeps of a manifest's bytes."""
    return hashlib.sha256(data).hexdigest()


def read_bytes(path: Path) -> Optional[bytes]:
    """The manifest member's bytes (CRC checked by zipfile), or None when the ZIP has none or is not
    readable as a ZIP."""
    try:
        with zipfile.ZipFile(path) as zf:
            try:
                info = zf.getinfo(MANIFEST_NAME)
            except KeyError:
                return None
            if info.file_size > MAX_BYTES:
                return None
            return zf.read(info)
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, RuntimeError):
        return None
    except Exception:  # zlib.error and the like: a damaged member is no manifest
        return None


def parse(data: Optional[bytes]) -> Optional[dict]:
    """The manifest document, or None when ``data`` is not one of ours."""
    if data is None:
        return None
    try:
        doc = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("members"), list):
        return None
    return doc


def read(path: Path) -> Optional[dict]:
    """The ZIP's manifest, or None (no manifest: a ZIP from before manifests, or not ours)."""
    return parse(read_bytes(path))


class Described(NamedTuple):
    """What a ZIP says about itself: its identity, and its manifest when it has one."""

    identity: Optional[dict]
    """The identity (the manifest's copy, else the archive comment); None: not one of our ZIPs."""
    manifest: Optional[dict]
    """The manifest document, None for a ZIP from before manifests."""
    manifest_sha256: str
    """SHA-256 of the manifest's bytes ("" without one)."""


def describe(path: Path) -> Described:
    """The identity and manifest of a ZIP: the manifest when present (a ZIP whose comment was stripped
    by another tool is still known by it), else the comment alone (ZIPs from before manifests)."""
    data = read_bytes(path)
    doc = parse(data)
    comment = read_identity(path)
    ident = comment
    if doc is not None:
        copy = doc.get("identity")
        if isinstance(copy, dict) and copy.get("horos_backup") and copy.get("key"):
            ident = dict(copy, **(comment or {}))  # the comment, when there, is the same document
    return Described(ident, doc, digest(data) if doc is not None and data is not None else "")


def by_path(doc: dict) -> Dict[str, dict]:
    """The manifest's member entries by ZIP path."""
    return {str(m.get("path")): m for m in doc.get("members", []) if isinstance(m, dict)}


def check_members(doc: dict, found: Sequence[BuiltMember]) -> List[str]:
    """What differs between the manifest and the members as read back (hashed): "" list when all agree.

    ``found`` holds every member of the ZIP with its SHA-256; the manifest must list each of them but
    itself, with the same size, CRC-32 and SHA-256.
    """
    listed = by_path(doc)
    problems = []
    names = set()
    for m in found:
        if m.name == MANIFEST_NAME:
            continue
        names.add(m.name)
        want = listed.get(m.name)
        if want is None:
            problems.append(f"{m.name}: in the ZIP, not in its manifest")
        elif int(want.get("size", -1)) != m.size or str(want.get("crc32", "")) != f"{m.crc:08x}":
            problems.append(f"{m.name}: size/CRC differ from the manifest")
        elif str(want.get("sha256", "")) != m.sha256:
            problems.append(f"{m.name}: SHA-256 {m.sha256[:12]}… differs from the manifest's "
                            f"{str(want.get('sha256', ''))[:12]}…")
    for name in sorted(set(listed) - names):
        problems.append(f"{name}: in the manifest, missing from the ZIP")
    return problems


def study_fields(doc: dict) -> dict:
    """The manifest's study section (empty dict when absent)."""
    study = doc.get("study")
    return study if isinstance(study, dict) else {}


def _iso(ts) -> Optional[str]:
    try:
        return dt.datetime.fromtimestamp(float(ts), dt.timezone.utc).isoformat(timespec="seconds")
    except (TypeError, ValueError, OverflowError, OSError):
        return None
