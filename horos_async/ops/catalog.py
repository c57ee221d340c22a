"""``horos-backup catalog``: every backed-up study in one list, so a person finds a study without opening ZIPs.

Read from the ledger (read-only), or with ``--from-zips`` from the identity JSON in each ZIP's comment
when the ledger is lost. CSV output is UTF-8 with a byte-order mark so Excel (also on a Portuguese
Mac) shows accents right; ``--delimiter ';'`` suits Excel set to a Portuguese locale, whose list
separator is the semicolon.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import sqlite3
from dataclasses import astuple, dataclass, fields
from typing import Iterable, List, Optional

from horos_async import guards, naming
from horos_async.backup import reconcile
from horos_async.backup import zip_manifest
from horos_async.config import Config
from horos_async.errors import LedgerError, VolumeError
from horos_async.state.ledger_read import LedgerReader
from horos_async.naming import transliterate

BOM = "\ufeff"


@dataclass(frozen=True)
class Row:
    """One study as listed (column order = CSV column order)."""

    patient_name: str
    birth_date: str
    study_date: str
    modalities: str
    study_uid: str
    zip_path: str
    """Relative to ``backup_dir`` (``YYYY_MM/<name>.zip``)."""
    zip_bytes: int
    files: int
    exported_at: str
    version: int
    state: str
    """``done``/``partial``/``pending``/``failed`` from the ledger; ``on disk`` with ``--from-zips``."""
    only_in_backup_since: str = ""
    """When Horos's database last had the study, if it no longer does (``YYYY-MM-DD``); empty while it does."""


HEADER = [f.name for f in fields(Row)]


def _person(name: Optional[str]) -> str:
    """DICOM ``Last^First`` as Horos shows it: ``Last First``."""
    return " ".join((name or "").replace("^", " ").split())


def _date(text: Optional[str]) -> str:
    """ISO date or date-time from the ledger → ``YYYY-MM-DD`` or ``YYYY-MM-DD HH:MM``."""
    if not text:
        return ""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        return str(text)
    if len(text) <= 10:
        return value.strftime("%Y-%m-%d")
    return value.strftime("%Y-%m-%d %H:%M")


def _stamp(ts: Optional[float]) -> str:
    if ts is None:
        return ""
    try:
        return dt.datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return ""


def from_ledger(cfg: Config, *, include_all: bool = False, only_in_backup: bool = False) -> List[Row]:
    """Rows from the ledger, read-only; ``include_all`` adds studies that have no ZIP yet;
    ``only_in_backup`` keeps the studies Horos's database no longer has."""
    path = cfg.ledger_path
    if not path.exists():
        missing = guards.backup_dir_missing(cfg)
        if missing:  # an unmounted volume, not a lost ledger
            raise VolumeError(missing)
        raise LedgerError(f"no ledger at {path}; to list the ZIPs on disk anyway use 'catalog --from-zips'")
    try:
        with LedgerReader.open(path) as led:
            records = led.catalog(include_all, only_in_backup=only_in_backup)
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"ledger {path} cannot be read ({exc}); use 'catalog --from-zips', and see "
                          f"'horos-backup doctor'") from None
    rows = []
    for r in records:
        state = r.state
        if r.zip_status and r.zip_status != "ok":
            state = f"{state} (zip {r.zip_status})"  # e.g. moved to quarantine by verify, re-export queued
        rows.append(Row(_person(r.patient_name), _date(r.birth_date), _date(r.study_date), r.modalities or "",
                        r.uid or "", r.zip_path or "", int(r.zip_size or 0), int(r.files or 0),
                        _stamp(r.exported_at), int(r.version or 0), state or "", _stamp(r.last_seen)[:10]))
    return rows


def from_zips(cfg: Config) -> List[Row]:
    """Rows from the ZIPs on disk (every version), without the ledger: each ZIP's manifest when it has
    one (docs/design/manifest.md), else its identity comment (ZIPs from before manifests)."""
    rows = []
    for rel, size in sorted(reconcile.zips_on_disk(cfg.backup_dir).items()):
        described = zip_manifest.describe(cfg.backup_dir / rel)
        ident = described.identity
        if ident is None:
            rows.append(Row("", "", "", "", "", rel, size, 0, "", 0, "not a horos-backup ZIP"))
            continue
        study = zip_manifest.study_fields(described.manifest or {})
        ident = dict(ident, **{k: v for k, v in (("patient_name", study.get("patient_name")),
                                                 ("birth_date", study.get("birth_date")),
                                                 ("study_date", study.get("study_date")),
                                                 ("modalities", study.get("modalities"))) if v})
        rows.append(Row(_person(ident.get("patient_name")), _date(ident.get("birth_date")),
                        _date(ident.get("study_date")), str(ident.get("modalities") or ""), str(ident.get("uid") or ""),
                        rel, size, int(ident.get("files") or 0), _stamp(ident.get("exported_at")),
                        int(ident.get("version") or 0), "on disk" if ident.get("state", "done") == "done"
                        else f"on disk ({ident.get('state')})"))
    rows.sort(key=lambda r: (r.study_date, r.study_uid, r.version))
    return rows


def fold(text: str) -> str:
    """A name as ``--search`` compares it: transliterated to ASCII, lower case, ``^`` and runs of spaces
    as one space (``export --name`` matches the same way)."""
    return " ".join(transliterate(text.replace("^", " ")).lower().split())


_fold = fold


def search(rows: Iterable[Row], text: str) -> List[Row]:
    """Rows whose patient name contains ``text`` (accents and case ignored) or whose UID contains it."""
    needle = _fold(text)
    return [r for r in rows if needle in _fold(r.patient_name) or text.strip() in r.study_uid]


def to_csv(rows: Iterable[Row], delimiter: str = ",") -> str:
    """CSV text with a BOM and a header line."""
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delimiter, lineterminator="\r\n")
    w.writerow(HEADER)
    for r in rows:
        w.writerow(astuple(r))
    return BOM + buf.getvalue()


def to_table(rows: List[Row], name_width: int = 32, width: Optional[int] = None) -> str:
    """An aligned text table for the terminal: one line per study with every column (``width`` None,
    ``catalog --wide``), or two lines per study that fit ``width`` columns (an 80-column SSH terminal):
    the patient, dates, modalities, size and version, then the state and the ZIP path (its middle
    shortened with ``…`` only when it cannot fit)."""
    if width is not None:
        return _narrow_table(rows, width)
    def short(text: str, width: int) -> str:
        return text if len(text) <= width else text[:width - 1] + "…"

    head = ("Patient", "Born", "Study date", "Mod", "Study UID", "ZIP", "MB", "Exported", "v", "State")
    body = [(short(naming.printable(r.patient_name), name_width), r.birth_date, r.study_date, r.modalities,
             r.study_uid, r.zip_path, f"{r.zip_bytes / 1e6:.1f}", r.exported_at[:16], str(r.version),
             _state_shown(r)) for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip() for b in body]
    lines.append(_count(rows))
    return "\n".join(lines)


def _state_shown(r: Row) -> str:
    """The state column, with when Horos's database lost the study if it has (its ZIPs are the only copy)."""
    return r.state + (f", only in the backup since {r.only_in_backup_since}" if r.only_in_backup_since else "")


def _count(rows: List[Row]) -> str:
    return f"{len(rows)} stud{'y' if len(rows) == 1 else 'ies'}"


def _narrow_table(rows: List[Row], width: int) -> str:
    width = max(width, 60)
    facts = [(r.birth_date, r.study_date, naming.fit_end(r.modalities, 11), f"{r.zip_bytes / 1e6:.1f}",
              str(r.version)) for r in rows]
    head = ("Born", "Study date", "Mod", "MB", "v")
    cols = [max([len(h)] + [len(f[i]) for f in facts]) for i, h in enumerate(head)]
    patient = max(12, width - sum(cols) - 2 * len(cols))
    right = (False, False, False, True, True)

    def line(first: str, cells: tuple) -> str:
        parts = [naming.pad(first, patient)]
        parts += [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, cols, right)]
        return "  ".join(parts).rstrip()

    lines = [line("Patient", head), "  State  ZIP (in backup_dir)"]
    shortened = False
    for r, f in zip(rows, facts):
        lines.append(line(naming.printable(r.patient_name), f))
        state = _state_shown(r)
        room = width - 4 - naming.cells(state)
        shown = naming.fit_middle(r.zip_path, room)
        shortened = shortened or shown != r.zip_path
        lines.append(f"  {state}  {shown}".rstrip())
    lines.append(_count(rows))
    if shortened:
        lines.append("ZIP names shortened with …: 'catalog --wide' or '--csv' shows them in full")
    return "\n".join(lines)
