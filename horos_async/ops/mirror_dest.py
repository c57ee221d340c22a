"""What every mirror destination offers (a folder, an rclone remote), and the items the mirror copies.

A destination copies a batch of files and answers only for the copies it read back and found equal
(docs/design/mirror.md §4); the mirror run records exactly those. A problem of one file (a name taken by
another file) is that file's; a problem of the destination (unmounted, full, rclone failing) raises
:class:`~horos_async.errors.MirrorError` and ends the mirror to it, with nothing unverified recorded.
"""

from __future__ import annotations

import errno
import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from horos_async.config import MirrorConfig
from horos_async.errors import MirrorError

CHUNK = 1 << 20


@dataclass(frozen=True)
class Item:
    """One file to have at the destination."""

    rel: str
    """Path relative to ``backup_dir``; the same path under the destination's root."""
    src: Path
    size: int
    sha256: str
    """Its SHA-256 as the ledger knows it ("" for a ZIP written before schema 5: hashed as it is copied)."""
    kind: str
    """``zip``, ``sums`` (a month's SHA256SUMS, rewritten in place) or ``index`` (a Horos index snapshot file)."""

    @property
    def replaceable(self) -> bool:
        """Only the SHA256SUMS lists are rewritten at a destination; every other file is never replaced."""
        return self.kind == "sums"


@dataclass(frozen=True)
class Placed:
    """A copy read back at the destination and found equal."""

    item: Item
    stored_as: str
    """Where it lies under the destination's root (``rel``, or ``name~<hash>.zip`` after a conflict)."""
    sha256: str
    """Its SHA-256 as read back ("" when ``verify = "size"`` and the ledger had none)."""
    conflict: bool = False


class Throttle:
    """Keeps a copy at or under ``rate`` bytes per second (None: unlimited)."""

    def __init__(self, rate: Optional[int]) -> None:
        self.rate = rate
        self.t0 = time.monotonic()
        self.sent = 0

    def add(self, n: int) -> None:
        if not self.rate:
            return
        self.sent += n
        ahead = self.sent / self.rate - (time.monotonic() - self.t0)
        if ahead > 0:
            time.sleep(ahead)


class Destination:
    """The interface of a mirror destination (blocking methods: run them through ``offload``)."""

    def __init__(self, m: MirrorConfig) -> None:
        self.m = m
        self.label = m.dest

    def check(self) -> None:
        """Raise MirrorError unless the destination can be written now (mounted, reachable, configured)."""
        raise NotImplementedError

    def put(self, items: Sequence[Item], cancel: threading.Event) -> Tuple[List[Placed], List[Tuple[Item, str]]]:
        """Copy and verify ``items``: (the copies verified, the items that failed on their own with why)."""
        raise NotImplementedError

    def hashes(self, stored: Sequence[str]) -> Dict[str, Optional[Tuple[int, str]]]:
        """(size, sha256) of each path under the root as read back now (sha "" with ``verify = "size"``);
        None for a missing one."""
        raise NotImplementedError

    def fetch(self, stored_as: str, local: Path) -> None:
        """Copy the destination's ``stored_as`` to the new local file ``local`` (not synced)."""
        raise NotImplementedError

    def clean(self) -> int:
        """Remove this tool's own temp files a crash left at the destination; how many."""
        return 0


def conflict_name(rel: str, sha256: str) -> str:
    """Where a file goes when its name is taken by another file: ``name~<12 hex>.zip`` beside it."""
    folder, _, name = rel.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    new = f"{stem}~{sha256[:12]}" + (f".{ext}" if ext else "")
    return f"{folder}/{new}" if folder else new


def sha256_of(path: Path) -> Tuple[int, str]:
    """(bytes, SHA-256 hex) of a local file, read in 1 MiB chunks into one buffer."""
    h, n = hashlib.sha256(), 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            got = f.readinto(buf)
            if not got:
                return n, h.hexdigest()
            h.update(view[:got])
            n += got


def dest_fault(m: MirrorConfig, exc: OSError, doing: str) -> MirrorError:
    """The MirrorError an OSError at a folder destination means (full, gone, read-only...)."""
    what = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return MirrorError(f"mirror {m.dest} is full ({what}) while {doing}; the partial copy was removed and "
                           f"nothing unverified was recorded. Free space there or use a bigger disk")
    if exc.errno == errno.EROFS:
        return MirrorError(f"mirror {m.dest} is read-only ({what}) while {doing}; mount it writable")
    return MirrorError(f"mirror {m.dest} failed ({what}) while {doing}; is it still mounted? Nothing unverified "
                       f"was recorded; the next mirror resumes")
