"""ZIP names, month folders and member names: portable, unique, and never outside ``backup_dir``.

The classic name is ``Patient_DOB_StudyDate_UID.zip`` in a ``YYYY_MM`` folder of the study's local
date. Names are ASCII (accents dropped, ``José Conceição`` → ``Jose_Conceicao``; other scripts
transliterated, ``Иванов Пётр`` → ``Ivanov_Petr``), the full
Study Instance UID is always kept (it is how a lost ledger is rebuilt), and the patient part is what
gets shortened to honour ``max_name_length``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import unicodedata
from pathlib import PurePosixPath
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from anyascii import anyascii

from horos_async.models import SourceFile, StudyRow

UNDATED_FOLDER = "undated"
"""Month folder for studies Horos has no date for."""
NO_DATE = "NODATE"
NO_DOB = "NODOB"
UNKNOWN = "UNKNOWN"

# Letters NFKD does not decompose into ASCII + combining marks.
_SPECIAL = str.maketrans({"ß": "ss", "æ": "ae", "Æ": "AE", "ø": "o", "Ø": "O", "œ": "oe", "Œ": "OE",
                          "đ": "d", "Đ": "D", "ł": "l", "Ł": "L", "þ": "th", "Þ": "TH", "ð": "d"})
_UNSAFE = re.compile(r"[^A-Za-z0-9-]+")
_UID_UNSAFE = re.compile(r"[^0-9A-Za-z.-]+")


def transliterate(text: str) -> str:
    """ASCII approximation: ``Conceição`` → ``Conceicao``, ``Иванов^Пётр`` → ``Ivanov^Petr``.

    Latin letters go through NFKD (accents dropped: the names clinics already know stay as they were);
    letters and digits of other scripts (Cyrillic, Greek, Chinese, Japanese, Arabic...) through
    anyascii's tables; what is left (combining marks, symbols, emoji) is dropped.
    """
    text = unicodedata.normalize("NFKD", text.translate(_SPECIAL))
    if text.isascii():
        return text
    return "".join(ch if ch.isascii() else anyascii(ch) if unicodedata.category(ch)[0] in "LN" else ""
                   for ch in text)


def clean_component(text: Optional[str], fallback: str = UNKNOWN, limit: int = 0) -> str:
    """A safe name part: ASCII letters, digits and ``-`` joined by ``_``; never empty, ``.`` or ``..``."""
    out = _UNSAFE.sub("_", transliterate(text or "")).strip("_")
    if limit and len(out) > limit:
        out = out[:limit].rstrip("_")
    return out or fallback


def clean_uid(uid: str) -> str:
    """A Study UID as a name part: digits and dots kept; anything odd (Horos stores the patient name
    when the tag is missing) made safe; never starts with a dot."""
    out = _UID_UNSAFE.sub("_", transliterate(uid or "")).strip("._")
    return out or UNKNOWN


def month_folder(study_date: Optional[dt.datetime]) -> str:
    """``YYYY_MM`` of the study's local date, or ``undated``."""
    if study_date is None:
        return UNDATED_FOLDER
    return f"{study_date.year:04d}_{study_date.month:02d}"


def pseudonym(study: StudyRow) -> str:
    """A stable patient pseudonym: ``P`` + 12 hex digits of SHA-256 of the patient key."""
    basis = study.patient_uid or f"{study.patient_name}|{study.patient_id}"
    return "P" + hashlib.sha256(basis.encode("utf-8")).hexdigest()[:12]


def zip_stem(study: StudyRow, *, max_length: int = 128, naming: str = "classic", suffix: str = "") -> str:
    """The ZIP name without ``.zip``: patient part shortened to fit, UID and ``suffix`` kept whole."""
    date = study.study_date.strftime("%Y%m%d") if study.study_date else NO_DATE
    uid = clean_uid(study.uid)
    if naming == "pseudonymous":
        return f"{pseudonym(study)}_{date}_{uid}{suffix}"
    dob = study.birth_date.strftime("%Y%m%d") if study.birth_date else NO_DOB
    tail = f"_{dob}_{date}_{uid}{suffix}"
    room = max(1, max_length - len(tail))
    patient = clean_component(study.patient_name, limit=room)
    return f"{patient}{tail}"


def zip_relpath(study: StudyRow, *, max_length: int = 128, naming: str = "classic",
                version: int = 1, dedup: int = 1) -> str:
    """``YYYY_MM/<stem>.zip`` relative to ``backup_dir``; ``_v2`` marks a later version and ``_d2`` a
    second study that would otherwise get the same name."""
    suffix = (f"_v{version}" if version > 1 else "") + (f"_d{dedup}" if dedup > 1 else "")
    stem = zip_stem(study, max_length=max_length, naming=naming, suffix=suffix)
    return f"{month_folder(study.study_date)}/{stem}.zip"


_ZIP_NAME = re.compile(r"_(?P<uid>[0-9A-Za-z.-]+?)(?:_v(?P<v>\d+))?(?:_d(?P<d>\d+))?\.zip$")


def parse_zip_name(name: str) -> Optional[Tuple[str, int]]:
    """Recover (UID, version) from a ZIP file name, or None if it is not one of ours."""
    m = _ZIP_NAME.search(name)
    if not m:
        return None
    return m.group("uid"), int(m.group("v") or 1)


# Our ZIP names end ``_<DOB|NODOB>_<date|NODATE>_<UID>[_vN][_dN].zip`` (classic) or start
# ``P<hash>_<date|NODATE>_`` (pseudonymous); ``…_`` is a name already redacted. The greedy ``.*`` finds
# the last date pair, so a patient part with digits in it never counts as the UID.
_REDACT = re.compile(r"^\.?(?:…|P[0-9a-f]{12}_(?:\d{8}|NODATE)|.*_(?:\d{8}|NODOB)_(?:\d{8}|NODATE))"
                     r"_(?P<uid>[0-9A-Za-z._-]+?)(?P<sfx>(?:_v\d+)?(?:_d\d+)?)\.zip(?P<tail>\.[^/]*\.partial)?$")


def redact_zip_path(path: str, keep_names: bool = False) -> str:
    """A ZIP path fit for logs and ``issues.csv``: the patient's name and birth date are dropped.

    ``2024_03/Souza_Vitoria_19900101_20240305_1.2.3_v2.zip`` → ``2024_03/…_1.2.3_v2.zip``; the folder,
    the Study UID, ``_vN``/``_dN`` and a temp file's tail (``.zip.<tag>.partial``, with its leading dot)
    are kept. Any other ``.zip`` name, or a ZIP's shortened temp name (``.<stem>~.<tag>.partial``), may
    carry a name too and becomes ``<folder>/<hidden>.zip`` (``.partial``); names that are neither (a
    ``.month_done``, ``status.json``'s temp) are returned as given. With ``keep_names``
    (``log_patient_names = true``) the path is returned as given.
    """
    path = str(path)
    if keep_names:
        return path
    folder, slash, name = path.rpartition("/")
    m = _REDACT.match(name)
    if m:
        dot = "." if name.startswith(".") else ""
        shown = f"{dot}…_{m.group('uid')}{m.group('sfx')}.zip{m.group('tail') or ''}"
    elif name.endswith(".zip") or ".zip." in name or "~." in name:
        shown = "<hidden>" + (".zip" if name.endswith(".zip") else PurePosixPath(name).suffix)
    else:
        shown = name
    return f"{folder}{slash}{shown}"


def series_folder(source: SourceFile) -> str:
    """``S0003_CT_Abdomen_contrast``: series number, modality, description (shortened)."""
    number = source.series_number if source.series_number is not None and source.series_number >= 0 else 0
    modality = clean_component(source.modality, fallback="OT", limit=16)
    desc = clean_component(source.series_description, fallback="", limit=40)
    return f"S{number:04d}_{modality}" + (f"_{desc}" if desc else "")


def _extension(source: SourceFile) -> str:
    ext = PurePosixPath(source.path.name).suffix.lower()
    return ext if re.fullmatch(r"\.[a-z0-9]{1,5}", ext) else ""


def member_names(files: Sequence[SourceFile]) -> List[str]:
    """One portable member name per file, in the same order as ``files``.

    Layout: ``<series folder>/IM00001.dcm``. Series are told apart by their Horos series row, so two
    series with the same number and description get ``..._2``; so do two whose folder names differ
    only by case (``Head`` and ``HEAD``), because APFS, HFS+ and exFAT (case-insensitive by default)
    would make them one folder when the ZIP is extracted on a Mac. Files are numbered within their
    series in the order given (the planner sorts by series, then instance number, then path).
    """
    folders: Dict[int, str] = {}
    used = set()  # casefolded folder names already given
    counters: Dict[int, int] = {}
    names = []
    for src in files:
        folder = folders.get(src.series_pk)
        if folder is None:
            base = series_folder(src)
            folder, n = base, 1
            while folder.casefold() in used:
                n += 1
                folder = f"{base}_{n}"
            used.add(folder.casefold())
            folders[src.series_pk] = folder
        counters[src.series_pk] = counters.get(src.series_pk, 0) + 1
        names.append(f"{folder}/IM{counters[src.series_pk]:05d}{_extension(src)}")
    return names


def sort_files(files: Iterable[SourceFile]) -> List[SourceFile]:
    """Member order: series number, series row, instance number, then path."""
    def key(f: SourceFile):
        return (f.series_number if f.series_number is not None else 1 << 30, f.series_pk,
                f.instance_number if f.instance_number is not None else 1 << 30, str(f.path))
    return sorted(files, key=key)


# -- names on an 80-column terminal line (catalog, status) -------------------------------------------------
def printable(text: str) -> str:
    """``text`` safe to print on a terminal: control characters (an ESC sequence in a patient name could
    drive the terminal) shown as ``?``."""
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


def cells(text: str) -> int:
    """Terminal columns ``text`` takes: wide (CJK) characters two, combining marks none."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
               for c in text)


def _take(text: str, width: int) -> str:
    """The longest start of ``text`` that fits in ``width`` columns."""
    used, out = 0, []
    for c in text:
        w = cells(c)
        if used + w > width:
            break
        used += w
        out.append(c)
    return "".join(out)


def fit_end(text: str, width: int) -> str:
    """``text`` in at most ``width`` columns, cut at the end with ``…`` when it does not fit."""
    if cells(text) <= width:
        return text
    return _take(text, max(0, width - 1)) + "…" if width >= 1 else ""


def fit_middle(text: str, width: int) -> str:
    """``text`` in at most ``width`` columns, its middle replaced by ``…`` (keeps a ZIP's month folder
    and the UID at its end)."""
    if cells(text) <= width:
        return text
    if width < 3:
        return fit_end(text, width)
    tail_room = (width - 1) // 2
    tail = _take(text[::-1], tail_room)[::-1]
    return _take(text, width - 1 - cells(tail)) + "…" + tail


def pad(text: str, width: int) -> str:
    """``text`` fitted to ``width`` columns and padded with spaces to exactly that width."""
    text = fit_end(text, width)
    return text + " " * (width - cells(text))
