"""From Horos rows and the ledger to a plan: which studies are due, in which order, with which files.

``scan`` walks every eligible study (short pages, bounded memory: only the next ``limit`` due studies
are kept) and counts the archive; ``plan_batch`` reads one batch in one short transaction and, with
the database released, resolves and stats the files and names the ZIPs.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from horos_async import naming
from horos_async.blocking import Offload, offload as default_offload
from horos_async.config import Config
from horos_async.horos_db import HorosReader, ImageRef, resolve_image_path
from horos_async.state.ledger_records import Entry
from horos_async.models import DONE, PlannedFile, SourceFile, StudyPlan, StudyRow, study_key
from horos_async.timezones import cocoa_to_local, cocoa_to_unix

INF = float("inf")


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
    """Failed earlier, waiting for their retry time."""
    months: Dict[str, List[int]] = field(default_factory=dict)
    """month -> [eligible, done]."""
    renames: List[Tuple[str, str]] = field(default_factory=list)
    """(former key, key) of known studies whose patientUID Horos changed (see ``_moved_entry``)."""
    pk_changes: List[Tuple[str, int]] = field(default_factory=list)
    """(key, Z_PK) of known studies whose row id differs from the ledger's (after a Horos rebuild)."""

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


def classify(entry: Optional[Entry], date_added: Optional[float], cfg: Config, now: float) -> str:
    """``done``, ``waiting``, ``backoff`` or a due reason (``new``, ``retry``, ``requeued``, ``changed``).

    ``date_added`` is Unix seconds of Horos's last import into the study (None if unknown).
    """
    if entry is not None and entry.state == DONE:
        if entry.date_added is None or date_added is None or abs(entry.date_added - date_added) < 0.5:
            return "done"
        changed = True
    else:
        changed = False
    if date_added is not None and now - date_added < cfg.stability_minutes * 60.0:
        return "waiting"
    if changed:
        if entry.next_attempt and entry.next_attempt > now:
            return "done"  # a newer version failed recently; the older ZIP still stands
        return "changed"
    if entry is None:
        return "new"
    if entry.next_attempt and entry.next_attempt > now:
        return "backoff"
    return "retry" if entry.state != "pending" else "requeued"


async def scan(reader: HorosReader, index: Dict[str, Entry], cfg: Config, now: float,
               limit: int, attempted: frozenset = frozenset()) -> Tuple[List[Candidate], Totals]:
    """Count the archive and return the first ``limit`` due studies in export order.

    ``attempted`` holds the keys already tried in this run: they are never offered twice in one run.
    Study rows sharing a StudyInstanceUID and patientUID are one study (Horos files them together):
    it is judged on the newest import of all its rows, and every row's images go into its ZIP.
    Memory stays bounded: one key and row id per study, and at most a few ``limit`` due.
    """
    totals = Totals()
    first: Dict[str, int] = {}  # key -> Z_PK of its first row
    more: Dict[str, List[int]] = {}  # key -> Z_PK of its other rows (duplicate rows only)
    due: List[Candidate] = []
    months = _MonthCache(reader)
    by_pk = getattr(index, "by_pk", None)
    async for pk, uid, patient_uid, date, added in reader.iter_scan_rows():
        key = study_key(uid, patient_uid)
        if key in first:  # judged again below, once all its rows are known
            more.setdefault(key, []).append(pk)
            continue
        first[key] = pk
        entry = index.get(key)
        if entry is None and by_pk:
            entry = _moved_entry(index, by_pk, pk, uid, key, totals, first)
        elif entry is not None and entry.horos_pk != pk:
            totals.pk_changes.append((key, pk))  # renumbered by a Horos rebuild (or not yet recorded)
        added = cocoa_to_unix(added)
        state, month = _judge(entry, key, date, added, cfg, now, attempted, months)
        _tally(totals, month, state, 1)
        if state in DUE_REASONS:
            due.append(_candidate(cfg, key, uid, month, state, date, added, (pk,)))
            if len(due) > 4 * limit + 64:
                due.sort(key=lambda c: c.sort_key)
                del due[limit:]
    if more:
        await _merge_duplicates(reader, first, more, index, cfg, now, attempted, months, totals, due)
    due.sort(key=lambda c: c.sort_key)
    return due[:limit], totals


DUE_REASONS = frozenset(("new", "retry", "requeued", "changed"))


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


class _MonthCache:
    """Month folder of a Core Data date, cached per 15 minutes (every zone offset is a multiple of 15)."""

    def __init__(self, reader: HorosReader) -> None:
        self.zone, self.cache = reader.zone, {}  # type: ignore[var-annotated]

    def __call__(self, date) -> str:
        date = _num(date)
        if date is None:
            return naming.UNDATED_FOLDER
        bucket = int(date // 900)
        month = self.cache.get(bucket)
        if month is None:
            month = self.cache[bucket] = naming.month_folder(cocoa_to_local(date, self.zone))
        return month


def _judge(entry: Optional[Entry], key: str, date, added: Optional[float], cfg: Config, now: float,
           attempted: frozenset, months: _MonthCache) -> Tuple[str, str]:
    state = classify(entry, added, cfg, now)
    if state in DUE_REASONS and key in attempted:
        state = "backoff"
    return state, months(date)


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
    elif state == "backoff":
        totals.backoff += n
    else:
        totals.due += n


def _candidate(cfg: Config, key: str, uid, month: str, state: str, date, added: Optional[float],
               pks: Tuple[int, ...]) -> Candidate:
    first_seen = added if cfg.order_by == "date_added" else _num(date)
    uid = str(uid or "").strip()
    return Candidate((first_seen if first_seen is not None else INF, uid, pks[0]), key, uid, month, state, pks)


async def _merge_duplicates(reader: HorosReader, first: Dict[str, int], more: Dict[str, List[int]], index,
                            cfg: Config, now: float, attempted: frozenset, months: _MonthCache,
                            totals: Totals, due: List[Candidate]) -> None:
    """Judge studies made of several rows again, on the newest ``ZDATEADDED`` of all their rows."""
    keys = list(more)
    for i in range(0, len(keys), 200):  # short reads, a few hundred rows each
        chunk = keys[i:i + 200]
        rows = await reader.scan_rows_by_pk([pk for k in chunk for pk in (first[k], *more[k])])
        by_pk = {r[0]: r for r in rows}
        for key in chunk:
            pks = tuple(pk for pk in (first[key], *more[key]) if pk in by_pk)
            if not pks:
                continue
            _pk, uid, _pu, date, added0 = by_pk[first[key]] if first[key] in by_pk else by_pk[pks[0]]
            dates = [cocoa_to_unix(by_pk[pk][4]) for pk in pks]
            newest = max((d for d in dates if d is not None), default=None)
            old, month = _judge(index.get(key), key, date, cocoa_to_unix(added0), cfg, now, attempted, months)
            new, _ = _judge(index.get(key), key, date, newest, cfg, now, attempted, months)
            due[:] = [c for c in due if c.key != key]
            _tally(totals, month, old, -1)
            _tally(totals, month, new, 1)
            if new in DUE_REASONS:
                due.append(_candidate(cfg, key, uid, month, new, date, newest, pks))


def _num(v) -> Optional[float]:
    try:
        return None if v is None or v == "" else float(v)
    except (TypeError, ValueError):
        return None


def fingerprint(present: Sequence[Tuple[Path, int]], missing: Sequence[str]) -> str:
    """Identity of a study's file set: sorted paths with sizes (missing files count as size -1)."""
    h = hashlib.sha256()
    for line in sorted([f"{p}\t{n}" for p, n in present] + [f"{p}\t-1" for p in missing]):
        h.update(line.encode("utf-8", "surrogateescape"))
        h.update(b"\n")
    return h.hexdigest()


def collect_files(rows: Sequence[Tuple[StudyRow, List[ImageRef]]], cfg: Config,
                  data_root: Path) -> Tuple[List[SourceFile], int, List[str]]:
    """Distinct files of one study (several rows of a multi-frame file are one file), the number of
    image rows, and a description of each row that names no file at all (counted as missing: an
    image the backup cannot hold must never let the study pass as complete)."""
    files: Dict[str, SourceFile] = {}
    nameless: List[str] = []
    image_rows = 0
    for _study, images in rows:
        for img in images:
            image_rows += 1
            path, linked = resolve_image_path(img, data_root, cfg.db_folder_size, cfg.path_map)
            if path is None:
                nameless.append(f"<image row {img.pk} of series {img.series_pk}: no ZPATHNUMBER or ZPATHSTRING>")
                continue
            k = str(path)
            if k not in files:
                files[k] = SourceFile(path=path, series_pk=img.series_pk, series_number=img.series_number,
                                      series_description=img.series_description, modality=img.modality,
                                      instance_number=img.instance_number, linked=linked)
    return naming.sort_files(files.values()), image_rows, nameless


def stat_files(files: Sequence[SourceFile]) -> Tuple[List[Tuple[SourceFile, int]], List[str]]:
    """Sizes of present regular files, and the paths that are missing or unreadable (blocking)."""
    present, missing = [], []
    for f in files:
        try:
            st = os.stat(f.path)
        except OSError:
            missing.append(str(f.path))
            continue
        if not stat.S_ISREG(st.st_mode) or not os.access(f.path, os.R_OK):
            missing.append(str(f.path))
        else:
            present.append((f, st.st_size))
    return present, missing


def build_plan(rows: Sequence[Tuple[StudyRow, List[ImageRef]]], present: List[Tuple[SourceFile, int]],
               missing: List[str], image_rows: int, cfg: Config, entry: Optional[Entry]) -> StudyPlan:
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
                     image_rows=image_rows, version=version, pks=tuple(st.pk for st, _ in rows))


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
        files, image_rows, nameless = collect_files(group, cfg, reader.data_root)
        present, missing = await offload(stat_files, files)
        missing = nameless + missing
        plans.append(build_plan(group, present, missing, image_rows, cfg, index.get(c.key)))
    return plans
