"""``issues.csv``: the ledger's issue log as a spreadsheet a person opens, appended by ``Ledger.issue``.

UTF-8 with a byte-order mark so Excel shows accents; one row per issue, synced before the append
returns. ZIP names carry the patient's name and birth date, so unless ``log_patient_names`` is set the
details are redacted and only a ZIP's month folder is shown.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import re
from pathlib import Path
from typing import Sequence

from horos_async import naming

CSV_HEADER = ["timestamp", "code", "study_uid", "zip", "detail"]


def iso_time(ts: float) -> str:
    """Unix seconds as a local ISO 8601 time with its offset (the ``timestamp`` column)."""
    return dt.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


_TOKEN = re.compile(r"[^\s/'\"(),;:]+")


def redact_zip_names(text: str) -> str:
    """``text`` with every ZIP or temp file name in it redacted by :func:`naming.redact_zip_path`
    (ZIP names carry the patient's name and birth date; ``log_patient_names = false`` hides them)."""
    def one(m: "re.Match[str]") -> str:
        token = m.group()
        core = token.rstrip(".")  # a sentence's full stop is not part of the name
        if core.endswith((".zip", ".partial")):
            return naming.redact_zip_path(core) + token[len(core):]
        return token
    return _TOKEN.sub(one, text)


def append_issue_csv(path: Path, row: Sequence[str]) -> None:
    """Append one row to issues.csv (header written when the file is new; UTF-8 with BOM for Excel)."""
    new = not path.exists()
    buf = io.StringIO()
    w = csv.writer(buf)
    if new:
        w.writerow(CSV_HEADER)
    w.writerow([str(c).replace("\n", " ") for c in row])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    with os.fdopen(fd, "a", encoding="utf-8-sig" if new else "utf-8", newline="") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())
