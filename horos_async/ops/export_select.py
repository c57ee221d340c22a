"""Which backed-up studies ``horos-backup export`` takes: chosen from the backup, never from Horos.

The ledger (read-only) lists every study with an ``ok`` ZIP; a selection keeps those matching every
flag given (``--patient-id``, ``--name``, ``--accession``, ``--date-from``/``--date-to``) and, with
``--list FILE``, any line of the file. A line is a patient ID (MRN), or ``name:``, ``accession:``,
``uid:`` or ``id:`` followed by the value; blank lines and ``#`` comments are skipped. Names are
matched as ``catalog --search`` matches them (accents and case ignored). Studies exported before
ledger schema 4 have no patient ID or accession in the ledger: for those the ZIP's manifest, or its
first file's header, is read (docs/design/manifest.md §6).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from horos_async import guards
from horos_async.backup import dicom_media, zip_manifest
from horos_async.config import Config
from horos_async.errors import ConfigError, LedgerError, VolumeError
from horos_async.ops.catalog import fold
from horos_async.state.ledger_read import LedgerReader
from horos_async.state.ledger_records import ExportRecord

KINDS = ("id", "name", "accession", "uid")
_HEADER_BYTES = 1 << 16


@dataclass(frozen=True)
class Criteria:
    """What the flags ask for (each None when not given); every given one must match."""

    patient_id: Optional[str] = None
    name: Optional[str] = None
    accession: Optional[str] = None
    date_from: Optional[str] = None
    """``YYYY-MM-DD``, inclusive."""
    date_to: Optional[str] = None
    """``YYYY-MM-DD``, inclusive."""

    def any(self) -> bool:
        return any(v is not None for v in (self.patient_id, self.name, self.accession, self.date_from, self.date_to))


@dataclass(frozen=True)
class ListLine:
    """One line of ``--list FILE``: what it names, where it is."""

    kind: str
    value: str
    number: int
    """Line number in the file (1-based)."""


def check_date(flag: str, text: Optional[str]) -> Optional[str]:
    """``YYYY-MM-DD`` or a ConfigError naming the flag."""
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text.strip()).isoformat()
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected a date YYYY-MM-DD, e.g. {flag} 2024-01-31") from None


def read_list(path: Path) -> List[ListLine]:
    """The lines of a ``--list`` file (UTF-8, a BOM allowed); ConfigError naming the file and line."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"--list {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--list {path}: cannot be read as UTF-8 text ({exc})") from None
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip().strip(";,\t ")
        if not line:
            continue
        kind, sep, value = line.partition(":")
        if sep and kind.strip().lower() in KINDS:
            kind, value = kind.strip().lower(), value.strip()
        else:
            kind, value = "id", line
        if not value:
            raise ConfigError(f"--list {path} line {n}: {raw.strip()!r} names nothing (write e.g. 'name: Silva')")
        out.append(ListLine(kind, value, n))
    if not out:
        raise ConfigError(f"--list {path}: holds no patient ID, name, accession or UID")
    return out


def studies(cfg: Config) -> List[ExportRecord]:
    """Every backed-up study with an ``ok`` ZIP, from the ledger (read-only)."""
    path = cfg.ledger_path
    if not path.exists():
        missing = guards.backup_dir_missing(cfg)
        if missing:
            raise VolumeError(missing)
        raise LedgerError(f"no ledger at {path}: nothing is recorded to export. If ZIPs exist on disk, run "
                          f"'horos-backup rebuild-ledger' first, then export")
    try:
        with LedgerReader.open(path) as led:
            return led.exported()
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"ledger {path} cannot be read ({exc}); see 'horos-backup doctor'") from None


def fill_ids(cfg: Config, rows: Sequence[ExportRecord]) -> List[ExportRecord]:
    """Rows with patient ID and accession read from their ZIP where the ledger lacks both."""
    out = []
    for r in rows:
        if r.patient_id is None and r.accession is None:
            pid, acc = _ids_from_zip(cfg.backup_dir / r.zip_path)
            r = r._replace(patient_id=pid, accession=acc)
        out.append(r)
    return out


def _ids_from_zip(path: Path) -> Tuple[str, str]:
    """(patient ID, accession) from the ZIP's manifest, else its first DICOM member's header."""
    doc = zip_manifest.read(path)
    if doc is not None:
        study = zip_manifest.study_fields(doc)
        return str(study.get("patient_id") or ""), str(study.get("accession_number") or "")
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.is_dir() or info.filename in zip_manifest.SPECIAL:
                    continue
                with zf.open(info) as f:
                    head = f.read(_HEADER_BYTES)
                ds = dicom_media.read_header(head) or dicom_media.read_header(zf.read(info))
                if ds is not None:
                    return str(ds.get("PatientID", "") or "").strip(), str(ds.get("AccessionNumber", "") or "").strip()
    except (OSError, zipfile.BadZipFile, ValueError):
        pass
    return "", ""


def _same(a: Optional[str], b: str) -> bool:
    return (a or "").strip().casefold() == b.strip().casefold()


def _line_matches(r: ExportRecord, line: ListLine) -> bool:
    if line.kind == "id":
        return _same(r.patient_id, line.value)
    if line.kind == "accession":
        return _same(r.accession, line.value)
    if line.kind == "uid":
        return (r.uid or "").strip() == line.value
    return fold(line.value) in fold(r.patient_name or "")


def _criteria_match(r: ExportRecord, c: Criteria) -> bool:
    day = (r.study_date or "")[:10]
    if c.patient_id is not None and not _same(r.patient_id, c.patient_id):
        return False
    if c.accession is not None and not _same(r.accession, c.accession):
        return False
    if c.name is not None and fold(c.name) not in fold(r.patient_name or ""):
        return False
    if c.date_from is not None and (not day or day < c.date_from):
        return False
    if c.date_to is not None and (not day or day > c.date_to):
        return False
    return True


def select(cfg: Config, criteria: Criteria, lines: Sequence[ListLine] = ()) -> Tuple[List[ExportRecord], List[ListLine]]:
    """The studies to export, and the ``--list`` lines that matched none."""
    if not criteria.any() and not lines:
        raise ConfigError("export needs a selection: --patient-id, --name, --accession, --date-from/--date-to "
                          "or --list FILE (one patient ID per line)")
    rows = studies(cfg)
    needs_ids = criteria.patient_id is not None or criteria.accession is not None or \
        any(line.kind in ("id", "accession") for line in lines)
    if needs_ids:
        rows = fill_ids(cfg, rows)
    chosen: Dict[str, ExportRecord] = {}
    unmatched = []
    for line in lines:
        hits = [r for r in rows if _line_matches(r, line) and _criteria_match(r, criteria)]
        if not hits:
            unmatched.append(line)
        for r in hits:
            chosen.setdefault(r.key, r)
    if not lines:
        chosen = {r.key: r for r in rows if _criteria_match(r, criteria)}
    ordered = [r for r in rows if r.key in chosen]
    return ordered, unmatched
