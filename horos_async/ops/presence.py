"""What Horos deleted: which studies the backup holds that Horos's database no longer has.

Horos forgets studies by itself: auto-cleaning deletes the oldest when its disk runs low, a "rebuild
database" drops linked studies, a lost index takes everything (docs/design/horos-database.md §11). Such a
study may then exist only in the backup. After each scheduled run, one lean scan of every study row
(whatever its modality) tells the ledger which known studies are gone (``Ledger.mark_presence``: only the
changes are written). Their records and ZIPs stay; nothing about them is deleted or exported again;
``catalog`` shows "only in the backup since DATE" and ``status`` counts them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Set

from horos_async.config import Config
from horos_async.horos_db import HorosReader
from horos_async.models import study_key
from horos_async.state.ledger import Ledger


@dataclass(frozen=True)
class Presence:
    """One presence scan."""

    rows: int
    """Study rows Horos has now."""
    gone: int
    """Studies the ledger knows that Horos no longer has, newly found."""
    back: int
    """Studies found again (re-imported into Horos)."""


async def record_presence(cfg: Config, ledger: Ledger, now: Optional[float] = None) -> Presence:
    """Scan Horos's study rows and record in the ledger which known studies are gone or back."""
    now = time.time() if now is None else now
    present: Set[str] = set()
    rows = 0
    async with HorosReader(cfg, page_size=2000) as reader:  # short pages still; 130,000 rows in ~1 s
        async for _pk, uid, patient_uid in reader.iter_study_keys():
            present.add(study_key(uid, patient_uid))
            rows += 1
    gone, back = await ledger.mark_presence(present, now)
    return Presence(rows, gone, back)
