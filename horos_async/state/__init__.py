"""The engine's state on disk, each format owned here, where it is both written and read.

``ledger`` is the single truth for "done" (an SQLite database on the backup volume): its schema and
every write; ``ledger_read`` the read-only reader that ``status``, ``horos-tui`` and the operator
commands use (it imports nothing that writes); ``ledger_records`` the named rows both hand out;
``issues_csv`` the issue log people open in a spreadsheet. ``live`` is the live status file the engine
publishes while it runs. See docs/design/architecture.md.
"""
