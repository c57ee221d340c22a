"""``horos-backup verify``: re-check the archive on disk against the ledger, and never ignore a bad ZIP.

Every ZIP the ledger records as ``ok`` must exist, have the size recorded, a readable central directory
with the recorded member count (and member digest); ``--deep`` also re-reads every member and checks its
CRC (bit rot). A missing ZIP is reported ``ZIP_MISSING``; a bad one ``ZIP_INVALID`` and moved to
``.quarantine/`` so nobody restores from it. Both are flagged in the ledger (``Ledger.mark_zip_bad``),
which queues the study, and the next ``run`` exports it again from Horos if the source still exists.

Verify writes to the ledger, so it holds the run lock for its whole pass: it never runs alongside the
engine. A pass is resumable: ZIPs are checked in path order and ``.tmp/verify_state.json`` remembers
the last path done, so an interrupted or time-limited pass continues where it stopped.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from horos_async.backup import archive, reconcile, zip_manifest, zipcheck
from horos_async.backup.identity import members_digest
from horos_async import durable, guards
from horos_async.blocking import offload
from horos_async.codes import IssueCode
from horos_async.config import Config
from horos_async.errors import ConfigError, LedgerError, LockHeld, VolumeError
from horos_async.state.ledger import Ledger
from horos_async.state.ledger_records import ZipToVerify
from horos_async.backup.months import withdraw_month_marker

STATE_VERSION = 1
FLUSH_EVERY = 25
"""Good results are committed to the ledger (``verified_at``) and the state file this often (ZIPs) ..."""
FLUSH_SECONDS = 5.0
"""... or at least this often (seconds)."""
_MONTH = re.compile(r"^(\d{4}_(0[1-9]|1[0-2])|undated)$")


@dataclass
class VerifyResult:
    """What one ``verify`` invocation did."""

    total: int = 0
    """ZIPs in scope (status ``ok`` in the ledger, after --since/--month)."""
    skipped: int = 0
    """Already checked earlier in this pass (resumed)."""
    checked: int = 0
    good: int = 0
    invalid: int = 0
    missing: int = 0
    bytes_read: int = 0
    finished: bool = False
    """The pass reached the last ZIP in scope."""
    stopped: str = ""
    """Why it stopped early (limit reached, interrupted), empty when finished."""
    problems: List[str] = field(default_factory=list)

    @property
    def bad(self) -> int:
        """Invalid plus missing ZIPs found by this invocation."""
        return self.invalid + self.missing


class Throttle:
    """Sleep so that bytes read stay under ``max_bytes_per_s`` on average (None = no limit)."""

    def __init__(self, max_bytes_per_s: Optional[float], clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate, self.clock, self.sleep = max_bytes_per_s, clock, sleep
        self.start, self.total = clock(), 0.0

    def add(self, nbytes: float) -> None:
        """Account ``nbytes`` read; sleep if ahead of the allowed rate."""
        self.total += nbytes
        if self.rate:
            ahead = self.total / self.rate - (self.clock() - self.start)
            if ahead > 0:
                self.sleep(ahead)


def parse_since(text: Optional[str]) -> Optional[float]:
    """``YYYY-MM-DD`` → local midnight as a Unix time."""
    if not text:
        return None
    try:
        return dt.datetime.strptime(text, "%Y-%m-%d").timestamp()
    except ValueError:
        raise ConfigError(f"--since {text!r}: expected a date YYYY-MM-DD, e.g. --since 2024-01-31") from None


def check_month(text: Optional[str]) -> Optional[str]:
    """Validate ``--month``: a month folder name, ``YYYY_MM`` or ``undated``."""
    if text and not _MONTH.match(text):
        raise ConfigError(f"--month {text!r}: expected a month folder name YYYY_MM (e.g. 2024_03) or 'undated'")
    return text or None


def read_state(cfg: Config) -> Optional[Dict[str, Any]]:
    """The saved pass, or None when there is none (or it is unreadable: a new pass then starts)."""
    try:
        data = json.loads(cfg.verify_state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("version") == STATE_VERSION else None


class Verifier:
    """One verify invocation; ``request_stop()`` is safe from a signal handler."""

    def __init__(self, cfg: Config, *, deep: bool = False, since: Optional[str] = None, month: Optional[str] = None,
                 restart: bool = False, max_mb_per_s: Optional[float] = None, max_zips: Optional[int] = None,
                 max_minutes: Optional[float] = None, progress_every: int = 100,
                 progress: Callable[[str], None] = lambda line: None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.cfg, self.deep, self.restart = cfg, deep, restart
        self.since, self.month = parse_since(since), check_month(month)
        self.scope = {"since": since or None, "month": self.month}
        self.max_zips, self.max_minutes = max_zips, max_minutes
        self.progress_every, self.progress = max(1, progress_every), progress
        self.clock = clock
        self.throttle = Throttle(max_mb_per_s * 1e6 if max_mb_per_s else None, clock, sleep)
        self.cancel = threading.Event()
        self.result = VerifyResult()
        self.state: Dict[str, Any] = {}
        self.ledger: Optional[Ledger] = None
        self._verified: List[Tuple[float, str]] = []

    def request_stop(self) -> None:
        """Stop after (or inside) the current ZIP; progress so far is kept."""
        self.cancel.set()

    # -- the pass ----------------------------------------------------------------------------------
    async def run(self) -> VerifyResult:
        """Check every ZIP in scope not yet checked in this pass."""
        cfg = self.cfg
        guards.check_sentinel(cfg)
        guards.check_volumes(cfg)
        if not cfg.ledger_path.exists():
            raise LedgerError(f"no ledger at {cfg.ledger_path}: nothing is recorded to verify. If ZIPs exist on "
                              f"disk, run 'horos-backup rebuild-ledger' first (it adopts them), then verify")
        await offload(durable.ensure_dir, cfg.work_dir)  # creating a folder syncs its parent
        try:
            lock = guards.RunLock(cfg.lock_path).acquire()
        except LockHeld:
            pid = guards.read_lock_pid(cfg.lock_path)
            raise LockHeld("a backup run is in progress" + (f" (pid {pid})" if pid else "")
                           + "; try again later") from None
        try:
            self.ledger = await Ledger(cfg.ledger_path, cfg.issues_csv, names_in_csv=cfg.log_patient_names).open()
            try:
                await self._pass()
            except BaseException:
                try:  # keep what was proven so far, unless the disk is what failed
                    await self._flush()
                except Exception as exc:
                    self.progress(f"verify: progress not saved ({exc})")
                raise
            else:
                await self._flush()
            finally:
                await self.ledger.close()
        finally:
            lock.release()
        return self.result

    def _new_state(self) -> Dict[str, Any]:
        return {"version": STATE_VERSION, "deep": self.deep, "scope": self.scope, "pass_started": time.time(),
                "cursor": "", "checked": 0, "bad": 0, "updated_at": time.time(), "finished": False}

    async def _pass(self) -> None:
        r = self.result
        old = None if self.restart else read_state(self.cfg)
        if old and not old.get("finished") and old.get("deep") == self.deep and old.get("scope") == self.scope:
            self.state = old
            self.progress(f"verify: resuming the pass started {_when(old.get('pass_started'))} after "
                          f"{old.get('cursor') or 'the start'} (--restart to start over)")
        else:
            self.state = self._new_state()
        rows = await self._rows()
        r.total = len(rows)
        cursor = self.state.get("cursor") or ""
        todo = [z for z in rows if z.path > cursor]
        r.skipped = r.total - len(todo)
        t0, last_flush, last_line = self.clock(), self.clock(), self.clock()
        for z in todo:
            if self.cancel.is_set():
                r.stopped = "interrupted"
                break
            if self.max_zips is not None and r.checked >= self.max_zips:
                r.stopped = f"stopped after {r.checked} ZIPs (--max-zips)"
                break
            if self.max_minutes is not None and self.clock() - t0 > self.max_minutes * 60:
                r.stopped = f"stopped after {self.max_minutes:g} minutes (--max-minutes)"
                break
            try:
                await self._one(z)
            except archive.Cancelled:
                r.stopped = "interrupted"
                break
            r.checked += 1
            self.state["cursor"] = z.path
            self.state["checked"] = int(self.state.get("checked", 0)) + 1
            now = self.clock()
            if len(self._verified) >= FLUSH_EVERY or now - last_flush >= FLUSH_SECONDS:
                await self._flush()
                last_flush = now
            if r.checked % self.progress_every == 0 or now - last_line >= 10:
                self.progress(self._line(now - t0))
                last_line = now
        else:
            r.finished = True
            self.state["finished"], self.state["finished_at"] = True, time.time()

    def _line(self, seconds: float) -> str:
        r = self.result
        done = r.skipped + r.checked
        pct = 100.0 * done / r.total if r.total else 100.0
        rate = r.bytes_read / 1e6 / seconds if seconds > 0 else 0.0
        return (f"verify: {done}/{r.total} ZIPs ({pct:.0f}%), {r.bytes_read / 1e6:.0f} MB read, {rate:.1f} MB/s, "
                f"{r.bad} bad")

    async def _rows(self) -> List[ZipToVerify]:
        return await self.ledger.zips_to_verify(self.since, self.month)

    # -- one ZIP -----------------------------------------------------------------------------------
    async def _one(self, z: ZipToVerify) -> None:
        path = self.cfg.backup_dir / z.path
        retried: List[str] = []
        members, why, nbytes = await offload(self._check, path, z, retried.append)
        self.result.bytes_read += nbytes
        for first in retried:
            outcome = "still bad" if why or members == "missing" else "good"
            hint = (" (a read error that goes away can announce a failing disk: run 'horos-backup doctor')"
                    if outcome == "good" and first.startswith("read error") else "")
            self.progress(f"verify: {self._label(z)} failed a first reading ({first}); read again: {outcome}{hint}")
        if members == "missing":
            self._volume_still_there(path)
            await self._missing(z)
        elif why:
            self._volume_still_there(path)
            await self._invalid(z, why)
        else:
            self.result.good += 1
            if self.deep:  # ``verified_at``: every member's CRC read back; a quick pass reads none
                self._verified.append((time.time(), z.path))

    def _check(self, path: Path, z: ZipToVerify, on_retry: Callable[[str], None]) -> Tuple[Any, str, int]:
        """Blocking: ("missing", "", 0) | (None, reason, bytes) | (members, "", bytes). A ZIP that fails is
        read a second time (``zipcheck.verify_stored``): only a second failure makes it bad."""
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return "missing", "", 0
        if size != z.zip_size:
            return None, f"size is {size} bytes, the ledger recorded {z.zip_size}", 0
        ratio = z.zip_size / z.bytes_in if z.bytes_in else 1.0
        seen = [0]

        def progress(_files: int, nbytes: int) -> None:
            if nbytes < seen[0]:  # the second reading of a ZIP starts over
                seen[0] = 0
            self.throttle.add((nbytes - seen[0]) * ratio)  # estimate of bytes read from the disk
            seen[0] = nbytes

        try:
            members = zipcheck.verify_stored(path, deep=self.deep, progress=progress if self.deep else None,
                                             cancel=self.cancel, on_retry=on_retry, hashes=self.deep)
        except archive.ZipInvalid as exc:
            return None, str(exc), int(seen[0] * ratio)
        except FileNotFoundError:
            return "missing", "", 0
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise VolumeError(f"cannot read {path}: {exc.strerror} (macOS privacy? run 'horos-backup doctor'); "
                                  f"nothing was changed for this ZIP") from None
            return None, f"unreadable, twice: {exc.strerror or exc} (damaged disk area?)", int(seen[0] * ratio)
        nbytes = z.zip_size if self.deep else 0
        if len(members) != z.files:
            return None, f"holds {len(members)} members, the ledger recorded {z.files}", nbytes
        if self.deep:  # first: it names the member and what differs (a forged CRC too)
            why = _manifest_fault(path, z, members)
            if why:
                return None, why, nbytes
        if z.digest and members_digest(members) != z.digest:
            return None, "its members (names, CRCs, sizes) differ from what was recorded", nbytes
        return members, "", nbytes

    def _volume_still_there(self, path: Path) -> None:
        """A vanished backup disk must stop the pass, not mark every ZIP missing."""
        cfg = self.cfg
        if (cfg.sentinel is not None and not cfg.sentinel.exists()) or not cfg.backup_dir.is_dir():
            raise VolumeError(f"the backup volume vanished while verifying ({path} unreachable); nothing more was "
                              f"recorded; mount it and run verify again to continue")

    def _label(self, z: ZipToVerify) -> str:
        """How a ZIP is named in issues and messages: its name carries the patient's, so by default
        only the month folder and the study UID (``log_patient_names`` shows the full path)."""
        if self.cfg.log_patient_names:
            return z.path
        return f"the ZIP of study {z.key.split('|', 1)[0]} in {z.path.split('/', 1)[0]}/"

    async def _missing(self, z: ZipToVerify) -> None:
        self.result.missing += 1
        await self._month_incomplete(z)
        detail = f"{self._label(z)} is recorded as done but is not on disk; the study is queued for export again"
        await self.ledger.mark_zip_bad(z.path, "missing", IssueCode.ZIP_MISSING, detail)
        await self.ledger.issue(IssueCode.ZIP_MISSING, detail, z.key, z.key.split("|", 1)[0], z.path)
        self._bad(f"{IssueCode.ZIP_MISSING} {self._label(z)}")

    async def _invalid(self, z: ZipToVerify, why: str) -> None:
        self.result.invalid += 1
        # Move it aside first: if we crash before the ledger says "bad", the next run sees it missing
        # and re-exports it; the reverse order could leave a bad ZIP beside its replacement.
        moved = await offload(self._quarantine, z.path)
        await self._month_incomplete(z)
        where = (f"moved to .quarantine/{z.path.split('/', 1)[0]}/" if moved
                 else "could NOT be moved aside (see the log): do not restore from it")
        detail = f"{self._label(z)} fails verification ({why}); {where}; the study is queued for export again"
        await self.ledger.mark_zip_bad(z.path, "bad", IssueCode.ZIP_INVALID, detail)
        await self.ledger.issue(IssueCode.ZIP_INVALID, detail, z.key, z.key.split("|", 1)[0], z.path)
        self._bad(f"{IssueCode.ZIP_INVALID} {self._label(z)}: {why}")

    async def _month_incomplete(self, z: ZipToVerify) -> None:
        """The month lost a verified ZIP: its ``.month_done`` must not claim otherwise."""
        month = z.path.split("/", 1)[0] if "/" in z.path else ""
        if month:
            await offload(withdraw_month_marker, self.cfg, month)

    def _quarantine(self, rel: str) -> Optional[Path]:
        """Blocking: move the ZIP aside; ``reconcile.quarantine`` syncs both folders, so the move is
        durable before the ledger says "bad"."""
        return reconcile.quarantine(self.cfg, rel)

    def _bad(self, line: str) -> None:
        self.result.problems.append(line)
        self.state["bad"] = int(self.state.get("bad", 0)) + 1
        self.progress(f"verify: {line}")

    async def _flush(self) -> None:
        """Commit ``verified_at`` of the good ZIPs so far, then save the pass state."""
        if self._verified and self.ledger is not None and self.ledger.is_open:
            await self.ledger.mark_verified(self._verified)
            self._verified = []
        if self.state:
            self.state["updated_at"] = time.time()
            await offload(durable.write_atomic, self.cfg.verify_state_path,
                          json.dumps(self.state, indent=1).encode("utf-8"), overwrite=True)


def _manifest_fault(path: Path, z: ZipToVerify, members) -> str:
    """Why the ZIP's members disagree with its manifest (every SHA-256 just computed), or "" when they
    agree or the ZIP is from before manifests (docs/design/manifest.md §5)."""
    names = {m.name for m in members}
    if zip_manifest.MANIFEST_NAME not in names:
        return "its manifest is missing (the ledger recorded one)" if z.manifest_sha256 else ""
    data = zip_manifest.read_bytes(path)
    sha = {m.name: m.sha256 for m in members}.get(zip_manifest.MANIFEST_NAME, "")
    if data is None or zip_manifest.digest(data) != sha:
        return "its manifest cannot be read the same way twice"
    if z.manifest_sha256 and sha != z.manifest_sha256:
        return "its manifest differs from the one recorded when the ZIP was written"
    doc = zip_manifest.parse(data)
    if doc is None:
        return "its manifest is not a horos-backup manifest"
    problems = zip_manifest.check_members(doc, members)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return f"{problems[0]}{more}"
    return ""


def _when(ts: Optional[float]) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else "earlier"


def summary(cfg: Config, r: VerifyResult, deep: bool) -> str:
    """The closing lines for a person."""
    kind = "deep (every member's CRC re-read, SHA-256 checked against its manifest)" if deep else "quick (sizes and central directories)"
    lines = [f"verify {kind}: {r.checked} ZIPs checked this time, {r.good} good, {r.invalid} invalid, "
             f"{r.missing} missing" + (f"; {r.skipped} already checked earlier in this pass" if r.skipped else "")]
    if r.finished:
        lines.append(f"the pass is complete ({r.total} ZIPs in scope)")
    else:
        lines.append(f"{r.stopped or 'stopped'}; run the same command again to continue (--restart starts over)")
    if r.bad:
        lines.append(f"{r.bad} bad ZIP(s) recorded in {cfg.issues_csv}; invalid ones were moved to "
                     f"{cfg.quarantine_dir}; the next 'horos-backup run' exports those studies again")
    return "\n".join(lines)
