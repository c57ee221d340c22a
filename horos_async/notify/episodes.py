"""The alerts' memory: which conditions are open, when each was last told, what is still to send.

``<state_dir>/notify.json``, off the backup volume beside the health file, written through ``durable``.
A condition (``SENTINEL_MISSING``, ``DISK_FULL``, ``HOROS_DB_SHRANK``, ``STALLED``, ``NO_PROGRESS``...)
is told once when it starts, again every :data:`REMIND_SECONDS` while it lasts, and once when it ends.
Messages a channel could not deliver wait in the outbox for the next run (at most :data:`OUTBOX_MAX`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from horos_async import durable
from horos_async.config import Config

log = logging.getLogger(__name__)

REMIND_SECONDS = 24 * 3600.0
OUTBOX_MAX = 20


@dataclass
class Episode:
    """One open condition."""

    since: float
    last_sent: float
    detail: str = ""


@dataclass
class NotifyState:
    """The file's content."""

    open: Dict[str, Episode] = field(default_factory=dict)
    last_summary: Optional[float] = None
    outbox: List[Dict[str, Any]] = field(default_factory=list)
    """Undelivered messages: ``{"message": {...}, "channels": [...]}``, oldest first."""


def load(cfg: Config) -> NotifyState:
    """The state as saved (empty when none, or when the file is damaged: it only holds reminders)."""
    try:
        d = json.loads(cfg.alerts_state_path.read_text(encoding="utf-8"))
        return NotifyState(
            open={k: Episode(**v) for k, v in (d.get("open") or {}).items()},
            last_summary=d.get("last_summary"), outbox=list(d.get("outbox") or []))
    except FileNotFoundError:
        return NotifyState()
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        log.warning("alert state %s unreadable (%s): starting afresh", cfg.alerts_state_path, exc)
        return NotifyState()


def save(cfg: Config, st: NotifyState) -> None:
    """Write the state durably (OSError when the state folder cannot be written)."""
    if len(st.outbox) > OUTBOX_MAX:
        log.warning("alert outbox over %d messages: the %d oldest are dropped", OUTBOX_MAX,
                    len(st.outbox) - OUTBOX_MAX)
        del st.outbox[:-OUTBOX_MAX]
    durable.ensure_dir(cfg.health_dir, 0o700)
    durable.write_atomic(cfg.alerts_state_path, json.dumps(asdict(st), indent=1).encode(), mode=0o600, overwrite=True)
