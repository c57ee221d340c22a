"""``horos-backup plan``: what the next run would export, as a document and as text. Reads only."""

from __future__ import annotations

import time
from typing import Any, Dict, List

from horos_async.backup import planner
from horos_async.codes import IssueCode
from horos_async.config import Config
from horos_async.horos_db import HorosReader
from horos_async.models import DONE, FAILED, PARTIAL
from horos_async.state.ledger_read import LedgerReader, read_index
from horos_async.state.ledger_records import MISSING_KEPT, StateTotals


def _ledger_bytes(cfg: Config) -> Dict[str, int]:
    if not cfg.ledger_path.exists():
        return {"source_bytes_done": 0, "zip_bytes": 0, "failing": 0}
    with LedgerReader.open(cfg.ledger_path) as led:
        totals = led.state_totals()
    done = totals.get(DONE, StateTotals())
    return {"source_bytes_done": done.bytes_in, "zip_bytes": done.zip_bytes,
            "failing": totals.get(FAILED, StateTotals()).studies}


async def build(cfg: Config, *, limit: int) -> Dict[str, Any]:
    """The plan document: totals, the next ``limit`` due studies with their files, and problems."""
    index = read_index(cfg.ledger_path)
    now = time.time()
    async with HorosReader(cfg) as reader:
        candidates, totals = await planner.scan(reader, index, cfg, now, max(1, limit))
        plans = await planner.plan_batch(reader, candidates, cfg, index)
        journal = reader.journal_mode
    reasons = {c.key: c.reason for c in candidates}
    studies: List[Dict[str, Any]] = []
    problems: List[Dict[str, Any]] = []
    for p in plans:
        s = p.study
        studies.append({
            "key": s.key, "uid": s.uid, "horos_pk": s.pk, "patient_name": s.patient_name,
            "birth_date": s.birth_date.isoformat() if s.birth_date else None,
            "study_date": s.study_date.isoformat() if s.study_date else None,
            "modalities": s.modalities, "description": s.description, "reason": reasons.get(s.key, ""),
            "version": p.version, "files": len(p.files), "image_rows": p.image_rows, "bytes": p.total_bytes,
            "zip_path": p.zip_relpath, "missing": list(p.missing),
            "file_paths": [{"path": str(f.source.path), "member": f.member, "size": f.size} for f in p.files],
        })
        for note in p.bad_rows:
            problems.append({"uid": s.uid, "code": IssueCode.BAD_ROW, "zip_path": p.zip_relpath, "detail": note,
                             "first_missing": []})
        if p.missing:
            code = IssueCode.NO_FILES if not p.files else IssueCode.MISSING_FILES
            problems.append({"uid": s.uid, "code": code, "zip_path": p.zip_relpath,
                             "detail": f"{len(p.missing)} of {len(p.missing) + len(p.files)} files missing",
                             "first_missing": list(p.missing[:5])})
    problems += _waiting_for_files(index, totals.waiting_files, now)
    return {
        "generated_at": now, "horos_data": str(cfg.horos_data), "backup_dir": str(cfg.backup_dir),
        "database_journal_mode": journal, "modalities": list(cfg.modalities),
        "totals": {"eligible": totals.eligible, "done": totals.done, "pending": totals.pending,
                   "due_now": totals.due, "waiting_stability": totals.waiting, "waiting_retry": totals.backoff,
                   **_ledger_bytes(cfg), "next_run_bytes": sum(s["bytes"] for s in studies)},
        "months": {m: {"eligible": v[0], "done": v[1]} for m, v in sorted(totals.months.items())},
        "studies": studies, "problems": problems,
    }


def _waiting_for_files(index, keys: List[str], now: float) -> List[Dict[str, Any]]:
    """Problems of the studies waiting (not due in this run) for files still missing: what to bring back.

    Each run checks these paths again (one ``stat`` each) and retries the study as soon as they are back.
    """
    out = []
    for key in keys:
        entry, paths = index.get(key), index.missing.get(key, [])
        if entry is None or not paths:
            continue
        n = f"{len(paths)}{' or more' if len(paths) >= MISSING_KEPT else ''}"
        if entry.state == PARTIAL:
            detail = (f"exported without {n} missing files (allow_partial); a new version is made when one "
                      f"of them is back")
        else:
            retry = entry.next_attempt
            when = "" if not retry or retry <= now else \
                f", or at {time.strftime('%Y-%m-%d %H:%M', time.localtime(retry))}"
            detail = f"waiting: {n} files missing; retried as soon as they are back{when}"
        out.append({"uid": key.split("|", 1)[0], "code": entry.code or IssueCode.MISSING_FILES,
                    "zip_path": entry.zip_path, "detail": detail, "waiting": True, "first_missing": list(paths[:5])})
    return out


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n < 1e9 else f"{n / 1e9:,.2f} GB"


def render(doc: Dict[str, Any]) -> str:
    """Human-readable plan."""
    t = doc["totals"]
    lines = [f"Horos data: {doc['horos_data']}  (journal: {doc['database_journal_mode']})",
             f"Backup to:  {doc['backup_dir']}",
             "",
             f"Archive: {t['eligible']} {'/'.join(doc['modalities'])} studies, {t['done']} backed up "
             f"({_mb(t['source_bytes_done'])}), {t['pending']} pending: {t['due_now']} due now, "
             f"{t['waiting_stability']} still arriving, {t['waiting_retry']} waiting to retry",
             ""]
    if not doc["studies"]:
        lines.append("Nothing is due: the next run has nothing to export.")
    else:
        shown, size = len(doc["studies"]), _mb(t["next_run_bytes"])
        head = f"Next run exports all {t['due_now']} due studies"
        lines.append(f"{head} ({size}):" if shown >= t["due_now"] else
                     f"{head}; the first {shown} ({size}; --limit N lists more):")
        for s in doc["studies"]:
            date = (s["study_date"] or "undated")[:10]
            flag = f"  ({len(s['missing'])} MISSING)" if s["missing"] else ""
            lines.append(f"  {date}  {s['modalities']:<8} {s['files']:>5} files {_mb(s['bytes']):>11}  "
                         f"{s['zip_path']}{flag}")
    if t["failing"]:
        lines += ["", f"{t['failing']} studies failed in earlier runs and wait for a retry: see issues.csv"]
    if doc["problems"]:
        lines += ["", "Problems (these studies will not be marked done):"]
        for p in doc["problems"]:
            first = f"; first: {p['first_missing'][0]}" if p["first_missing"] else ""
            lines.append(f"  {p['code']:<14} {p['uid']}: {p['detail']}{first}")
    return "\n".join(lines)
