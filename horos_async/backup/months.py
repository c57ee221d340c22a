"""Month markers: ``YYYY_MM/.month_done`` exists exactly while every eligible study of the month is
exported and verified (never merely "touched"); removed again when the month is no longer whole."""

from __future__ import annotations

import json
import time
from typing import Dict, List

from horos_async import durable, platform
from horos_async.config import Config

MONTH_MARKER = ".month_done"


def update_month_markers(cfg: Config, months: Dict[str, List[int]]) -> None:
    """``.month_done`` exists exactly in months whose eligible studies are all exported and verified."""
    for month, (eligible, done) in months.items():
        folder = cfg.backup_dir / month
        marker = folder / MONTH_MARKER
        complete = eligible > 0 and done >= eligible
        if complete and folder.is_dir():
            body = json.dumps({"month": month, "eligible": eligible, "done": done,
                               "marked_at": time.time()}).encode()
            durable.write_atomic(marker, body, overwrite=True)
        elif not complete:
            withdraw_month_marker(cfg, month)


def withdraw_month_marker(cfg: Config, month: str) -> bool:
    """Remove ``month``'s ``.month_done`` (durably) because one of its studies is no longer safely
    backed up; True when there was one. The next run puts it back once the month is whole again."""
    folder = cfg.backup_dir / month
    try:
        (folder / MONTH_MARKER).unlink()
    except FileNotFoundError:
        return False
    platform.sync_dir(folder)
    return True
