"""The current batch: one row per running ZIP job with its progress bar, then queued and finished studies.

Running jobs show files and bytes of that study; finished ones show their outcome (``done``,
``partial``, ``failed`` with the issue code). The table is rebuilt only when what it shows changes,
keeping the cursor on the same study, so a once-a-second refresh does not fight the operator's arrows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

from textual.content import Content
from textual.reactive import reactive
from textual.widgets import DataTable

from horos_async.status import Job, Snapshot
from tui import formatting as fmt

BAR_WIDTH = 10
OUTCOME_STYLE = {"done": "$success", "partial": "$warning", "failed": "$error"}
COLUMNS = ("icon", "progress", "files", "size", "study")
TITLES = (" ", "Progress", "Files", "Size", "Study (ZIP)")
PROGRESS_MAX = 22
OUTCOME_ICON = {"done": "✓", "partial": "!", "failed": "✗"}


@dataclass(frozen=True)
class BatchRow:
    """One row of the table, in plain text plus a style role for the state cell."""

    key: str
    icon: str
    progress: str
    files: str
    size: str
    study: str
    style: str


def job_fraction(job: Job) -> Optional[float]:
    """How far one ZIP job is (bytes when known, else files), 0..1."""
    if job.bytes_total > 0:
        return job.bytes_done / job.bytes_total
    if job.files_total > 0:
        return job.files_done / job.files_total
    return None


def _size_pair(done: int, total: int) -> str:
    a, b = fmt.size(done), fmt.size(total)
    unit_a, unit_b = a.rsplit(" ", 1)[-1], b.rsplit(" ", 1)[-1]
    return f"{a.rsplit(' ', 1)[0]}/{b}" if unit_a == unit_b else f"{a}/{b}"


def batch_rows(snapshot: Optional[Snapshot]) -> Tuple[BatchRow, ...]:
    """Running jobs (oldest first), queued studies, then finished ones (newest first)."""
    if snapshot is None:
        return ()
    rows: List[BatchRow] = []
    for job in sorted(snapshot.jobs, key=lambda j: j.started):
        frac = job_fraction(job)
        pct = "  ?%" if frac is None else f"{frac * 100:3.0f}%"
        rows.append(BatchRow(f"job:{job.uid}", "▶", f"{fmt.bar(frac, BAR_WIDTH)} {pct}",
                             f"{job.files_done}/{job.files_total}", _size_pair(job.bytes_done, job.bytes_total),
                             job.label, "$accent"))
    for i, label in enumerate(snapshot.queued):
        rows.append(BatchRow(f"queued:{i}:{label}", "·", "queued", "", "", label, "$text-muted"))
    for f in reversed(snapshot.finished):
        what = f"{f.status} in {fmt.duration(f.seconds)}" if f.status == "done" else f"{f.status} {f.code}".strip()
        rows.append(BatchRow(f"done:{f.uid}:{f.label}", OUTCOME_ICON.get(f.status, "?"), what, "",
                             fmt.size(f.bytes), f.label, OUTCOME_STYLE.get(f.status, "$warning")))
    return tuple(rows)


def batch_title(snapshot: Optional[Snapshot]) -> str:
    """``Batch 3 · 2 running · 5 queued · 4 finished``."""
    if snapshot is None or not (snapshot.jobs or snapshot.queued or snapshot.finished):
        return "Batch · nothing running"
    head = f"Batch {snapshot.batch_index}" if snapshot.batch_index else "Batch"
    return (f"{head} · {len(snapshot.jobs)} running · {len(snapshot.queued)} queued"
            f" · {len(snapshot.finished)} finished")


class JobTable(DataTable):
    """The batch table; set ``snapshot`` to update."""

    snapshot: reactive[Optional[Snapshot]] = reactive(None)

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kwargs)
        self.rows_shown: Tuple[BatchRow, ...] = ()
        self.widths: Tuple[int, ...] = ()

    def on_mount(self) -> None:
        self._show(self.snapshot, force=True)

    def watch_snapshot(self, snapshot: Optional[Snapshot]) -> None:
        if self.is_mounted:
            self._show(snapshot)

    def on_resize(self) -> None:
        self._show(self.snapshot, force=True)  # the ZIP names are shortened to the new width

    def row_for(self, uid: str) -> Optional[BatchRow]:
        """The row shown for a running job (tests and the detail line use it)."""
        return next((r for r in self.rows_shown if r.key == f"job:{uid}"), None)

    def _show(self, snapshot: Optional[Snapshot], force: bool = False) -> None:
        self.border_title = batch_title(snapshot)
        rows = batch_rows(snapshot)
        if rows == self.rows_shown and not force:
            return
        widths = self._widths(rows)
        if not force and widths == self.widths and [r.key for r in rows] == [r.key for r in self.rows_shown]:
            for old, new in zip(self.rows_shown, rows):
                if old != new:
                    for column, cell in zip(COLUMNS, self._cells(new, widths[-1])):
                        self.update_cell(new.key, column, cell)
            self.rows_shown = rows
            return
        keep = None
        if self.rows_shown and 0 <= self.cursor_row < len(self.rows_shown):
            keep = self.rows_shown[self.cursor_row].key
        self.rows_shown, self.widths = rows, widths
        self.clear(columns=True)
        for key, title, width in zip(COLUMNS, TITLES, widths):
            self.add_column(title, key=key, width=width)
        for r in rows:
            self.add_row(*self._cells(r, widths[-1]), key=r.key)
        keys = [r.key for r in rows]
        if keep in keys:
            self.move_cursor(row=keys.index(keep), animate=False)

    @staticmethod
    def _cells(r: BatchRow, study_width: int) -> Tuple[Content, ...]:
        return (Content.styled(r.icon, r.style), Content(r.progress), Content(r.files), Content(r.size),
                Content(fmt.shorten(r.study, study_width)))

    def _widths(self, rows: Tuple[BatchRow, ...]) -> Tuple[int, ...]:
        """Column widths; the ZIP name gets what is left (shortened in the middle, keeping the UID end)."""
        fixed = [1,
                 min(PROGRESS_MAX, max([BAR_WIDTH + 5] + [len(r.progress) for r in rows])),
                 max([5] + [len(r.files) for r in rows]),
                 max([4] + [len(r.size) for r in rows])]
        # 2 cells stay free for the vertical scrollbar, which appears once the batch outgrows the panel.
        room = self.size.width - sum(fixed) - 2 * self.cell_padding * len(COLUMNS) - 2
        return tuple(fixed) + (max(16, room),)
