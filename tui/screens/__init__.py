"""The TUI's screens: main, issues (with the detail view), help, and the run-now confirmation."""
