"""The only place the TUI reads data: the engine's published status, and the tail of its log.

Everything goes through ``horos_async.status`` (Textual-free, read-only); the TUI never opens the
engine's files for writing and never runs the engine itself, so a crash or quit here cannot harm a
backup. Reads happen in a worker thread, about once a second; any failure becomes an ``unreadable``
Snapshot that the screen shows as such (never as "idle").
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, List, Optional, Protocol, Tuple

from horos_async import status
from horos_async.codes import EngineState
from horos_async.config import Config
from horos_async.status import Snapshot

LOG_NAME = "horos-backup.log"
LOG_LINES = 200
LOG_TAIL_BYTES = 64 * 1024
"""Bytes read from the end of the log: ample for 200 lines, cheap on a 100 MB log."""


class Source(Protocol):
    """What the app reads from; tests pass a fake that returns scripted Snapshots."""

    def read(self) -> Snapshot:
        """The engine's state right now (may raise; the app turns errors into ``unreadable``)."""

    def read_log(self, lines: int = LOG_LINES) -> List[str]:
        """The last ``lines`` lines of the engine log (empty when there is no log yet)."""


class StatusSource:
    """The real source: ``horos_async.status.read_snapshot`` plus the engine log, both read-only."""

    def __init__(self, cfg: Config, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.clock = clock

    @property
    def log_path(self) -> Path:
        """The engine's current log file."""
        return self.cfg.log_dir / LOG_NAME

    def read(self) -> Snapshot:
        """One status read (attribute looked up at call time: the reader lives in the engine package)."""
        return status.read_snapshot(self.cfg, now=self.clock())

    def read_log(self, lines: int = LOG_LINES) -> List[str]:
        """Tail of the log; a missing log is an empty list, other errors propagate."""
        return tail(self.log_path, lines)


def tail(path: Path, lines: int = LOG_LINES, max_bytes: int = LOG_TAIL_BYTES) -> List[str]:
    """The last ``lines`` lines of ``path``, reading at most ``max_bytes`` from its end."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            start = max(0, end - max_bytes)
            f.seek(start)
            data = f.read(end - start)
    except FileNotFoundError:
        return []
    text = data.decode("utf-8", errors="replace")
    rows = text.splitlines()
    if start > 0 and rows:
        rows = rows[1:]  # the first line was cut in the middle
    return rows[-lines:] if lines > 0 else []


def read_all(source: Source, want_log: bool, clock: Callable[[], float]) -> Tuple[Snapshot, Optional[Tuple[str, ...]]]:
    """One refresh: the Snapshot (``unreadable`` on any error) and, if wanted, the log tail. Never raises:
    the monitor must show every failure rather than die of it."""
    try:
        snapshot = source.read()
    except Exception as exc:  # shown to the operator as UNREADABLE with the reason
        snapshot = unreadable(describe_error(exc), clock())
    lines = None
    if want_log:
        try:
            lines = tuple(source.read_log(LOG_LINES))
        except Exception as exc:  # shown in the log pane
            lines = (f"cannot read the engine log: {describe_error(exc)}",)
    return snapshot, lines


def unreadable(why: str, now: float, previous: Optional[Snapshot] = None) -> Snapshot:
    """A Snapshot saying the status could not be read; keeps the host name of the last good read."""
    host = previous.host if previous is not None else ""
    return Snapshot(taken=now, engine=EngineState.UNREADABLE, detail=why, host=host)


def describe_error(exc: BaseException) -> str:
    """One line naming what could not be read and why (``Permission denied: /Volumes/...``)."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return f"{type(exc).__name__}: {exc}"
