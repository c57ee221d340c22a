"""One study's ZIP job, from the free-space claim to the ledger commit (the engine's per-study half).

``StudyExport`` is mixed into :class:`horos_async.backup.engine.Engine`, whose state it uses: ``cfg``,
``ledger``, ``live``, ``cancel``, ``_offload``, ``_reader`` and the per-run ``_claims``/``_reserved``.
Order per attempt (docs/design/durability.md §1): build the temp ZIP (synced inside) → verify it against the
sources → count the study's image rows again → publish without overwriting (+ directory sync) →
ledger commit. Study-level problems return an :class:`Outcome`; run-level faults raise.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional

from horos_async.backup import archive
from horos_async.backup.identity import members_digest, read_identity, zip_comment
from horos_async import durable, guards, naming
from horos_async.errors import DiskFull, HorosBackupError, VolumeError
from horos_async.models import DONE, FAILED, PARTIAL, Outcome, StudyPlan
from horos_async.naming import redact_zip_path
from horos_async.state.live import JobProgress

log = logging.getLogger(__name__)
ZIP_OVERHEAD_PER_FILE = 512  # local header + central entry (+ ZIP64 extras) + the name twice, per member
ZIP_OVERHEAD = 64 << 10  # end records and the archive comment
SPACE_POLL_SECONDS = 0.5


class StudyExport:
    """The per-study methods of the engine (a mixin: see the module docstring)."""

    async def _export(self, plan: StudyPlan, entry, flags: Optional[List[bool]] = None) -> Outcome:
        cfg, s = self.cfg, plan.study
        t0 = time.monotonic()

        def fail(code: str, detail: str, extra=()) -> Outcome:
            return Outcome(s.key, FAILED, code, detail, files=len(plan.files), seconds=time.monotonic() - t0,
                           extra=tuple(extra))

        if _unchanged(entry, plan):
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
        """The study's image rows in Horos now (docs/design/horos-database.md §7: re-check before "done")."""
        if self._reader is None or not plan.pks:
            return None
        return await self._reader.count_images(plan.pks)

    async def _compression_flags(self, plan: StudyPlan, entry) -> Optional[List[bool]]:
        """Deflate (True) or store, per file of ``plan``; None when the study will not be zipped."""
        if not plan.files or _unchanged(entry, plan):
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
                ident = read_identity(path)
                owner = ident.get("key") if ident else "?"
            if rel in self._reserved:  # a concurrent job of this batch is writing that name
                owner = "?"
            if owner is None or owner == plan.study.key and not path.exists():
                self._reserved.add(rel)
                return rel
            n += 1
            rel = naming.zip_relpath(plan.study, max_length=self.cfg.max_name_length, naming=self.cfg.naming,
                                     version=plan.version, dedup=n)


def _unchanged(entry, plan: StudyPlan) -> bool:
    """The ledger holds a verified ZIP of exactly these files (complete, or partial): nothing to export."""
    return entry is not None and entry.state in (DONE, PARTIAL) and entry.fingerprint == plan.fingerprint


def _disk_order(path: Path) -> tuple:
    """Folder, then the number in a Horos file name (``9995.dcm`` before ``10001.dcm``), then the name."""
    stem = path.stem
    return (str(path.parent), int(stem) if stem.isdigit() else -1, path.name)


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
    return replace(plan, zip_relpath=rel)


def _run_level(exc: OSError, shown: str) -> HorosBackupError:
    """Map an OSError on the backup side to the run-level error it means (``shown``: the ZIP, as logs
    may name it)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"backup volume full while writing {shown} ({exc.strerror}); the partial file was "
                        f"removed and nothing was recorded; free space and run again")
    return VolumeError(f"backup volume failed while writing {shown} ({exc.strerror or exc}); is the disk still "
                       f"mounted? Nothing unfinished was recorded as done")
