"""Messages the status worker thread posts to the app (the only way data enters the UI)."""

from __future__ import annotations

from typing import Optional, Tuple

from textual.message import Message

from horos_async.status import Snapshot


class SnapshotRead(Message):
    """One status read finished: the engine Snapshot (possibly ``unreadable``) and the log tail."""

    def __init__(self, snapshot: Snapshot, log_lines: Optional[Tuple[str, ...]] = None) -> None:
        super().__init__()
        self.snapshot = snapshot
        """What the engine published, or a Snapshot with ``engine == "unreadable"``."""
        self.log_lines = log_lines
        """Tail of the engine log, or None when the log pane is hidden (not read then)."""
