"""``horos-backup mirror``: bring every configured destination up to the primary (docs/design/mirror.md).

For each destination, in batches: the ``ok`` ZIPs it has no verified copy of (every version of a study:
later versions lie beside the earlier ones, nothing is ever deleted there), then each month's
``SHA256SUMS`` once every ZIP it lists is there (so ``sha256sum -c`` passes at the destination at every
moment), then the verified Horos index snapshots (their ``manifest.json`` last). A batch's verified
copies are committed to the ledger when the batch ends: a kill loses at most one batch of work, and
never records a copy that was not read back equal.

The mirror has its own lock (``.tmp/mirror.lock``), not the run lock: a mirror that takes days (a first
seeding over the network) never holds up a backup. The scheduled run mirrors after exporting, inside the
destination's window, for at most ``start_interval`` seconds, then leaves the rest to the next run.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from horos_async import durable, guards, schedule
from horos_async.blocking import offload
from horos_async.codes import IssueCode, MirrorOutcome
from horos_async.config import Config, MirrorConfig
from horos_async.errors import LockHeld, MirrorError
from horos_async.ops import index_store
from horos_async.ops.mirror_dest import Destination, Item, Placed
from horos_async.ops.mirror_folder import FolderDest
from horos_async.ops.mirror_rclone import RcloneDest
from horos_async.state import sums
from horos_async.state.ledger import Ledger
from horos_async.state.ledger_mirror import KIND_INDEX, KIND_SUMS, KIND_ZIP, Copy, MirrorBook, ZipForMirror
from horos_async.timezones import zone_for

log = logging.getLogger(__name__)

BATCH_FILES = 200
BATCH_BYTES = 4 << 30
"""A batch ends at this many files or bytes, whichever comes first: its copies are then recorded."""
RCLONE_BATCH_BYTES = 512 << 20
"""An rclone batch is smaller: its upload overlaps the previous batch's read-back, so the two must alternate
often enough to overlap, while each batch costs only two rclone processes."""


@dataclass
class DestResult:
    """What one mirror run did at one destination."""

    dest: str
    outcome: str = ""
    """``ok`` (nothing left to copy), ``partial`` (stopped: time budget, window, signal), ``failed``,
    ``skipped`` (outside its window)."""
    files: int = 0
    bytes: int = 0
    left: int = 0
    """Files still to copy when it stopped."""
    message: str = ""
    conflicts: int = 0


@dataclass
class MirrorResult:
    """What one ``mirror`` invocation did, per destination."""

    dests: List[DestResult] = field(default_factory=list)

    @property
    def failed(self) -> List[DestResult]:
        return [d for d in self.dests if d.outcome == MirrorOutcome.FAILED]


def destination(cfg: Config, m: MirrorConfig) -> Destination:
    """The destination object for one ``[mirror]`` table."""
    return RcloneDest(m, cfg.work_dir, cfg.backup_dir) if m.is_rclone else FolderDest(m)


def refresh_sums(cfg: Config, rows: Sequence[Tuple[str, str]]) -> int:
    """Blocking: rewrite each month folder's ``SHA256SUMS`` that differs from the ledger; how many were."""
    return sums.refresh_all(cfg.backup_dir, rows)


def index_items(cfg: Config) -> List[Item]:
    """Blocking: every file of every verified index snapshot (manifest last in each), as mirror items."""
    out: List[Item] = []
    for snap in index_store.list_snapshots(cfg.index_dir):
        if not snap.verified or snap.manifest is None:
            continue
        base = f"{cfg.index_dir.name}/{snap.name}"
        for name, meta in sorted(snap.manifest.files.items()):
            out.append(Item(f"{base}/{name}", snap.path / name, int(meta.get("bytes", 0)), str(meta.get("sha256", "")),
                            KIND_INDEX))
        manifest = snap.path / index_store.MANIFEST
        out.append(Item(f"{base}/{index_store.MANIFEST}", manifest, manifest.stat().st_size, "", KIND_INDEX))
    return out


def plan(cfg: Config, zips: Sequence[ZipForMirror], have: Dict[str, Copy], sums_rows: Sequence[Tuple[str, str]],
         index: Sequence[Item]) -> Tuple[List[Item], List[Item]]:
    """(the ZIPs and index files to copy, the SHA256SUMS files to copy once the ZIPs they list are there)."""
    todo = [Item(z.path, cfg.backup_dir / z.path, z.size, z.sha256, KIND_ZIP) for z in zips
            if z.path not in have or have[z.path].status != "ok"]
    todo += [i for i in index if i.rel not in have or have[i.rel].status != "ok"]
    later: List[Item] = []
    for month in sorted(sums.by_month(sums_rows)):
        rel = f"{month}/{sums.SUMS_NAME}"
        path = cfg.backup_dir / rel
        try:
            size, sha = index_store.sha256_file(path)
        except FileNotFoundError:
            continue
        known = have.get(rel)
        if known is None or known.sha256 != sha or known.status != "ok":
            later.append(Item(rel, path, size, sha, KIND_SUMS))
    return todo, later


def batches(items: Sequence[Item], max_bytes: int = 0) -> List[List[Item]]:
    """``items`` cut into batches of at most :data:`BATCH_FILES` files and ``max_bytes`` bytes."""
    max_bytes = max_bytes or BATCH_BYTES
    out: List[List[Item]] = []
    cur: List[Item] = []
    size = 0
    for item in items:
        if cur and (len(cur) >= BATCH_FILES or size + item.size > max_bytes):
            out.append(cur)
            cur, size = [], 0
        cur.append(item)
        size += item.size
    if cur:
        out.append(cur)
    return out


class Mirror:
    """One ``mirror`` invocation over every (or one) destination; ``request_stop()`` is signal-safe."""

    def __init__(self, cfg: Config, *, only: Optional[str] = None, scheduled: bool = False,
                 ignore_window: bool = False, max_seconds: Optional[float] = None,
                 announce: Callable[[str], None] = lambda line: None, clock: Callable[[], float] = time.time) -> None:
        self.cfg, self.only, self.scheduled, self.ignore_window = cfg, only, scheduled, ignore_window
        self.max_seconds, self.announce, self.clock = max_seconds, announce, clock
        self.cancel = threading.Event()
        self.result = MirrorResult()
        self.started = time.monotonic()

    def request_stop(self) -> None:
        self.cancel.set()

    def _out_of_time(self) -> bool:
        return self.max_seconds is not None and time.monotonic() - self.started >= self.max_seconds

    def _window_open(self, m: MirrorConfig) -> bool:
        window = m.window or self.cfg.run_window
        return self.ignore_window or not window or schedule.window_open(self.clock(), window,
                                                                         zone_for(self.cfg.timezone))

    async def run(self) -> MirrorResult:
        """Mirror to each destination in turn; a failing one does not stop the others."""
        cfg = self.cfg
        targets = [m for m in cfg.mirror if self.only in (None, m.dest)]
        if not targets:
            raise MirrorError("no mirror destination is configured: add a [mirror] table (README 'Mirror')"
                              if not cfg.mirror else f"no [mirror] has dest = {self.only!r}; the destinations are "
                              + ", ".join(m.dest for m in cfg.mirror))
        guards.check_sentinel(cfg)
        if not cfg.ledger_path.exists():
            raise MirrorError(f"no ledger at {cfg.ledger_path}: nothing has been backed up yet to mirror")
        await offload(durable.ensure_dir, cfg.work_dir)
        try:
            lock = guards.RunLock(cfg.work_dir / "mirror.lock").acquire()
        except LockHeld:
            raise LockHeld("another 'horos-backup mirror' is running; this one exits") from None
        try:
            async with Ledger(cfg.ledger_path, cfg.issues_csv, names_in_csv=cfg.log_patient_names) as ledger:
                book = MirrorBook(ledger)
                rows = await book.zip_hashes()
                await offload(refresh_sums, cfg, rows)
                index = await offload(index_items, cfg)
                for m in targets:
                    if self.cancel.is_set():
                        break
                    self.result.dests.append(await self._one(ledger, book, m, index))
        finally:
            lock.release()
        return self.result

    async def _one(self, ledger: Ledger, book: MirrorBook, m: MirrorConfig, index: Sequence[Item]) -> DestResult:
        r = DestResult(m.dest)
        if not self._window_open(m):
            r.outcome = MirrorOutcome.SKIPPED
            r.message = f"outside its window {m.window or self.cfg.run_window}"
            return r
        run_id = await book.begin_run(m.dest)
        dest = destination(self.cfg, m)
        try:
            await offload(dest.check)
            await offload(dest.clean)
            await self._copy_all(book, dest, m, r, index)
        except MirrorError as exc:
            r.outcome, r.message = MirrorOutcome.FAILED, str(exc)
        except OSError as exc:  # the primary's disk, while reading (the destination's are MirrorErrors)
            r.outcome, r.message = MirrorOutcome.FAILED, f"reading the backup disk failed: {exc.strerror or exc}"
        if r.outcome == MirrorOutcome.FAILED:
            self.announce(f"mirror: {r.message}")
            if await ledger.condition(f"{IssueCode.MIRROR_FAILED}:{m.dest}", True, r.message):
                await ledger.issue(IssueCode.MIRROR_FAILED, r.message)
        else:
            await ledger.condition(f"{IssueCode.MIRROR_FAILED}:{m.dest}", False)
        await book.end_run(run_id, r.outcome, r.files, r.bytes, r.message)
        return r

    async def _copy_all(self, book: MirrorBook, dest: Destination, m: MirrorConfig, r: DestResult,
                        index: Sequence[Item]) -> None:
        zips = await book.zips()
        have = await book.copies(m.dest)
        todo, later = plan(self.cfg, zips, have, await book.zip_hashes(), index)
        failures: List[str] = []
        cut = batches(todo, RCLONE_BATCH_BYTES if getattr(dest, "pipelined", False) else BATCH_BYTES)
        sent = None  # (batch, what its upload said): a pipelined destination's batch awaiting its read-back
        for n, batch in enumerate(cut):
            if self.cancel.is_set() or self._out_of_time() or not self._window_open(m):
                r.left = sum(len(b) for b in cut[n:]) + len(later)
                r.outcome = MirrorOutcome.PARTIAL
                r.message = "stopped (signal, time budget or window); the next mirror goes on"
                break
            if getattr(dest, "pipelined", False):
                # Upload this batch while the previous one is read back (docs/design/mirror.md §5).
                upload = asyncio.ensure_future(offload(dest.send, batch, self.cancel))
                try:
                    if sent is not None:
                        failures += await self._confirm(book, dest, m, r, *sent)
                finally:
                    error = await upload
                sent = (batch, error)
                continue
            try:
                placed, failed = await offload(dest.put, batch, self.cancel)
            except MirrorError as exc:  # the destination failed: what it verified before still counts
                await self._record(book, m, getattr(exc, "placed", ()), r)
                raise
            await self._record(book, m, placed, r)
            failures += self._failed(m, failed)
        if sent is not None:
            failures += await self._confirm(book, dest, m, r, *sent)
        if r.outcome == MirrorOutcome.PARTIAL:
            return
        # The month lists, once every ZIP they list is there (`sha256sum -c` passes there at any moment).
        have = await book.copies(m.dest)
        ready = [s for s in later if self._month_complete(s, have)]
        if ready and not self.cancel.is_set():
            placed, failed = await offload(dest.put, ready, self.cancel)
            await self._record(book, m, placed, r)
            failures += [why for _, why in failed]
        r.left = len(later) - len(ready) + len(failures)
        if failures:
            r.outcome = MirrorOutcome.FAILED
            r.message = f"{len(failures)} file(s) not mirrored; first: {failures[0]}"
        elif self.cancel.is_set():
            r.outcome, r.message = MirrorOutcome.PARTIAL, "interrupted; the next mirror goes on"
        else:
            r.outcome = MirrorOutcome.OK

    async def _confirm(self, book: MirrorBook, dest, m: MirrorConfig, r: DestResult, batch, error: str) -> List[str]:
        """Read a pipelined batch back and record what arrived equal; the reasons of what did not."""
        placed, failed = await offload(dest.confirm, batch, error, self.cancel)
        await self._record(book, m, placed, r)
        return self._failed(m, failed)

    @staticmethod
    def _failed(m: MirrorConfig, failed) -> List[str]:
        for _item, why in failed:
            log.warning("mirror %s: %s", m.dest, why)
        return [why for _, why in failed]

    def _month_complete(self, s: Item, have: Dict[str, Copy]) -> bool:
        listed = sums.parse(s.src.read_bytes()) if s.src.exists() else {}
        month = s.rel.rsplit("/", 1)[0]
        return all(f"{month}/{name}" in have and have[f"{month}/{name}"].status == "ok" for name in listed)

    async def _record(self, book: MirrorBook, m: MirrorConfig, placed: Sequence[Placed], r: DestResult) -> None:
        if not placed:
            return
        await book.record_copies(m.dest, [(p.item.rel, p.item.kind, p.item.size, p.sha256, p.stored_as)
                                          for p in placed])
        backfill = [(p.item.rel, p.sha256) for p in placed if p.item.kind == KIND_ZIP and not p.item.sha256 and p.sha256]
        await book.set_sha256(backfill)
        if backfill:  # ZIPs written before schema 5 now have a hash: their month lists follow
            await offload(refresh_sums, self.cfg, await book.zip_hashes())
        for p in placed:
            r.files += 1
            r.bytes += p.item.size
            if p.conflict:
                r.conflicts += 1
                await book.ledger.issue(IssueCode.MIRROR_CONFLICT, f"{m.dest}: {p.item.rel} stored as {p.stored_as}")
        self.announce(f"mirror {m.dest}: {r.files} files, {r.bytes / 1e6:.1f} MB copied and verified")


def summary(r: MirrorResult) -> List[str]:
    """One line per destination, for the command line."""
    lines = []
    for d in r.dests:
        extra = f"; {d.left} left" if d.left else ""
        msg = f": {d.message}" if d.message else ""
        lines.append(f"mirror {d.dest}: {d.outcome}, {d.files} files ({d.bytes / 1e6:.1f} MB) copied and "
                     f"verified{extra}{msg}")
    return lines
