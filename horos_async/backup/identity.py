"""A study ZIP's identity: the JSON in its archive comment and the digest of its members.

One owner for the format: the job writes it (:func:`zip_comment`), reconcile, rebuild-ledger, catalog
and verify read it (:func:`read_identity`, :func:`members_digest`). The comment is what lets a lost
ledger be rebuilt from the ZIPs alone (docs/design/durability.md §4).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Optional

from horos_async.backup import zipcheck
from horos_async.models import DONE, StudyPlan

MANIFEST_NAME = "horos-backup-manifest.json"
"""The manifest member (its format: ``zip_manifest``), named in the comment of every ZIP that has one."""


def zip_comment(plan: StudyPlan, state: str = DONE, *, layout: str = "series", members: Optional[int] = None,
                manifest: bool = True) -> bytes:
    """The study identity stored as the ZIP comment: lets a lost ledger be rebuilt from disk.

    ``members`` counts every member (the files, and the DICOMDIR and the manifest when there are);
    ``manifest`` names the manifest member (docs/design/manifest.md)."""
    s = plan.study
    extra = {"layout": layout, "members": members if members is not None else len(plan.files)}
    if manifest:
        extra["manifest"] = MANIFEST_NAME
    return json.dumps({
        "horos_backup": 1, "key": s.key, "uid": s.uid, "patient_uid": s.patient_uid, "horos_pk": s.pk,
        "version": plan.version, "fingerprint": plan.fingerprint, "date_added": s.date_added,
        "files": len(plan.files), "bytes_in": plan.total_bytes, "state": state,
        "study_date": s.study_date.isoformat() if s.study_date else None,
        "birth_date": s.birth_date.isoformat() if s.birth_date else None,
        "patient_name": s.patient_name, "modalities": s.modalities, "exported_at": time.time(), **extra,
    }, ensure_ascii=True, separators=(",", ":")).encode("ascii")[:65000]


def members_digest(members) -> str:
    """Short digest of (name, crc, size) of every member: what a ZIP held, for later comparison."""
    h = hashlib.sha256()
    for m in members:
        h.update(f"{m.name}\t{m.crc:08x}\t{m.size}\n".encode())
    return h.hexdigest()


def read_identity(path: Path) -> Optional[dict]:
    """The study identity JSON in a ZIP's comment, or None when the ZIP is not ours."""
    try:
        data = json.loads(zipcheck.read_comment(path).decode("ascii") or "null")
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("horos_backup") and data.get("key") else None
