"""The ledger's mirror tables (schema 5, ``ledger._to_5``): what each destination holds, verified.

``mirror_copies`` has one row per file a destination holds a copy of that was read back and matched
(docs/design/mirror.md §3): a row is written only after that check, so a partial upload, a copy cut by
SIGKILL or a full destination is never recorded. ``mirror_runs`` has one row per destination per mirror
run (the last run, its outcome and its error are what ``status`` shows). The writes go through the
engine's :class:`~horos_async.state.ledger.Ledger` connection and its write lock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from horos_async.state.ledger import Ledger

KIND_ZIP = "zip"
KIND_SUMS = "sums"
KIND_INDEX = "index"
OK = "ok"


@dataclass(frozen=True)
class ZipForMirror:
    """One ``ok`` ZIP of the primary, as the mirror plans it."""

    path: str
    """Relative to ``backup_dir`` (``YYYY_MM/name.zip``)."""
    size: int
    sha256: str
    """Hex SHA-256 computed while the ZIP was written; "" for a ZIP written before schema 5."""
    created_at: float


@dataclass(frozen=True)
class Copy:
    """One verified copy at a destination."""

    path: str
    """The primary's path, relative to ``backup_dir``."""
    kind: str
    size: int
    sha256: str
    stored_as: str
    """Where it lies at the destination, relative to its root (the same path but after a conflict)."""
    status: str


class MirrorBook:
    """The mirror's reads and writes on the engine's ledger connection."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    @property
    def db(self):
        return self.ledger.db

    async def zips(self) -> List[ZipForMirror]:
        """Every ``ok`` ZIP of the primary, in path order (older versions of a study included)."""
        async with self.db.execute("SELECT zip_path, zip_size, COALESCE(sha256, ''), COALESCE(created_at, 0) "
                                   "FROM zips WHERE status='ok' ORDER BY zip_path") as cur:
            return [ZipForMirror(*r) for r in await cur.fetchall()]

    async def zip_hashes(self) -> List[Tuple[str, str]]:
        """``(zip_path, sha256)`` of every ``ok`` ZIP whose hash is known (the SHA256SUMS content)."""
        async with self.db.execute("SELECT zip_path, sha256 FROM zips WHERE status='ok' AND sha256 IS NOT NULL "
                                   "AND sha256 != ''") as cur:
            return [(r[0], r[1]) for r in await cur.fetchall()]

    async def bad_zips(self) -> List[Tuple[str, int, str, str]]:
        """``(zip_path, zip_size, sha256, status)`` of the ZIPs verify or a run found missing or invalid."""
        async with self.db.execute("SELECT zip_path, zip_size, COALESCE(sha256, ''), status FROM zips "
                                   "WHERE status != 'ok' ORDER BY zip_path") as cur:
            return [tuple(r) for r in await cur.fetchall()]

    async def set_sha256(self, items: Sequence[Tuple[str, str]]) -> None:
        """Record ``(zip_path, sha256)`` of ZIPs written before schema 5 (hashed when first mirrored)."""
        if items:
            async with self.ledger._txn():
                await self.db.executemany("UPDATE zips SET sha256=? WHERE zip_path=? AND (sha256 IS NULL OR sha256='')",
                                          [(sha, path) for path, sha in items])

    async def copies(self, dest: str) -> Dict[str, Copy]:
        """Every copy recorded at ``dest``, by primary path."""
        async with self.db.execute("SELECT path, kind, size, COALESCE(sha256, ''), COALESCE(stored_as, path), status "
                                   "FROM mirror_copies WHERE dest=?", (dest,)) as cur:
            return {r[0]: Copy(*r) for r in await cur.fetchall()}

    async def record_copies(self, dest: str, rows: Sequence[Tuple[str, str, int, str, str]],
                            now: Optional[float] = None) -> None:
        """Commit verified copies ``(path, kind, size, sha256, stored_as)`` at ``dest``, in one transaction."""
        if not rows:
            return
        now = time.time() if now is None else now
        async with self.ledger._txn():
            await self.db.executemany(
                "INSERT OR REPLACE INTO mirror_copies (dest, path, kind, size, sha256, copied_at, verified_at, status, "
                "stored_as) VALUES (?,?,?,?,?,?,?, 'ok', ?)",
                [(dest, p, k, n, sha or None, now, now, stored) for p, k, n, sha, stored in rows])

    async def mark_verified(self, dest: str, paths: Sequence[str], now: Optional[float] = None) -> None:
        """The copies of ``paths`` at ``dest`` were read back and still match."""
        if paths:
            now = time.time() if now is None else now
            async with self.ledger._txn():
                await self.db.executemany("UPDATE mirror_copies SET verified_at=? WHERE dest=? AND path=?",
                                          [(now, dest, p) for p in paths])

    async def forget(self, dest: str, paths: Sequence[str], status: str) -> None:
        """The copies of ``paths`` at ``dest`` are missing or damaged (``status``): no longer counted."""
        if paths:
            async with self.ledger._txn():
                await self.db.executemany("UPDATE mirror_copies SET status=? WHERE dest=? AND path=?",
                                          [(status, dest, p) for p in paths])

    async def zip_restored(self, zip_path: str, ident: dict, now: Optional[float] = None) -> None:
        """The primary ZIP at ``zip_path`` was put back from a mirror and verified: ``ok`` again, and its
        study done again if the study still points at it (``ident``: the ZIP's identity comment)."""
        now = time.time() if now is None else now
        async with self.ledger._txn():
            await self.db.execute("UPDATE zips SET status='ok', verified_at=? WHERE zip_path=?", (now, zip_path))
            await self.db.execute(
                "UPDATE studies SET state=?, fingerprint=?, code='', detail='', next_attempt=NULL "
                "WHERE zip_path=? AND state='pending'",
                (ident.get("state", "done"), ident.get("fingerprint", ""), zip_path))

    async def begin_run(self, dest: str, now: Optional[float] = None) -> int:
        """A mirror run to ``dest`` starts; its id."""
        async with self.ledger._txn():
            cur = await self.db.execute("INSERT INTO mirror_runs (dest, started) VALUES (?, ?)",
                                        (dest, time.time() if now is None else now))
        return cur.lastrowid

    async def end_run(self, run_id: int, outcome: str, files: int, nbytes: int, message: str = "") -> None:
        """How the mirror run ``run_id`` ended (``ok``, ``partial``, ``failed``, ``skipped``)."""
        async with self.ledger._txn():
            await self.db.execute("UPDATE mirror_runs SET ended=?, outcome=?, files=?, bytes=?, message=? WHERE id=?",
                                  (time.time(), outcome, files, nbytes, message, run_id))

    async def last_ok(self, dest: str) -> Optional[float]:
        """When a mirror run to ``dest`` last ended ``ok`` (everything copied)."""
        async with self.db.execute("SELECT MAX(ended) FROM mirror_runs WHERE dest=? AND outcome='ok'", (dest,)) as cur:
            row = await cur.fetchone()
        return row[0] if row and row[0] is not None else None
