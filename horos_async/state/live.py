"""Live progress published for other processes: ``backup_dir/.tmp/status.json``, replaced atomically.

The engine updates an in-memory ``LiveState`` (worker threads only bump counters of their own job);
a publisher task writes it about twice a second. Readers (``status``, ``horos-tui``) never write.
The file is a convenience, not a record: it is replaced without fsync, and a reader that finds it
stale (old heartbeat, dead pid) says so.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import aiofiles
import aiofiles.os

SAMPLES_KEPT = 240


@dataclass
class JobProgress:
    """One running ZIP job; ``files_done``/``bytes_done`` are bumped by the worker thread."""

    uid: str
    label: str
    files_total: int
    bytes_total: int
    started: float = field(default_factory=time.time)
    files_done: int = 0
    bytes_done: int = 0

    def update(self, files_done: int, bytes_done: int) -> None:
        """Progress callback for ``archive.build_zip`` (plain attribute writes: thread-safe enough)."""
        self.files_done = files_done
        self.bytes_done = bytes_done


class LiveState:
    """What the engine is doing now, serialisable to the live status file."""

    def __init__(self, path: Path, run_id: Optional[int] = None, incoming_limit: int = 0) -> None:
        self.path = path
        self.started = time.time()
        self.run_id = run_id
        self.state = "running"
        self.phase = "starting"
        self.guard_code = ""
        self.guard_detail = ""
        self.incoming: Dict[str, Any] = {"count": None, "limit": incoming_limit, "capped": False, "checked": None}
        self.jobs: Dict[str, JobProgress] = {}
        self.queued: List[str] = []
        self.finished: List[Dict[str, Any]] = []
        self.batch_index = 0
        self.totals: Dict[str, Any] = {}
        self.months: Dict[str, List[int]] = {}
        self.run = {"studies_done": 0, "studies_failed": 0, "bytes_in": 0, "bytes_out": 0}
        self.samples: List[List[float]] = []
        self.progress_at = self.started
        """When a study last finished or a byte was last read (``status`` calls a run without either for
        30 minutes STALLED)."""
        self._moved: Optional[tuple] = None  # (bytes read, studies ended) at the last change
        self.message = ""

    def sample(self) -> None:
        """Record a throughput sample (time, source bytes done incl. running jobs, studies done)."""
        running = sum(j.bytes_done for j in list(self.jobs.values()))
        now = round(time.time(), 3)
        sample = [now, self.run["bytes_in"] + running, self.run["studies_done"]]
        moved = (sample[1], self.run["studies_done"] + self.run["studies_failed"])
        if moved != self._moved:
            self.progress_at, self._moved = now, moved
        self.samples.append(sample)
        del self.samples[:-SAMPLES_KEPT]

    def to_dict(self) -> Dict[str, Any]:
        """The JSON document (format version 1, described in README "Live status")."""
        return {
            "version": 1, "pid": os.getpid(), "host": socket.gethostname(), "state": self.state,
            "heartbeat": time.time(), "run_id": self.run_id, "started": self.started, "phase": self.phase,
            "guard": {"code": self.guard_code, "detail": self.guard_detail},
            "incoming": self.incoming,
            "batch": {"index": self.batch_index, "queued": list(self.queued), "finished": self.finished[-50:]},
            "jobs": [vars(j).copy() for j in list(self.jobs.values())],
            "totals": self.totals, "months": self.months, "run": self.run,
            "throughput": {"samples": self.samples}, "progress_at": self.progress_at, "message": self.message,
        }

    async def publish(self) -> None:
        """Replace the live file atomically (temp + rename in the same folder; no fsync: not a record).

        Through aiofiles, so a slow or sleeping USB disk never stalls the event loop that drives the jobs.
        """
        data = json.dumps(self.to_dict(), separators=(",", ":")).encode()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        async with aiofiles.open(tmp, "wb") as f:
            await f.write(data)
        await aiofiles.os.replace(tmp, self.path)
