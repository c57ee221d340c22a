"""The asyncio engine: one run of ``horos-backup run`` from guards to ledger.

Flow: guards (sentinel, volumes, run lock) → ledger → reconcile the backup folder with the ledger →
INCOMING guard → scan → batches: read one batch (short DB transaction) → up to ``concurrency`` ZIP
jobs at once (blocking zip work in a thread pool sized by the knob; the one offload call site is
``_offload``) → each job: build temp ZIP → verify → publish (rename + dir sync) → ledger commit →
month markers. A failed study is an Outcome record; only run-level faults raise.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import hashlib
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from horos_async import allocator, archive, durable, guards, naming, planner, platform, reconcile
from horos_async.config import Config
from horos_async.errors import EXIT_INTERRUPTED, EXIT_OK, DiskFull, HorosBackupError, VolumeError
from horos_async.horos_db import HorosReader
from horos_async.ledger import Ledger
from horos_async.models import DONE, FAILED, PARTIAL, Outcome, StudyPlan
from horos_async.naming import redact_zip_path
from horos_async.progress import JobProgress, LiveState

log = logging.getLogger("horos_async.engine")
MONTH_MARKER = ".month_done"
LOOKAHEAD_BATCHES = 20
ZIP_OVERHEAD_PER_FILE = 512  # local header + central entry (+ ZIP64 extras) + the name twice, per member
ZIP_OVERHEAD = 64 << 10  # end records and the archive comment
SPACE_POLL_SECONDS = 0.5


@dataclass
class RunResult:
    """What one run did; ``cli`` turns it into a message and exit code."""

    exit_code: int = EXIT_OK
    outcome: str = "ok"
    """``ok``, ``nothing-to-do``, ``paused``, ``interrupted`` or an error class name."""
    message: str = ""
    done: int = 0
    failed: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    eligible: int = 0
    pending: int = 0


def zip_comment(plan: StudyPlan, state: str = DONE) -> bytes:
    """The study identity stored as the ZIP comment: lets a lost ledger be rebuilt from disk."""
    s = plan.study
    return json.dumps({
        "horos_backup": 1, "key": s.key, "uid": s.uid, "patient_uid": s.patient_uid, "horos_pk": s.pk,
        "version": plan.version, "fingerprint": plan.fingerprint, "date_added": s.date_added,
        "files": len(plan.files), "bytes_in": plan.total_bytes, "state": state,
        "study_date": s.study_date.isoformat() if s.study_date else None,
        "birth_date": s.birth_date.isoformat() if s.birth_date else None,
        "patient_name": s.patient_name, "modalities": s.modalities, "exported_at": time.time(),
    }, ensure_ascii=True, separators=(",", ":")).encode("ascii")[:65000]


def members_digest(members) -> str:
    """Short digest of (name, crc, size) of every member: what a ZIP held, for later comparison."""
    h = hashlib.sha256()
    for m in members:
        h.update(f"{m.name}\t{m.crc:08x}\t{m.size}\n".encode())
    return h.hexdigest()


class Engine:
    """One run. Create, then ``await run()``; ``request_stop()`` is safe from a signal handler."""

    def __init__(self, cfg: Config, *, until_done: bool = False, max_studies: Optional[int] = None,
                 max_minutes: Optional[float] = None, clock=time.time, announce=None) -> None:
        self.cfg = cfg
        self.until_done = until_done
        self.max_studies = max_studies
        self.max_minutes = max_minutes
        self.clock = clock
        self.announce = announce or (lambda text: None)
        self.stop: Optional[asyncio.Event] = None  # made inside run(): Python 3.9 binds it to a loop
        self.cancel = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=cfg.concurrency + 1, thread_name_prefix="zip")
        self.result = RunResult()
        self.live = LiveState(cfg.state_dir / "status.json", incoming_limit=cfg.incoming_max_files)
        self.ledger: Optional[Ledger] = None
        self.fatal: Optional[BaseException] = None
        self.started = time.monotonic()
        self.shares_horos_disk = False
        self.attempted: set = set()
        self.processed = 0  # studies planned in this run (for --max-studies)
        self._changed: Optional[asyncio.Event] = None
        self._reserved: set = set()  # ZIP paths chosen by running jobs
        self._reader: Optional[HorosReader] = None  # the open Horos database while exporting
        self._claims: Dict[str, int] = {}  # backup-volume bytes each running job will write at most
        self._space_ok_recorded = False  # DISK_FULL condition cleared in the ledger in this run

    # -- the one place blocking work leaves the event loop -----------------------------------------
    def _offload(self, fn, *args):
        return asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def request_stop(self) -> None:
        """SIGTERM/SIGINT: start no new study, abort running ZIP builds (their temp files are removed)."""
        if self.stop is not None and not self.stop.is_set():
            log.warning("stop requested: finishing cleanly")
        if self.stop is not None:
            self.stop.set()
        self.cancel.set()

    # -- run ---------------------------------------------------------------------------------------
    async def run(self) -> RunResult:
        """Do one run; raises HorosBackupError subclasses for run-level faults."""
        cfg = self.cfg
        self.stop = asyncio.Event()
        if self.cancel.is_set():  # a signal arrived before the loop started
            self.stop.set()
        guards.check_sentinel(cfg)
        guards.check_volumes(cfg)
        allocator.tune()  # before the ZIP threads start: no page-fault churn on their 1 MiB buffers
        durable.ensure_dir(cfg.backup_dir)
        durable.ensure_dir(cfg.state_dir)
        lock = guards.RunLock(cfg.state_dir / "run.lock").acquire()
        publisher = None
        try:
            self.shares_horos_disk = guards.same_device(cfg.backup_dir, cfg.data_root)
            self.ledger = await Ledger(cfg.ledger_path, cfg.issues_csv, names_in_csv=cfg.log_patient_names).open()
            self.live.run_id = await self.ledger.begin_run()
            publisher = asyncio.ensure_future(self._publish_loop())
            try:
                await self._run_inner()
            except HorosBackupError as exc:
                self.result.exit_code = exc.exit_code
                self.result.outcome = type(exc).__name__
                self.result.message = str(exc)
                raise
            finally:
                await self._finish()
        finally:
            if publisher is not None:
                publisher.cancel()
            if self.ledger is not None:
                await self.ledger.close()
            self.pool.shutdown(wait=True)
            lock.release()
        return self.result

    async def _finish(self) -> None:
        r = self.result
        if self.stop.is_set() and r.exit_code == EXIT_OK:
            r.exit_code, r.outcome = EXIT_INTERRUPTED, "interrupted"
            r.message = r.message or "interrupted: stopped cleanly; the next run resumes"
        try:
            await self.ledger.end_run(r.outcome, r.exit_code, r.done, r.failed, r.bytes_in, r.bytes_out, r.message)
        except Exception as exc:  # the backup volume may be gone: the ledger commit is what failed
            log.error("could not record the end of the run in the ledger: %s", exc)
        self.live.state = "paused" if r.outcome == "paused" else "idle"
        self.live.phase = "finished"
        self.live.message = r.message
        self.live.jobs.clear()
        self.live.queued = []
        await self._publish()

    async def _publish_loop(self) -> None:
        """Publish twice a second, and promptly (at most ten times a second) when a job starts or ends."""
        self._changed = asyncio.Event()
        while True:
            self.live.sample()
            await self._publish()
            await asyncio.sleep(0.1)
            try:
                await asyncio.wait_for(self._changed.wait(), 0.4)
            except asyncio.TimeoutError:
                pass
            self._changed.clear()

    def _poke(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def _publish(self) -> None:
        try:
            await self.live.publish()
        except OSError as exc:
            log.debug("live status not written: %s", exc)

    async def _run_inner(self) -> None:
        cfg, r = self.cfg, self.result
        self.live.phase = "reconcile"
        await reconcile.reconcile(cfg, self.ledger, self._offload, self.announce)
        if await self._incoming_busy():
            r.outcome = "paused"
            return
        longer = bool(self.until_done or self.max_studies or self.max_minutes)
        async with HorosReader(cfg) as reader:
            while not (self._should_stop() or self._quota_reached()):
                self.live.phase = "scan"
                index = await self.ledger.index()
                limit = cfg.batch_size * (LOOKAHEAD_BATCHES if longer else 1)
                if self.max_studies:
                    limit = min(limit, max(0, self.max_studies - self.processed))
                candidates, totals = await planner.scan(reader, index, cfg, self.clock(), max(1, limit),
                                                        frozenset(self.attempted))
                for old, new in totals.renames:  # Horos recomputed these patientUIDs: same studies
                    if await self.ledger.rekey(old, new, new.split("|", 1)[1]):
                        log.info("study %s: Horos changed its patientUID; its backup record follows it",
                                 new.split("|", 1)[0])
                self._publish_totals(totals)
                r.eligible, r.pending = totals.eligible, totals.pending
                if not candidates:
                    break
                self.live.phase = "export"
                await self._export_all(reader, candidates, index, one_batch=not longer)
                if not longer or r.outcome == "paused":
                    break
            if r.done or r.failed:
                index = await self.ledger.index()
                _, totals = await planner.scan(reader, index, cfg, self.clock(), 1)
                self._publish_totals(totals)
                r.eligible, r.pending = totals.eligible, totals.pending
                await self._offload(update_month_markers, cfg, totals.months)
            else:
                await self._offload(update_month_markers, cfg, self.live.months)
        if r.outcome == "ok" and not (r.done or r.failed):
            r.outcome = "nothing-to-do"

    def _should_stop(self) -> bool:
        """No new study may start (stop asked, fatal error, guard paused, --max-minutes reached)."""
        if self.stop.is_set() or self.fatal is not None or self.result.outcome == "paused":
            return True
        if self.max_minutes is not None and time.monotonic() - self.started > self.max_minutes * 60:
            return True
        return False

    def _quota_reached(self) -> bool:
        """--max-studies studies have been planned in this run."""
        return self.max_studies is not None and self.processed >= self.max_studies

    def _publish_totals(self, totals: planner.Totals) -> None:
        self.live.totals = {"eligible": totals.eligible, "done": totals.done, "pending": totals.pending,
                            "due": totals.due, "waiting": totals.waiting, "backoff": totals.backoff}
        self.live.months = {k: list(v) for k, v in sorted(totals.months.items())}

    async def _incoming_busy(self) -> bool:
        """True (and a once-per-episode issue) while Horos's INCOMING holds too many files."""
        cfg = self.cfg
        count = await self._offload(guards.incoming_count, cfg.incoming_dir, cfg.incoming_max_files)
        busy = count > cfg.incoming_max_files
        self.live.incoming = {"count": count, "limit": cfg.incoming_max_files, "capped": busy,
                              "checked": time.time()}
        detail = (f"INCOMING.noindex holds more than {cfg.incoming_max_files} files: Horos is importing; "
                  f"backup paused until it catches up")
        if await self.ledger.condition("INCOMING_OVER_LIMIT", busy, detail):
            await self.ledger.issue("INCOMING_OVER_LIMIT", detail)
        if busy:
            self.live.guard_code, self.live.guard_detail = "INCOMING_OVER_LIMIT", detail
            self.result.message = detail
            log.warning(detail)
        else:
            self.live.guard_code = self.live.guard_detail = ""
        return busy

    # -- a batch -----------------------------------------------------------------------------------
    async def _export_all(self, reader: HorosReader, candidates, index, one_batch: bool) -> None:
        """Plan batch after batch (one short DB read each) while ``concurrency`` workers export.

        A small queue between the two keeps every worker busy across batch boundaries; the database is
        never read while a transaction would be held over file I/O.
        """
        cfg = self.cfg
        self._reader = reader
        queue: asyncio.Queue = asyncio.Queue(maxsize=max(2, cfg.concurrency))
        workers = cfg.concurrency

        async def producer() -> None:
            cancelled = False
            try:
                for i in range(0, len(candidates), cfg.batch_size):
                    if self._should_stop() or self._quota_reached():
                        break
                    batch = candidates[i:i + cfg.batch_size]
                    if self.max_studies is not None:
                        batch = batch[:max(0, self.max_studies - self.processed)]
                    plans = await planner.plan_batch(reader, batch, cfg, index, self._offload)
                    self.processed += len(batch)
                    self.attempted.update(c.key for c in batch)
                    self.live.batch_index += 1
                    self.live.queued.extend(_label(p) for p in plans)
                    for plan in plans:
                        # Judge compression here, ahead of the workers: its header reads (a disk seek
                        # each on a cold cache) then overlap the ZIP jobs instead of delaying them.
                        flags = await self._compression_flags(plan, index.get(plan.study.key))
                        await queue.put((plan, flags))
                    if one_batch:
                        break
            except asyncio.CancelledError:
                cancelled = True  # the whole gather is being cancelled: no worker is left to wake
                raise
            finally:
                for _ in range(0 if cancelled else workers):
                    await queue.put(None)

        async def worker() -> None:
            while True:
                item = await queue.get()
                if item is None:
                    return
                plan, flags = item
                if _label(plan) in self.live.queued:
                    self.live.queued.remove(_label(plan))
                if self._should_stop():
                    continue  # drain: studies not started stay due for the next run
                await self._one(plan, index, flags)

        await asyncio.gather(producer(), *(worker() for _ in range(workers)))
        self.live.queued = []
        if self.fatal is not None:
            raise self.fatal

    async def _one(self, plan: StudyPlan, index, flags: Optional[List[bool]] = None) -> None:
        """Guards, then export one study and record its outcome; run-level faults stop the run."""
        if self.cfg.sleep_between_studies and self.stop is not None:  # the throttle; a stop request ends it
            try:
                await asyncio.wait_for(self.stop.wait(), self.cfg.sleep_between_studies)
            except asyncio.TimeoutError:
                pass
        if self._should_stop():
            return
        if await self._incoming_busy():
            self.result.outcome = "paused"
            return
        try:
            outcome = await self._export(plan, index.get(plan.study.key), flags)
        except HorosBackupError as exc:
            if self.fatal is None:
                self.fatal = exc
            self.cancel.set()
            return
        except archive.Cancelled:
            return
        await self._record(plan, outcome)

    async def _record(self, plan: StudyPlan, o: Outcome) -> None:
        r = self.result
        label = o.zip_relpath.rsplit("/", 1)[-1] if o.zip_relpath else plan.zip_relpath.rsplit("/", 1)[-1]
        self.live.finished.append({"uid": plan.study.uid, "label": label, "status": o.status, "code": o.code,
                                   "seconds": round(o.seconds, 2), "bytes": o.bytes_in})
        if o.status in (DONE, PARTIAL):
            r.done += 1
            r.bytes_in += o.bytes_in
            r.bytes_out += o.bytes_out
            self.live.run["studies_done"] += 1
            self.live.run["bytes_in"] += o.bytes_in
            self.live.run["bytes_out"] += o.bytes_out
            where = o.zip_relpath if self.cfg.log_patient_names else o.zip_relpath.split("/", 1)[0]
            log.info("study %s exported to %s (%d files, %.1f MB in %.1fs)", plan.study.uid, where,
                     o.files, o.bytes_in / 1e6, o.seconds)
            self.announce(f"[{r.done + r.failed}] exported {where}/...{plan.study.uid[-12:]}: {o.files} files, "
                          f"{o.bytes_in / 1e6:.1f} MB in {o.seconds:.1f}s")
            if o.status == PARTIAL:
                await self.ledger.issue(o.code, o.detail, plan.study.key, plan.study.uid, o.zip_relpath)
            return
        if o.code == "UNCHANGED":
            await self.ledger.touch_unchanged(plan.study.key, plan.study.date_added)
            return
        r.failed += 1
        self.live.run["studies_failed"] += 1
        log.warning("study %s not exported: %s %s", plan.study.uid, o.code, o.detail)
        self.announce(f"[{r.done + r.failed}] NOT exported {plan.study.uid}: {o.code} {o.detail}")
        entry_done = plan.version > 1
        if await self.ledger.record_failure(plan, o, self.cfg.retry_backoff_minutes, keep_done=entry_done):
            await self.ledger.issue(o.code, o.detail, plan.study.key, plan.study.uid, plan.zip_relpath)

    # -- one study ---------------------------------------------------------------------------------
    async def _export(self, plan: StudyPlan, entry, flags: Optional[List[bool]] = None) -> Outcome:
        cfg, s = self.cfg, plan.study
        t0 = time.monotonic()

        def fail(code: str, detail: str, extra=()) -> Outcome:
            return Outcome(s.key, FAILED, code, detail, files=len(plan.files), seconds=time.monotonic() - t0,
                           extra=tuple(extra))

        if entry is not None and entry.state == DONE and entry.fingerprint == plan.fingerprint:
            return Outcome(s.key, FAILED, "UNCHANGED", "")
        if not plan.files:
            return fail("NO_FILES", f"none of the study's {len(plan.missing)} files exist on disk; "
                                    f"first: {', '.join(plan.missing[:3]) or '-'}", plan.missing[:5])
        state = DONE
        code = detail = ""
        if plan.missing:
            detail = (f"{len(plan.missing)} of {len(plan.missing) + len(plan.files)} files missing; first: "
                      f"{', '.join(plan.missing[:3])}")
            if not cfg.allow_partial:
                return fail("MISSING_FILES", detail, plan.missing[:5])
            state, code = PARTIAL, "PARTIAL"
        await self._claim_space(plan)

        rel = await self._target_path(plan)
        final = cfg.backup_dir / rel
        if flags is None or len(flags) != len(plan.files):
            flags = await self._compression_flags(plan, None)
        members = [archive.Member(source=f.source.path, name=f.member, size=f.size, compress=fl)
                   for f, fl in zip(plan.files, flags)]
        # Write in on-disk order (Horos numbers files as it imports them), not series order: reading
        # sequentially lets the disk read ahead. Member names keep the series layout either way.
        members.sort(key=lambda m: _disk_order(m.source))
        job = JobProgress(uid=s.uid, label=rel.rsplit("/", 1)[-1], files_total=len(members),
                          bytes_total=plan.total_bytes)
        self.live.jobs[s.key] = job
        self._poke()
        plan_for_record = plan if rel == plan.zip_relpath else _with_path(plan, rel)
        try:
            created = await self._offload(durable.ensure_dir, final.parent)
            last_error = ""
            for attempt in range(1, cfg.zip_attempts + 1):
                tmp = durable.temp_path_for(final, f"{os.getpid()}-{attempt}")
                try:
                    built = await self._offload(self._build_and_verify, tmp, members, plan_for_record, state,
                                                job.update)
                except archive.ZipInvalid as exc:
                    last_error = str(exc)
                    log.warning("study %s attempt %d produced an invalid ZIP: %s", s.uid, attempt, exc)
                    durable.discard(tmp)
                    continue
                except archive.SourceMissing as exc:
                    durable.discard(tmp)
                    return fail("MISSING_FILES", f"a file vanished while zipping: {exc}", [str(exc)])
                except archive.SourceReadError as exc:
                    durable.discard(tmp)
                    return fail("READ_ERROR", f"a file could not be read: {exc}", [str(exc)])
                except OSError as exc:
                    durable.discard(tmp)
                    raise await self._backup_fault(exc, plan, rel) from None
                except BaseException:  # Cancelled (another job hit a run-level fault), or the run is stopping
                    durable.discard(tmp)  # a ZIP already built but cut off mid-verify must not linger
                    raise
                try:
                    now_rows = await self._image_rows(plan)
                except BaseException:
                    durable.discard(tmp)
                    raise
                if now_rows is not None and now_rows != plan.image_rows:
                    durable.discard(tmp)
                    return fail("STUDY_CHANGED", f"Horos changed the study while it was zipped ({plan.image_rows} "
                                                 f"image rows planned, {now_rows} now); exported again later")
                try:
                    await self._offload(functools.partial(durable.publish, tmp, final, created_dirs=created))
                except durable.AlreadyExists:
                    durable.discard(tmp)
                    return fail("ZIP_FAIL", f"{redact_zip_path(rel, cfg.log_patient_names)} appeared while this "
                                            f"study was being written; will retry")
                except OSError as exc:
                    durable.discard(tmp)
                    raise await self._backup_fault(exc, plan, rel) from None
                size = final.stat().st_size
                await self.ledger.record_zip(plan_for_record, rel, size, members_digest(built), state, code, detail)
                if not self._space_ok_recorded:  # a ZIP was written: a DISK_FULL episode is over
                    self._space_ok_recorded = True
                    await self.ledger.condition("DISK_FULL", False)
                return Outcome(s.key, state, code, detail, rel, len(built), plan.total_bytes, size,
                               time.monotonic() - t0)
            return fail("ZIP_FAIL", f"{cfg.zip_attempts} attempts produced no valid ZIP; last: {last_error}")
        finally:
            self.live.jobs.pop(s.key, None)
            self._claims.pop(s.key, None)
            self._reserved.discard(rel)
            self._poke()

    def _build_and_verify(self, tmp: Path, members, plan: StudyPlan, state: str, progress):
        """Blocking: build the temp ZIP (synced inside), then read it back fully against the sources."""
        built = archive.build_zip(tmp, members, level=self.cfg.compression_level,
                                  comment=zip_comment(plan, state), progress=progress, cancel=self.cancel)
        archive.verify_zip(tmp, built, deep=True, cancel=self.cancel)
        return built

    async def _claim_space(self, plan: StudyPlan) -> None:
        """Wait until the backup volume has room for this ZIP, the floor, and what the ZIPs being written
        still need; with no other job left to finish, stop the run with DISK_LOW instead.

        Two jobs that each fit alone must not start together on a nearly full disk: the second would
        hit ENOSPC and stop the run, every run, and neither study would ever finish.
        """
        cfg, key = self.cfg, plan.study.key
        own = plan.total_bytes + ZIP_OVERHEAD_PER_FILE * len(plan.files) + ZIP_OVERHEAD
        while True:
            others = {k: max(0, n - (self.live.jobs[k].bytes_done if k in self.live.jobs else 0))
                      for k, n in self._claims.items() if k != key}
            need = guards.space_needed(cfg, own + sum(others.values()), self.shares_horos_disk)
            free = await self._offload(guards.free_bytes, cfg.backup_dir)
            if free >= need:
                break
            if not others:
                msg = (f"only {guards.human_bytes(free)} free on the backup volume, {guards.human_bytes(need)} "
                       f"needed for the next study plus the floor (min_free_gb/horos_free_gb); free space and "
                       f"run again")
                if await self.ledger.condition("DISK_LOW", True, msg):
                    await self.ledger.issue("DISK_LOW", msg)
                self.live.guard_code, self.live.guard_detail = "DISK_LOW", msg
                raise DiskFull(msg)
            if self._should_stop():
                raise archive.Cancelled("stopping")
            await asyncio.sleep(SPACE_POLL_SECONDS)  # a running job finishes or fails, freeing its claim
        self._claims[key] = own
        await self.ledger.condition("DISK_LOW", False)

    async def _backup_fault(self, exc: OSError, plan: StudyPlan, rel: str) -> HorosBackupError:
        """The run-level error an OSError on the backup volume means; a full disk is also recorded
        (``DISK_FULL``, once per episode) in issues.csv."""
        err = _run_level(exc, f"{self.cfg.backup_dir}/{redact_zip_path(rel, self.cfg.log_patient_names)}")
        if isinstance(err, DiskFull):
            self.live.guard_code, self.live.guard_detail = "DISK_FULL", str(err)
            try:
                if await self.ledger.condition("DISK_FULL", True, str(err)):
                    await self.ledger.issue("DISK_FULL", str(err), plan.study.key, plan.study.uid, rel)
            except Exception as record_exc:  # the ledger is on the full disk too: the exit code still says it
                log.warning("could not record DISK_FULL in the ledger: %s", record_exc)
        return err

    async def _image_rows(self, plan: StudyPlan) -> Optional[int]:
        """The study's image rows in Horos now (horos-database.md §7: re-check before "done")."""
        if self._reader is None or not plan.pks:
            return None
        return await self._reader.count_images(plan.pks)

    async def _compression_flags(self, plan: StudyPlan, entry) -> Optional[List[bool]]:
        """Deflate (True) or store, per file of ``plan``; None when the study will not be zipped."""
        if not plan.files or (entry is not None and entry.state == DONE and entry.fingerprint == plan.fingerprint):
            return None
        if self.cfg.compression == "auto":
            return await self._offload(_deflate_flags, plan.files)
        return [self.cfg.compression == "deflate"] * len(plan.files)

    async def _target_path(self, plan: StudyPlan) -> str:
        """The planned path, or a ``_dN`` variant when another study already owns that name."""
        rel, n = plan.zip_relpath, 1
        while True:
            owner = await self.ledger.zip_owner(rel)
            path = self.cfg.backup_dir / rel
            if owner is None and path.exists():
                ident = reconcile.read_identity(path)
                owner = ident.get("key") if ident else "?"
            if rel in self._reserved:  # a concurrent job of this batch is writing that name
                owner = "?"
            if owner is None or owner == plan.study.key and not path.exists():
                self._reserved.add(rel)
                return rel
            n += 1
            rel = naming.zip_relpath(plan.study, max_length=self.cfg.max_name_length, naming=self.cfg.naming,
                                     version=plan.version, dedup=n)


def _disk_order(path: Path) -> tuple:
    """Folder, then the number in a Horos file name (``9995.dcm`` before ``10001.dcm``), then the name."""
    stem = path.stem
    return (str(path.parent), int(stem) if stem.isdigit() else -1, path.name)


def _label(plan: StudyPlan) -> str:
    return plan.zip_relpath.rsplit("/", 1)[-1]


def _deflate_flags(files) -> List[bool]:
    """Compression per file for ``compression = "auto"``, judged on the first file of each series.

    A series shares one transfer syntax in practice; reading one header per series instead of per file
    saves a DICOM parse per image. Were a series mixed, a file would only be stored or deflated
    needlessly: the ZIP is correct either way.
    """
    by_series: Dict[int, bool] = {}
    flags = []
    for f in files:
        key = f.source.series_pk
        if key not in by_series:
            by_series[key] = archive.needs_deflate(f.source.path)
        flags.append(by_series[key])
    return flags


def _with_path(plan: StudyPlan, rel: str) -> StudyPlan:
    from dataclasses import replace
    return replace(plan, zip_relpath=rel)


def _run_level(exc: OSError, shown: str) -> HorosBackupError:
    """Map an OSError on the backup side to the run-level error it means (``shown``: the ZIP, as logs
    may name it)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"backup volume full while writing {shown} ({exc.strerror}); the partial file was "
                        f"removed and nothing was recorded; free space and run again")
    return VolumeError(f"backup volume failed while writing {shown} ({exc.strerror or exc}); is the disk still "
                       f"mounted? Nothing unfinished was recorded as done")


def update_month_markers(cfg: Config, months: Dict[str, List[int]]) -> None:
    """``.month_done`` exists exactly in months whose eligible studies are all exported and verified."""
    for month, (eligible, done) in months.items():
        folder = cfg.backup_dir / month
        marker = folder / MONTH_MARKER
        complete = eligible > 0 and done >= eligible
        if complete and folder.is_dir():
            body = json.dumps({"month": month, "eligible": eligible, "done": done,
                               "marked_at": time.time()}).encode()
            durable.write_atomic(marker, body, overwrite=True)
        elif not complete:
            withdraw_month_marker(cfg, month)


def withdraw_month_marker(cfg: Config, month: str) -> bool:
    """Remove ``month``'s ``.month_done`` (durably) because one of its studies is no longer safely
    backed up; True when there was one. The next run puts it back once the month is whole again."""
    folder = cfg.backup_dir / month
    try:
        (folder / MONTH_MARKER).unlink()
    except FileNotFoundError:
        return False
    platform.sync_dir(folder)
    return True
