"""Health: every ``run`` attempt leaves a trace off the backup volume, and one verdict says if all is well.

docs/design/durability.md §7: a run refused before it can write anything (sentinel missing, backup folder
missing or read-only, database unavailable, lock held) leaves nothing on the backup volume, so ``status``
could only say "idle". This module owns the health file, ``<state_dir>/health.json`` on the Mac's own
disk (``Config.health_path``): the format both ways (:func:`dumps`, :func:`read`) and how an attempt
changes it (:func:`add`: the last :data:`KEEP_ATTEMPTS` are kept; the summary fields, failing since, last
success, last export, survive the trimming). ``state.attempts`` writes it, durably and under a lock;
this module writes nothing, so ``status`` and the TUI can read it without reaching a writer.
:func:`evaluate` turns it, with what ``status`` read, into a :class:`Health`: ``ok``, ``failing``,
``stalled``, ``no-progress`` or ``not-scheduled``, each with the exit code ``status`` returns (README
"Health").
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from horos_async.codes import EngineState, HealthCode, HealthState
from horos_async.config import Config
from horos_async.errors import (EXIT_DATABASE, EXIT_DISK, EXIT_HEALTH_FAILING, EXIT_HEALTH_NO_PROGRESS,
                                EXIT_HEALTH_NOT_SCHEDULED, EXIT_HEALTH_STALLED, EXIT_INTERNAL,
                                EXIT_INTERRUPTED, EXIT_LEDGER, EXIT_LOCKED, EXIT_OK, EXIT_SENTINEL,
                                EXIT_SOURCE, EXIT_VOLUME)

VERSION = 1
KEEP_ATTEMPTS = 200
"""Attempts kept in the file (about 33 hours at the default 10-minute interval; ~60 kB)."""
STALL_SECONDS = 30 * 60.0
"""A live run that has finished no study and read no byte for this long is stalled."""
MISSED_INTERVALS = 3
"""A scheduled backup where no run has ended for this many ``start_interval`` is stalled."""
NO_PROGRESS_SECONDS = 24 * 3600.0
"""Nothing exported for this long while studies are due: no progress."""

OK, FAILING, STALLED, NO_PROGRESS, NOT_SCHEDULED = (HealthState.OK, HealthState.FAILING, HealthState.STALLED,
                                                   HealthState.NO_PROGRESS, HealthState.NOT_SCHEDULED)
STATES = tuple(HealthState)
EXIT_CODES = {OK: EXIT_OK, FAILING: EXIT_HEALTH_FAILING, STALLED: EXIT_HEALTH_STALLED,
              NO_PROGRESS: EXIT_HEALTH_NO_PROGRESS, NOT_SCHEDULED: EXIT_HEALTH_NOT_SCHEDULED}

NEUTRAL_EXITS = (EXIT_LOCKED, EXIT_INTERRUPTED)
"""A start that found a run going, or a run stopped by a signal: neither a failure nor a success."""

# The condition code of a failed attempt, by exit code (DISK_LOW and DISK_FULL share exit 6: the caller
# says which); its ``action`` is the short fix ``status`` shows under a FAILING line.
CONDITIONS: Dict[int, HealthCode] = {
    EXIT_SENTINEL: HealthCode.SENTINEL_MISSING, EXIT_DATABASE: HealthCode.DATABASE_UNAVAILABLE,
    EXIT_DISK: HealthCode.DISK_FULL, EXIT_VOLUME: HealthCode.VOLUME_UNAVAILABLE,
    EXIT_LEDGER: HealthCode.LEDGER_DAMAGED, EXIT_SOURCE: HealthCode.HOROS_DB_SHRANK,
    EXIT_INTERNAL: HealthCode.INTERNAL_ERROR,
}
REFUSED_CODES: Tuple[HealthCode, ...] = (HealthCode.SENTINEL_MISSING, HealthCode.DATABASE_UNAVAILABLE,
                                         HealthCode.VOLUME_UNAVAILABLE, HealthCode.LEDGER_DAMAGED,
                                         HealthCode.HOROS_DB_SHRANK)
"""Conditions whose runs are refused before anything is written."""


def condition_of(exit_code: int, disk_code: str = "") -> str:
    """The condition code of an attempt that failed with ``exit_code`` ("" for success or neutral ends)."""
    if exit_code == EXIT_DISK and disk_code in (HealthCode.DISK_LOW, HealthCode.DISK_FULL):
        return HealthCode(disk_code)
    if exit_code in (EXIT_OK,) + NEUTRAL_EXITS:
        return ""
    return CONDITIONS.get(exit_code, HealthCode.RUN_FAILED)


def fix_for(code: str) -> str:
    """The short next step for a failed attempt's condition code ("" when unknown or not a failure's)."""
    if code in CONDITIONS.values() or code == HealthCode.DISK_LOW:
        return HealthCode(code).action
    return ""


@dataclass(frozen=True)
class Attempt:
    """One ``horos-backup run``: how it ended."""

    started: float
    """Unix seconds."""
    ended: float
    outcome: str
    """``ok``, ``nothing-to-do``, ``paused``, ``outside-window``, ``interrupted``, ``lock-held``, or the
    condition code of a failure (``SENTINEL_MISSING``...)."""
    exit_code: int
    message: str = ""
    code: str = ""
    """Condition code of a failure ("" otherwise)."""
    studies_done: int = 0
    studies_failed: int = 0
    bytes: int = 0
    """Source bytes read for the studies exported."""
    pid: int = 0
    backup_dir: str = ""

    @property
    def failed(self) -> bool:
        """True for an attempt that ended in error (not success, not a neutral end)."""
        return self.exit_code not in (EXIT_OK,) + NEUTRAL_EXITS


@dataclass(frozen=True)
class Failing:
    """The current run of failed attempts (one episode, whatever the failures' kinds)."""

    since: float
    """When the first failed attempt of the streak started."""
    count: int
    code: str
    """The latest failure's condition code."""
    exit_code: int
    message: str
    studies_done: int = 0
    """Studies the failed attempts exported nevertheless (0: every run was refused)."""


@dataclass(frozen=True)
class HealthRecord:
    """The health file's content."""

    attempts: Tuple[Attempt, ...] = ()
    """The latest attempts, oldest first."""
    first_attempt: Optional[float] = None
    last_success: Optional[float] = None
    """End of the latest attempt that exited 0."""
    last_export: Optional[float] = None
    """End of the latest attempt that exported at least one study."""
    failing: Optional[Failing] = None

    @property
    def last(self) -> Optional[Attempt]:
        """The latest attempt, if any."""
        return self.attempts[-1] if self.attempts else None

    def last_finished(self) -> Optional[float]:
        """End of the latest attempt that was not a start finding a run going."""
        return next((a.ended for a in reversed(self.attempts) if a.exit_code != EXIT_LOCKED), None)


def read(cfg: Config) -> HealthRecord:
    """The health file as it is (an empty record when there is none yet). Raises OSError/ValueError."""
    try:
        raw = cfg.health_path.read_bytes()
    except FileNotFoundError:
        return HealthRecord()
    return loads(raw)


def add(rec: HealthRecord, a: Attempt) -> HealthRecord:
    """``rec`` with attempt ``a`` added (pure; the summary fields follow)."""
    failing = rec.failing
    last_success = rec.last_success
    if a.failed:
        if failing is None:
            failing = Failing(a.started, 1, a.code, a.exit_code, a.message, a.studies_done)
        else:
            failing = Failing(failing.since, failing.count + 1, a.code, a.exit_code, a.message,
                              failing.studies_done + a.studies_done)
    elif a.exit_code == EXIT_OK:
        failing, last_success = None, a.ended
    last_export = a.ended if a.studies_done else rec.last_export
    attempts = (rec.attempts + (a,))[-KEEP_ATTEMPTS:]
    first = rec.first_attempt if rec.first_attempt is not None else a.started
    return HealthRecord(attempts, first, last_success, last_export, failing)


@dataclass(frozen=True)
class Health:
    """The verdict ``status`` and ``horos-tui`` lead with."""

    state: str
    """One of :data:`STATES`."""
    summary: str
    """One line: ``FAILING since 02:10 -03, 14 refused runs: sentinel file ... is missing``."""
    fix: str = ""
    """What to do, when not OK."""
    since: Optional[float] = None
    """Start of the failing or stalled episode."""
    count: int = 0
    """Failed attempts in the current episode."""
    code: str = ""
    """Condition code: ``SENTINEL_MISSING``, ``DISK_FULL``, ``HOROS_DB_SHRANK``, ``STALLED``..."""
    last_success: Optional[float] = None
    exit_code: int = EXIT_OK
    """What ``status`` exits with for this state."""
    problems: Tuple[Tuple[str, str, str], ...] = field(default=())
    """(code, summary, fix) of every condition active now, worst first: FAILING's code, STALLED,
    NO_PROGRESS (an alert episode each; NOT_SCHEDULED is no alert)."""

    @property
    def label(self) -> str:
        """``OK``, ``FAILING``, ``STALLED``, ``NO PROGRESS``, ``NOT SCHEDULED``."""
        return self.state.replace("-", " ").upper()


@dataclass(frozen=True)
class Observed:
    """What ``status`` read besides the health file, as :func:`evaluate` needs it."""

    now: float
    engine: str
    """``status.Snapshot.engine``: running, paused, idle, stale, never-run, unreadable."""
    run_alive: bool = False
    """A run's process is alive (running, or stale with its process still there)."""
    run_started: Optional[float] = None
    pid: Optional[int] = None
    progress_at: Optional[float] = None
    """When the live run last finished a study or read a byte (None when unknown)."""
    due: Optional[int] = None
    """Studies due now at the last scan (None when not scanned)."""
    scheduled: bool = False
    """The LaunchAgent is installed."""
    scheduled_since: Optional[float] = None
    """When it was installed (its plist's mtime)."""
    interval: float = 600.0
    """``start_interval`` in seconds."""


def evaluate(rec: HealthRecord, seen: Observed, zone: Optional[dt.tzinfo] = None) -> Health:
    """The health verdict; the worst of FAILING > STALLED > NO PROGRESS > NOT SCHEDULED, else OK."""
    now = seen.now
    progressing = seen.run_alive and seen.engine == EngineState.RUNNING and \
        (seen.progress_at is None or now - seen.progress_at < STALL_SECONDS)
    verdicts: List[Health] = []
    f = rec.failing
    if f is not None and not progressing:  # a run going well has got past whatever refused the last ones
        what = "refused" if f.studies_done == 0 and f.code in REFUSED_CODES else "failed"
        runs = f"{f.count} {what} run{'s' if f.count != 1 else ''}"
        verdicts.append(Health(FAILING, f"FAILING since {stamp(f.since, zone, now)}, {runs}: {f.message}",
                               fix_for(f.code), f.since, f.count, f.code, rec.last_success,
                               EXIT_HEALTH_FAILING))
    stalled = _stalled(rec, seen, zone)
    if stalled is not None:
        verdicts.append(stalled)
    if seen.due and not progressing:
        ref = rec.last_export if rec.last_export is not None else rec.first_attempt
        if ref is not None and now - ref >= NO_PROGRESS_SECONDS:
            since = (f"since {stamp(ref, zone, now)}" if rec.last_export is not None
                     else f"since the first run ({stamp(ref, zone, now)})")
            verdicts.append(Health(
                NO_PROGRESS, f"NO PROGRESS - nothing exported {since}, {_hours(now - ref)}, while "
                             f"{seen.due:,} studies are due",
                HealthCode.NO_PROGRESS.action, ref, 0, HealthCode.NO_PROGRESS, rec.last_success,
                EXIT_HEALTH_NO_PROGRESS))
    if not seen.scheduled:
        verdicts.append(Health(
            NOT_SCHEDULED, "NOT SCHEDULED - the LaunchAgent is not installed: no backup runs unless started "
                           "by hand", "horos-backup launchd install --config <your config>", None, 0,
            HealthCode.NOT_SCHEDULED, rec.last_success, EXIT_HEALTH_NOT_SCHEDULED))
    if verdicts:
        first = verdicts[0]
        problems = tuple((v.code, v.summary, v.fix) for v in verdicts if v.state != NOT_SCHEDULED)
        return Health(first.state, first.summary, first.fix, first.since, first.count, first.code,
                      first.last_success, first.exit_code, problems)
    return Health(OK, _ok_summary(rec, seen, zone), last_success=rec.last_success)


def _stalled(rec: HealthRecord, seen: Observed, zone: Optional[dt.tzinfo]) -> Optional[Health]:
    now = seen.now
    fix = ("check the log; stop the stuck run (kill <pid>), the next one resumes" if seen.run_alive else
           "keep the Mac awake and its user logged in; check 'horos-backup launchd print'")
    if seen.run_alive:
        ref = seen.progress_at or seen.run_started
        if ref is not None and now - ref >= STALL_SECONDS:
            pid = f" (pid {seen.pid})" if seen.pid else ""
            return Health(STALLED, f"STALLED - the run started {stamp(seen.run_started, zone, now)}{pid} has "
                                   f"made no progress for {_minutes(now - ref)}", fix, ref, 0, HealthCode.STALLED,
                          rec.last_success, EXIT_HEALTH_STALLED)
        return None
    if not seen.scheduled:
        return None
    ref = rec.last_finished()
    if ref is None:
        ref = seen.scheduled_since
    limit = MISSED_INTERVALS * seen.interval
    if ref is not None and now - ref >= limit:
        last = f"since {stamp(ref, zone, now)}" if rec.attempts else f"since the LaunchAgent was installed " \
                                                                     f"({stamp(ref, zone, now)})"
        return Health(STALLED, f"STALLED - no run has ended {last}, {MISSED_INTERVALS} intervals of "
                               f"{_minutes(seen.interval)} and more: launchd is not starting runs (Mac asleep, "
                               f"user logged out?)", fix, ref, 0, HealthCode.STALLED, rec.last_success,
                      EXIT_HEALTH_STALLED)
    return None


def _ok_summary(rec: HealthRecord, seen: Observed, zone: Optional[dt.tzinfo]) -> str:
    now = seen.now
    if seen.engine == EngineState.RUNNING:
        return "OK - a run is going" + (f", last success {_ago(rec.last_success, now)}" if rec.last_success else "")
    if rec.last_success is not None:
        return f"OK - last success {_ago(rec.last_success, now)} ({stamp(rec.last_success, zone, now)})"
    return "OK - no run recorded yet; the first scheduled run is due soon"


def stamp(unix: Optional[float], zone: Optional[dt.tzinfo], now: Optional[float] = None) -> str:
    """A time labelled with its zone: ``02:10 -03`` today, else ``2024-03-02 02:10 -03``."""
    if unix is None:
        return "-"
    when = dt.datetime.fromtimestamp(unix, zone) if zone is not None else dt.datetime.fromtimestamp(unix).astimezone()
    today = None
    if now is not None:
        today = (dt.datetime.fromtimestamp(now, zone) if zone is not None
                 else dt.datetime.fromtimestamp(now).astimezone()).date()
    fmt = "%H:%M" if today == when.date() else "%Y-%m-%d %H:%M"
    return f"{when.strftime(fmt)} {zone_label(when)}"


def zone_label(when: dt.datetime) -> str:
    """``-03``, ``CET``, ``UTC``: the zone's abbreviation, else its UTC offset."""
    name = when.tzname() or ""
    if name and not name.startswith(("+", "-")) and not name.startswith("UTC+") and not name.startswith("UTC-"):
        return name
    off = when.utcoffset() or dt.timedelta(0)
    minutes = int(off.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    h, m = divmod(abs(minutes), 60)
    return f"{sign}{h:02d}" + (f":{m:02d}" if m else "")


def _ago(unix: float, now: float) -> str:
    return f"{_minutes(max(0.0, now - unix))} ago"


def _minutes(seconds: float) -> str:
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    return _hours(seconds)


def _hours(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:.0f} h" if hours < 72 else f"{hours / 24:.0f} days"


def dumps(rec: HealthRecord) -> bytes:
    """The health file's bytes for ``rec`` (JSON, format :data:`VERSION`)."""
    d = asdict(rec)
    d["version"] = VERSION
    return json.dumps(d, indent=1).encode()


def loads(raw: bytes) -> HealthRecord:
    """A record from the health file's bytes; ValueError when they are not one."""
    try:
        return _from_dict(json.loads(raw.decode("utf-8")))
    except (TypeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a health file: {exc}") from None


def _from_dict(d: Any) -> HealthRecord:
    if not isinstance(d, dict):
        raise ValueError("not a JSON object")
    names = set(Attempt.__dataclass_fields__)
    attempts = tuple(Attempt(**{k: v for k, v in a.items() if k in names}) for a in d.get("attempts") or ()
                     if isinstance(a, dict))
    f = d.get("failing")
    failing = Failing(**{k: v for k, v in f.items() if k in Failing.__dataclass_fields__}) \
        if isinstance(f, dict) else None
    return HealthRecord(attempts, d.get("first_attempt"), d.get("last_success"), d.get("last_export"), failing)
