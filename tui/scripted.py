"""A scripted Source and a fixed sample Snapshot: the TUI's tests, snapshot pictures and README capture.

``ScriptedSource`` plays a list of Snapshots (or exceptions) one per read and then repeats the last,
so a test can step the monitor through "job at 10 %", "job at 60 %", "issue appeared" and so on.
Everything here is fixed: no clock, no host name, no files.
"""

from __future__ import annotations

import threading
from typing import List, Sequence, Union

from horos_async.codes import EngineState, IssueCode, RunOutcome
from horos_async.status import Finished, IssueRow, Job, RunRow, Snapshot

SAMPLE_NOW = 1717250400.0
"""2024-06-01 11:00:00 America/Sao_Paulo (14:00 UTC): the fixed "now" of every sample."""
SAMPLE_HOST = "pacs-mac.local"

Step = Union[Snapshot, BaseException]


class ScriptedSource:
    """A Source whose reads return ``steps`` in order (exceptions are raised), then the last forever."""

    def __init__(self, steps: Sequence[Step], log: Sequence[str] = ()) -> None:
        if not steps:
            raise ValueError("ScriptedSource needs at least one step")
        self.steps: List[Step] = list(steps)
        self.log: List[str] = list(log)
        self.reads = 0
        self._lock = threading.Lock()

    def read(self) -> Snapshot:
        """The next scripted step."""
        with self._lock:
            step = self.steps[min(self.reads, len(self.steps) - 1)]
            self.reads += 1
        if isinstance(step, BaseException):
            raise step
        return step

    def read_log(self, lines: int = 200) -> List[str]:
        """The scripted log lines."""
        return self.log[-lines:]

    def push(self, step: Step) -> None:
        """Append a step (and make it the one repeated from now on)."""
        with self._lock:
            if self.reads < len(self.steps):
                self.steps.append(step)
            else:
                self.steps = [step]
                self.reads = 0


def _label(name: str, dob: str, day: str, uid: str) -> str:
    return f"{name}_{dob}_{day}_{uid}.zip"


SAMPLE_UIDS = (
    "1.2.826.0.1.3680043.8.498.10243957162039871",
    "1.2.826.0.1.3680043.8.498.58816200394477120",
    "1.2.826.0.1.3680043.8.498.77310442983120057",
    "1.2.826.0.1.3680043.8.498.90442183001277345",
    "1.2.826.0.1.3680043.8.498.31100288716549960",
    "1.2.826.0.1.3680043.8.498.66218830492011775",
)


def sample_snapshot(now: float = SAMPLE_NOW, **changes) -> Snapshot:
    """A busy, realistic running state: two jobs, queued and finished studies, issues, a history."""
    u = SAMPLE_UIDS
    jobs = (
        Job(u[0], _label("SILVA^MARIA", "19570312", "20190114", u[0]), 412, 980, 215_000_000, 512_000_000,
            now - 95),
        Job(u[1], _label("SOUZA^JOAO", "19801102", "20190115", u[1]), 60, 240, 31_500_000, 126_000_000,
            now - 20),
    )
    queued = (_label("LIMA^ANA", "19920730", "20190117", u[2]), _label("COSTA^PEDRO", "19450221", "20190118", u[3]))
    finished = (
        Finished(u[4], _label("ALVES^RITA", "19661009", "20190110", u[4]), "done", "", 48.2, 402_113_554),
        Finished(u[5], _label("ROCHA^LUIS", "19710405", "20190111", u[5]), "failed", IssueCode.MISSING_FILES,
                 3.1, 0),
    )
    rates = [9e6 + 2e6 * ((i * 7) % 5) for i in range(31)]  # bytes/s, wobbling between 9 and 17 MB/s
    throughput = tuple((now - 600 + 20 * i, int(sum(rates[:i]) * 20), i * 7 // 30) for i in range(31))
    months = tuple((f"{y}_{m:02d}", 40 + (m * 7) % 30, (40 + (m * 7) % 30) if y < 2019 else
                    (20 if m == 1 else 0)) for y in (2017, 2018, 2019) for m in range(1, 13))
    issues = (
        IssueRow(now - 3600 * 5, IssueCode.INCOMING_OVER_LIMIT, "", "",
                 "INCOMING.noindex holds 31,204 files (limit 25,000): Horos is importing; backup paused"),
        IssueRow(now - 60 * 14, IssueCode.ZIP_FAIL, u[2], "2019_01/" + queued[0],
                 "3 attempts produced no valid ZIP; last: CRC mismatch in 00012/IM-0001-0044.dcm"),
        IssueRow(now - 42, IssueCode.MISSING_FILES, u[5], "", "12 of 388 files missing, e.g. "
                 "/Volumes/PACS/Database/Horos Data/DATABASE.noindex/120000/120455.dcm"),
    )
    runs = (RunRow(7, now - 86400, now - 86400 + 3000, RunOutcome.OK, 0, 40, 0, 20_000_000_000),
            RunRow(8, now - 1500, None, "running", None, 12, 1, 3_100_000_000))
    base = dict(
        taken=now, engine=EngineState.RUNNING, detail="exporting batch 3 (2 of 2 jobs running)", pid=4242,
        run_started=now - 1500, phase="export", incoming_count=1204, incoming_limit=25000,
        jobs=jobs, queued=queued, finished=finished, batch_index=3, eligible=1250, done=412, failed=3,
        pending=835, bytes_done=182_300_000_000, months=months, throughput=throughput, issues=issues,
        runs=runs, next_run=None, launchd_installed=True, host=SAMPLE_HOST,
    )
    base.update(changes)
    return Snapshot(**base)


def sample_log() -> List[str]:
    """A few engine log lines for the log pane."""
    return [
        "2024-06-01 10:35:00 INFO run 8 started (pid 4242, concurrency 2)",
        "2024-06-01 10:35:02 INFO scan: 1250 eligible, 835 pending, 3 failed",
        "2024-06-01 10:58:20 INFO done 2019_01/ALVES^RITA_19661009_20190110_...zip (402.1 MB, 48.2s)",
        "2024-06-01 10:59:18 WARNING MISSING_FILES 1.2.826.0.1.3680043.8.498.66218830492011775: 12 of 388",
    ]
