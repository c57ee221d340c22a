"""The asyncio engine: one run of ``horos-backup run`` from guards to ledger.

Flow: guards (sentinel, volumes, run lock) → ledger → reconcile the backup folder with the ledger →
INCOMING guard → scan → batches, until nothing is due, the time budget is spent or ``run_window``
closes (checked before every study): read one batch (short DB transaction) → up to ``concurrency`` ZIP
jobs at once (blocking work in a thread pool sized by the knob, reached only through ``_offload``, a
:class:`horos_async.blocking.Offload`) → each job (:class:`horos_async.backup.job.StudyJob`, built from
a declared :class:`~horos_async.backup.job.JobContext`): claim space → build temp ZIP → verify →
recount → publish (rename + dir sync) → its Outcome → :meth:`Engine._record`, the one place every
outcome is recorded: ledger commit, issues.csv, live status → month markers (``months``), after the
commits (docs/design/durability.md §1). A failed study is an Outcome record; only run-level faults raise.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Dict, List, Optional

from horos_async import allocator, durable, guards, logs, schedule
from horos_async.backup import archive, planner, reconcile, source_guard
from horos_async.backup.job import JobContext, StudyJob, compression_flags
from horos_async.blocking import Offload
from horos_async.codes import EngineState, GuardCode, RunOutcome
from horos_async.config import Config
from horos_async.errors import EXIT_DISK, EXIT_INTERRUPTED, EXIT_OK, EXIT_VOLUME, HorosBackupError
from horos_async.horos_db import HorosReader
from horos_async.state.ledger import VOLUME_SIGNS as LEDGER_VOLUME_SIGNS, Ledger, fault as ledger_fault
from horos_async.models import DONE, FAILED, PARTIAL, UNCHANGED, Outcome, StudyPlan
from horos_async.backup.months import update_month_markers
from horos_async.state import sums
from horos_async.state.ledger_mirror import MirrorBook
from horos_async.state.live import LiveState
from horos_async.timezones import zone_for

log = logging.getLogger(__name__)
LOOKAHEAD_BATCHES = 20


@dataclass
class RunResult:
    """What one run did; ``cli`` turns it into a message and exit code."""

    exit_code: int = EXIT_OK
    outcome: str = RunOutcome.OK
    """``ok``, ``nothing-to-do``, ``limit-reached``, ``paused``, ``interrupted`` or an error class name."""
    message: str = ""
    done: int = 0
    failed: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    eligible: int = 0
    pending: int = 0


class Engine:
    """One run. Create, then ``await run()``; ``request_stop()`` is safe from a signal handler.

    A run exports batch after batch until nothing is due; it starts no new study once ``max_studies``
    have been planned, the time budget (``max_minutes``, else the config's ``max_run_minutes``) is spent
    or ``run_window`` has closed. ``clock`` is the wall clock (Unix seconds) for all three and for the
    planner: wall time, not a monotonic clock, because a sleeping Mac's monotonic clock stands still
    while the window and the budget, as people read them, do not.
    """

    def __init__(self, cfg: Config, *, until_done: bool = True, max_studies: Optional[int] = None,
                 max_minutes: Optional[float] = None, ignore_window: bool = False, clock=time.time,
                 announce=None, retry_failed: bool = False) -> None:
        self.cfg = cfg
        del until_done  # accepted for older callers: every run now goes on until nothing is due
        self.retry_failed = retry_failed  # run --retry-failed: the planner lets no study wait for its retry time
        self.max_studies = max_studies
        self.max_minutes = max_minutes if max_minutes is not None else (cfg.max_run_minutes or None)
        self.budget_source = "--max-minutes" if max_minutes is not None else "max_run_minutes"
        self.window = "" if ignore_window else cfg.run_window  # ``run --now`` ignores it
        self.zone = zone_for(cfg.timezone) if self.window else None  # the Horos Mac's zone (docs/design/horos-database.md §5)
        self.clock = clock
        self.limit = ""  # why no further study may start: the window closed, or the budget is spent
        self.announce = announce or (lambda text: None)
        self.stop: Optional[asyncio.Event] = None  # made inside run(): Python 3.9 binds it to a loop
        self.cancel = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=cfg.concurrency + 1, thread_name_prefix="zip")
        self._offload = Offload(self.pool)  # the run's one way into its threads
        self.result = RunResult()
        self.live = LiveState(cfg.live_status_path, incoming_limit=cfg.incoming_max_files)
        self.ledger: Optional[Ledger] = None
        self.fatal: Optional[BaseException] = None
        self.started = clock()  # the budget counts from here (run() sets it again as it starts)
        self.shares_horos_disk = False
        self.backup_id = None  # (device, inode) of backup_dir at the start: see guards.backup_dir_gone
        self.attempted: set = set()
        self.processed = 0  # studies planned in this run (for --max-studies)
        self._changed: Optional[asyncio.Event] = None
        self._reserved: set = set()  # ZIP paths chosen by running jobs
        self._publisher: Optional[asyncio.Future] = None  # the status publish loop
        self._publishing = True
        self._claims: Dict[str, int] = {}  # backup-volume bytes each running job will write at most
        self._space_ok_recorded = False  # DISK_FULL condition cleared in the ledger in this run

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
        self.started = self.clock()
        self.stop = asyncio.Event()
        if self.cancel.is_set():  # a signal arrived before the loop started
            self.stop.set()
        guards.check_sentinel(cfg)
        guards.check_volumes(cfg)
        allocator.tune()  # before the ZIP threads start: no page-fault churn on their 1 MiB buffers
        await self._offload(durable.ensure_dir, cfg.backup_dir)  # creating a folder syncs its parent
        await self._offload(durable.ensure_dir, cfg.work_dir)
        lock = guards.RunLock(cfg.lock_path).acquire()
        try:
            self.shares_horos_disk = guards.same_device(cfg.backup_dir, cfg.data_root)
            self.backup_id = guards.folder_identity(cfg.backup_dir)
            self.ledger = await Ledger(cfg.ledger_path, cfg.issues_csv, names_in_csv=cfg.log_patient_names).open()
            try:
                self.live.run_id = await self.ledger.begin_run()
            except sqlite3.Error as exc:
                raise ledger_fault(cfg.ledger_path, exc) from None
            self._publisher = asyncio.ensure_future(self._publish_loop())
            try:
                try:
                    await self._run_inner()
                except sqlite3.OperationalError as exc:
                    if not any(sign in str(exc).lower() for sign in LEDGER_VOLUME_SIGNS):
                        raise
                    # A ledger commit hit a full, failing or vanished volume: exit 6 or 7, never "a bug".
                    raise ledger_fault(cfg.ledger_path, exc) from None
            except HorosBackupError as exc:
                self.result.exit_code = exc.exit_code
                self.result.outcome = type(exc).__name__
                self.result.message = str(exc)
                raise
            finally:
                await self._finish()
        finally:
            if self._publisher is not None and not self._publisher.done():
                self._publisher.cancel()  # only when _finish did not run (it stops the loop cleanly)
            if self.ledger is not None:
                await self.ledger.close()
            # A stopped run does not wait for a pool thread that may be blocked in the kernel (a stuck
            # volume); cli.signals ends the process if one holds up its exit (docs/design/durability.md §7).
            self.pool.shutdown(wait=not self.cancel.is_set())
            lock.release()
        return self.result

    async def _finish(self) -> None:
        r = self.result
        if self.stop.is_set() and r.exit_code == EXIT_OK:
            r.exit_code, r.outcome = EXIT_INTERRUPTED, RunOutcome.INTERRUPTED
            r.message = r.message or "interrupted: stopped cleanly; the next run resumes"
        try:
            await self.ledger.end_run(r.outcome, r.exit_code, r.done, r.failed, r.bytes_in, r.bytes_out, r.message)
        except Exception as exc:  # the backup volume may be gone: the ledger commit is what failed
            if r.exit_code in (EXIT_DISK, EXIT_VOLUME):  # expected: the run's own error says it, once
                log.info("could not record the end of the run in the ledger: %s", exc, extra=logs.FILE_ONLY)
            else:
                log.error("could not record the end of the run in the ledger: %s", exc)
        self.live.state = EngineState.PAUSED if r.outcome == RunOutcome.PAUSED else EngineState.IDLE
        self.live.phase = "finished"
        self.live.message = r.message
        self.live.jobs.clear()
        self.live.queued = []
        await self._stop_publishing()
        await self._publish()

    async def _stop_publishing(self) -> None:
        """End the publish loop after its current write, so no half-written status temp file is left
        and the final state is the last one written (cancelling it mid-write would leave both)."""
        self._publishing = False
        self._poke()
        if self._publisher is not None and not self._publisher.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._publisher), 5)
            except asyncio.TimeoutError:  # a status write hung (a sleeping USB disk): it is cancelled below
                log.debug("status publisher did not stop within 5 s")

    async def _publish_loop(self) -> None:
        """Publish twice a second, and promptly (at most ten times a second) when a job starts or ends."""
        self._changed = asyncio.Event()
        while self._publishing:
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
            r.outcome = RunOutcome.PAUSED
            return
        async with HorosReader(cfg) as reader:
            while not (self._should_stop() or self._quota_reached()):
                self.live.phase = "scan"
                index = await self.ledger.index()
                limit = cfg.batch_size * LOOKAHEAD_BATCHES
                if self.max_studies:
                    limit = min(limit, max(0, self.max_studies - self.processed))
                candidates, totals = await planner.scan(reader, index, cfg, self.clock(), max(1, limit),
                                                        frozenset(self.attempted), self.retry_failed)
                await source_guard.check_source(cfg, reader, self.ledger, totals, self._offload)  # HOROS_DB_SHRANK
                await self.ledger.refresh_pks(totals.pk_changes)
                await self.ledger.note_growth(totals.grown, totals.rows_mark)
                for old, new in totals.renames:  # Horos recomputed these patientUIDs: same studies
                    if await self.ledger.rekey(old, new, new.split("|", 1)[1]):
                        log.info("study %s: Horos changed its patientUID; its backup record follows it",
                                 new.split("|", 1)[0])
                self._publish_totals(totals)
                r.eligible, r.pending = totals.eligible, totals.pending
                if not candidates:
                    break
                self.live.phase = "export"
                await self._export_all(reader, candidates, index)
                if r.outcome == RunOutcome.PAUSED:
                    break
            if r.done or r.failed:
                index = await self.ledger.index()
                _, totals = await planner.scan(reader, index, cfg, self.clock(), 1)
                self._publish_totals(totals)
                r.eligible, r.pending = totals.eligible, totals.pending
                await self._offload(update_month_markers, cfg, totals.months)
            else:
                await self._offload(update_month_markers, cfg, self.live.months)
            # Each month's SHA256SUMS lists its ZIPs' hashes, as written (docs/design/mirror.md §2); only a
            # list that changed is rewritten, so a run that exported nothing writes nothing.
            await self._offload(sums.refresh_all, cfg.backup_dir, await MirrorBook(self.ledger).zip_hashes())
        if self.limit and r.outcome == RunOutcome.OK and not self.stop.is_set():
            still = f" ({r.pending} studies still due)" if r.pending else ""
            r.message = f"stopped: {self.limit}; the next run goes on{still}"
            if not (r.done or r.failed):
                r.outcome = RunOutcome.LIMIT_REACHED
        if r.outcome == RunOutcome.OK and not (r.done or r.failed):
            r.outcome = RunOutcome.NOTHING_TO_DO

    def _should_stop(self) -> bool:
        """No new study may start: stop asked, fatal error, guard paused, or a limit reached (the time
        budget spent, ``run_window`` closed). Asked before every study and by waiting jobs."""
        if self.stop.is_set() or self.fatal is not None or self.result.outcome == RunOutcome.PAUSED:
            return True
        return bool(self.limit or self._limit_reached())

    def _limit_reached(self) -> str:
        """Why no further study may start (and remember it), or "" while the run may go on."""
        now = self.clock()
        if self.max_minutes is not None and now - self.started >= self.max_minutes * 60:
            self.limit = f"the time budget of {self.max_minutes:g} minutes ({self.budget_source}) is spent"
        elif self.window and not schedule.window_open(now, self.window, self.zone):
            where = self.cfg.timezone or "this Mac's time"
            self.limit = f"run_window {self.window} ({where}) has closed"
        if self.limit:
            log.info("%s: no new study starts; the running ones finish", self.limit)
        return self.limit

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
        if await self.ledger.condition(GuardCode.INCOMING_OVER_LIMIT, busy, detail):
            await self.ledger.issue(GuardCode.INCOMING_OVER_LIMIT, detail)
        if busy:
            self.live.guard_code, self.live.guard_detail = GuardCode.INCOMING_OVER_LIMIT, detail
            self.result.message = detail
            log.warning(detail)
        else:
            self.live.guard_code = self.live.guard_detail = ""
        return busy

    # -- a batch -----------------------------------------------------------------------------------
    async def _export_all(self, reader: HorosReader, candidates, index) -> None:
        """Plan batch after batch (one short DB read each) while ``concurrency`` workers export.

        A small queue between the two keeps every worker busy across batch boundaries; the database is
        never read while a transaction would be held over file I/O.
        """
        cfg = self.cfg
        ctx = JobContext(config=cfg, ledger=self.ledger, live=self.live, offload=self._offload, cancel=self.cancel,
                         reader=reader, claims=self._claims, reserved=self._reserved, should_stop=self._should_stop,
                         poke=self._poke, shares_horos_disk=self.shares_horos_disk, backup_id=self.backup_id)
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
                    for plan in plans:  # malformed Horos rows: named once each (BAD_ROW), the study judged as usual
                        for note in plan.bad_rows:
                            await self.ledger.bad_row(plan.study.key, plan.study.uid, note)
                    self.processed += len(batch)
                    self.attempted.update(c.key for c in batch)
                    self.live.batch_index += 1
                    self.live.queued.extend(_label(p) for p in plans)
                    for plan in plans:
                        # Judge compression here, ahead of the workers: its header reads (a disk seek
                        # each on a cold cache) then overlap the ZIP jobs instead of delaying them.
                        flags = await compression_flags(cfg, plan, index.get(plan.study.key), self._offload)
                        await queue.put((plan, flags))
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
                await self._one(ctx, plan, index, flags)

        await asyncio.gather(producer(), *(worker() for _ in range(workers)))
        self.live.queued = []
        if self.fatal is not None:
            raise self.fatal

    async def _one(self, ctx: JobContext, plan: StudyPlan, index, flags: Optional[List[bool]] = None) -> None:
        """Guards, then export one study and record its outcome; run-level faults stop the run."""
        if self.cfg.sleep_between_studies and self.stop is not None:  # the throttle; a stop request ends it
            try:
                await asyncio.wait_for(self.stop.wait(), self.cfg.sleep_between_studies)
            except asyncio.TimeoutError:
                pass
        if self._should_stop():
            return
        if await self._incoming_busy():
            self.result.outcome = RunOutcome.PAUSED
            return
        try:
            outcome = await StudyJob(ctx, plan, index.get(plan.study.key), flags).run()
        except HorosBackupError as exc:
            if self.fatal is None:
                self.fatal = exc
            self.cancel.set()
            return
        except archive.Cancelled:
            return
        await self._record(plan, outcome)

    async def _record(self, plan: StudyPlan, o: Outcome) -> None:
        """Record one study's outcome, whatever it is: the one place where the ledger, issues.csv, the
        run's counters and the live status learn what a job did.

        A done or partial outcome arrives with its ZIP published and its directory synced, so its
        ledger commit comes here, after the ZIP is durable (docs/design/durability.md §1 steps 4-5) and
        before the month markers (written when the run's exports are over).
        """
        r, s = self.result, plan.study
        exported = o.status in (DONE, PARTIAL)
        if exported:
            on_disk = plan if o.zip_relpath == plan.zip_relpath else replace(plan, zip_relpath=o.zip_relpath)
            await self.ledger.record_zip(on_disk, o.zip_relpath, o.bytes_out, o.members_digest, o.status, o.code,
                                         o.detail, members=o.members or o.files, manifest_sha256=o.manifest_sha256,
                                         sha256=o.sha256)
            if not self._space_ok_recorded:  # a ZIP was written: a DISK_FULL episode is over
                self._space_ok_recorded = True
                await self.ledger.condition(GuardCode.DISK_FULL, False)
        label = o.zip_relpath.rsplit("/", 1)[-1] if o.zip_relpath else _label(plan)
        self.live.finished.append({"uid": s.uid, "label": label, "status": o.status, "code": o.code,
                                   "seconds": round(o.seconds, 2), "bytes": o.bytes_in})
        if exported:
            r.done += 1
            r.bytes_in += o.bytes_in
            r.bytes_out += o.bytes_out
            self.live.run["studies_done"] += 1
            self.live.run["bytes_in"] += o.bytes_in
            self.live.run["bytes_out"] += o.bytes_out
            where = o.zip_relpath if self.cfg.log_patient_names else o.zip_relpath.split("/", 1)[0]
            log.info("study %s exported to %s (%d files, %.1f MB in %.1fs)", s.uid, where,
                     o.files, o.bytes_in / 1e6, o.seconds)
            self.announce(f"[{r.done + r.failed}] exported {where}/...{s.uid[-12:]}: {o.files} files, "
                          f"{o.bytes_in / 1e6:.1f} MB in {o.seconds:.1f}s")
            if o.status == PARTIAL:
                await self.ledger.issue(o.code, o.detail, s.key, s.uid, o.zip_relpath)
        elif o.status == UNCHANGED:
            await self.ledger.touch_unchanged(s.key, s.date_added, plan)
        elif o.status == FAILED:
            r.failed += 1
            self.live.run["studies_failed"] += 1
            log.warning("study %s not exported: %s %s", s.uid, o.code, o.detail)
            self.announce(f"[{r.done + r.failed}] NOT exported {s.uid}: {o.code} {o.detail}")
            entry_done = plan.version > 1
            if await self.ledger.record_failure(plan, o, self.cfg.retry_backoff_minutes, keep_done=entry_done):
                await self.ledger.issue(o.code, o.detail, s.key, s.uid, plan.zip_relpath)
        else:
            raise ValueError(f"study {s.uid}: unknown outcome status {o.status!r} (a bug in the job)")


def _label(plan: StudyPlan) -> str:
    return plan.zip_relpath.rsplit("/", 1)[-1]
