"""``horos-backup verify --mirror``: check the primary and each mirror copy against the ledger's SHA-256.

For each ZIP (in path order, resumable: ``.tmp/verify_mirror_state.json`` keeps each destination's
cursor, and a finished pass starts over, so repeated short runs rotate through the archive):

* the mirror copy missing or damaged, the primary good: copied again (``MIRROR_COPY_BAD``);
* the primary missing or damaged (or already flagged by ``verify``), the mirror copy good: **the primary
  is restored from the mirror** (``MIRROR_RESTORED``) instead of being exported again from a Horos that
  may no longer hold the study: fetched into a temp name beside it, its SHA-256 and every member checked,
  synced, the damaged file moved to ``.quarantine/``, then published without replacing anything;
* both bad: the primary is flagged as ``verify`` does (the study is queued for export again).

It writes into the backup folder, so it holds the run lock, and the mirror lock (docs/design/mirror.md §6).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from horos_async import durable, guards
from horos_async.backup import archive, reconcile, zipcheck
from horos_async.backup.identity import read_identity
from horos_async.backup.months import withdraw_month_marker
from horos_async.blocking import offload
from horos_async.codes import IssueCode
from horos_async.config import Config, MirrorConfig
from horos_async.errors import LockHeld, MirrorError
from horos_async.ops.mirror_dest import Destination, Item, sha256_of
from horos_async.ops.mirror_run import destination
from horos_async.state.ledger import Ledger
from horos_async.state.ledger_mirror import KIND_ZIP, MirrorBook

STATE_NAME = "verify_mirror_state.json"
BATCH = 50


@dataclass
class MirrorCheck:
    """What ``verify --mirror`` did at one destination."""

    dest: str
    checked: int = 0
    good: int = 0
    recopied: int = 0
    restored: int = 0
    both_bad: int = 0
    finished: bool = False
    failed: str = ""
    problems: List[str] = field(default_factory=list)


class MirrorVerifier:
    """One ``verify --mirror`` invocation; ``request_stop()`` is signal-safe."""

    def __init__(self, cfg: Config, *, only: Optional[str] = None, restart: bool = False,
                 max_zips: Optional[int] = None, max_minutes: Optional[float] = None,
                 progress: Callable[[str], None] = lambda line: None) -> None:
        self.cfg, self.only, self.restart = cfg, only, restart
        self.max_zips, self.max_minutes, self.progress = max_zips, max_minutes, progress
        self.cancel = threading.Event()
        self.results: List[MirrorCheck] = []
        self.t0 = time.monotonic()
        self.done = 0

    def request_stop(self) -> None:
        self.cancel.set()

    @property
    def state_path(self) -> Path:
        return self.cfg.work_dir / STATE_NAME

    def _stop(self) -> bool:
        return (self.cancel.is_set() or (self.max_zips is not None and self.done >= self.max_zips)
                or (self.max_minutes is not None and time.monotonic() - self.t0 > self.max_minutes * 60))

    async def run(self) -> List[MirrorCheck]:
        cfg = self.cfg
        targets = [m for m in cfg.mirror if self.only in (None, m.dest)]
        if not targets:
            raise MirrorError("no mirror destination is configured: add a [mirror] table (README 'Mirror')")
        guards.check_sentinel(cfg)
        await offload(durable.ensure_dir, cfg.work_dir)
        try:
            lock = guards.RunLock(cfg.lock_path).acquire()
        except LockHeld:
            raise LockHeld("a backup run is in progress; try 'verify --mirror' again later") from None
        try:
            mlock = guards.RunLock(cfg.work_dir / "mirror.lock").acquire()
        except LockHeld:
            lock.release()
            raise LockHeld("a 'horos-backup mirror' is running; try 'verify --mirror' again later") from None
        try:
            state = {} if self.restart else self._load()
            async with Ledger(cfg.ledger_path, cfg.issues_csv, names_in_csv=cfg.log_patient_names) as ledger:
                for m in targets:
                    if self._stop():
                        break
                    r = MirrorCheck(m.dest)
                    self.results.append(r)
                    try:
                        await self._dest(ledger, MirrorBook(ledger), m, r, state)
                    except MirrorError as exc:
                        r.failed = str(exc)
                        self.progress(f"verify --mirror: {exc}")
                    finally:
                        await offload(durable.write_atomic, self.state_path,
                                      json.dumps(state).encode(), overwrite=True)
        finally:
            mlock.release()
            lock.release()
        return self.results

    def _load(self) -> Dict[str, str]:
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    async def _dest(self, ledger: Ledger, book: MirrorBook, m: MirrorConfig, r: MirrorCheck,
                    state: Dict[str, str]) -> None:
        dest = destination(self.cfg, m)
        await offload(dest.check)
        rows = {z.path: (z.size, z.sha256, "ok") for z in await book.zips()}
        for path, size, sha, status in await book.bad_zips():
            rows[path] = (size, sha, status)
        cursor = state.get(m.dest, "")
        todo = sorted(p for p in rows if p > cursor)
        if cursor and not todo:  # the last pass finished: rotate back to the start
            todo, cursor = sorted(rows), ""
        for start in range(0, len(todo), BATCH):
            if self._stop():
                return
            whole = todo[start:start + BATCH]
            batch = whole[:max(0, self.max_zips - self.done)] if self.max_zips is not None else whole
            await self._batch(ledger, book, dest, m, r, batch, rows)
            state[m.dest] = batch[-1]
            self.done += len(batch)
            self.progress(f"verify --mirror {m.dest}: {r.checked} ZIPs checked, {r.recopied} copied again, "
                          f"{r.restored} restored from the mirror")
            if len(batch) < len(whole) or (self._stop() and start + BATCH < len(todo)):
                return  # --max-zips or --max-minutes: the next verify --mirror goes on from here
        r.finished = True
        state[m.dest] = ""

    async def _batch(self, ledger: Ledger, book: MirrorBook, dest: Destination, m: MirrorConfig, r: MirrorCheck,
                     batch: List[str], rows: Dict[str, Tuple[int, str, str]]) -> None:
        copies = await book.copies(m.dest)
        stored = [copies[p].stored_as for p in batch if p in copies and copies[p].status == "ok"]
        there = await offload(dest.hashes, stored) if stored else {}
        good_copies, recopy = [], []
        for path in batch:
            size, sha, status = rows[path]
            primary = await offload(self._primary, path, size, sha, status)
            copy = copies.get(path)
            seen = there.get(copy.stored_as) if copy is not None and copy.status == "ok" else None
            want = sha or (copy.sha256 if copy else "")
            mirror_good = seen is not None and seen[0] == size and (m.verify == "size" or seen[1] == want)
            r.checked += 1
            if primary == "good" and mirror_good:
                r.good += 1
                good_copies.append(path)
            elif primary == "good":
                if copy is not None:
                    why = "missing" if seen is None else "damaged"
                    await book.forget(m.dest, [path], why)
                    await ledger.issue(IssueCode.MIRROR_COPY_BAD, f"{m.dest}: the copy of {path} is {why}; copied again",
                                       zip_path=path)
                recopy.append(Item(path, self.cfg.backup_dir / path, size, sha, KIND_ZIP))
            elif mirror_good and want:
                await self._restore(ledger, book, dest, path, copy.stored_as, size, want, primary, r)
            else:
                r.both_bad += 1
                r.problems.append(f"{path}: the primary is {primary} and no good mirror copy exists at {m.dest}")
                if status == "ok":
                    await self._flag(ledger, path, primary)
        await book.mark_verified(m.dest, good_copies)
        if recopy:
            placed, failed = await offload(dest.put, recopy, self.cancel)
            await book.record_copies(m.dest, [(p.item.rel, p.item.kind, p.item.size, p.sha256, p.stored_as)
                                              for p in placed])
            r.recopied += len(placed)
            r.problems += [why for _, why in failed]

    def _primary(self, path: str, size: int, sha: str, status: str) -> str:
        """Blocking: ``good``, ``missing`` or ``damaged`` (by its SHA-256, or its members without one)."""
        if status != "ok":
            return "missing" if not (self.cfg.backup_dir / path).exists() else "damaged"
        full = self.cfg.backup_dir / path
        try:
            n, h = sha256_of(full)
        except FileNotFoundError:
            return "missing"
        if n != size:
            return "damaged"
        if sha:
            return "good" if h == sha else "damaged"
        try:
            zipcheck.verify_stored(full, deep=True, cancel=self.cancel)
        except archive.ZipInvalid:
            return "damaged"
        return "good"

    async def _restore(self, ledger: Ledger, book: MirrorBook, dest: Destination, path: str, stored_as: str,
                       size: int, sha: str, primary: str, r: MirrorCheck) -> None:
        final = self.cfg.backup_dir / path
        try:
            ident = await offload(self._fetch_checked, dest, final, stored_as, size, sha)
        except (OSError, archive.ZipInvalid, MirrorError) as exc:
            r.problems.append(f"{path}: could not be restored from {dest.label} ({exc})")
            return
        await book.zip_restored(path, ident or {})
        detail = (f"{path} was {primary} on the backup disk; put back from the verified copy at {dest.label} "
                  f"(SHA-256 {sha[:12]}...), not exported again")
        await ledger.issue(IssueCode.MIRROR_RESTORED, detail, (ident or {}).get("key", ""),
                           (ident or {}).get("uid", ""), path)
        r.restored += 1
        self.progress(f"verify --mirror: {detail}")

    def _fetch_checked(self, dest: Destination, final: Path, stored_as: str, size: int, sha: str) -> Optional[dict]:
        """Blocking: fetch the mirror copy beside ``final``, check it (hash, every member), sync, move a
        damaged primary to ``.quarantine/``, publish; the ZIP's identity."""
        created = durable.ensure_dir(final.parent)
        tmp = durable.temp_path_for(final, f"{os.getpid()}-restore")
        try:
            dest.fetch(stored_as, tmp)
            n, h = sha256_of(tmp)
            if (n, h) != (size, sha):
                raise MirrorError(f"the fetched copy is {n} bytes, SHA-256 {h[:12]}..., not {size}, {sha[:12]}...")
            zipcheck.verify_zip(tmp, deep=True, cancel=self.cancel)
            with open(tmp, "rb+") as f:
                durable.sync_file(f, path=tmp)
            if os.path.lexists(final):  # the damaged primary: kept aside, never deleted
                if reconcile.quarantine(self.cfg, final.relative_to(self.cfg.backup_dir).as_posix()) is None:
                    raise MirrorError(f"the damaged {final.name} could not be moved to .quarantine/")
            durable.publish(tmp, final, created_dirs=created)
            return read_identity(final)
        finally:
            durable.discard(tmp)

    async def _flag(self, ledger: Ledger, path: str, primary: str) -> None:
        """Both copies bad: as ``verify`` does, the study is queued for export again."""
        month = path.split("/", 1)[0] if "/" in path else ""
        if primary == "damaged":
            await offload(reconcile.quarantine, self.cfg, path)
        if month:
            await offload(withdraw_month_marker, self.cfg, month)
        code = IssueCode.ZIP_MISSING if primary == "missing" else IssueCode.ZIP_INVALID
        detail = f"{path} is {primary} and no mirror holds a good copy; the study is queued for export again"
        key = await ledger.mark_zip_bad(path, "missing" if primary == "missing" else "bad", code, detail)
        await ledger.issue(code, detail, key or "", (key or "").split("|", 1)[0], path)


def summary(results: List[MirrorCheck]) -> List[str]:
    """One line per destination."""
    out = []
    for r in results:
        if r.failed:
            out.append(f"verify --mirror {r.dest}: FAILED: {r.failed}")
            continue
        state = "pass finished" if r.finished else "pass continues next time"
        out.append(f"verify --mirror {r.dest}: {r.checked} ZIPs checked, {r.good} good on both, {r.recopied} mirror "
                   f"copies copied again, {r.restored} primary ZIPs restored from the mirror, {r.both_bad} bad on "
                   f"both ({state})")
        out += [f"  {p}" for p in r.problems[:20]]
    return out
