"""One study's ZIP job, from the free-space claim to the published ZIP.

A :class:`StudyJob` is built from a :class:`JobContext` (all it may use of its run, declared) and one
study's plan; ``await job.run()`` returns the study's :class:`Outcome`, and the engine records it
(ledger, issues.csv, live status). Order per attempt (docs/design/durability.md §1): build the temp
ZIP (synced inside) → verify it against the sources → count the study's image rows again → publish
without overwriting (+ directory sync). A done or partial Outcome therefore means the ZIP is durably
in place; the engine commits it to the ledger only after ``run()`` returns (§1 step 5). Study-level
problems return an Outcome; run-level faults raise (:class:`HorosBackupError`, ``archive.Cancelled``).
Blocking work goes through the context's ``offload`` (horos_async/blocking.py), never the event loop.
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


class _VolumeFailed(Exception):
    """An OSError of the backup volume under one ZIP, carried out of the attempt so that its temp file is
    removed before the fault is recorded (on a full disk that record needs the space back)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error)
        self.error = error


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
            rel = await self._target_path()
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
        created = await ctx.offload(durable.ensure_dir, final.parent)
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
            built, digest, sha256 = await ctx.offload(self._build_and_verify, tmp, members, identity, state,
                                              progress.update)
        except archive.SourceMissing as exc:
            return self._fail(IssueCode.MISSING_FILES, f"a file vanished while zipping: {exc}", [str(exc)])
        except archive.SourceReadError as exc:
            return self._fail(IssueCode.READ_ERROR, f"a file could not be read: {exc}", [str(exc)])
        except OSError as exc:
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
            raise _VolumeFailed(exc) from None
        return Outcome(plan.study.key, state, code, detail, rel, len(plan.files), plan.total_bytes, size,
                       time.monotonic() - self.started, members_digest=digest[0], members=len(built),
                       manifest_sha256=digest[1], sha256=sha256)

    def _fail(self, code: str, detail: str, extra=()) -> Outcome:
        return Outcome(self.plan.study.key, FAILED, code, detail, files=len(self.plan.files),
                       seconds=time.monotonic() - self.started, extra=tuple(extra))

    def _build_and_verify(self, tmp: Path, members, identity: StudyPlan, state: str,
                          progress) -> Tuple[List[archive.BuiltMember], Tuple[str, str], str]:
        """Blocking: build the temp ZIP (synced inside), its manifest last, read it back fully against the
        sources; the members, their digest and the manifest's SHA-256, and the file's SHA-256 (hashed as it
        was written), for the ledger."""
        cancel, cfg = self.ctx.cancel, self.ctx.config
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
                                  cancel=cancel, trailer=trailer, hashes=manifest)
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
            exists, on_disk = await ctx.offload(_owner_on_disk, cfg.backup_dir / rel)
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
        return await offload(_deflate_flags, plan.files)
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
    return VolumeError(f"backup volume failed while writing {shown} ({exc.strerror or exc}); is the disk still "
                       f"mounted? Nothing unfinished was recorded as done")
