"""Run-level errors and the exit codes they map to.

A problem with one study is never an exception: it is an ``Outcome`` record (see ``models``) that the
engine writes to the ledger and ``issues.csv`` before moving on. Only faults that make the whole run
pointless raise one of the classes below; ``cli.main`` is the only place that turns them into exit codes.
Every message names the thing at fault and the next step.
"""

from __future__ import annotations

# Exit codes, documented in README.md ("Exit codes"). launchd and scripts rely on them: never renumber.
EXIT_OK = 0  # success, nothing to do, or paused by a guard (INCOMING busy)
EXIT_INTERNAL = 1  # a bug: the traceback is in the log
EXIT_CONFIG = 2  # bad config file, bad flag
EXIT_SENTINEL = 3  # sentinel missing: wrong or unmounted volume; nothing written
EXIT_LOCKED = 4  # another run holds the run lock
EXIT_DATABASE = 5  # Horos database busy, locked, hot journal or unreadable: retry next run
EXIT_DISK = 6  # backup disk full or below the free-space floor
EXIT_VOLUME = 7  # backup or Horos volume vanished / I/O error mid-run
EXIT_LEDGER = 8  # ledger corrupt or from a newer version: refuse to run
EXIT_CHECK = 9  # doctor found a FAIL, verify a bad or missing ZIP, restore refused a ZIP or INCOMING stayed full,
#                an index snapshot failed its verification, index restore refused (Horos running, bad snapshot)
EXIT_SERVICE = 10  # launchctl could not load or unload the LaunchAgent, or its plist is invalid
EXIT_SOURCE = 11  # HOROS_DB_SHRANK: Horos's database shrank or was replaced; refused, nothing written
EXIT_MIRROR = 12  # mirror: a destination unreachable (sentinel, rclone missing or failing), full, or a copy failed
# `status` exits with one of these when the backup is not healthy (README "Health"); a monitoring system
# can tell them apart. 7 and 8 keep their meaning (state unreadable, ledger damaged).
EXIT_HEALTH_FAILING = 20  # the latest runs failed or were refused
EXIT_HEALTH_STALLED = 21  # a run is alive but makes no progress, or no run finished for 3 intervals
EXIT_HEALTH_NO_PROGRESS = 22  # nothing exported for 24 h while studies are due
EXIT_HEALTH_NOT_SCHEDULED = 23  # the LaunchAgent is not installed: nothing starts runs
EXIT_INTERRUPTED = 130  # SIGINT / SIGTERM: stopped cleanly
EXIT_BROKEN_PIPE = 141  # the reader of stdout went away (`| head`): 128 + SIGPIPE, as shells report it


class HorosBackupError(Exception):
    """Base of every run-level error; carries its exit code."""

    exit_code = EXIT_INTERNAL


class ConfigError(HorosBackupError):
    """The config file, a key in it, or a command-line flag is wrong."""

    exit_code = EXIT_CONFIG


class SentinelMissing(HorosBackupError):
    """The sentinel file is absent: the volume is not the one configured, or not mounted."""

    exit_code = EXIT_SENTINEL


class LockHeld(HorosBackupError):
    """Another horos-backup run holds the run lock."""

    exit_code = EXIT_LOCKED


class DatabaseUnavailable(HorosBackupError):
    """Horos's database is busy, locked, has a hot journal, or cannot be opened; try again later."""

    exit_code = EXIT_DATABASE


class SchemaError(DatabaseUnavailable):
    """Database.sql opened but lacks a table or column horos-backup needs."""


class DiskFull(HorosBackupError):
    """The backup volume is full (ENOSPC) or below the configured free-space floor."""

    exit_code = EXIT_DISK


class VolumeError(HorosBackupError):
    """A volume vanished or failed with an I/O error in the middle of the run."""

    exit_code = EXIT_VOLUME


class LedgerError(HorosBackupError):
    """The ledger (export_state.sqlite) is corrupt or unreadable; it is never overwritten silently."""

    exit_code = EXIT_LEDGER


class HorosDbShrank(HorosBackupError):
    """Horos's database holds far fewer studies than before, or is another database than last run.

    Horos silently opens an empty ``~/Documents/Horos Data`` when its own volume is not mounted: a run
    must refuse and alert, never report "nothing to do" (docs/design/durability.md §7)."""

    exit_code = EXIT_SOURCE


class RestoreError(HorosBackupError):
    """A restore could not finish (INCOMING stayed full, destination unusable)."""

    exit_code = EXIT_CHECK


class LaunchdError(HorosBackupError):
    """The LaunchAgent could not be rendered, checked, or (un)loaded by launchctl."""

    exit_code = EXIT_SERVICE


class SnapshotError(HorosBackupError):
    """A snapshot of Horos's index could not be taken or failed its verification (nothing was kept), or a
    snapshot asked for by ``index restore`` is missing or damaged."""

    exit_code = EXIT_CHECK


class MirrorError(HorosBackupError):
    """A mirror destination cannot be used (its sentinel missing, rclone missing, misconfigured or
    failing, the destination full or gone), or a copy could not be verified there."""

    exit_code = EXIT_MIRROR
