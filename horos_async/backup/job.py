"""One study's ZIP job, from the free-space claim to the published ZIP.

A :class:`StudyJob` is built from a :class:`JobContext` (all it may use of its run, declared) and one
study's plan; ``await job.run()`` returns the study's :class:`Outcome`, and the engine records it
(ledger, issues.csv, live status). Order per attempt (docs/design/durability.md §1): build the temp
ZIP (synced inside) → verify it against the sources → count the study's image rows again → publish
without overwriting (+ directory sync). A done or partial Outcome therefore means the ZIP is durably
in place; the engine commits it to the ledger only after ``run()`` returns (§1 step 5). Study-level
problems return an Outcome; run-level faults raise (:class:`HorosBackupError`, ``archive.Cancelled``).
Blocking work goes through the context's ``offload`` (horos_async/blocking.py), never the event loop.

Whose error is it (docs/design/durability.md §7)? One study's: a ZIP too big for the filesystem
(EFBIG), a name too long (ENAMETOOLONG), a source that cannot be read, is not a file, or stalls. The
volume's, ending the run: any other OSError of the backup side (EIO, ENXIO, EROFS, the folder gone), and
the Horos data gone, which is checked before any study is called missing or unreadable. The source
reads run in a thread of their own under a watchdog: no byte for ``read_stall_seconds`` abandons the
job (``READ_STALLED``), and a stopping run leaves a blocked read behind after ``STOP_GRACE_SECONDS``.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set, Tuple

from horos_async import durable, guards, naming
from horos_async.backup import archive, dicom_header, dicom_media, zip_manifest, zipcheck
from horos_async.backup.identity import members_digest, read_identity, zip_comment
from horos_async.blocking import Offload
from horos_async.config import Config
from horos_async.codes import GuardCode, IssueCode
from horos_async.errors import DiskFull, HorosBackupError, VolumeError
from horos_async.horos_db import HorosReader
from horos_async.models import DONE, FAILED, PARTIAL, UNCHANGED, Outcome, StudyPlan
from horos_async.naming import redact_zip_path
from horos_async.state.ledger import Ledger
from horos_async.state.ledger_records import Entry
from horos_async.state.live import JobProgress, LiveState

log = logging.getLogger(__name__)
ZIP_OVERHEAD_PER_FILE = 512  # local header + central entry (+ ZIP64 extras) + the name twice, per member
ZIP_OVERHEAD = 64 << 10  # end records and the archive comment
SPACE_POLL_SECONDS = 0.5
MANIFEST_BYTES_PER_FILE = 600  # the manifest's entry of one file, deflated (a DICOMDIR record is smaller)


def manifests_on() -> bool:
    """Every ZIP gets its manifest; ``HOROS_BACKUP_MANIFEST=0`` turns it off for the benchmark's baseline
    only (scripts/bench_manifest.py), never for a backup (docs/design/manifest.md §3)."""
    return os.environ.get("HOROS_BACKUP_MANIFEST", "1") != "0"
STOP_GRACE_SECONDS = 2.0
"""How long a stopping run waits for a ZIP build to notice; a build blocked in a read is then left behind."""
WATCH_SECONDS = 1.0
"""How often the stall watchdog looks at a running build."""


@dataclass(frozen=True)
class JobContext:
    """What a study job may use of its run. The run's own state (counters, stop event, the result)
    stays in the engine; the two shared tables below are how concurrent jobs keep out of each other's way."""

    config: Config
    ledger: Ledger
    """Read for ZIP name owners; written only for the run's space conditions (``DISK_LOW``, ``DISK_FULL``)."""
    live: LiveState
    """The live status: the job shows its progress in ``live.jobs`` and sets the guard code it hits."""
    offload: Offload
    """Where blocking work runs (the engine's pool, sized by ``concurrency``)."""
    cancel: threading.Event
    """Set when the run stops: ZIP builds and verifications running in threads abort."""
    reader: Optional[HorosReader]
    """The open Horos database, to count a study's image rows again before "done"; None: not counted."""
    claims: Dict[str, int]
    """Backup-volume bytes each running job may write at most, by study key (shared by the run's jobs)."""
    reserved: Set[str]
    """ZIP paths (relative to ``backup_dir``) chosen by running jobs (shared by the run's jobs)."""
    should_stop: Callable[[], bool]
    """True once no new study may start (stop asked, fatal error, guard paused, time limit)."""
    poke: Callable[[], None]
    """Asks the status publisher to write soon (a job started or ended)."""
    shares_horos_disk: bool = False
    """The backup folder is on Horos's disk: the free-space floor keeps Horos's reserve too."""
    backup_id: Optional[Tuple[int, int]] = None
    """(device, inode) of ``backup_dir`` when the run started: a folder that changed is a pulled volume."""


class _NameTooLong(Exception):
    """The ZIP's path cannot even be looked up (ENAMETOOLONG): the study's failure, found before any write."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error)
        self.error = error


class _VolumeFailed(Exception):
    """An OSError of the backup volume under one ZIP, carried out of the attempt so that its temp file is
    removed before the fault is recorded (on a full disk that record needs the space back)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error)
        self.error = error


class _Stalled(Exception):
    """The build read no byte for ``read_stall_seconds``; the job was abandoned."""

    def __init__(self, source: Optional[Path], seconds: float) -> None:
        super().__init__(f"no byte read for {seconds:.0f}s from {source}")
        self.source, self.seconds = source, seconds


class _Either:
    """Set when either event is: the run's cancel, or this job's own abandonment."""

    def __init__(self, *events: threading.Event) -> None:
        self.events = events

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)

    def wait(self, timeout: Optional[float] = None) -> bool:
        """As ``threading.Event.wait`` (polled: a cancel is noticed within 50 ms)."""
        end = None if timeout is None else time.monotonic() + timeout
        while not self.is_set() and (end is None or time.monotonic() < end):
            time.sleep(0.05)
        return self.is_set()


class StudyJob:
    """One study's export: ``await StudyJob(context, plan, entry, flags).run()`` returns its Outcome."""

    def __init__(self, ctx: JobContext, plan: StudyPlan, entry: Optional[Entry] = None,
                 flags: Optional[List[bool]] = None) -> None:
        self.ctx = ctx
        self.plan = plan
        self.entry = entry
        """The study's ledger entry, if it has one."""
        self.flags = flags
        """Deflate (True) or store per file, judged ahead of the job; None: judged here."""
        self.started = time.monotonic()

    async def run(self) -> Outcome:
        """Export the study; the Outcome says what happened (only run-level faults raise)."""
        ctx, plan, s = self.ctx, self.plan, self.plan.study
        if _unchanged(self.entry, plan):
            return Outcome(s.key, UNCHANGED)
        if plan.missing:  # the files, or the whole Horos volume? (hardening 7)
            await self._horos_still_there()
        if not plan.files:
            return self._fail(IssueCode.NO_FILES, f"none of the study's {len(plan.missing)} files exist on disk; "
                                          f"first: {', '.join(plan.missing[:3]) or '-'}", plan.missing[:5])
        state = DONE
        code = detail = ""
        if plan.missing:
            detail = (f"{len(plan.missing)} of {len(plan.missing) + len(plan.files)} files missing; first: "
                      f"{', '.join(plan.missing[:3])}")
            if not ctx.config.allow_partial:
                return self._fail(IssueCode.MISSING_FILES, detail, plan.missing[:5])
            state, code = PARTIAL, IssueCode.PARTIAL
        rel: Optional[str] = None
        try:
            await self._claim_space()
            try:
                rel = await self._target_path()
            except _NameTooLong as exc:
                return self._study_write_error(exc.error, plan.zip_relpath) or self._fail(IssueCode.NAME_TOO_LONG, "")
            return await self._write(rel, state, code, detail)
        finally:  # what this job held in the run's shared tables
            ctx.live.jobs.pop(s.key, None)
            ctx.claims.pop(s.key, None)
            if rel is not None:
                ctx.reserved.discard(rel)
            ctx.poke()

    async def _write(self, rel: str, state: str, code: str, detail: str) -> Outcome:
        """Up to ``zip_attempts`` attempts at a valid, published ZIP at ``rel``."""
        ctx, plan, s = self.ctx, self.plan, self.plan.study
        cfg = ctx.config
        final = cfg.backup_dir / rel
        flags = self.flags
        if flags is None or len(flags) != len(plan.files):
            flags = await compression_flags(cfg, plan, None, ctx.offload)
        members = [archive.Member(source=f.source.path, name=f.member, size=f.size, compress=fl)
                   for f, fl in zip(plan.files, flags)]
        if cfg.zip_layout == "dicom-media":  # File IDs and the DICOMDIR from the headers, in the file order
            members = await ctx.offload(_media_members, plan, members)
        # Write in on-disk order (Horos numbers files as it imports them), not series order: reading
        # sequentially lets the disk read ahead. Member names keep the series layout either way.
        members.sort(key=lambda m: _disk_order(m.source))
        progress = JobProgress(uid=s.uid, label=rel.rsplit("/", 1)[-1], files_total=len(members),
                               bytes_total=plan.total_bytes)
        ctx.live.jobs[s.key] = progress
        ctx.poke()
        identity = plan if rel == plan.zip_relpath else replace(plan, zip_relpath=rel)
        gone = await ctx.offload(guards.backup_dir_gone, cfg, ctx.backup_id)
        if gone:  # never create the month folder on whatever disk now holds the path
            raise VolumeError(f"{gone}; the run ended and nothing unfinished was recorded as done. Mount the "
                              f"backup volume again; the next run resumes")
        try:
            created = await ctx.offload(durable.ensure_dir, final.parent)
        except OSError as exc:  # the month folder: the volume's error, or this study's name
            failed = self._study_write_error(exc, rel)
            if failed is not None:
                return failed
            raise await self._backup_fault(exc, rel) from None
        last_error = ""
        fault: Optional[OSError] = None
        for attempt in range(1, cfg.zip_attempts + 1):
            tmp = durable.temp_path_for(final, f"{os.getpid()}-{attempt}")
            try:
                return await self._attempt(tmp, final, rel, created, members, identity, state, code, detail,
                                           progress)
            except archive.ZipInvalid as exc:
                last_error = str(exc)
                log.warning("study %s attempt %d produced an invalid ZIP: %s", s.uid, attempt, exc)
            except _VolumeFailed as exc:
                fault = exc.error
                break
            finally:
                # Every way out of an attempt: an invalid ZIP, a study-level failure, a run-level fault, a
                # cancellation (another job's fault, a stop) even mid-verify. Once published, the temp
                # name is gone and this does nothing.
                durable.discard(tmp)
        if fault is not None:
            raise await self._backup_fault(fault, rel) from None
        return self._fail(IssueCode.ZIP_FAIL, f"{cfg.zip_attempts} attempts produced no valid ZIP; last: {last_error}")

    async def _attempt(self, tmp: Path, final: Path, rel: str, created: List[Path], members, identity: StudyPlan,
                       state: str, code: str, detail: str, progress: JobProgress) -> Outcome:
        """One attempt: build and verify ``tmp``, recount, publish. Raises ZipInvalid (try again) or
        _VolumeFailed; the caller removes ``tmp`` whatever happens."""
        ctx, plan = self.ctx, self.plan
        try:
            built, digest, sha256 = await self._watched(tmp, members, identity, state, progress.update)
        except _Stalled as exc:
            await self._horos_still_there()
            return self._fail(IssueCode.READ_STALLED, f"{exc} (read_stall_seconds = {ctx.config.read_stall_seconds:g}): "
                                                      f"is its volume stuck? The job was abandoned",
                              [str(exc.source)])
        except archive.SourceNotFile as exc:
            return self._fail(IssueCode.NOT_A_FILE, str(exc), [str(exc.path)])
        except archive.SourceMissing as exc:
            await self._horos_still_there()
            return self._fail(IssueCode.MISSING_FILES, f"a file vanished while zipping: {exc}", [str(exc)])
        except archive.SourceReadError as exc:
            await self._horos_still_there()
            return self._fail(IssueCode.READ_ERROR, f"a file could not be read: {exc}", [str(exc)])
        except OSError as exc:
            failed = self._study_write_error(exc, rel)
            if failed is not None:
                return failed
            raise _VolumeFailed(exc) from None
        now_rows = await self._image_rows()
        if now_rows is not None and now_rows != plan.image_rows:
            return self._fail(IssueCode.STUDY_CHANGED, f"Horos changed the study while it was zipped ({plan.image_rows} "
                                               f"image rows planned, {now_rows} now); exported again later")
        try:
            size = await ctx.offload(_publish, tmp, final, created)
        except durable.AlreadyExists:
            return self._fail(IssueCode.ZIP_FAIL, f"{redact_zip_path(rel, ctx.config.log_patient_names)} appeared while "
                                          f"this study was being written; will retry")
        except OSError as exc:
            failed = self._study_write_error(exc, rel)
            if failed is not None:
                return failed
            raise _VolumeFailed(exc) from None
        return Outcome(plan.study.key, state, code, detail, rel, len(plan.files), plan.total_bytes, size,
                       time.monotonic() - self.started, members_digest=digest[0], members=len(built),
                       manifest_sha256=digest[1], sha256=sha256)

    def _fail(self, code: str, detail: str, extra=()) -> Outcome:
        return Outcome(self.plan.study.key, FAILED, code, detail, files=len(self.plan.files),
                       seconds=time.monotonic() - self.started, extra=tuple(extra))

    def _study_write_error(self, exc: OSError, rel: str) -> Optional[Outcome]:
        """The study's failure when a backup-side OSError belongs to this study alone, else None (the
        volume's: the caller ends the run)."""
        cfg = self.ctx.config
        shown = redact_zip_path(rel, cfg.log_patient_names)
        if exc.errno == errno.EFBIG:
            return self._fail(IssueCode.FILE_TOO_BIG, f"{shown}: the ZIP ({guards.human_bytes(self.plan.total_bytes)} of "
                                                      f"files) is larger than the backup filesystem allows for one "
                                                      f"file ({exc.strerror}; FAT32 stops at 4 GiB); the partial "
                                                      f"file was removed")
        if exc.errno == errno.ENAMETOOLONG:
            return self._fail(IssueCode.NAME_TOO_LONG, f"{shown}: the name ({len(rel.rsplit('/', 1)[-1])} characters) "
                                                       f"is longer than the backup filesystem allows "
                                                       f"({exc.strerror}); its Study UID has "
                                                       f"{len(self.plan.study.uid)} characters")
        return None

    async def _horos_still_there(self) -> None:
        """Before a study is called missing or unreadable: raise VolumeError (the run ends, nothing is
        recorded for the studies in flight) when the Horos data itself is gone (docs/design/durability.md §7)."""
        why = await self.ctx.offload(guards.horos_data_gone, self.ctx.config)
        if why:
            raise VolumeError(f"{why}; the run ended without recording any study in flight as missing or "
                              f"unreadable. Mount it again; the next run resumes")

    async def _watched(self, tmp: Path, members, identity: StudyPlan, state: str,
                       progress) -> Tuple[List[archive.BuiltMember], Tuple[str, str], str]:
        """Build and verify in a thread of its own, watched: no byte read from a source for
        ``read_stall_seconds`` raises :class:`_Stalled`; a run that stops waits ``STOP_GRACE_SECONDS`` for
        the build to notice, then raises ``archive.Cancelled``. Either way the thread is left behind (a
        read blocked in the kernel cannot be taken back); its late result is dropped."""
        ctx = self.ctx
        abandon = threading.Event()
        heartbeat = archive.Heartbeat()
        future = ctx.offload.detached(self._build_and_verify, tmp, members, identity, state, progress,
                                      _Either(ctx.cancel, abandon), heartbeat)
        stall = ctx.config.read_stall_seconds
        stopping_since: Optional[float] = None
        try:
            while True:
                done, _ = await asyncio.wait({future}, timeout=min(WATCH_SECONDS, stall / 4))
                if done:
                    return future.result()
                now = time.monotonic()
                if ctx.cancel.is_set():
                    stopping_since = stopping_since or now
                    if now - stopping_since >= STOP_GRACE_SECONDS:
                        log.warning("study %s: its ZIP build did not stop within %.0fs (a read blocked on %s?); "
                                    "left behind", self.plan.study.uid, STOP_GRACE_SECONDS, heartbeat.source)
                        raise archive.Cancelled("left behind")
                elif heartbeat.source is not None and now - heartbeat.last >= stall:
                    log.warning("study %s: no byte read from %s for %.0fs; job abandoned", self.plan.study.uid,
                                heartbeat.source, now - heartbeat.last)
                    raise _Stalled(heartbeat.source, now - heartbeat.last)
        finally:
            if not future.done():
                abandon.set()  # should the read ever return, the build stops at its next chunk
                future.cancel()

    def _build_and_verify(self, tmp: Path, members, identity: StudyPlan, state: str, progress, cancel,
                          heartbeat: archive.Heartbeat) -> Tuple[List[archive.BuiltMember], Tuple[str, str], str]:
        """Blocking: build the temp ZIP (synced inside), its manifest last, read it back fully against the
        sources; the members, their digest and the manifest's SHA-256, and the file's SHA-256 (hashed as it
        was written), for the ledger."""
        cfg = self.ctx.config
        media = getattr(members, "dicomdir", None)
        manifest = manifests_on()
        extra = (1 if manifest else 0) + (1 if media is not None else 0)
        comment = zip_comment(identity, state, layout=cfg.zip_layout, members=len(members) + extra,
                              manifest=manifest)
        kept: Dict[str, str] = {}

        def trailer(built: List[archive.BuiltMember]) -> List[Tuple[str, bytes]]:
            tail: List[Tuple[str, bytes]] = []
            listed = list(built)
            if media is not None:
                tail.append((zip_manifest.DICOMDIR_NAME, media))
                listed.append(archive.BuiltMember(zip_manifest.DICOMDIR_NAME, _crc(media), len(media), 0,
                                                  hashlib.sha256(media).hexdigest()))
            if manifest:
                data = zip_manifest.build(identity, listed, layout=cfg.zip_layout, identity=json.loads(comment),
                                          header_study=_header_study(identity))
                kept["sha256"] = zip_manifest.digest(data)
                tail.append((zip_manifest.MANIFEST_NAME, data))
            return tail

        built = archive.build_zip(tmp, members, level=cfg.compression_level, comment=comment, progress=progress,
                                  cancel=cancel, trailer=trailer, hashes=manifest,
                                  heartbeat=heartbeat)
        zipcheck.verify_zip(tmp, built, deep=True, cancel=cancel)
        return built, (members_digest(built), kept.get("sha256", "")), built.sha256

    async def _claim_space(self) -> None:
        """Wait until the backup volume has room for this ZIP, the floor, and what the ZIPs being written
        still need; with no other job left to finish, stop the run with DISK_LOW instead.

        Two jobs that each fit alone must not start together on a nearly full disk: the second would
        hit ENOSPC and stop the run, every run, and neither study would ever finish.
        """
        ctx, plan = self.ctx, self.plan
        cfg, key, jobs = ctx.config, plan.study.key, ctx.live.jobs
        own = plan.total_bytes + (ZIP_OVERHEAD_PER_FILE + MANIFEST_BYTES_PER_FILE) * len(plan.files) + ZIP_OVERHEAD
        while True:
            others = {k: max(0, n - (jobs[k].bytes_done if k in jobs else 0))
                      for k, n in ctx.claims.items() if k != key}
            need = guards.space_needed(cfg, own + sum(others.values()), ctx.shares_horos_disk)
            free = await ctx.offload(guards.free_bytes, cfg.backup_dir)
            if free >= need:
                break
            if not others:
                msg = (f"only {guards.human_bytes(free)} free on the backup volume, {guards.human_bytes(need)} "
                       f"needed for the next study plus the floor (min_free_gb/horos_free_gb); free space and "
                       f"run again")
                if await ctx.ledger.condition(GuardCode.DISK_LOW, True, msg):
                    await ctx.ledger.issue(GuardCode.DISK_LOW, msg)
                ctx.live.guard_code, ctx.live.guard_detail = GuardCode.DISK_LOW, msg
                raise DiskFull(msg)
            if ctx.should_stop():
                raise archive.Cancelled("stopping")
            await asyncio.sleep(SPACE_POLL_SECONDS)  # a running job finishes or fails, freeing its claim
        ctx.claims[key] = own
        await ctx.ledger.condition(GuardCode.DISK_LOW, False)

    async def _backup_fault(self, exc: OSError, rel: str) -> HorosBackupError:
        """The run-level error an OSError on the backup volume means; a full disk is also recorded
        (``DISK_FULL``, once per episode) in issues.csv."""
        ctx, s = self.ctx, self.plan.study
        cfg = ctx.config
        err = _run_level(exc, f"{cfg.backup_dir}/{redact_zip_path(rel, cfg.log_patient_names)}")
        if isinstance(err, DiskFull):
            ctx.live.guard_code, ctx.live.guard_detail = GuardCode.DISK_FULL, str(err)
            try:
                if await ctx.ledger.condition(GuardCode.DISK_FULL, True, str(err)):
                    await ctx.ledger.issue(GuardCode.DISK_FULL, str(err), s.key, s.uid, rel)
            except Exception as record_exc:  # the ledger is on the full disk too: the exit code still says it
                log.warning("could not record DISK_FULL in the ledger: %s", record_exc)
        return err

    async def _image_rows(self) -> Optional[int]:
        """The study's image rows in Horos now (docs/design/horos-database.md §7: re-check before "done")."""
        reader, plan = self.ctx.reader, self.plan
        if reader is None or not plan.pks:
            return None
        return await reader.count_images(plan.pks)

    async def _target_path(self) -> str:
        """The planned path, or a ``_dN`` variant when another study already owns that name; reserved
        for this job until it ends."""
        ctx, plan = self.ctx, self.plan
        cfg, key = ctx.config, plan.study.key
        rel, n = plan.zip_relpath, 1
        while True:
            owner = await ctx.ledger.zip_owner(rel)
            try:
                exists, on_disk = await ctx.offload(_owner_on_disk, cfg.backup_dir / rel)
            except OSError as exc:  # ENAMETOOLONG is this study's; anything else the volume's
                if exc.errno == errno.ENAMETOOLONG:
                    raise _NameTooLong(exc) from None
                raise await self._backup_fault(exc, rel) from None
            if owner is None and exists:
                owner = on_disk
            # No await from here to the reservation: a concurrent job of this batch sees it at once.
            if rel in ctx.reserved:  # a concurrent job of this batch is writing that name
                owner = "?"
            if owner is None or owner == key and not exists:
                ctx.reserved.add(rel)
                return rel
            n += 1
            rel = naming.zip_relpath(plan.study, max_length=cfg.max_name_length, naming=cfg.naming,
                                     version=plan.version, dedup=n)


async def compression_flags(cfg: Config, plan: StudyPlan, entry: Optional[Entry],
                            offload: Offload) -> Optional[List[bool]]:
    """Deflate (True) or store, per file of ``plan``; None when the study will not be zipped."""
    if not plan.files or _unchanged(entry, plan):
        return None
    if cfg.compression == "auto":
        # Header reads may sit on a stuck volume too: in a thread of their own, given up on after
        # read_stall_seconds (deflate everything: always correct; the build's watchdog then judges).
        judged = offload.detached(_deflate_flags, plan.files)
        try:
            return await asyncio.wait_for(judged, cfg.read_stall_seconds)
        except asyncio.TimeoutError:
            log.warning("study %s: reading its DICOM headers made no progress for %.0fs; deflating every file",
                        plan.study.uid, cfg.read_stall_seconds)
            return [True] * len(plan.files)
    return [cfg.compression == "deflate"] * len(plan.files)


class _MediaMembers(list):
    """The members under their File IDs, with the DICOMDIR that references them."""

    dicomdir: bytes = b""


def _media_members(plan: StudyPlan, members: List[archive.Member]) -> List[archive.Member]:
    """Blocking: rename the members to their PS3.10 File IDs (headers read, never pixels); the list
    carries the DICOMDIR (``dicom_media.lay_out``)."""
    series = {f.source.path: f"{f.source.series_pk}" for f in plan.files}
    headers = dicom_media.headers_of([m.source for m in members], [series.get(m.source, "") for m in members])
    date = plan.study.study_date.strftime("%Y%m%d") if plan.study.study_date else ""
    media = dicom_media.lay_out(headers, default_date=date)
    out = _MediaMembers(replace(m, name=n) for m, n in zip(members, media.names))
    out.dicomdir = media.dicomdir if media.dicomdir else None  # type: ignore[assignment]
    return out


def _header_study(plan: StudyPlan) -> Optional[Dict[str, str]]:
    """The study's values from its first file's header, read only when Horos's database lacks one of them."""
    s = plan.study
    if all((s.patient_id, s.patient_name, s.accession, s.description, s.birth_date, s.study_date)) or not plan.files:
        return None
    return dicom_header.study_facts(plan.files[0].source.path)


def _crc(data: bytes) -> int:
    import zlib

    return zlib.crc32(data)


def _owner_on_disk(path: Path) -> Tuple[bool, Optional[str]]:
    """Blocking: whether ``path`` exists, and the study key its identity comment names ("?" for a file
    that is not one of our ZIPs)."""
    if not path.exists():
        return False, None
    ident = read_identity(path)
    return True, (ident.get("key") if ident else "?")


def _publish(tmp: Path, final: Path, created: List[Path]) -> int:
    """Blocking: publish ``tmp`` as ``final`` (never replacing a file; directories synced); its size."""
    durable.publish(tmp, final, created_dirs=created)
    return final.stat().st_size


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


def _run_level(exc: OSError, shown: str) -> HorosBackupError:
    """Map an OSError on the backup side to the run-level error it means (``shown``: the ZIP, as logs
    may name it)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"backup volume full while writing {shown} ({exc.strerror}); the partial file was "
                        f"removed and nothing was recorded; free space and run again")
    if exc.errno == errno.EROFS:
        return VolumeError(f"backup volume became read-only while writing {shown}: macOS does this to a disk "
                           f"with errors; run First Aid in Disk Utility. Nothing unfinished was recorded as done")
    if exc.errno in (errno.EACCES, errno.EPERM):
        folder = shown.rsplit("/", 1)[0]
        return VolumeError(f"no permission to write {shown} ({exc.strerror}); check the owner and permissions "
                           f"of the backup folders (ls -ld '{folder}'). Nothing unfinished was recorded as done")
    return VolumeError(f"backup volume failed while writing {shown} ({exc.strerror or exc}); is the disk still "
                       f"mounted? Nothing unfinished was recorded as done")
