"""Live progress published for other processes: ``Config.live_status_path`` (``backup_dir/.tmp/status.json``),
replaced atomically. This module owns the format: it writes the file and parses it.

The engine updates an in-memory ``LiveState`` (worker threads only bump counters of their own job);
a publisher task writes it about twice a second as a ``LiveStatus`` document. Readers (``status``,
``horos-tui``) never write; they parse the file with :meth:`LiveStatus.parse`, which takes whatever an
older (or damaged) file holds: a missing or mistyped key reads as its default, never a traceback.
The file is a convenience, not a record: it is replaced without fsync, and a reader that finds it
stale (old heartbeat, dead pid) says so.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import aiofiles
import aiofiles.os

from horos_async.codes import EngineState

SAMPLES_KEPT = 240
FINISHED_KEPT = 50
"""Studies of the current batch listed as finished (the newest)."""
FORMAT_VERSION = 1
"""``version`` of the document; bump it when a reader could misread a new file."""


# -- tolerant readers of one JSON value ------------------------------------------------------------------
def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return default


def _opt_int(value: Any) -> Optional[int]:
    return None if value is None else _int(value, None)  # type: ignore[arg-type]


def _float(value: Any, default: float = 0.0) -> float:
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return default


def _opt_float(value: Any) -> Optional[float]:
    return None if value is None else _float(value, None)  # type: ignore[arg-type]


def _str(value: Any) -> str:
    return "" if value is None else str(value)


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _seq(value: Any) -> Tuple[Any, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else ()


_READERS = {"int": _int, "float": _float, "str": _str, "bool": bool, "Optional[int]": _opt_int,
            "Optional[float]": _opt_float}
"""How a field of each (annotated) type is read from JSON."""


class _Record:
    """A part of the document made of plain values: parsed field by field, by each field's type."""

    @classmethod
    def parse(cls, data: Any) -> Any:
        """Read from JSON; a missing or mistyped value reads as its type's zero (or None). Every field's
        type must be one of ``_READERS`` (tests/test_status.py parses each record)."""
        d = _map(data)
        return cls(**{f.name: _READERS[f.type](d.get(f.name)) for f in fields(cls)})  # type: ignore[call-arg]


# -- the document --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Guard(_Record):
    """The guard that stopped or paused the run (``codes.GuardCode``), or empty."""

    code: str = ""
    detail: str = ""
    """The guard's own explanation, for a person."""


@dataclass(frozen=True)
class Incoming(_Record):
    """The last count of Horos's INCOMING.noindex."""

    count: Optional[int] = None
    """Files found (counting stops just past the limit); None = not counted yet in this run."""
    limit: int = 0
    """``incoming_max_files`` of the engine that counted."""
    capped: bool = False
    """True when over the limit: the run pauses."""
    checked: Optional[float] = None
    """Unix seconds of the count."""


@dataclass(frozen=True)
class Job(_Record):
    """One running ZIP job."""

    uid: str
    label: str
    """ZIP file name (what the operator sees on disk)."""
    files_done: int
    files_total: int
    bytes_done: int
    """Source bytes read so far."""
    bytes_total: int
    started: float
    """Unix seconds."""


@dataclass(frozen=True)
class Finished(_Record):
    """A study finished in the current batch."""

    uid: str
    label: str
    status: str
    """``done``, ``partial`` or ``failed`` (``models``)."""
    code: str
    """Issue code when not done (``codes.IssueCode``)."""
    seconds: float
    bytes: int
    """Source bytes."""


@dataclass(frozen=True)
class Batch:
    """The batch being exported."""

    index: int = 0
    """1 for the run's first batch; 0 before any."""
    queued: Tuple[str, ...] = ()
    """Labels of studies planned but not started."""
    finished: Tuple[Finished, ...] = ()
    """The newest ``FINISHED_KEPT`` studies finished in this run, oldest first."""

    @classmethod
    def parse(cls, data: Any) -> "Batch":
        d = _map(data)
        return cls(_int(d.get("index")), tuple(_str(q) for q in _seq(d.get("queued"))),
                   tuple(Finished.parse(f) for f in _seq(d.get("finished"))))


@dataclass(frozen=True)
class Totals(_Record):
    """Archive counts from the last scan of the Horos database; all None before the first scan."""

    eligible: Optional[int] = None
    done: Optional[int] = None
    pending: Optional[int] = None
    due: Optional[int] = None
    waiting: Optional[int] = None
    backoff: Optional[int] = None

    def to_json(self) -> Dict[str, int]:
        """Only the counts known (``{}`` before the first scan)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class RunCounts(_Record):
    """What the current run did so far."""

    studies_done: int = 0
    studies_failed: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


def _months(data: Any) -> Tuple[Tuple[str, int, int], ...]:
    out = []
    for month, v in sorted(_map(data).items()):
        v = _seq(v)
        if len(v) >= 2:
            out.append((str(month), _int(v[0]), _int(v[1])))
    return tuple(out)


def _samples(data: Any) -> Tuple[Tuple[float, int, int], ...]:
    out = []
    for s in _seq(_map(data).get("samples")):
        s = _seq(s)
        if len(s) >= 3:
            out.append((_float(s[0]), _int(s[1]), _int(s[2])))
    return tuple(out)


@dataclass(frozen=True)
class LiveStatus:
    """The live status document (format ``FORMAT_VERSION``), as written and as read back."""

    version: int = FORMAT_VERSION
    pid: Optional[int] = None
    """The engine's process."""
    host: Optional[str] = None
    """The engine's host name; None (an old file) = this host."""
    state: str = ""
    """``codes.EngineState``: running, paused or idle."""
    heartbeat: float = 0.0
    """Unix seconds of this write."""
    run_id: Optional[int] = None
    """The ledger's ``runs.id`` of this run."""
    started: Optional[float] = None
    """Unix seconds the run started."""
    phase: str = ""
    """``starting``, ``reconcile``, ``scan``, ``export`` or ``finished``."""
    guard: Guard = Guard()
    incoming: Incoming = Incoming()
    batch: Batch = Batch()
    jobs: Tuple[Job, ...] = ()
    totals: Totals = Totals()
    months: Tuple[Tuple[str, int, int], ...] = ()
    """(month, eligible, done) per month folder at the last scan, oldest first."""
    run: RunCounts = RunCounts()
    samples: Tuple[Tuple[float, int, int], ...] = ()
    """(unix time, source bytes done, studies done) throughput samples, oldest first."""
    message: str = ""
    """The engine's last one-line explanation (why it paused or ended)."""

    def to_json(self) -> Dict[str, Any]:
        """The JSON document (README "Monitoring" describes it)."""
        return {
            "version": self.version, "pid": self.pid, "host": self.host, "state": str(self.state),
            "heartbeat": self.heartbeat, "run_id": self.run_id, "started": self.started, "phase": self.phase,
            "guard": asdict(self.guard), "incoming": asdict(self.incoming),
            "batch": {"index": self.batch.index, "queued": list(self.batch.queued),
                      "finished": [asdict(f) for f in self.batch.finished]},
            "jobs": [asdict(j) for j in self.jobs],
            "totals": self.totals.to_json(), "months": {m: [e, d] for m, e, d in self.months},
            "run": asdict(self.run), "throughput": {"samples": [list(s) for s in self.samples]},
            "message": self.message,
        }

    @classmethod
    def parse(cls, data: Any) -> "LiveStatus":
        """Read a document back; missing or mistyped keys (an older or damaged file) take their defaults."""
        d = _map(data)
        return cls(
            version=_int(d.get("version"), FORMAT_VERSION), pid=_opt_int(d.get("pid")),
            host=None if d.get("host") is None else _str(d.get("host")), state=_str(d.get("state")),
            heartbeat=_float(d.get("heartbeat")), run_id=_opt_int(d.get("run_id")),
            started=_opt_float(d.get("started")), phase=_str(d.get("phase")), guard=Guard.parse(d.get("guard")),
            incoming=Incoming.parse(d.get("incoming")), batch=Batch.parse(d.get("batch")),
            jobs=tuple(Job.parse(j) for j in _seq(d.get("jobs"))), totals=Totals.parse(d.get("totals")),
            months=_months(d.get("months")), run=RunCounts.parse(d.get("run")),
            samples=_samples(d.get("throughput")), message=_str(d.get("message")))


def load(path: Path) -> Optional[LiveStatus]:
    """The live status file parsed; None when there is none (or it holds no JSON object).

    Raises OSError when it cannot be read and ValueError when it is not JSON (a reader says so).
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    return LiveStatus.parse(data) if isinstance(data, dict) else None


# -- the engine's side ---------------------------------------------------------------------------------
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

    def status(self) -> Job:
        """This job as the live file shows it."""
        return Job(self.uid, self.label, self.files_done, self.files_total, self.bytes_done, self.bytes_total,
                   self.started)


def _as(cls, value):
    """``value`` as ``cls``: taken as is, or parsed from the plain dict the engine assigned."""
    return value if isinstance(value, cls) else cls.parse(value)


class LiveState:
    """What the engine is doing now; :meth:`status` is the document :meth:`publish` writes.

    The engine assigns the attributes directly (``incoming``, ``totals``, ``run`` and ``finished``
    entries as plain dicts, or as this module's dataclasses); :meth:`status` turns them into a
    ``LiveStatus``.
    """

    def __init__(self, path: Path, run_id: Optional[int] = None, incoming_limit: int = 0) -> None:
        self.path = path
        self.started = time.time()
        self.run_id = run_id
        self.state: str = EngineState.RUNNING
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
        self.message = ""

    def sample(self) -> None:
        """Record a throughput sample (time, source bytes done incl. running jobs, studies done)."""
        running = sum(j.bytes_done for j in list(self.jobs.values()))
        self.samples.append([round(time.time(), 3), self.run["bytes_in"] + running, self.run["studies_done"]])
        del self.samples[:-SAMPLES_KEPT]

    def status(self) -> LiveStatus:
        """The document for this moment (heartbeat now)."""
        return LiveStatus(
            pid=os.getpid(), host=socket.gethostname(), state=str(self.state), heartbeat=time.time(),
            run_id=self.run_id, started=self.started, phase=self.phase,
            guard=Guard(str(self.guard_code), self.guard_detail), incoming=_as(Incoming, self.incoming),
            batch=Batch(self.batch_index, tuple(self.queued),
                        tuple(_as(Finished, f) for f in self.finished[-FINISHED_KEPT:])),
            jobs=tuple(j.status() for j in list(self.jobs.values())), totals=_as(Totals, self.totals),
            months=_months(self.months), run=_as(RunCounts, self.run),
            samples=tuple((float(t), int(b), int(n)) for t, b, n in self.samples), message=self.message)

    def to_dict(self) -> Dict[str, Any]:
        """The JSON document of :meth:`status`."""
        return self.status().to_json()

    async def publish(self) -> None:
        """Replace the live file atomically (temp + rename in the same folder; no fsync: not a record).

        Through aiofiles, so a slow or sleeping USB disk never stalls the event loop that drives the jobs.
        """
        data = json.dumps(self.to_dict(), separators=(",", ":")).encode()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        async with aiofiles.open(tmp, "wb") as f:
            await f.write(data)
        await aiofiles.os.replace(tmp, self.path)
