"""Logging set-up: a rotating file in ``backup_dir/logs/`` plus warnings on stderr (launchd keeps it).

The file lives on the backup volume; when that volume dies, one line on stderr says the file is given up
(:class:`FallbackFileHandler`), never a traceback per record.

A record logged with ``extra=FILE_ONLY`` goes to the file only: ``cli.main`` prints its own one-line
error on stderr and logs the same error for the file, and the person at the terminal should read it once.
"""

from __future__ import annotations

import datetime as dt
import logging
import logging.handlers
import os
import sys
from typing import Optional

from horos_async.config import Config
from horos_async.timezones import to_local, zone_of

LOG_NAME = "horos-backup.log"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FILE_ONLY = {"console": False}
"""``extra=`` for a record already shown on stderr by other means (kept out of the stderr handler)."""


class ZonedFormatter(logging.Formatter):
    """Log times in the configured ``timezone``, labelled with their UTC offset (``2024-03-02 14:02:11,123 -0300``):
    a log read on another machine, or beside ``status``, never leaves the reader guessing the zone."""

    def __init__(self, fmt: str, zone: Optional[dt.tzinfo]) -> None:
        super().__init__(fmt)
        self.zone = zone

    def formatTime(self, record: logging.LogRecord, datefmt: Optional[str] = None) -> str:
        when = to_local(record.created, self.zone)
        if when is None:  # pragma: no cover - a clock beyond datetime's range
            return super().formatTime(record, datefmt)
        return f"{when.strftime('%Y-%m-%d %H:%M:%S')},{int(record.msecs):03d} {when.strftime('%z')}"


def _for_console(record: logging.LogRecord) -> bool:
    return getattr(record, "console", True)


class FallbackFileHandler(logging.handlers.RotatingFileHandler):
    """The rotating log file. When writing it fails (its volume died, went read-only or is full), one
    line on stderr says so and the file is given up for this run, instead of logging's "--- Logging
    error ---" traceback for every record. Warnings and errors still reach stderr through the stderr
    handler; the file's INFO lines are lost until the next run opens the log again."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)  # calls handleError on any failure

    def handleError(self, record: logging.LogRecord) -> None:
        """The log file could not be written: say it once, then stop writing it."""
        if self.failed:
            return
        self.failed = True
        why = sys.exc_info()[1]
        _stderr(f"horos-backup: warning: cannot write the log file {self.baseFilename} "
                f"({getattr(why, 'strerror', None) or why}); the log goes to stderr only for the rest of this run")
        try:
            if self.stream is not None:
                self.stream.close()
        except (OSError, ValueError):
            pass
        self.stream = None

    def flush(self) -> None:
        if self.failed:
            return
        try:
            super().flush()
        except (OSError, ValueError):
            self.failed = True

    def close(self) -> None:
        try:
            super().close()
        except (OSError, ValueError):
            pass


def _stderr(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def setup(cfg: Config, *, verbose: bool = False, to_file: bool = True, interactive: bool = False) -> logging.Logger:
    """Configure the ``horos_async`` logger once per process; returns it.

    ``interactive``: a person watches per-study progress lines, so stderr only carries errors.
    """
    logger = logging.getLogger("horos_async")
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.DEBUG if verbose else (logging.ERROR if interactive else logging.WARNING))
    err.setFormatter(logging.Formatter("horos-backup: %(levelname)s: %(message)s"))
    err.addFilter(_for_console)
    logger.addHandler(err)
    if to_file:
        try:
            os.makedirs(cfg.log_dir, mode=0o750, exist_ok=True)
            fh = FallbackFileHandler(cfg.log_dir / LOG_NAME, maxBytes=cfg.log_max_bytes,
                                     backupCount=cfg.log_backup_count, encoding="utf-8")
        except OSError as exc:
            # Callers check the backup folder is writable first (guards.check_backup_writable); a log folder
            # that still cannot be written must not cost the backup itself: say so, log to stderr only.
            # Printed, not logged: stderr shows only errors while a person watches progress lines.
            print(f"horos-backup: warning: cannot write the log in {cfg.log_dir} ({exc.strerror or exc}): "
                  f"logging to stderr only; check the folder's permissions (ls -ld '{cfg.log_dir}')",
                  file=sys.stderr, flush=True)
        else:
            fh.setFormatter(ZonedFormatter(FORMAT, zone_of(cfg.timezone)))
            logger.addHandler(fh)
    return logger
