"""Horos's INCOMING.noindex load: files waiting to be indexed against ``incoming_max_files``.

Above the limit Horos is busy importing and the engine pauses; the gauge turns ``-error``. Above 80 %
it is ``-warning``. The strip below is the history of counts the app has seen since it started (the
engine publishes only the current count), scaled to the limit so a full cell means "over it".
"""

from __future__ import annotations

from typing import Optional, Sequence

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Label

from horos_async.codes import EngineState
from horos_async.status import Snapshot
from tui import formatting as fmt
from tui.widgets.state import set_state, set_text
from tui.widgets.meter import Meter

WARN_FRACTION = 0.8


def incoming_state(snapshot: Optional[Snapshot]) -> str:
    """The gauge's state class: ``-ok``, ``-warning`` (near the limit), ``-error`` (over) or ``-stale``."""
    if snapshot is None or snapshot.incoming_count is None or snapshot.engine == EngineState.UNREADABLE:
        return "-stale"
    limit = snapshot.incoming_limit
    if snapshot.incoming_capped or (limit and snapshot.incoming_count > limit):
        return "-error"
    if limit and snapshot.incoming_count >= WARN_FRACTION * limit:
        return "-warning"
    return "-ok"


def history_strip(history: Sequence[float], limit: int, width: int) -> str:
    """Recent counts as one cell each, scaled to the limit (a full cell = at or over it); when there
    are more counts than cells, each cell shows the highest count of its stretch."""
    if not history or width <= 0:
        return ""
    values = list(history)
    if len(values) > width:
        step = len(values) / width
        values = [max(values[int(i * step):max(int(i * step) + 1, int((i + 1) * step))]) for i in range(width)]
    top = float(limit or max(values)) or 1.0
    return fmt.levels([v / top for v in values])


def incoming_text(snapshot: Optional[Snapshot]) -> str:
    """``1,204 / 25,000 files (5%)``; ``≥`` when the engine stopped counting at the cap."""
    if snapshot is None or snapshot.incoming_count is None:
        return "not measured yet"
    n, limit = snapshot.incoming_count, snapshot.incoming_limit
    text = f"{'≥' if snapshot.incoming_capped else ''}{fmt.count(n)} / {fmt.count(limit)} files"
    pct = fmt.percent(n, limit) if n <= limit else None
    if pct is not None:
        text += f" ({pct:.0f}%)"
    return text


SAYS = {
    "-ok": "below the limit",
    "-warning": "near the limit: Horos importing",
    "-error": "over the limit: backup pauses",
    "-stale": "no count from the engine",
}
"""The gauge's last line, per state."""


class IncomingGauge(Widget):
    """The INCOMING panel; set ``snapshot`` and ``history`` to update."""

    snapshot: reactive[Optional[Snapshot]] = reactive(None)
    history: reactive[Sequence[float]] = reactive(())
    """Counts seen by the app, oldest first."""

    def compose(self) -> ComposeResult:
        yield Label(id="incoming-count", markup=False)
        yield Meter(id="incoming-meter")
        yield Label(id="incoming-says", markup=False)
        with Horizontal(id="incoming-history-line"):
            yield Label("recent ", id="incoming-history-label")
            yield Label(id="incoming-spark", markup=False)

    def on_mount(self) -> None:
        self.border_title = "Horos INCOMING"
        self._show()

    def watch_snapshot(self) -> None:
        if self.is_mounted:
            self._show()

    def watch_history(self) -> None:
        if self.is_mounted:
            self._show()

    def on_resize(self) -> None:
        self._show()

    def _show(self) -> None:
        s = self.snapshot
        set_text(self.query_one("#incoming-count", Label), incoming_text(s))
        frac = None
        if s is not None and s.incoming_count is not None and s.incoming_limit:
            frac = s.incoming_count / s.incoming_limit
        self.query_one("#incoming-meter", Meter).fraction = frac
        spark = self.query_one("#incoming-spark", Label)
        limit = s.incoming_limit if s is not None else 0
        set_text(spark, history_strip(self.history, limit, spark.content_size.width or 20))
        state = incoming_state(s)
        set_text(self.query_one("#incoming-says", Label), SAYS[state])
        set_state(self, state)
