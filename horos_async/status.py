"""A read-only snapshot of the engine for any front end (CLI ``status``, ``horos-tui``); no Textual here.

Sources, all read without writing: the live file ``backup_dir/.tmp/status.json`` that a running engine
replaces about twice a second (format and parser: ``state.live``), the ledger opened ``mode=ro``, and the
health file kept off the backup volume (``horos_async.health``), whose verdict leads every front end and
sets ``status``'s exit code. A live file whose heartbeat is older than ``STALE_SECONDS`` while its
process is gone is reported as stale, never as idle.

State that cannot be read (backup volume not mounted, ledger damaged or unreadable) is ``unreadable``
with the reason and the exit code ``status`` returns, never "0 studies backed up". The archive counts
agree with each other: ``done`` is the ledger's (the truth, live), ``eligible`` the last scan's, and
``pending`` is the difference. The ETA comes from the rate achieved over the last days (the ledger's
``runs``), not from the speed inside one run. Times are shown in the configured ``timezone``, labelled.
"""

from __future__ import annotations

import datetime as dt
import socket
import sqlite3
import textwrap
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from horos_async import guards, health as health_mod, naming, platform
from horos_async.codes import EngineState, IssueCode
from horos_async.config import Config
from horos_async.errors import EXIT_OK, EXIT_VOLUME, LedgerError, VolumeError
from horos_async.health import Health
from horos_async.models import DONE, FAILED
from horos_async.state import live as live_file
from horos_async.state.ledger_read import LedgerReader
from horos_async.state.ledger_records import IssueRecord, RunRecord, RunsSince, StateTotals
from horos_async.state.live import Finished, Job, LiveStatus  # noqa: F401 (the live file's records, shown as they are)
from horos_async.timezones import zone_of

STALE_SECONDS = 10.0
ACHIEVED_DAYS = 3.0
"""The ETA divides what is pending by the studies exported per hour over this many days of runs."""


WARNING_CONDITIONS = (IssueCode.INDEX_SNAPSHOT_SKIPPED,)
"""Ledger conditions ``status``, ``horos-tui`` and the alerts show as warnings while they last."""

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
    only_in_backup: int = 0
    """Backed-up studies Horos's database no longer has (auto-cleaning, a rebuild, deleted by hand): their
    ZIPs are the only copy (``catalog --only-in-backup`` lists them)."""
    launchd_installed: bool = False
    host: str = ""
    exit_code: int = EXIT_OK
    """0, or for ``unreadable`` 7 (backup folder missing or unreadable) or 8 (ledger damaged); what
    ``status`` exits with is :attr:`status_code` (the health's code when the state was read)."""
    health: Optional[Health] = None
    """The verdict every front end leads with (None only in hand-made snapshots)."""
    due: Optional[int] = None
    """Studies due now at the last scan (pending minus those waiting to settle or to be retried)."""
    progress_at: Optional[float] = None
    """When the running engine last finished a study or read a byte."""
    achieved: Tuple[float, int] = (0.0, 0)
    """(hours covered, studies exported) by the runs of the last :data:`ACHIEVED_DAYS` days."""
    timezone: str = ""
    """The configured zone times are shown in ("" = this machine's)."""
    run_alive: bool = False
    """The process of the run the live file describes still exists (running, or stale but hung)."""
    warnings: Tuple[Tuple[str, float, str], ...] = ()
    """(code, since, detail) of the ledger conditions that are told as alerts (:data:`WARNING_CONDITIONS`)
    but do not change the health state: the images are being backed up, something beside them is not."""

    @property
    def mb_per_s(self) -> float:
        """Source MB/s over the last minute of samples (0 when unknown)."""
        return _rate(self.throughput, 1, 60.0) / 1e6

    @property
    def studies_per_hour(self) -> float:
        """Studies/hour over the last ten minutes of samples."""
        return _rate(self.throughput, 2, 600.0) * 3600.0

    @property
    def achieved_per_hour(self) -> float:
        """Studies exported per hour over the last days of runs, pauses between runs included (0: unknown)."""
        hours, studies = self.achieved
        return studies / hours if hours > 0 else 0.0

    @property
    def eta_seconds(self) -> Optional[float]:
        """Time to finish the pending studies at the rate achieved over the last days, if both are known."""
        rate = self.achieved_per_hour
        if not self.pending or rate <= 0:
            return None
        return self.pending / rate * 3600.0

    @property
    def status_code(self) -> int:
        """What ``horos-backup status`` exits with: 7 or 8 when the state is unreadable, else the health's
        code (0 OK, 20 FAILING, 21 STALLED, 22 NO PROGRESS, 23 NOT SCHEDULED)."""
        if self.exit_code:
            return self.exit_code
        return self.health.exit_code if self.health is not None else EXIT_OK


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


def _ledger_part(cfg: Config, issues_limit: int, runs_limit: int, now: float) -> Dict[str, Any]:
    """Counts, months, issues, runs and the runs of the last days from the ledger; LedgerError when damaged,
    VolumeError when unreadable."""
    out: Dict[str, Any] = {"done": 0, "failed": 0, "bytes_done": 0, "issues": (), "runs": (), "months": {},
                           "only_in_backup": 0, "achieved": RunsSince(), "warnings": ()}
    path = cfg.ledger_path
    if not path.exists():
        return out
    try:
        with LedgerReader.open(path) as led:
            return _query_ledger(led, out, issues_limit, runs_limit, now)
    except sqlite3.OperationalError as exc:  # cannot open or read: permissions, I/O error, volume gone
        raise VolumeError(f"cannot read the ledger {path} ({exc}): is the backup volume still mounted, and "
                          f"readable by this user?") from None
    except sqlite3.DatabaseError as exc:  # "malformed", "not a database": what 'run' refuses (exit 8)
        raise LedgerError(
            f"ledger {path} is damaged ({exc}); 'horos-backup run' refuses it too. Move it aside "
            f"(mv '{path}' '{path}.damaged') and run 'horos-backup rebuild-ledger' to rebuild it from the "
            f"ZIPs on disk") from None


def _query_ledger(led: LedgerReader, out: Dict[str, Any], issues_limit: int,
                  runs_limit: int, now: float) -> Dict[str, Any]:
    if not led.is_ready():
        return out  # an empty ledger the engine is creating right now
    out["read"] = True
    totals = led.state_totals()
    done, failed = totals.get(DONE, StateTotals()), totals.get(FAILED, StateTotals())
    out["done"], out["bytes_done"], out["failed"] = done.studies, done.bytes_in, failed.studies
    out["months"] = led.done_per_month()
    out["only_in_backup"] = led.only_in_backup()  # 0 on a ledger older than schema 2
    out["issues"] = led.recent_issues(issues_limit)
    out["runs"] = led.recent_runs(runs_limit)
    out["achieved"] = led.runs_since(now - ACHIEVED_DAYS * 86400)
    out["warnings"] = tuple(c for c in led.conditions() if c[0] in WARNING_CONDITIONS)
    return out


def launchd_plist_path() -> Path:
    """Where ``horos-backup launchd install`` puts the LaunchAgent."""
    return platform.launchd_plist_path()


def read_snapshot(cfg: Config, now: Optional[float] = None, *, issues_limit: int = 50,
                  runs_limit: int = 10) -> Snapshot:
    """Read the engine's live file, the ledger (both read-only) and the health file into one Snapshot."""
    now = time.time() if now is None else now
    snap = _read_state(cfg, now, issues_limit, runs_limit)
    return _with_health(cfg, snap)


def _read_state(cfg: Config, now: float, issues_limit: int, runs_limit: int) -> Snapshot:
    """The Snapshot of the backup volume's state (live file and ledger), without the health verdict."""
    zone = zone_of(cfg.timezone)
    unread = dict(taken=now, engine=EngineState.UNREADABLE, host=socket.gethostname(), timezone=cfg.timezone,
                  launchd_installed=launchd_plist_path().exists())
    missing = guards.backup_dir_missing(cfg)
    if missing:
        return Snapshot(detail=missing, exit_code=EXIT_VOLUME, **unread)
    try:
        live = _read_live(cfg)
        led = _ledger_part(cfg, issues_limit, runs_limit, now)
    except (LedgerError, VolumeError) as exc:
        return Snapshot(detail=str(exc), exit_code=exc.exit_code, **unread)
    except OSError as exc:
        return Snapshot(exit_code=EXIT_VOLUME, **unread,
                        detail=f"cannot read the engine's state in {cfg.backup_dir} ({exc.strerror or exc}): "
                               f"is the backup volume still mounted, and readable by this user?")
    installed = unread["launchd_installed"]
    runs = led["runs"]
    last_end = next((r.ended for r in runs if r.ended), None)
    next_run = last_end + cfg.start_interval if installed and last_end else None
    first, studies = led["achieved"].first_started, led["achieved"].studies_done
    base = dict(taken=now, done=led["done"], failed=led["failed"], bytes_done=led["bytes_done"],
                only_in_backup=led["only_in_backup"], warnings=led["warnings"],
                issues=led["issues"], runs=runs, next_run=next_run, launchd_installed=installed,
                host=socket.gethostname(), timezone=cfg.timezone)
    if live is None:
        base["achieved"] = (max(0.0, now - first) / 3600.0 if first else 0.0, studies)
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
            since = health_mod.stamp(now if live.started is None else live.started, zone, now)
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
    if engine in (EngineState.RUNNING, EngineState.STALE):  # the run going now: in the ledger's runs, not its count
        started = now if live.started is None else live.started
        studies += live.run.studies_done
        first = min(first, started) if first else started
    base["achieved"] = (max(0.0, now - first) / 3600.0 if first else 0.0, studies)
    return Snapshot(
        engine=engine, detail=detail, pid=live.pid, run_started=live.started, phase=live.phase,
        guard_code=live.guard.code, guard_detail=live.guard.detail, incoming_count=live.incoming.count,
        incoming_limit=live.incoming.limit or cfg.incoming_max_files, incoming_capped=live.incoming.capped,
        jobs=live.jobs, queued=live.batch.queued, finished=live.batch.finished, batch_index=live.batch.index,
        eligible=eligible, pending=pending, months=months, throughput=live.samples, due=live.totals.due,
        run_alive=alive and live.state == EngineState.RUNNING, progress_at=live.progress_at, **base)


def _with_health(cfg: Config, snap: Snapshot) -> Snapshot:
    """``snap`` with the health verdict: the health file (off the backup volume) judged with what was read."""
    note = ""
    try:
        rec = health_mod.read(cfg)
    except (OSError, ValueError) as exc:
        rec = health_mod.HealthRecord()
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        note = f" (the health file {cfg.health_path} cannot be read: {why})"
    since = None
    if snap.launchd_installed:
        try:
            since = launchd_plist_path().stat().st_mtime
        except OSError:
            pass
    seen = health_mod.Observed(
        now=snap.taken, engine=snap.engine, run_alive=snap.run_alive, run_started=snap.run_started, pid=snap.pid,
        progress_at=snap.progress_at, due=snap.due if snap.due is not None else snap.pending,
        scheduled=snap.launchd_installed, scheduled_since=since, interval=float(cfg.start_interval))
    verdict = health_mod.evaluate(rec, seen, zone_of(cfg.timezone))
    if note:
        verdict = replace(verdict, summary=verdict.summary + note)
    if cfg.source is not None and "<your config>" in verdict.fix:  # the command to type, whole
        verdict = replace(verdict, fix=verdict.fix.replace("<your config>", f"'{cfg.source}'"))
    return replace(snap, health=verdict)


def to_json(snap: Snapshot) -> Dict[str, Any]:
    """The snapshot as plain JSON-able data (``status --json``); ``health`` first, ``status_code`` with it."""
    d = asdict(snap)
    out: Dict[str, Any] = {"health": d.pop("health"), "status_code": snap.status_code}
    if out["health"] is not None:
        out["health"]["label"] = snap.health.label
    out.update(d)
    out["mb_per_s"] = round(snap.mb_per_s, 2)
    out["studies_per_hour"] = round(snap.studies_per_hour, 1)
    out["achieved_studies_per_hour"] = round(snap.achieved_per_hour, 1)
    out["eta_seconds"] = snap.eta_seconds
    return out


def zone_line(snap: Snapshot) -> str:
    """``Times: America/Sao_Paulo (-03)``: the zone every time shown is in."""
    zone = zone_of(snap.timezone)
    now = dt.datetime.fromtimestamp(snap.taken, zone) if zone is not None else \
        dt.datetime.fromtimestamp(snap.taken).astimezone()
    name = snap.timezone or "this machine's zone"
    return f"Times: {name} ({health_mod.zone_label(now)})"


def render(snap: Snapshot, width: int = 80) -> str:
    """Human-readable status, every line at most ``width`` columns (an 80-column SSH terminal): long
    sentences wrap, a ZIP name or UID is shortened in the middle with ``…``, an issue's detail takes
    at most two lines (all of it is in issues.csv)."""
    width = max(width, 60)
    zone = zone_of(snap.timezone)

    def when(ts: Optional[float]) -> str:
        if not ts:
            return "-"
        return (dt.datetime.fromtimestamp(ts, zone) if zone is not None
                else dt.datetime.fromtimestamp(ts).astimezone()).strftime("%Y-%m-%d %H:%M")

    lines = []
    if snap.health is not None:
        lines.append(f"Health: {snap.health.summary}")
        if snap.health.fix:
            lines.append(f"  Fix: {snap.health.fix}")
    for code, since, detail in snap.warnings:
        lines.append(f"Warning: {code} since {when(since)}: {naming.printable(detail)}")
    lines.append(f"Engine: {snap.engine.upper()} - {snap.detail}")
    if snap.engine == EngineState.UNREADABLE:
        lines.append("Archive: unknown (the backup state could not be read; see above)")
        lines.append(zone_line(snap))
        return _wrapped(lines, width)
    if snap.eligible is not None:
        lines.append(f"Archive: {snap.done}/{snap.eligible} studies backed up, {snap.pending} pending, "
                     f"{snap.failed} failing, {snap.bytes_done / 1e9:.2f} GB of images")
    else:
        lines.append(f"Archive: {snap.done} studies backed up, {snap.failed} failing (no scan yet)")
    lines.append(f"Rate: {rate_line(snap)}")
    if snap.only_in_backup:
        lines.append(f"Only in the backup: {snap.only_in_backup} studies Horos's database no longer has; their ZIPs "
                     f"are the only copy (horos-backup catalog --only-in-backup)")
    if snap.incoming_count is not None:
        over = " (OVER LIMIT: paused)" if snap.incoming_capped else ""
        lines.append(f"INCOMING.noindex: {snap.incoming_count}/{snap.incoming_limit} files{over}")
    for j in snap.jobs:
        counts = (f": {j.files_done}/{j.files_total} files, "
                  f"{j.bytes_done / 1e6:.0f}/{j.bytes_total / 1e6:.0f} MB")
        label = naming.fit_middle(naming.printable(j.label), width - len("  zipping ") - len(counts))
        lines.append(f"  zipping {label}{counts}")
    if snap.next_run:
        lines.append(f"Next scheduled run: about {when(snap.next_run)}")
    if snap.runs:
        lines.append("Last runs:")
        for r in snap.runs[:5]:
            lines.append(f"  #{r.id} {when(r.started)} {r.outcome or 'running'}: {r.studies_done} exported, "
                         f"{r.studies_failed} not, exit {r.exit_code if r.exit_code is not None else '-'}")
    if snap.issues:
        lines.append("Recent issues:")
        for i in snap.issues[:10]:
            head = f"  {when(i.ts)}  {i.code:<19} "
            lines.append(head + naming.fit_middle(i.uid or "-", width - len(head)))
            detail = textwrap.wrap(naming.printable(i.detail), width - 6) or [""]
            if len(detail) > 2:
                detail = [detail[0], naming.fit_end(" ".join(detail[1:]), width - 6)]
            lines += [f"      {d}" for d in detail if d]
    lines.append(zone_line(snap))
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


def rate_line(snap: Snapshot) -> str:
    """Achieved rate over the last days and the ETA it gives; the live speed only while a run is going."""
    hours, studies = snap.achieved
    if hours > 0:
        span = f"{hours * 60:.0f} min" if hours < 1 else f"{hours:.0f} h" if hours < 48 else f"{hours / 24:.0f} days"
        text = f"{snap.achieved_per_hour:,.1f} studies/h achieved over the last {span} of runs"
    else:
        text = "no runs in the last days"
    eta = snap.eta_seconds
    if snap.pending == 0 and snap.eligible is not None:
        text += "; archive complete"
    elif eta is not None:
        text += f"; ETA {_duration(eta)} for {snap.pending:,} pending"
    if snap.engine == EngineState.RUNNING:
        text += f"; now {snap.mb_per_s:.1f} MB/s"
    return text


def _duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
