"""The state classes widgets show themselves with (styled in app.tcss), set without needless restyles."""

from __future__ import annotations

from textual.dom import DOMNode
from textual.widgets import Static

STATE_CLASSES = ("-ok", "-warning", "-error", "-stale")


def set_state(node: DOMNode, state: str) -> None:
    """Give ``node`` exactly one state class; a no-op when it already has it (restyling is not free)."""
    if node.has_class(state) and sum(node.has_class(c) for c in STATE_CLASSES) == 1:
        return
    node.remove_class(*(c for c in STATE_CLASSES if c != state))
    node.add_class(state)


def set_text(label: Static, text: str) -> None:
    """Update a label only when its text changes (an update re-lays out the screen)."""
    if label.content != text:
        label.update(text)
