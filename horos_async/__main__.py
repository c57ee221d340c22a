"""Allow ``python -m horos_async``."""

from horos_async.cli import entry

entry()
