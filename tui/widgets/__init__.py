"""The TUI's widgets, one a file; each shows one part of a Snapshot set on its reactive attribute."""
