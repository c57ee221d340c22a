"""Operations subcommands (launchd, doctor, verify, restore, catalog) are registered here."""

from __future__ import annotations


def add_parsers(sub, common) -> None:
    """Add the operations subcommands to the main parser (none yet)."""
    return None
