"""Confirm "start a backup run now", saying how it will be started and whether one is already running."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from tui.launcher import Launch


class ConfirmRunScreen(ModalScreen[bool]):
    """Dismisses with True (start) or False (cancel)."""

    BINDINGS = [
        Binding("y", "answer(True)", "Start"),
        Binding("n,escape", "answer(False)", "Cancel"),
    ]

    def __init__(self, launch: Launch, running_pid: object = None) -> None:
        super().__init__()
        self.launch = launch
        self.running_pid = running_pid

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box"):
            yield Label("Start a backup run now?", id="confirm-question", markup=False)
            if self.running_pid is not None:
                yield Static(f"A run is already in progress (pid {self.running_pid}): a new run will stop "
                             "at the run lock.", id="confirm-warning", markup=False)
            yield Static(f"{self.launch.describe()}\nThe run lock and every guard apply; quitting this "
                         "monitor does not stop the run.", id="confirm-how", markup=False)
            with Horizontal(id="confirm-buttons"):
                yield Button("Start run (y)", variant="warning", id="confirm-yes")
                yield Button("Cancel (n)", variant="default", id="confirm-no")

    def on_mount(self) -> None:
        self.query_one("#confirm-box").border_title = "Run now"
        self.query_one("#confirm-no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "confirm-yes")

    def action_answer(self, yes: bool) -> None:
        """Close with the operator's answer."""
        self.dismiss(yes)
