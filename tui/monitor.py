"""The Textual App: composes the screens and runs the one live-data path (timer → worker → message).

Kept apart from ``tui.app`` so ``horos-tui`` can print the install hint when Textual is missing.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from typing import Callable, Deque, List, Optional, Tuple

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.reactive import reactive
from textual.worker import get_current_worker

from horos_async.codes import EngineState
from horos_async.config import Config
from horos_async.status import Snapshot
from tui import launcher
from tui.settings import HISTORY_POINTS, HUNG_SECONDS, display_zone
from tui.messages import SnapshotRead
from tui.screens.confirm_run import ConfirmRunScreen
from tui.screens.help import HelpScreen
from tui.screens.issues import IssuesScreen
from tui.screens.main import MainScreen
from tui.source import Source, StatusSource, read_all, unreadable


class HorosTui(App):
    """horos-tui: attaches to the engine's published state, read-only."""

    CSS_PATH = "app.tcss"
    TITLE = "horos-tui"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (34, "-tall")]
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("r", "run_now", "Run now"),
    ]

    snapshot: reactive[Optional[Snapshot]] = reactive(None, always_update=True)
    """The latest status read (or an ``unreadable`` stand-in); None until the first read returns."""
    incoming_history: reactive[Tuple[float, ...]] = reactive(())
    """INCOMING counts seen since the monitor started, oldest first."""
    log_lines: reactive[Tuple[str, ...]] = reactive(())
    """Tail of the engine log (refreshed only while the log pane is open)."""

    def __init__(self, config: Config, *, source: Optional[Source] = None,
                 clock: Optional[Callable[[], float]] = None, refresh: float = 1.0,
                 starter: Optional[Callable[[launcher.Launch], str]] = None,
                 theme_name: Optional[str] = None) -> None:
        super().__init__()
        if "TEXTUAL_ANIMATIONS" not in os.environ:
            # Off unless asked for: over SSH animations only cost bandwidth. Set here as well as in entry()
            # because Textual reads the variable once, at import, which may be before entry() ran.
            self.animation_level = "none"
        self.config = config
        self.clock = clock or time.time
        self.source = source if source is not None else StatusSource(config, self.clock)
        self.refresh_seconds = refresh
        self.starter = starter or launcher.start
        self.zone = display_zone(config)
        self.log_wanted = False
        """True while the log pane is open: only then is the log read."""
        self._reading_since: Optional[float] = None
        self._history: Deque[float] = collections.deque(maxlen=HISTORY_POINTS)
        if theme_name:
            self.theme = theme_name

    def on_mount(self) -> None:
        self.push_screen(MainScreen())
        self.set_interval(self.refresh_seconds, self.refresh_now)
        self.refresh_now()

    # The live-data path -------------------------------------------------------------------------------
    def refresh_now(self) -> None:
        """Start a status read unless one is still running (then report it hung after a while)."""
        if self._reading_since is not None:
            waited = self.clock() - self._reading_since
            if waited > HUNG_SECONDS:
                self.snapshot = unreadable(
                    f"reading the engine status has not finished for {waited:.0f}s; "
                    f"is the backup volume ({self.config.backup_dir}) responding?", self.clock(), self.snapshot)
            return
        self._reading_since = self.clock()
        self._read(self.log_wanted)

    @work(thread=True, exclusive=True, group="status", exit_on_error=False)
    def _read(self, want_log: bool) -> None:
        """Worker thread: read, never touch widgets, post the result.

        The read itself runs on a daemon thread this worker waits for: Textual's thread workers live on
        asyncio's default executor, which is joined at exit, so a read stuck on a dead volume would
        otherwise keep ``q`` from quitting. Cancelled on quit, the worker returns and leaves it behind.
        """
        worker = get_current_worker()
        result: List[Tuple[Snapshot, Optional[Tuple[str, ...]]]] = []
        reader = threading.Thread(target=lambda: result.append(read_all(self.source, want_log, self.clock)),
                                  name="horos-tui-read", daemon=True)
        reader.start()
        while reader.is_alive():
            reader.join(0.1)
            if worker.is_cancelled:
                return
        if result:
            self.post_message(SnapshotRead(*result[0]))

    def on_snapshot_read(self, message: SnapshotRead) -> None:
        self._reading_since = None
        snap = message.snapshot
        if snap.engine == EngineState.UNREADABLE and not snap.host and self.snapshot is not None:
            snap = unreadable(snap.detail, snap.taken, self.snapshot)
        if snap.incoming_count is not None:
            self._history.append(float(snap.incoming_count))
            self.incoming_history = tuple(self._history)
        if message.log_lines is not None:
            self.log_lines = message.log_lines
        self.snapshot = snap

    # Actions ------------------------------------------------------------------------------------------
    def action_help(self) -> None:
        """Show the keys and what each panel means."""
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_issues(self) -> None:
        """Open the issues screen."""
        if not isinstance(self.screen, IssuesScreen):
            self.push_screen(IssuesScreen())

    def action_run_now(self) -> None:
        """Ask, then start a run the way launchd would."""
        if isinstance(self.screen, ConfirmRunScreen):
            return
        plan = launcher.plan_launch(self.config)
        running = self.snapshot.pid if self.snapshot and self.snapshot.engine == EngineState.RUNNING else None

        def answered(yes: Optional[bool]) -> None:
            if yes:
                self._start_run(plan)

        self.push_screen(ConfirmRunScreen(plan, running_pid=running), answered)

    @work(thread=True, group="launch", exit_on_error=False)
    def _start_run(self, plan: launcher.Launch) -> None:
        """Worker thread: launchctl may take a moment; report back through a notification."""
        try:
            said = self.starter(plan)
        except (OSError, RuntimeError, ValueError) as exc:
            self.call_from_thread(self.notify, f"could not start a run: {exc}", severity="error", timeout=10)
            return
        self.call_from_thread(self.notify, said, title="Run requested", timeout=6)
