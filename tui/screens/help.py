"""Keys and what each panel means."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

HELP = """\
Keys
  q          quit (the backup goes on: this monitor only reads)
  ?          this help
  tab        next panel (shift+tab: previous)
  ↑ ↓ pgup   move in a table
  i          issues screen: c next code, a all codes, enter detail
  l          show / hide the engine log
  r          start a backup run now: asks first, then starts it the
             way launchd does (run lock and guards apply)
  escape     back / close

Panels
  header     engine state: RUNNING; PAUSED by a guard (INCOMING over
             its limit, disk low, sentinel missing); IDLE (last and
             next run); STALE (engine died or hung); NEVER RUN;
             UNREADABLE (state files cannot be read)
  Batch      running ZIP jobs with progress (bytes and files of the
             study), queued studies, finished ones with their outcome
  Archive    studies done / eligible, bytes backed up, MB/s and
             studies/hour with a sparkline, ETA for the rest; one cell
             per month folder (fuller = more of that month done)
  INCOMING   files waiting in Horos's INCOMING.noindex against
             incoming_max_files; over it Horos is importing and the
             backup pauses
  Issues     latest rows of issues.csv: time, code, study, detail
  Months     (wide terminals) coverage of each month folder
"""


class HelpScreen(ModalScreen[None]):
    """The help text in a box."""

    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(id="help-box"):
            with VerticalScroll():
                yield Static(HELP, markup=False, id="help-text")

    def on_mount(self) -> None:
        self.query_one("#help-box").border_title = "horos-tui help"
        self.query_one("#help-box").border_subtitle = "escape to close"
