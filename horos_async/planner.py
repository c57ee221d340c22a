"""From Horos rows and the ledger to a plan: which studies are due, in which order, with which files.

``scan`` walks every eligible study (short pages, bounded memory: only the next ``limit`` due studies
are kept) and counts the archive; ``plan_batch`` reads one batch in one short transaction and, with
the database released, resolves and stats the files and names the ZIPs.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable, Dict, List, Optional, Sequence, Tuple

from horos_async import naming
from horos_async.config import Config
from horos_async.horos_db import HorosReader, ImageRef, resolve_image_path
from horos_async.ledger import Entry
from horos_async.models import DONE, PlannedFile, SourceFile, StudyPlan, StudyRow
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
    Memory stays bounded: one key per study (to merge duplicate rows) and at most a few ``limit`` due.
    """
    totals = Totals()
    seen = set()
    due: List[Candidate] = []
    by_added = cfg.order_by == "date_added"
    for_month = {}  # month folder per 15-minute bucket: every zone offset is a multiple of 15 minutes
    async for pk, uid, patient_uid, date, added in reader.iter_scan_rows():
        uid = str(uid or "").strip()
        key = f"{uid}|{patient_uid or ''}"
        if key in seen:  # a second row with the same UID and patient: one study, merged later
            continue
        seen.add(key)
        date = _num(date)
        added = cocoa_to_unix(added)
        if date is None:
            month = naming.UNDATED_FOLDER
        else:
            bucket = int(date // 900)
            month = for_month.get(bucket)
            if month is None:
                month = for_month[bucket] = naming.month_folder(cocoa_to_local(date, reader.zone))
        m = totals.months.get(month)
        if m is None:
            m = totals.months[month] = [0, 0]
        totals.eligible += 1
        m[0] += 1
        state = classify(index.get(key), added, cfg, now)
        if state == "done":
            totals.done += 1
            m[1] += 1
        elif state == "waiting":
            totals.waiting += 1
        elif state == "backoff" or key in attempted:
            totals.backoff += 1
        else:
            totals.due += 1
            first = added if by_added else date
            sort_key = (first if first is not None else INF, uid, pk)
            due.append(Candidate(sort_key, key, uid, month, state))
            if len(due) > 4 * limit + 64:
                due.sort(key=lambda c: c.sort_key)
                del due[limit:]
    due.sort(key=lambda c: c.sort_key)
    return due[:limit], totals


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
                  data_root: Path) -> Tuple[List[SourceFile], int]:
    """Distinct files of one study (several rows of a multi-frame file are one file)."""
    files: Dict[str, SourceFile] = {}
    image_rows = 0
    for _study, images in rows:
        for img in images:
            image_rows += 1
            path, linked = resolve_image_path(img, data_root, cfg.db_folder_size, cfg.path_map)
            if path is None:
                continue
            k = os.path.normpath(str(path))
            if k not in files:
                files[k] = SourceFile(path=Path(k), series_pk=img.series_pk, series_number=img.series_number,
                                      series_description=img.series_description, modality=img.modality,
                                      instance_number=img.instance_number, linked=linked)
    return naming.sort_files(files.values()), image_rows


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
    sources = [f for f, _ in present]
    members = naming.member_names(sources)
    planned = tuple(PlannedFile(source=f, member=m, size=n) for (f, n), m in zip(present, members))
    version = 1
    if entry is not None and entry.version >= 1:
        version = entry.version + 1 if entry.state == DONE else entry.version + (1 if entry.zip_path else 0)
    rel = naming.zip_relpath(study, max_length=cfg.max_name_length, naming=cfg.naming, version=version)
    fp = fingerprint([(f.path, n) for f, n in present], missing)
    return StudyPlan(study=study, files=planned, missing=tuple(missing), zip_relpath=rel, fingerprint=fp,
                     image_rows=image_rows, version=version)


Offload = Callable[..., Awaitable]


async def plan_batch(reader: HorosReader, batch: Sequence[Candidate], cfg: Config, index: Dict[str, Entry],
                     offload: Optional[Offload] = None) -> List[StudyPlan]:
    """Plans for a batch of candidates; studies deleted from Horos since the scan are dropped."""
    if offload is None:
        loop = asyncio.get_running_loop()

        def offload(fn, *args):
            return loop.run_in_executor(None, fn, *args)

    rows = await reader.read_batch(sorted({c.uid for c in batch}))  # database released here
    by_key: Dict[str, List[Tuple[StudyRow, List[ImageRef]]]] = {}
    for study, images in rows:
        by_key.setdefault(study.key, []).append((study, images))
    plans = []
    for c in batch:
        group = by_key.get(c.key)
        if not group:
            continue
        files, image_rows = collect_files(group, cfg, reader.data_root)
        present, missing = await offload(stat_files, files)
        plans.append(build_plan(group, present, missing, image_rows, cfg, index.get(c.key)))
    return plans
