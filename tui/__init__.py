"""horos-tui: a read-only Textual monitor for a running horos-backup engine."""
