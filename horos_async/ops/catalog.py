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

from horos_async import guards
from horos_async.backup import reconcile
from horos_async.backup.identity import read_identity
from horos_async.config import Config
from horos_async.errors import LedgerError, VolumeError
from horos_async.state.ledger import open_readonly
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
_SQL = """
SELECT s.patient_name, s.birth_date, s.study_date, s.modalities, s.uid, s.zip_path, s.zip_size, s.files,
       s.exported_at, s.version, s.state, z.status, {last_seen}
FROM studies s LEFT JOIN zips z ON z.zip_path = s.zip_path
{where}
ORDER BY s.study_date, s.uid
"""


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
    where = "" if include_all else "WHERE s.zip_path IS NOT NULL AND s.zip_path != ''"
    try:
        con = open_readonly(path)
        try:
            schema2 = "last_seen" in {r[1] for r in con.execute("PRAGMA table_info(studies)")}
            if only_in_backup:
                where = (where + " AND " if where else "WHERE ") + ("s.last_seen IS NOT NULL" if schema2 else "0")
            records = con.execute(_SQL.format(where=where, last_seen="s.last_seen" if schema2 else "NULL")).fetchall()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"ledger {path} cannot be read ({exc}); use 'catalog --from-zips', and see "
                          f"'horos-backup doctor'") from None
    rows = []
    for (name, dob, date, mods, uid, rel, size, files, exported, version, state, zstatus, last_seen) in records:
        if zstatus and zstatus != "ok":
            state = f"{state} (zip {zstatus})"  # e.g. moved to quarantine by verify, re-export queued
        rows.append(Row(_person(name), _date(dob), _date(date), mods or "", uid or "", rel or "", int(size or 0),
                        int(files or 0), _stamp(exported), int(version or 0), state or "", _stamp(last_seen)[:10]))
    return rows


def from_zips(cfg: Config) -> List[Row]:
    """Rows from the identity comments of the ZIPs on disk (every version), without the ledger."""
    rows = []
    for rel, size in sorted(reconcile.zips_on_disk(cfg.backup_dir).items()):
        ident = read_identity(cfg.backup_dir / rel)
        if ident is None:
            rows.append(Row("", "", "", "", "", rel, size, 0, "", 0, "not a horos-backup ZIP"))
            continue
        rows.append(Row(_person(ident.get("patient_name")), _date(ident.get("birth_date")),
                        _date(ident.get("study_date")), str(ident.get("modalities") or ""), str(ident.get("uid") or ""),
                        rel, size, int(ident.get("files") or 0), _stamp(ident.get("exported_at")),
                        int(ident.get("version") or 0), "on disk" if ident.get("state", "done") == "done"
                        else f"on disk ({ident.get('state')})"))
    rows.sort(key=lambda r: (r.study_date, r.study_uid, r.version))
    return rows


def _fold(text: str) -> str:
    return " ".join(transliterate(text.replace("^", " ")).lower().split())


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


def to_table(rows: List[Row], name_width: int = 32) -> str:
    """An aligned text table for the terminal."""
    def short(text: str, width: int) -> str:
        return text if len(text) <= width else text[:width - 1] + "…"

    head = ("Patient", "Born", "Study date", "Mod", "Study UID", "ZIP", "MB", "Exported", "v", "State")
    body = [(short(r.patient_name, name_width), r.birth_date, r.study_date, r.modalities, r.study_uid, r.zip_path,
             f"{r.zip_bytes / 1e6:.1f}", r.exported_at[:16], str(r.version),
             r.state + (f", only in the backup since {r.only_in_backup_since}" if r.only_in_backup_since else ""))
            for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip() for b in body]
    lines.append(f"{len(rows)} stud{'y' if len(rows) == 1 else 'ies'}")
    return "\n".join(lines)
