"""The engine's state on disk, each format owned by one module that both writes and reads it.

``ledger`` is the single truth for "done" (an SQLite database on the backup volume); ``live`` is the
live status file the engine publishes while it runs; ``attempts`` records each ``run`` attempt in the
health file off the backup volume (format: ``horos_async.health``). See docs/design/architecture.md.
"""
