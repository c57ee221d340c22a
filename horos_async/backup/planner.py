"""From Horos rows and the ledger to a plan: which studies are due, in which order, with which files.

``scan`` walks every eligible study (short pages, bounded memory: only the next ``limit`` due studies
are kept) and counts the archive; ``plan_batch`` reads one batch in one short transaction and, with
the database released, resolves and stats the files and names the ZIPs.

What makes an exported study due again, besides a new ``ZDATEADDED``: new image rows since the last
scan (Horos does not refresh ``ZDATEADDED`` for DICOM SR; docs/design/horos-database.md §12), and for a
study waiting for missing files, those files being back (one ``stat`` each, at every scan).
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import hashlib
import math
import os
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from horos_async import naming
from horos_async.blocking import Offload, offload as default_offload
from horos_async.config import Config
from horos_async.horos_db import HorosReader, ImageRef, resolve_image_path
from horos_async.state.ledger_records import Entry
from horos_async.models import DONE, PARTIAL, PlannedFile, SourceFile, StudyPlan, StudyRow
from horos_async.timezones import COCOA_EPOCH_OFFSET, cocoa_to_local

INF = float("inf")
KEPT = (DONE, PARTIAL)
"""Ledger states of a study whose ZIP stands: exported again only when the study changed."""
SECOND_LOOK_CHUNK = 400
"""Study rows read per statement when the scan looks again at some studies (short reads)."""


@dataclass
class Totals:
    """Counts over the whole archive at scan time."""

    eligible: int = 0
    """Studies (by key) with a series in the configured modalities."""
    done: int = 0
    due: int = 0
    """Due now: new, requeued, changed, or retry time reached."""
    waiting: int = 0
    """Not stable yet (images arrived less than ``stability_minutes`` ago)."""
    backoff: int = 0
    """Waiting to retry: failed earlier and waiting for their retry time or their missing files, and
    partial exports (``allow_partial``) waiting for their missing files."""
    months: Dict[str, List[int]] = field(default_factory=dict)
    """month -> [eligible, done]."""
    renames: List[Tuple[str, str]] = field(default_factory=list)
    """(former key, key) of known studies whose patientUID Horos changed (see ``_moved_entry``)."""
    pk_changes: List[Tuple[str, int]] = field(default_factory=list)
    """(key, Z_PK) of known studies whose row id differs from the ledger's (after a Horos rebuild)."""
    grown: List[str] = field(default_factory=list)
    """Keys of exported studies found with new image rows, not yet flagged in the ledger."""
    rows_mark: Optional[Tuple[str, int]] = None
    """Where Horos's image rows stood at this scan (None: where the ledger's mark says); the engine
    records it with ``grown`` (``Ledger.note_growth``) so the next scan looks only at rows added after it."""
    waiting_files: List[str] = field(default_factory=list)
    """Keys of studies whose recorded missing files are still missing (``plan`` lists the paths)."""

    @property
    def pending(self) -> int:
        """Eligible studies not (or no longer) backed up."""
        return self.eligible - self.done


@dataclass(frozen=True)
class Candidate:
    """A due study found by the scan."""

    sort_key: tuple
    key: str
    uid: str
    month: str
    reason: str
    """``new``, ``retry``, ``requeued`` or ``changed``."""
    pks: Tuple[int, ...] = ()
    """``ZSTUDY.Z_PK`` of every row of the study (several when rows share the UID and patientUID)."""


def classify(entry: Optional[Entry], date_added: Optional[float], cfg: Config, now: float, *,
             grown: bool = False, files_back: bool = False, retry_failed: bool = False) -> str:
    """``done``, ``partial``, ``waiting``, ``backoff`` or a due reason (``new``, ``retry``, ``requeued``,
    ``changed``).

    ``date_added`` is Unix seconds of Horos's last import into the study (None if unknown); ``grown``:
    the study has image rows its ZIP lacks; ``files_back``: the missing files it waits for are back
    (a retry is due at once); ``retry_failed``: ``run --retry-failed``, no study waits for its retry time.
    A ``partial`` study (exported with files missing) is judged like a done one: exported again only
    when it changed, never on every run.
    """
    if entry is not None and entry.state in KEPT:
        moved = entry.date_added is not None and date_added is not None and abs(entry.date_added - date_added) >= 0.5
        if not (moved or grown or entry.grown or files_back):
            return entry.state
        changed = True
    else:
        changed = False
    if date_added is not None and now - date_added < cfg.stability_minutes * 60.0:
        return "waiting"
    holding = (entry is not None and entry.next_attempt and entry.next_attempt > now and not retry_failed
               and not files_back)
    if changed:
        return entry.state if holding else "changed"  # a newer version failed recently: the older ZIP stands
    if entry is None:
        return "new"
    if holding:
        return "backoff"
    return "retry" if entry.state != "pending" else "requeued"


async def scan(reader: HorosReader, index: Dict[str, Entry], cfg: Config, now: float,
               limit: int, attempted: frozenset = frozenset(), retry_failed: bool = False
               ) -> Tuple[List[Candidate], Totals]:
    """Count the archive and return the first ``limit`` due studies in export order.

    ``attempted`` holds the keys already tried in this run: they are never offered twice in one run.
    Study rows sharing a StudyInstanceUID and patientUID are one study (Horos files them together):
    it is judged on the newest import of all its rows, and every row's images go into its ZIP.
    Memory stays bounded: one key and row id per study, and at most a few ``limit`` due.
    """
    totals = Totals()
    first: Dict[str, int] = {}  # key -> Z_PK of its first row
    more: Dict[str, List[int]] = {}  # key -> Z_PK of its other rows (duplicate rows only)
    again: Set[str] = set()  # keys judged again once every row is known (see _second_look)
    due: List[tuple] = []  # Candidate fields as tuples (cheap to make and sort); the first `limit` become Candidates
    months = _MonthCache(reader.zone)
    by_pk = getattr(index, "by_pk", None)
    waiting = getattr(index, "missing", None) or {}
    touched = await _new_rows(reader, index, totals)
    count = touched is None and any(e.state in KEPT for e in index.values())  # no mark: count every study once
    grown: Set[str] = set()
    cap = 4 * limit + 64
    settled = now - cfg.stability_minutes * 60.0  # imported before this: stable
    tally: Dict[Tuple[str, str], int] = {}  # (month, state) -> studies; folded into totals at the end
    # The loop below runs once per study of the archive (130,000 in 1.5 s at most): it calls classify
    # only for the uncommon cases, and keeps the month of each UTC day it has seen.
    for_day: Dict[int, str] = {}
    async for page in reader.scan_pages(count):
        for pk, uid, patient_uid, date, added, image_rows, series in page:
            key = f"{(uid or '').strip()}|{patient_uid or ''}"  # models.study_key, for the text the reader gives
            if key in first:  # judged again below, once all its rows are known
                more.setdefault(key, []).append(pk)
                continue
            first[key] = pk
            entry = index.get(key)
            if entry is None:
                if by_pk:
                    entry = _moved_entry(index, by_pk, pk, uid, key, totals, first)
            elif entry.horos_pk != pk:
                totals.pk_changes.append((key, pk))  # renumbered by a Horos rebuild (or not yet recorded)
            added = _num(added)
            if added is not None:
                added += COCOA_EPOCH_OFFSET
            if entry is None and key not in attempted:
                state = "waiting" if added is not None and added > settled else "new"
            elif (entry is not None and entry.state in KEPT and not entry.grown
                  and (entry.date_added is None or added is None or abs(entry.date_added - added) < 0.5)):
                state = entry.state
                if count and _grew(entry, image_rows, series):
                    grown.add(key)
                    state = _judge(entry, key, added, cfg, now, attempted, retry_failed, grown=True)
            else:
                state = _judge(entry, key, added, cfg, now, attempted, retry_failed)
            date = _num(date)
            if date is None:
                month = naming.UNDATED_FOLDER
            else:
                day = int(date // DAY)
                month = for_day.get(day)
                if month is None:
                    month = months(date, day)
                    for_day[day] = month if months.whole_day else None
            tally[month, state] = tally.get((month, state), 0) + 1
            if state in DUE_REASONS:
                due.append(_due(cfg, key, uid, month, state, date, added, (pk,)))
                if len(due) > cap:
                    due.sort()
                    del due[limit:]
            elif entry is not None and (key in waiting or (touched and pk in touched and entry.state in KEPT)):
                again.add(key)
    for (month, state), n in tally.items():
        _tally(totals, month, state, n)
    again.update(more)
    if again:
        await _second_look(reader, again, first, more, index, cfg, now, attempted, retry_failed, months, totals,
                           due, touched, count, grown, waiting)
    totals.grown = sorted(grown)
    due.sort()
    return [Candidate(*d) for d in due[:limit]], totals


DUE_REASONS = frozenset(("new", "retry", "requeued", "changed"))


async def _new_rows(reader: HorosReader, index, totals: Totals) -> Optional[Set[int]]:
    """``ZSTUDY.Z_PK`` of the study rows that gained image rows since the ledger's mark; None when every
    exported study must be counted instead (no mark yet, or another store: a Horos rebuild or restore).

    The cost follows the rows added since the last run, not the size of the store
    (docs/design/horos-database.md §12).
    """
    mark = await reader.rows_mark()
    before = getattr(index, "rows_mark", None)
    totals.rows_mark = None if mark == before else mark
    if before is None or before[0] != mark[0] or before[1] > mark[1]:
        return None
    return await reader.studies_with_rows(before[1], mark[1]) if mark[1] > before[1] else set()


async def _second_look(reader: HorosReader, again: Set[str], first: Dict[str, int], more: Dict[str, List[int]],
                       index, cfg: Config, now: float, attempted: frozenset, retry_failed: bool,
                       months: "_MonthCache", totals: Totals, due: List[tuple], touched: Optional[Set[int]],
                       count: bool, grown: Set[str], waiting: Dict[str, List[str]]) -> None:
    """Judge some studies again with what one pass over the rows cannot know, and correct the counts:

    * studies made of several rows: on the newest ``ZDATEADDED`` (and, when counting, the image rows)
      of all their rows;
    * exported studies owning image rows added since the mark: grown (Core Data never reuses a ``Z_PK``);
    * studies waiting for missing files: are those files back?

    ``grown`` holds the keys the walk judged grown; it is corrected here.
    """
    keys = sorted(again)
    back = await _files_back({k: waiting[k] for k in keys if k in waiting}, cfg.allow_partial)
    i = 0
    while i < len(keys):
        chunk, n = [], 0
        while i < len(keys) and n < SECOND_LOOK_CHUNK:
            chunk.append(keys[i])
            n += 1 + len(more.get(keys[i], ()))
            i += 1
        counted = count and any(k in more for k in chunk)
        rows = await reader.scan_rows_by_pk([pk for k in chunk for pk in (first[k], *more.get(k, ()))], counted)
        by_pk = {r[0]: r for r in rows}
        for key in chunk:
            pks = tuple(pk for pk in (first[key], *more.get(key, ())) if pk in by_pk)
            if not pks:
                continue
            entry = index.get(key)
            _pk0, uid, _pu, date, added0 = by_pk[first[key]][:5] if first[key] in by_pk else by_pk[pks[0]][:5]
            newest = max((d for d in (_unix(by_pk[pk][4]) for pk in pks) if d is not None), default=None)
            was = key in grown
            now_grown = was
            if _kept(entry) and not entry.grown:
                if touched is not None:
                    now_grown = any(pk in touched for pk in pks)
                elif counted and len(pks) > 1:
                    now_grown = _grew(entry, sum(by_pk[pk][5] for pk in pks), sum(by_pk[pk][6] for pk in pks))
            (grown.add if now_grown else grown.discard)(key)
            old = _judge(entry, key, _unix(added0), cfg, now, attempted, retry_failed, grown=was)
            new = _judge(entry, key, newest, cfg, now, attempted, retry_failed, grown=now_grown,
                         files_back=key in back)
            if key in waiting and key not in back:
                totals.waiting_files.append(key)
            if old == new and len(pks) == 1:
                continue
            month = months(date)
            if old in DUE_REASONS:
                due[:] = [d for d in due if d[1] != key]
            _tally(totals, month, old, -1)
            _tally(totals, month, new, 1)
            if new in DUE_REASONS:
                due.append(_due(cfg, key, uid, month, new, date, newest, pks))


def _kept(entry: Optional[Entry]) -> bool:
    return entry is not None and entry.state in KEPT


def _grew(entry: Entry, image_rows: int, series: int) -> bool:
    """The study has more image rows (or series) than when it was exported."""
    if entry.image_rows is not None:
        return image_rows > entry.image_rows or (entry.series is not None and series > entry.series)
    # Recorded before the counts were kept, or adopted from a ZIP: more image rows than files in the ZIP
    # may be growth (or multi-frame files); the export finds out, and exports nothing when the files match.
    return entry.files is not None and image_rows > entry.files


async def _files_back(waiting: Dict[str, List[str]], any_back: bool) -> Set[str]:
    """Keys of the studies whose recorded missing files are all back (any of them, with ``allow_partial``);
    a ``stat`` per path, in a thread, stopping at the first that decides."""
    if not waiting:
        return set()
    return await default_offload(_stat_back, waiting, any_back)


def _stat_back(waiting: Dict[str, List[str]], any_back: bool) -> Set[str]:
    out = set()
    for key, paths in waiting.items():
        present = (_is_file(p) for p in paths)
        if (any(present) if any_back else all(present)):
            out.add(key)
    return out


def _is_file(path: str) -> bool:
    """A readable regular file at this absolute path ("<image row ...>" notes never come back)."""
    if not path.startswith("/"):
        return False
    try:
        return stat.S_ISREG(os.stat(path).st_mode) and os.access(path, os.R_OK)
    except (OSError, ValueError):
        return False


def _moved_entry(index: Dict[str, Entry], by_pk, pk: int, uid, key: str, totals: Totals,
                 live: Dict[str, int]) -> Optional[Entry]:
    """The ledger entry of this very row under its former key, when Horos changed its patientUID.

    Same ``Z_PK`` and same StudyInstanceUID: the same study row. The entry is filed under the new key
    here (``index`` is the caller's working copy) and the move listed in ``totals.renames`` for the
    engine to record.
    """
    hit = by_pk.get(pk)
    if (not hit or hit[0] != str(uid or "").strip() or hit[1] == key or hit[1] not in index
            or hit[1] in live):  # the former key still names a study row: not a move
        return None
    entry = index[key] = index.pop(hit[1])
    totals.renames.append((hit[1], key))
    return entry


DAY = 86400.0


class _MonthCache:
    """Month folder of a Core Data date in the reader's zone.

    A date whose whole UTC day (``day``: ``date // 86400``) lies more than a day away from every local
    month start is placed by bisection over the zone's month starts (1900-2100), and ``whole_day`` says
    the answer holds for that day; a date nearer a boundary, or outside that range, is converted exactly
    (cached per 15 minutes: every zone offset is a multiple of 15 minutes).
    """

    def __init__(self, zone: Optional[dt.tzinfo]) -> None:
        self.zone = zone
        self.starts, self.names = _month_starts(zone)
        self.exact: Dict[int, str] = {}
        self.whole_day = False

    def __call__(self, date, day: Optional[int] = None) -> str:
        date = _num(date)
        self.whole_day = False
        if date is None:
            return naming.UNDATED_FOLDER
        low = (date // DAY if day is None else day) * DAY
        starts = self.starts
        i = bisect.bisect_right(starts, low)
        if 0 < i < len(starts) and starts[i - 1] + DAY <= low and low + 2 * DAY <= starts[i]:
            self.whole_day = day is not None
            return self.names[i - 1]
        bucket = int(date // 900)
        month = self.exact.get(bucket)
        if month is None:
            month = self.exact[bucket] = naming.month_folder(cocoa_to_local(date, self.zone))
        return month


@functools.lru_cache(maxsize=4)
def _month_starts(zone: Optional[dt.tzinfo]) -> Tuple[List[float], List[str]]:
    """Core Data seconds of local midnight on the 1st of each month, and the month folder each begins
    (computed once per zone; read only)."""
    starts: List[float] = []
    names: List[str] = []
    for year in range(1900, 2101):
        for month in range(1, 13):
            start = dt.datetime(year, month, 1, tzinfo=zone)
            try:
                value = (start if zone is not None else start.astimezone()).timestamp() - COCOA_EPOCH_OFFSET
            except (OverflowError, OSError, ValueError):
                starts, names = [], []  # the C library cannot place this one: keep only what follows
                continue
            starts.append(value)
            names.append(f"{year:04d}_{month:02d}")
    return starts, names


def _judge(entry: Optional[Entry], key: str, added: Optional[float], cfg: Config, now: float,
           attempted: frozenset, retry_failed: bool, grown: bool = False, files_back: bool = False) -> str:
    state = classify(entry, added, cfg, now, grown=grown, files_back=files_back, retry_failed=retry_failed)
    if state in DUE_REASONS and key in attempted:
        state = "backoff"
    return state


def _tally(totals: Totals, month: str, state: str, n: int) -> None:
    m = totals.months.get(month)
    if m is None:
        m = totals.months[month] = [0, 0]
    totals.eligible += n
    m[0] += n
    if state == "done":
        totals.done += n
        m[1] += n
    elif state == "waiting":
        totals.waiting += n
    elif state in ("backoff", "partial"):
        totals.backoff += n
    else:
        totals.due += n


def _due(cfg: Config, key: str, uid, month: str, state: str, date, added: Optional[float],
         pks: Tuple[int, ...]) -> tuple:
    """A due study as a tuple in :class:`Candidate` field order (sorts by export order)."""
    first_seen = added if cfg.order_by == "date_added" else _num(date)
    uid = (uid or "").strip()
    return ((first_seen if first_seen is not None else INF, uid, pks[0]), key, uid, month, state, pks)


def _num(v) -> Optional[float]:
    """A finite number, or None (NULL, text, infinity, NaN: a malformed date is no date)."""
    if v.__class__ is int:  # the usual case, first
        return v
    if v.__class__ is float:
        return v if v - v == 0.0 else None  # inf - inf and nan - nan are nan
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _unix(v) -> Optional[float]:
    """A Core Data date column as Unix seconds, or None when it holds no usable date."""
    f = _num(v)
    return None if f is None else f + COCOA_EPOCH_OFFSET


def fingerprint(present: Sequence[Tuple[Path, int]], missing: Sequence[str]) -> str:
    """Identity of a study's file set: sorted paths with sizes (missing files count as size -1)."""
    h = hashlib.sha256()
    for line in sorted([f"{p}\t{n}" for p, n in present] + [f"{p}\t-1" for p in missing]):
        h.update(line.encode("utf-8", "surrogateescape"))
        h.update(b"\n")
    return h.hexdigest()


def collect_files(rows: Sequence[Tuple[StudyRow, List[ImageRef]]], cfg: Config,
                  data_root: Path) -> Tuple[List[SourceFile], int, List[str], List[str]]:
    """Distinct files of one study (several rows of a multi-frame file are one file), the number of
    image rows, a description of each row that names no usable file (counted as missing: an image the
    backup cannot hold must never let the study pass as complete), and the ``BAD_ROW`` notes."""
    files: Dict[str, SourceFile] = {}
    nameless: List[str] = []
    bad: List[str] = []
    image_rows = 0
    for study, images in rows:
        bad.extend(study.problems)
        for img in images:
            image_rows += 1
            if img.problem:
                bad.append(f"ZIMAGE Z_PK={img.pk} (series {img.series_pk}): {img.problem}; the file it names "
                           f"cannot be found, so the study is not complete")
                nameless.append(f"<image row {img.pk} of series {img.series_pk}: {img.problem}>")
                continue
            path, linked = resolve_image_path(img, data_root, cfg.db_folder_size, cfg.path_map)
            if path is None:
                nameless.append(f"<image row {img.pk} of series {img.series_pk}: no ZPATHNUMBER or ZPATHSTRING>")
                continue
            k = str(path)
            if k not in files:
                files[k] = SourceFile(path=path, series_pk=img.series_pk, series_number=img.series_number,
                                      series_description=img.series_description, modality=img.modality,
                                      instance_number=img.instance_number, linked=linked)
    return naming.sort_files(files.values()), image_rows, nameless, bad


def row_counts(rows: Sequence[Tuple[StudyRow, List[ImageRef]]], pks: Iterable[int]) -> Tuple[int, int]:
    """(image rows, series holding them) of the study rows ``pks``, as the scan counts them
    (``horos_db.COUNT_COLUMNS``): recorded with the export, compared with the store later."""
    wanted = set(pks)
    images = [img for study, imgs in rows if study.pk in wanted for img in imgs]
    return len(images), len({img.series_pk for img in images})


def stat_files(files: Sequence[SourceFile]) -> Tuple[List[Tuple[SourceFile, int]], List[str]]:
    """Sizes of present regular files, and the paths that are missing or unreadable (blocking)."""
    present, missing = [], []
    for f in files:
        try:
            st = os.stat(f.path)
        except (OSError, ValueError):
            missing.append(str(f.path))
            continue
        if not stat.S_ISREG(st.st_mode) or not os.access(f.path, os.R_OK):
            missing.append(str(f.path))
        else:
            present.append((f, st.st_size))
    return present, missing


def build_plan(rows: Sequence[Tuple[StudyRow, List[ImageRef]]], present: List[Tuple[SourceFile, int]],
               missing: List[str], image_rows: int, cfg: Config, entry: Optional[Entry],
               counts: Tuple[int, int] = (0, 0), bad_rows: Sequence[str] = ()) -> StudyPlan:
    """Assemble the StudyPlan of one study from its rows and its stat'ed files."""
    study = rows[0][0]
    added = [st.date_added for st, _ in rows if st.date_added is not None]
    if len(rows) > 1 and added:  # judged, and recorded, on the newest import of all its rows
        study = replace(study, date_added=max(added))
    sources = [f for f, _ in present]
    members = naming.member_names(sources)
    planned = tuple(PlannedFile(source=f, member=m, size=n) for (f, n), m in zip(present, members))
    version = 1
    if entry is not None and entry.version >= 1:
        version = entry.version + 1 if entry.state == DONE else entry.version + (1 if entry.zip_path else 0)
    rel = naming.zip_relpath(study, max_length=cfg.max_name_length, naming=cfg.naming, version=version)
    fp = fingerprint([(f.path, n) for f, n in present], missing)
    return StudyPlan(study=study, files=planned, missing=tuple(missing), zip_relpath=rel, fingerprint=fp,
                     image_rows=image_rows, version=version, pks=tuple(st.pk for st, _ in rows),
                     counts=counts, bad_rows=tuple(bad_rows))


async def plan_batch(reader: HorosReader, batch: Sequence[Candidate], cfg: Config, index: Dict[str, Entry],
                     offload: Offload = default_offload) -> List[StudyPlan]:
    """Plans for a batch of candidates; studies deleted from Horos since the scan are dropped (the file
    checks run through ``offload``: the engine's pool, or the loop's default executor)."""
    rows = await reader.read_batch(sorted({pk for c in batch for pk in c.pks}))  # database released here
    by_key: Dict[str, List[Tuple[StudyRow, List[ImageRef]]]] = {}
    for study, images in rows:
        by_key.setdefault(study.key, []).append((study, images))
    plans = []
    for c in batch:
        group = by_key.get(c.key)
        if not group:
            continue
        files, image_rows, nameless, bad = collect_files(group, cfg, reader.data_root)
        present, missing = await offload(stat_files, files)
        missing = nameless + missing
        plans.append(build_plan(group, present, missing, image_rows, cfg, index.get(c.key),
                                row_counts(group, c.pks), bad))
    return plans
