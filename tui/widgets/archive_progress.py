"""Whole-archive progress: studies done of those eligible, bytes, throughput with a sparkline while a run
goes (the rate achieved over the last days otherwise), the ETA that rate gives, and
a one-line strip of per-month coverage (one cell per month folder, fuller = more of that month done;
the month range and how many months are complete sit in the bottom border), and one line per mirror
destination (its health, ZIPs and bytes mirrored of those done, its lag), as ``status`` shows them.
"""

from __future__ import annotations

from typing import List, Optional

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Label, Sparkline

from horos_async.codes import EngineState
from horos_async.status import Snapshot
from tui import formatting as fmt
from tui.widgets.state import set_state, set_text
from tui.widgets.meter import Meter

RATE_POINTS = 60
"""Throughput samples kept for the sparkline."""


def rate_history(snapshot: Snapshot, points: int = RATE_POINTS) -> List[float]:
    """MB/s between consecutive throughput samples, oldest first."""
    samples = snapshot.throughput[-(points + 1):]
    out = []
    for (t0, b0, _), (t1, b1, _) in zip(samples, samples[1:]):
        if t1 > t0:
            out.append(max(0.0, (b1 - b0) / (t1 - t0) / 1e6))
    return out


def month_strip(snapshot: Snapshot, width: int) -> str:
    """One cell per month folder, oldest first (fuller = more done), newest months kept when cut."""
    months = snapshot.months
    if not months:
        return "months: none scanned yet"
    cells = fmt.levels([done / eligible if eligible else None for _, eligible, done in months])
    label = "months "
    room = max(1, width - len(label))
    return label + (cells if len(cells) <= room else "…" + cells[-(room - 1):])


def month_range(snapshot: Snapshot) -> str:
    """``2017_01…2019_12 · 24/36 complete``: month folders and how many are fully backed up."""
    months = snapshot.months
    if not months:
        return ""
    complete = sum(1 for _, eligible, done in months if eligible and done >= eligible)
    return f"{months[0][0]}…{months[-1][0]} · {complete}/{len(months)} complete"


def counts_line(s: Snapshot) -> str:
    """``412 / 1,250 studies · 33% · 3 failed``."""
    failed = f" · {s.failed} failed" if s.failed else ""
    if s.eligible is None:
        return f"{fmt.count(s.done)} studies done · not scanned yet{failed}"
    pct = fmt.percent(s.done, s.eligible)
    share = f" · {pct:.0f}%" if pct is not None else " · nothing eligible"
    return f"{fmt.count(s.done)} / {fmt.count(s.eligible)} studies{share}{failed}"


def remaining(s: Snapshot) -> str:
    """What is left, with the ETA the rate achieved over the last days gives (not one run's speed)."""
    if s.eligible is not None and s.done >= s.eligible:
        return "archive complete"
    if s.eta_seconds is not None:
        return f"{fmt.count(s.pending)} to go · ETA {fmt.duration(s.eta_seconds)}"
    return f"{fmt.count(s.pending)} to go"


def rate_text(s: Snapshot) -> str:
    """The live speed while a run is going; otherwise the rate achieved over the last days (no stale
    live figure shown as if current)."""
    if s.engine == EngineState.RUNNING:
        return f"{s.mb_per_s:.1f} MB/s · {fmt.rate(s.studies_per_hour)} studies/h "
    hours = s.achieved[0]
    if hours <= 0:
        return "idle · no runs in the last days "
    span = f"{hours:.0f}h" if hours < 48 else f"{hours / 24:.0f} days"
    return f"idle · {fmt.rate(s.achieved_per_hour)} studies/h over {span} "


def mirror_line(s: Snapshot) -> str:
    """``mirror /Volumes/NAS: OK · 410/412 ZIPs · 1.2 GB/1.2 GB · 3.0 h behind``, one line per
    destination ("" when no mirror is configured)."""
    out = []
    for m in s.mirrors:
        lag = f" · {fmt.duration(m.lag_seconds)} behind" if m.lag_seconds else ""
        out.append(f"mirror {m.dest}: {m.health} · {fmt.count(m.zips_mirrored)}/{fmt.count(m.zips_done)} ZIPs · "
                   f"{fmt.size(m.bytes_mirrored)}/{fmt.size(m.bytes_done)}{lag}")
    return "\n".join(out)


class ArchiveProgress(Widget):
    """The archive panel; set ``snapshot`` to update."""

    snapshot: reactive[Optional[Snapshot]] = reactive(None)

    def compose(self) -> ComposeResult:
        yield Label(id="archive-counts", markup=False)
        yield Meter(id="archive-meter")
        yield Label(id="archive-bytes", markup=False)
        with Horizontal(id="archive-rate-line"):
            yield Label(id="archive-rate", markup=False)
            yield Sparkline([], id="archive-spark")
        yield Label(id="archive-months", markup=False)
        yield Label(id="archive-mirror", markup=False)

    def on_mount(self) -> None:
        self.border_title = "Archive"
        self._show(self.snapshot)

    def watch_snapshot(self, snapshot: Optional[Snapshot]) -> None:
        if self.is_mounted:
            self._show(snapshot)

    def on_resize(self) -> None:
        self._show(self.snapshot)

    def _show(self, s: Optional[Snapshot]) -> None:
        counts = self.query_one("#archive-counts", Label)
        meter = self.query_one("#archive-meter", Meter)
        mirror = self.query_one("#archive-mirror", Label)
        mirror.display = s is not None and bool(s.mirrors)
        if s is None or s.engine == EngineState.UNREADABLE:
            set_text(counts, "archive state unknown")
            meter.fraction = None
            set_state(self, "-stale")
            return
        set_text(counts, counts_line(s))
        pct = fmt.percent(s.done, s.eligible)
        meter.fraction = None if pct is None else pct / 100.0
        set_text(self.query_one("#archive-bytes", Label), f"{fmt.size(s.bytes_done)} · {remaining(s)}")
        set_text(self.query_one("#archive-rate", Label), rate_text(s))
        self.query_one("#archive-spark", Sparkline).data = rate_history(s) if s.engine == EngineState.RUNNING else []
        set_text(self.query_one("#archive-months", Label), month_strip(s, self.content_size.width))
        self.border_subtitle = month_range(s)
        set_text(mirror, mirror_line(s))
        behind = any(m.code for m in s.mirrors)
        set_state(self, "-warning" if s.failed or behind else "-ok")
