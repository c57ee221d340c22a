"""The ledger's rows as named records: what the writer (``ledger``) and the reader (``ledger_read``) hand out.

No SQL here and no connection: plain values any layer above ``state`` may hold, the TUI included
(through ``status``). Rows read by the hundred thousand (the planner's index, every recorded ZIP, the
catalog) are NamedTuples, as light as the tuples they replace; the few rows a snapshot carries are
frozen dataclasses, so ``status --json`` shows them as objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Tuple

MISSING_KEPT = 20
"""Missing paths the ledger keeps per study waiting for its files (the first ones): enough to see them come
back (the retry itself checks every file), few enough that a whole unmounted volume of linked studies
stays small in memory."""


@dataclass(frozen=True)
class Entry:
    """What the planner needs to know about one study from the ledger."""

    state: str
    version: int
    date_added: Optional[float]
    fingerprint: str
    next_attempt: Optional[float]
    zip_path: str
    code: str
    horos_pk: Optional[int] = None
    """``ZSTUDY.Z_PK`` last seen for the study (refreshed after a Horos database rebuild)."""
    files: Optional[int] = None
    """Files in the study's current ZIP."""
    image_rows: Optional[int] = None
    """Image rows of the study when it was exported, as the scan counts them (None: not recorded yet)."""
    series: Optional[int] = None
    """Series holding those image rows."""
    grown: bool = False
    """The scan saw new image rows for the study since its export (``Ledger.note_growth``)."""


class LedgerIndex(Dict[str, Entry]):
    """Every study the ledger knows, by key; ``by_pk`` maps a Horos ``Z_PK`` to (uid, key).

    ``by_pk`` lets the scan recognise a study whose patientUID Horos recomputed (a Horos upgrade
    changes ``patientUIDVersion``): same row, same StudyInstanceUID, new key. A ``Z_PK`` known under
    two keys (a Horos database rebuild renumbered them) maps to None and matches nothing.
    """

    def __init__(self) -> None:
        super().__init__()
        self.by_pk: Dict[int, Optional[Tuple[str, str]]] = {}
        self.missing: Dict[str, List[str]] = {}
        """key -> the paths a study waiting for its files lacked at its last attempt (the first
        :data:`MISSING_KEPT`)."""
        self.rows_mark: Optional[Tuple[str, int]] = None
        """(Horos store UUID, highest ``ZIMAGE.Z_PK``) the last recorded scan had seen, or None."""

    def add(self, key: str, uid: str, entry: Entry) -> None:
        """Index one study under its key and, when known, its ``Z_PK``."""
        self[key] = entry
        pk = entry.horos_pk
        if pk is not None:
            self.by_pk[pk] = None if pk in self.by_pk else (uid, key)


class ZipRecord(NamedTuple):
    """One ZIP the ledger records (a ``zips`` row, as reconcile compares it with the disk)."""

    zip_path: str
    """Relative to ``backup_dir`` (``YYYY_MM/<name>.zip``)."""
    key: str
    """The study's ledger key."""
    version: int
    files: int
    """Members in the ZIP."""
    zip_size: int
    """Bytes on disk."""
    status: str
    """``ok``, ``missing`` or ``bad``."""


class ZipToVerify(NamedTuple):
    """One ``ok`` ZIP in verify's selection, with what its check compares."""

    path: str
    """Relative to ``backup_dir``."""
    key: str
    files: int
    """Members recorded."""
    bytes_in: int
    """Source bytes (uncompressed)."""
    zip_size: int
    """Bytes on disk recorded."""
    digest: str
    """Member digest recorded ("" for ZIPs recorded before digests existed)."""
    manifest_sha256: str = ""
    """SHA-256 of the ZIP's manifest as recorded ("" for ZIPs without one)."""


class StudyRecord(NamedTuple):
    """One study as the catalog lists it: the ``studies`` row joined with its current ZIP's status."""

    patient_name: Optional[str]
    birth_date: Optional[str]
    """ISO date."""
    study_date: Optional[str]
    """ISO date or date-time."""
    modalities: Optional[str]
    uid: Optional[str]
    zip_path: Optional[str]
    zip_size: Optional[int]
    files: Optional[int]
    exported_at: Optional[float]
    """Unix seconds."""
    version: Optional[int]
    state: Optional[str]
    zip_status: Optional[str]
    """The current ZIP's ``zips.status`` (None when the study has no ZIP row)."""
    last_seen: Optional[float] = None
    """Unix seconds: when Horos's database last had the study, if it no longer does (None while it does)."""


class ExportRecord(NamedTuple):
    """One backed-up study as ``export`` selects it (a ``studies`` row with its current, ``ok`` ZIP)."""

    key: str
    uid: str
    patient_name: Optional[str]
    patient_id: Optional[str]
    """NULL for studies exported before ledger schema 4 (``export`` reads their ZIP then)."""
    accession: Optional[str]
    birth_date: Optional[str]
    study_date: Optional[str]
    modalities: Optional[str]
    zip_path: str
    zip_size: int
    files: Optional[int]


@dataclass(frozen=True)
class StateTotals:
    """Studies in one state and their bytes."""

    studies: int = 0
    bytes_in: int = 0
    """Source bytes (uncompressed)."""
    zip_bytes: int = 0
    """Bytes of their current ZIPs on disk."""


@dataclass(frozen=True)
class IssueRecord:
    """One row of the issue log."""

    ts: float
    """Unix seconds."""
    code: str
    uid: str
    zip_path: str
    detail: str


@dataclass(frozen=True)
class RunRecord:
    """One past or current run."""

    id: int
    started: float
    """Unix seconds."""
    ended: Optional[float]
    outcome: str
    exit_code: Optional[int]
    studies_done: int
    studies_failed: int
    bytes_in: int
    """Source bytes exported by the run."""


@dataclass(frozen=True)
class RunsSince:
    """The runs started since a moment (what the achieved rate and the ETA come from)."""

    first_started: Optional[float] = None
    """Unix seconds the first of them started (None: no run since)."""
    studies_done: int = 0
    """Studies they exported (a run still going counts those its row holds so far)."""


@dataclass(frozen=True)
class MirrorCoverage:
    """What one mirror destination holds of the primary's ZIPs (``status``, ``horos-tui``)."""

    dest: str
    """The destination as configured (a folder, or ``rclone:REMOTE:path``)."""
    zips_done: int
    """``ok`` ZIPs of the primary."""
    bytes_done: int
    zips_mirrored: int
    """Of those, the ZIPs with a verified copy at the destination."""
    bytes_mirrored: int
    oldest_missing: Optional[float]
    """When the oldest ZIP not yet at the destination was written (Unix seconds); None: none missing."""
    last_run: Optional[float]
    """When the last mirror run to it ended (or started, if it has not ended)."""
    last_outcome: str
    """``ok``, ``partial``, ``failed``, ``skipped`` (unreachable or outside its window), or ""."""
    last_message: str
    last_ok: Optional[float]
    """When a mirror run to it last ended ``ok``."""
    failing_since: Optional[float]
    """Start of the current run of failed mirror runs; None when the last one did not fail."""
