"""A read-only snapshot of the engine for any front end (CLI ``status``, ``horos-tui``); no Textual here.

Sources, all read without writing: the live file ``backup_dir/.tmp/status.json`` that a running engine
replaces about twice a second (format and parser: ``state.live``), and the ledger opened ``mode=ro``. A
live file whose heartbeat is older than ``STALE_SECONDS`` while its process is gone is reported as stale,
never as idle.

State that cannot be read (backup volume not mounted, ledger damaged or unreadable) is ``unreadable``
with the reason and the exit code ``status`` returns, never "0 studies backed up". The archive counts
agree with each other: ``done`` is the ledger's (the truth, live), ``eligible`` the last scan's, and
``pending`` is the difference.
"""

from __future__ import annotations

import socket
import sqlite3
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from horos_async import guards, naming, platform
from horos_async.codes import EngineState
from horos_async.config import Config
from horos_async.errors import EXIT_OK, EXIT_VOLUME, LedgerError, VolumeError
from horos_async.models import DONE, FAILED
from horos_async.state import live as live_file
from horos_async.state.ledger_read import LedgerReader
from horos_async.state.ledger_records import IssueRecord, RunRecord, StateTotals
from horos_async.state.live import Finished, Job, LiveStatus  # noqa: F401 (the live file's records, shown as they are)

STALE_SECONDS = 10.0


IssueRow = IssueRecord
"""One row of the issue log (the ledger's record, under the name front ends know)."""
RunRow = RunRecord
"""One past or current run (the ledger's record, under the name front ends know)."""


@dataclass(frozen=True)
class Snapshot:
    """Everything a front end shows, read at ``taken``."""

    taken: float
    engine: str
    """``codes.EngineState``: ``running``, ``paused`` (a guard stopped the run), ``idle``, ``stale`` (engine
    died or hung), ``never-run`` or ``unreadable``."""
    detail: str
    """One human line explaining ``engine``."""
    pid: Optional[int] = None
    run_started: Optional[float] = None
    phase: str = ""
    guard_code: str = ""
    guard_detail: str = ""
    incoming_count: Optional[int] = None
    incoming_limit: int = 0
    incoming_capped: bool = False
    jobs: Tuple[Job, ...] = ()
    queued: Tuple[str, ...] = ()
    """Labels of studies waiting in the current batch."""
    finished: Tuple[Finished, ...] = ()
    batch_index: int = 0
    eligible: Optional[int] = None
    """Studies due for backup in the Horos database at the last scan (None = not scanned yet)."""
    done: int = 0
    failed: int = 0
    pending: Optional[int] = None
    bytes_done: int = 0
    months: Tuple[Tuple[str, int, int], ...] = ()
    """(month, eligible, done) per month folder, oldest first."""
    throughput: Tuple[Tuple[float, int, int], ...] = ()
    """(unix time, source bytes done, studies done) samples of the current run, oldest first."""
    issues: Tuple[IssueRow, ...] = ()
    runs: Tuple[RunRow, ...] = ()
    next_run: Optional[float] = None
    """When launchd should start the next run (estimate), if known."""
    launchd_installed: bool = False
    host: str = ""
    exit_code: int = EXIT_OK
    """What ``horos-backup status`` exits with: 0, or for ``unreadable`` 7 (backup folder missing or
    unreadable) or 8 (ledger damaged)."""

    @property
    def mb_per_s(self) -> float:
        """Source MB/s over the last minute of samples (0 when unknown)."""
        return _rate(self.throughput, 1, 60.0) / 1e6

    @property
    def studies_per_hour(self) -> float:
        """Studies/hour over the last ten minutes of samples."""
        return _rate(self.throughput, 2, 600.0) * 3600.0

    @property
    def eta_seconds(self) -> Optional[float]:
        """Time to finish the pending studies at the current rate, if both are known."""
        rate = self.studies_per_hour
        if not self.pending or rate <= 0:
            return None
        return self.pending / rate * 3600.0


def _rate(samples: Tuple[Tuple[float, int, int], ...], idx: int, window: float) -> float:
    if len(samples) < 2:
        return 0.0
    last = samples[-1]
    first = next((s for s in samples if last[0] - s[0] <= window), samples[0])
    dt_ = last[0] - first[0]
    return (last[idx] - first[idx]) / dt_ if dt_ > 0 else 0.0




def _read_live(cfg: Config) -> Optional[LiveStatus]:
    path = cfg.live_status_path
    try:
        return live_file.load(path)
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"not valid JSON: {exc}"
        raise VolumeError(f"cannot read the engine's live state {path} ({why})") from None


def _ledger_part(cfg: Config, issues_limit: int, runs_limit: int) -> Dict[str, Any]:
    """Counts, months, issues and runs from the ledger; LedgerError when damaged, VolumeError when unreadable."""
    out: Dict[str, Any] = {"done": 0, "failed": 0, "bytes_done": 0, "issues": (), "runs": (), "months": {}}
    path = cfg.ledger_path
    if not path.exists():
        return out
    try:
        with LedgerReader.open(path) as led:
            return _query_ledger(led, out, issues_limit, runs_limit)
    except sqlite3.OperationalError as exc:  # cannot open or read: permissions, I/O error, volume gone
        raise VolumeError(f"cannot read the ledger {path} ({exc}): is the backup volume still mounted, and "
                          f"readable by this user?") from None
    except sqlite3.DatabaseError as exc:  # "malformed", "not a database": what 'run' refuses (exit 8)
        raise LedgerError(
            f"ledger {path} is damaged ({exc}); 'horos-backup run' refuses it too. Move it aside "
            f"(mv '{path}' '{path}.damaged') and run 'horos-backup rebuild-ledger' to rebuild it from the "
            f"ZIPs on disk") from None


def _query_ledger(led: LedgerReader, out: Dict[str, Any], issues_limit: int,
                  runs_limit: int) -> Dict[str, Any]:
    if not led.is_ready():
        return out  # an empty ledger the engine is creating right now
    out["read"] = True
    totals = led.state_totals()
    done, failed = totals.get(DONE, StateTotals()), totals.get(FAILED, StateTotals())
    out["done"], out["bytes_done"], out["failed"] = done.studies, done.bytes_in, failed.studies
    out["months"] = led.done_per_month()
    out["issues"] = led.recent_issues(issues_limit)
    out["runs"] = led.recent_runs(runs_limit)
    return out


def launchd_plist_path() -> Path:
    """Where ``horos-backup launchd install`` puts the LaunchAgent."""
    return platform.launchd_plist_path()


def read_snapshot(cfg: Config, now: Optional[float] = None, *, issues_limit: int = 50,
                  runs_limit: int = 10) -> Snapshot:
    """Read the engine's live file and the ledger (both read-only) into one Snapshot."""
    now = time.time() if now is None else now
    missing = guards.backup_dir_missing(cfg)
    if missing:
        return Snapshot(taken=now, engine=EngineState.UNREADABLE, detail=missing, exit_code=EXIT_VOLUME,
                        host=socket.gethostname())
    try:
        live = _read_live(cfg)
        led = _ledger_part(cfg, issues_limit, runs_limit)
    except (LedgerError, VolumeError) as exc:
        return Snapshot(taken=now, engine=EngineState.UNREADABLE, detail=str(exc), exit_code=exc.exit_code,
                        host=socket.gethostname())
    except OSError as exc:
        return Snapshot(taken=now, engine=EngineState.UNREADABLE, exit_code=EXIT_VOLUME, host=socket.gethostname(),
                        detail=f"cannot read the engine's state in {cfg.backup_dir} ({exc.strerror or exc}): "
                               f"is the backup volume still mounted, and readable by this user?")
    installed = launchd_plist_path().exists()
    runs = led["runs"]
    last_end = next((r.ended for r in runs if r.ended), None)
    next_run = last_end + cfg.start_interval if installed and last_end else None
    base = dict(taken=now, done=led["done"], failed=led["failed"], bytes_done=led["bytes_done"],
                issues=led["issues"], runs=runs, next_run=next_run, launchd_installed=installed,
                host=socket.gethostname())
    if live is None:
        if runs:
            return Snapshot(engine=EngineState.IDLE, detail="no live state; last run recorded in the ledger", **base)
        return Snapshot(engine=EngineState.NEVER_RUN, detail="horos-backup has not run yet with this backup folder",
                        **base)
    alive = guards.pid_alive(live.pid) if live.host in (None, socket.gethostname()) else True
    beat = live.heartbeat
    if live.state == EngineState.RUNNING:
        if not alive or now - beat > STALE_SECONDS:
            engine = EngineState.STALE
            detail = (f"the engine stopped updating {now - beat:.0f}s ago"
                      + ("" if alive else " and its process is gone (killed or crashed); the next run resumes"))
        else:
            since = time.strftime('%H:%M:%S', time.localtime(now if live.started is None else live.started))
            engine, detail = EngineState.RUNNING, f"running since {since}, batch {live.batch.index}"
    elif live.state == EngineState.PAUSED:
        engine, detail = EngineState.PAUSED, live.guard.detail or live.message or "paused by a guard"
    else:
        engine, detail = EngineState.IDLE, live.message or "last run finished"
    eligible = live.totals.eligible
    # "done" is the ledger's, read now; "eligible" is from the last scan, which may be minutes old in a
    # long batch or a killed run: pending derived from both, so the three numbers always add up.
    pending = max(0, eligible - led["done"]) if eligible is not None else None
    months = live.months
    if led.get("read"):  # per month too: done from the ledger, eligible from the scan
        months = tuple((m, e, led["months"].get(m, 0)) for m, e, _ in months)
    return Snapshot(
        engine=engine, detail=detail, pid=live.pid, run_started=live.started, phase=live.phase,
        guard_code=live.guard.code, guard_detail=live.guard.detail, incoming_count=live.incoming.count,
        incoming_limit=live.incoming.limit or cfg.incoming_max_files, incoming_capped=live.incoming.capped,
        jobs=live.jobs, queued=live.batch.queued, finished=live.batch.finished, batch_index=live.batch.index,
        eligible=eligible, pending=pending, months=months, throughput=live.samples, **base)


def to_json(snap: Snapshot) -> Dict[str, Any]:
    """The snapshot as plain JSON-able data (``status --json``)."""
    from dataclasses import asdict

    d = asdict(snap)
    d["mb_per_s"] = round(snap.mb_per_s, 2)
    d["studies_per_hour"] = round(snap.studies_per_hour, 1)
    d["eta_seconds"] = snap.eta_seconds
    return d


def _when(ts: Optional[float]) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def render(snap: Snapshot, width: int = 80) -> str:
    """Human-readable status, every line at most ``width`` columns (an 80-column SSH terminal): long
    sentences wrap, a ZIP name or UID is shortened in the middle with ``…``, an issue's detail takes
    at most two lines (all of it is in issues.csv)."""
    width = max(width, 60)
    lines = [f"Engine: {snap.engine.upper()} - {snap.detail}"]
    if snap.engine == EngineState.UNREADABLE:
        lines.append("Archive: unknown (the backup state could not be read; see above)")
        return _wrapped(lines, width)
    if snap.eligible is not None:
        lines.append(f"Archive: {snap.done}/{snap.eligible} studies backed up, {snap.pending} pending, "
                     f"{snap.failed} failing, {snap.bytes_done / 1e9:.2f} GB of images")
    else:
        lines.append(f"Archive: {snap.done} studies backed up, {snap.failed} failing (no scan yet)")
    if snap.incoming_count is not None:
        over = " (OVER LIMIT: paused)" if snap.incoming_capped else ""
        lines.append(f"INCOMING.noindex: {snap.incoming_count}/{snap.incoming_limit} files{over}")
    for j in snap.jobs:
        counts = (f": {j.files_done}/{j.files_total} files, "
                  f"{j.bytes_done / 1e6:.0f}/{j.bytes_total / 1e6:.0f} MB")
        label = naming.fit_middle(naming.printable(j.label), width - len("  zipping ") - len(counts))
        lines.append(f"  zipping {label}{counts}")
    if snap.next_run:
        lines.append(f"Next scheduled run: about {_when(snap.next_run)}")
    if snap.runs:
        lines.append("Last runs:")
        for r in snap.runs[:5]:
            lines.append(f"  #{r.id} {_when(r.started)} {r.outcome or 'running'}: {r.studies_done} exported, "
                         f"{r.studies_failed} not, exit {r.exit_code if r.exit_code is not None else '-'}")
    if snap.issues:
        lines.append("Recent issues:")
        for i in snap.issues[:10]:
            head = f"  {_when(i.ts)}  {i.code:<19} "
            lines.append(head + naming.fit_middle(i.uid or "-", width - len(head)))
            detail = textwrap.wrap(naming.printable(i.detail), width - 6) or [""]
            if len(detail) > 2:
                detail = [detail[0], naming.fit_end(" ".join(detail[1:]), width - 6)]
            lines += [f"      {d}" for d in detail if d]
    return _wrapped(lines, width)


def _wrapped(lines, width: int) -> str:
    """Lines longer than ``width`` wrapped, the continuation indented two more than the line."""
    out = []
    for line in lines:
        if naming.cells(line) <= width:
            out.append(line)
            continue
        indent = " " * (len(line) - len(line.lstrip()) + 2)
        out += textwrap.wrap(line, width, subsequent_indent=indent, break_on_hyphens=False) or [line[:width]]
    return "\n".join(out)
