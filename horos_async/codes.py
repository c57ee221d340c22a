"""Every code horos-backup writes or publishes, registered once: issue codes, guard codes, run outcomes
and engine states.

- ``IssueCode``: the ``code`` column of the ledger's ``issues`` table and of ``issues.csv`` (README
  "Records people read"); also a failed study's ``code`` in the ledger.
- ``GuardCode``: what a running engine publishes as ``guard.code`` in the live status file when a guard
  stops or pauses it; each is also the issue code written for the same episode.
- ``RunOutcome``: the ledger's ``runs.outcome`` (besides these, the name of the run-level error class
  that ended the run: :func:`error_outcome`).
- ``EngineState``: ``state`` in the live status file, and the ``engine`` a status reader reports.
- ``HealthState``: the verdict ``status`` and ``horos-tui`` lead with (``health.evaluate``); ``status``
  exits with its code.
- ``HealthCode``: why the health is not OK: the condition of a failed ``run`` attempt, as the health
  file records it (by exit code), or a stall; each is one alert episode (``notify``).

Each family is a ``str`` enum: a member equals, hashes, formats and serialises (SQLite, CSV, JSON) as its
plain text, so the files hold exactly the strings they always held and a reader may compare either way.
A code added here must be documented in README.md, docs/operations.md and docs/README.pt.md
(tests/test_codes.py fails until it is), and the TUI names every guard code from ``GuardCode``.
"""

from __future__ import annotations

from enum import Enum
from typing import FrozenSet


class _Code(str, Enum):
    """A registered code: its text, a one-line meaning and what to do about it."""

    meaning: str
    action: str

    def __new__(cls, text: str, meaning: str, action: str) -> "_Code":
        member = str.__new__(cls, text)
        member._value_ = text
        member.meaning = meaning
        member.action = action
        return member

    # The plain text everywhere (f-strings, %, str(), CSV): never "IssueCode.NO_FILES" (Python < 3.11
    # and >= 3.12 differ on this for str mixins; these two lines make every version agree).
    __str__ = str.__str__
    __format__ = str.__format__


class IssueCode(_Code):
    """A per-study problem or a run-level episode, as written to the ledger's issues and ``issues.csv``."""

    MISSING_FILES = ("MISSING_FILES",
                     "some files the Horos database lists are not on disk (or vanished while zipping); the "
                     "study is not done",
                     "mount the linked volume or set path_map; retried automatically; allow_partial exports "
                     "what exists")
    NO_FILES = ("NO_FILES", "none of the study's files exist on disk",
                "as MISSING_FILES: often a linked CD or volume that is not mounted")
    BAD_ROW = ("BAD_ROW", "a row of Horos's database holds a value its column cannot mean (an infinite date, a "
                          "path that is a BLOB, has a NUL byte or is not UTF-8); written once per row",
               "nothing for a bad date or text (the study is exported); an unusable path keeps the study from "
               "done: re-import the study in Horos")
    READ_ERROR = ("READ_ERROR", "a file could not be read, or changed while being zipped",
                  "retried later; if it repeats, check the Horos disk")
    NOT_A_FILE = ("NOT_A_FILE", "a source path is a FIFO, a device or a folder, not a file: never read (it "
                                "could block the run for ever)",
                  "look at the path in the detail: replace it with the real image file, or re-import the study")
    READ_STALLED = ("READ_STALLED", "reading a source made no progress for read_stall_seconds (a stuck network "
                                    "or linked volume): the study's job was abandoned, its temp file removed, "
                                    "the run went on",
                    "check the volume named in the detail (reconnect the share, check the disk); retried later")
    FILE_TOO_BIG = ("FILE_TOO_BIG", "the study's ZIP is larger than the backup filesystem allows for one file "
                                    "(EFBIG: FAT32 stops at 4 GiB); only this study fails",
                    "reformat the backup disk as APFS or exFAT (doctor warns about FAT32); retried later")
    NAME_TOO_LONG = ("NAME_TOO_LONG", "the study's ZIP name is longer than the backup filesystem allows "
                                      "(ENAMETOOLONG: a Study UID far beyond DICOM's 64 characters)",
                     "the study's UID in Horos is malformed: fix it there (or re-import the study); retried "
                     "later")
    ZIP_FAIL = ("ZIP_FAIL", "zip_attempts tries produced no valid ZIP (or the name was taken meanwhile)",
                "check the backup disk (doctor, verify --deep); retried later")
    STUDY_CHANGED = ("STUDY_CHANGED", "Horos added or removed images of the study while it was zipped; "
                                      "that ZIP was discarded",
                     "nothing: exported on a later run, once Horos has finished")
    PARTIAL = ("PARTIAL", "exported with files missing (allow_partial); not done",
               "the detail lists what is missing")
    ZIP_MISSING = ("ZIP_MISSING", "a ZIP the ledger records is not on disk (found by a run or by verify)",
                   "nothing: the study is exported again")
    ZIP_INVALID = ("ZIP_INVALID", "a ZIP (recorded, or found without a record) fails verification",
                   "nothing: moved to .quarantine/, the study exported again; replace the disk if it repeats")
    FOREIGN_FILE = ("FOREIGN_FILE", "a valid ZIP in a month folder that horos-backup did not write; left alone",
                    "move it out of the backup folder if it does not belong there")
    INCOMING_OVER_LIMIT = ("INCOMING_OVER_LIMIT",
                           "Horos's INCOMING.noindex holds more than incoming_max_files: runs pause",
                           "nothing: runs resume when Horos catches up")
    DISK_LOW = ("DISK_LOW", "free space below the floor (min_free_gb/horos_free_gb); the run stopped "
                            "before a study",
                "free space or use a bigger disk")
    DISK_FULL = ("DISK_FULL", "the backup volume filled up while a ZIP was written (ENOSPC); nothing recorded, "
                              "the run stopped (exit 6)",
                 "free space; the next run resumes")
    LEDGER_REBUILT = ("LEDGER_REBUILT", "the ledger was rebuilt from the ZIPs on disk", "nothing")
    INDEX_SNAPSHOT_SKIPPED = ("INDEX_SNAPSHOT_SKIPPED",
                              "no consistent snapshot of Horos's index for a day, or a copy failed its check "
                              "(Horos's database may be damaged); once per episode, the ledger condition of the "
                              "same name active until a snapshot succeeds",
                              "'horos-backup index snapshot' says why; doctor; keep the older snapshots")
    INDEX_SNAPSHOT_FAILING = ("INDEX_SNAPSHOT_FAILING",
                              "a ledger condition, never an issue row: index snapshot attempts are failing "
                              "(its start begins the day before INDEX_SNAPSHOT_SKIPPED when no snapshot exists)",
                              "nothing: each run tries again; see INDEX_SNAPSHOT_SKIPPED")
    HOROS_DB_SHRANK = ("HOROS_DB_SHRANK",
                       "Horos's database holds far fewer studies than at the last run (under shrink_threshold), "
                       "or is another database (path, file, Core Data store UUID): the run refused (exit 11), "
                       "nothing exported, no backup record touched; once per episode",
                       "is the right Horos Data mounted? Mount it; if the change was deliberate, run "
                       "'horos-backup run --accept-horos-db' once")


    MIRROR_FAILED = ("MIRROR_FAILED",
                     "a mirror destination could not be written or checked (unmounted, its sentinel missing, "
                     "full, rclone missing, misconfigured or failing); nothing unverified was recorded",
                     "mount the destination or fix rclone (the message quotes its error); the next mirror "
                     "resumes where this one stopped")
    MIRROR_BEHIND = ("MIRROR_BEHIND", "a mirror destination lacks ZIPs written more than a day ago",
                     "check that 'horos-backup mirror' can reach it (status shows its last run and error)")
    MIRROR_COPY_BAD = ("MIRROR_COPY_BAD", "a mirror copy was missing or damaged ('verify --mirror'); it was "
                       "copied again from the primary", "nothing, unless it repeats (a failing mirror disk)")
    MIRROR_RESTORED = ("MIRROR_RESTORED", "a missing or damaged primary ZIP was put back from a verified mirror "
                       "copy, not exported again", "nothing; run 'horos-backup doctor' if the backup disk "
                       "damaged it")
    MIRROR_CONFLICT = ("MIRROR_CONFLICT", "a mirror destination already holds another file under a ZIP's name; "
                       "it was kept, and the ZIP stored beside it (name~<hash>.zip)",
                       "nothing: nothing at a destination is ever replaced")


class GuardCode(_Code):
    """A guard that stopped or paused the run, published live as ``guard.code``; ``meaning`` is the short
    name front ends show."""

    INCOMING_OVER_LIMIT = ("INCOMING_OVER_LIMIT", "Horos is importing (INCOMING over its limit)",
                           "nothing: the run resumes when Horos catches up")
    DISK_LOW = ("DISK_LOW", "backup disk low on free space", "free space or use a bigger disk")
    DISK_FULL = ("DISK_FULL", "backup disk full", "free space; the next run resumes")


class RunOutcome(_Code):
    """How a run ended (the ledger's ``runs.outcome``), unless a run-level error ended it; the health
    file's attempts hold these too, and two of their own (``OUTSIDE_WINDOW``, ``LOCK_HELD``: a start that
    never reached the ledger)."""

    OK = ("ok", "studies were exported (or failed and were recorded)", "nothing")
    NOTHING_TO_DO = ("nothing-to-do", "no study was due", "nothing")
    LIMIT_REACHED = ("limit-reached", "run_window closed or the time budget (max_run_minutes, --max-minutes) "
                                      "was spent before any study was exported; studies are still due",
                     "nothing: the next run inside the window goes on")
    PAUSED = ("paused", "a guard paused the run (Horos importing)", "nothing: the next run tries again")
    INTERRUPTED = ("interrupted", "stopped by SIGTERM/SIGINT, cleanly", "nothing: the next run resumes")
    OUTSIDE_WINDOW = ("outside-window", "started outside run_window: nothing done (health file only)",
                      "nothing; 'run --now' to run anyway")
    LOCK_HELD = ("lock-held", "another run held the run lock: this start exited 4 (health file only)",
                 "nothing: launchd starts one every interval while a long run goes on")


def error_outcome(exc: BaseException) -> str:
    """The ``runs.outcome`` of a run ended by ``exc``: its class name (``DiskFull``, ``LockHeld``...)."""
    return type(exc).__name__


class MirrorOutcome(_Code):
    """How a mirror run to one destination ended: the ledger's ``mirror_runs.outcome``."""

    OK = ("ok", "every file is at the destination, verified", "nothing")
    PARTIAL = ("partial", "stopped before the end (time budget, window, signal); what was copied is recorded",
               "nothing: the next mirror goes on")
    FAILED = ("failed", "the destination could not be reached or written, or a copy did not verify",
              "see the message (status shows it); fix the destination, the next mirror resumes")
    SKIPPED = ("skipped", "outside the destination's window: nothing tried", "nothing")


class EngineState(_Code):
    """The engine's state: the first three are published by the engine, the rest are a reader's verdict."""

    RUNNING = ("running", "a run is going on", "nothing")
    PAUSED = ("paused", "the last run was paused by a guard", "see the guard's detail")
    IDLE = ("idle", "no run is going on; the last one finished", "nothing")
    STALE = ("stale", "the live file says running but its heartbeat is old or its process is gone",
             "nothing if it was killed (the next run resumes); look at the log if it hangs")
    NEVER_RUN = ("never-run", "horos-backup has not run with this backup folder yet", "run it, or install launchd")
    UNREADABLE = ("unreadable", "the engine's state cannot be read (volume missing, ledger damaged)",
                  "follow the detail; status exits 7 or 8")


PUBLISHED_STATES: FrozenSet[EngineState] = frozenset({EngineState.RUNNING, EngineState.PAUSED, EngineState.IDLE})
"""The states a running engine writes to the live status file."""


class HealthState(_Code):
    """The backup's health (``health.evaluate``): the first line of ``status`` and ``horos-tui``, and what
    ``status`` exits with (``errors.EXIT_HEALTH_*``, README "Health")."""

    OK = ("ok", "the latest runs succeeded (or nothing was due) and nothing is stuck", "nothing")
    FAILING = ("failing", "the latest runs failed or were refused (the condition code says why); exit 20",
               "the fix shown under the health line")
    STALLED = ("stalled", "a run is alive but made no progress for 30 minutes, or no run ended for 3 start "
                          "intervals; exit 21",
               "stop a stuck run; keep the Mac awake and its user logged in")
    NO_PROGRESS = ("no-progress", "nothing exported for 24 hours while studies are due; exit 22",
                   "see 'Recent issues' and issues.csv")
    NOT_SCHEDULED = ("not-scheduled", "the LaunchAgent is not installed: nothing starts runs; exit 23",
                     "horos-backup launchd install")


class HealthCode(_Code):
    """Why the health is not OK: a failed attempt's condition (by its exit code) or a stall. ``action`` is
    the short fix ``status`` shows under the health line."""

    SENTINEL_MISSING = ("SENTINEL_MISSING", "runs refused: the sentinel file is missing (exit 3)",
                        "mount the backup volume, or create the sentinel on the right disk")
    DATABASE_UNAVAILABLE = ("DATABASE_UNAVAILABLE", "runs refused: the Horos database is busy or unreadable (exit 5)",
                            "let Horos finish (or open it so it recovers its database); run 'horos-backup "
                            "doctor' if it lasts")
    DISK_FULL = ("DISK_FULL", "runs stopped: the backup disk filled up (exit 6)",
                 "free space on the backup volume, or move the backup to a bigger disk")
    DISK_LOW = ("DISK_LOW", "runs stopped: the backup disk is below its free-space floor (exit 6)",
                "free space on the backup volume, or move the backup to a bigger disk")
    VOLUME_UNAVAILABLE = ("VOLUME_UNAVAILABLE", "runs refused: a volume is missing or read-only (exit 7)",
                          "mount the volume named above, or make the backup folder writable")
    LEDGER_DAMAGED = ("LEDGER_DAMAGED", "runs refused: the ledger is damaged or from a newer version (exit 8)",
                      "move the ledger aside and run 'horos-backup rebuild-ledger'")
    HOROS_DB_SHRANK = ("HOROS_DB_SHRANK", "runs refused: Horos's database shrank or was replaced (exit 11)",
                       "mount the right Horos Data; if the change was deliberate, run 'horos-backup run "
                       "--accept-horos-db' once")
    INTERNAL_ERROR = ("INTERNAL_ERROR", "runs fail with an unexpected error (exit 1)",
                      "a bug: report it with the traceback from the log")
    RUN_FAILED = ("RUN_FAILED", "runs fail with another exit code", "see the message and the log")
    STALLED = ("STALLED", "the health is STALLED", "see the fix shown under the health line")
    NO_PROGRESS = ("NO_PROGRESS", "the health is NO PROGRESS",
                   "see 'Recent issues' and issues.csv; 'horos-backup run --progress' shows each study")
    NOT_SCHEDULED = ("NOT_SCHEDULED", "the health is NOT SCHEDULED (no alert: it is a choice)",
                     "horos-backup launchd install")

