"""Every code horos-backup writes or publishes, registered once: issue codes, guard codes, run outcomes
and engine states.

- ``IssueCode``: the ``code`` column of the ledger's ``issues`` table and of ``issues.csv`` (README
  "Records people read"); also a failed study's ``code`` in the ledger.
- ``GuardCode``: what a running engine publishes as ``guard.code`` in the live status file when a guard
  stops or pauses it; each is also the issue code written for the same episode.
- ``RunOutcome``: the ledger's ``runs.outcome`` (besides these, the name of the run-level error class
  that ended the run: :func:`error_outcome`).
- ``EngineState``: ``state`` in the live status file, and the ``engine`` a status reader reports.

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
    READ_ERROR = ("READ_ERROR", "a file could not be read, or changed while being zipped",
                  "retried later; if it repeats, check the Horos disk")
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


class GuardCode(_Code):
    """A guard that stopped or paused the run, published live as ``guard.code``; ``meaning`` is the short
    name front ends show."""

    INCOMING_OVER_LIMIT = ("INCOMING_OVER_LIMIT", "Horos is importing (INCOMING over its limit)",
                           "nothing: the run resumes when Horos catches up")
    DISK_LOW = ("DISK_LOW", "backup disk low on free space", "free space or use a bigger disk")
    DISK_FULL = ("DISK_FULL", "backup disk full", "free space; the next run resumes")


class RunOutcome(_Code):
    """How a run ended (the ledger's ``runs.outcome``), unless a run-level error ended it."""

    OK = ("ok", "studies were exported (or failed and were recorded)", "nothing")
    NOTHING_TO_DO = ("nothing-to-do", "no study was due", "nothing")
    LIMIT_REACHED = ("limit-reached", "run_window closed or the time budget (max_run_minutes, --max-minutes) "
                                      "was spent before any study was exported; studies are still due",
                     "nothing: the next run inside the window goes on")
    PAUSED = ("paused", "a guard paused the run (Horos importing)", "nothing: the next run tries again")
    INTERRUPTED = ("interrupted", "stopped by SIGTERM/SIGINT, cleanly", "nothing: the next run resumes")


def error_outcome(exc: BaseException) -> str:
    """The ``runs.outcome`` of a run ended by ``exc``: its class name (``DiskFull``, ``LockHeld``...)."""
    return type(exc).__name__


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
