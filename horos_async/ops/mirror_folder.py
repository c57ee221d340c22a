"""A folder mirror destination: a mounted NAS share or a second disk (docs/design/mirror.md §4).

Each file is copied the way the primary writes its ZIPs (docs/design/durability.md §1): into a hidden
temp name in the target folder, synced, moved to its name *without replacing anything*, the folder
synced; then read back (from the device where the system allows: ``platform.read_uncached``) and hashed.
Only a copy whose hash equals the ledger's is reported. The destination's own sentinel keeps the copy
off the boot disk when the share or disk is not mounted (a stale ``/Volumes/NAS`` folder).
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from horos_async import durable, platform
from horos_async.errors import MirrorError
from horos_async.ops.mirror_dest import (CHUNK, Destination, Item, Placed, Throttle, conflict_name, dest_fault,
                                         sha256_of)


class FolderDest(Destination):
    """A mirror in a local (or mounted) folder."""

    def check(self) -> None:
        m = self.m
        sentinel = m.sentinel_path
        if sentinel is not None and not sentinel.is_file():
            raise MirrorError(
                f"mirror {m.dest} is not mounted: its sentinel {sentinel} is missing; nothing was written. Mount "
                f"the share or disk (README 'Mirror'); the first time, create the sentinel: touch '{sentinel}'")
        if not m.folder.is_dir():
            raise MirrorError(f"mirror {m.dest} does not exist or is not a folder; create it (and its sentinel)")
        if not os.access(m.folder, os.W_OK):
            raise MirrorError(f"mirror {m.dest} is not writable by this user; fix its permissions or mount it "
                              f"read-write")

    def put(self, items: Sequence[Item], cancel: threading.Event) -> Tuple[List[Placed], List[Tuple[Item, str]]]:
        placed: List[Placed] = []
        failed: List[Tuple[Item, str]] = []
        throttle = Throttle(self.m.bytes_per_second)
        for item in items:
            if cancel.is_set():
                break
            self.check()  # unmounted meanwhile: stop before writing onto whatever is under the mount point
            try:
                placed.append(self._put_one(item, throttle, cancel))
            except _ItemFailed as exc:
                failed.append((item, str(exc)))
            except _Cancelled:
                break
            except OSError as exc:
                if exc.errno in (errno.ENOENT,) and not item.src.exists():
                    failed.append((item, f"{item.rel} vanished from the backup disk while it was copied"))
                    continue
                fault = dest_fault(self.m, exc, f"copying {item.rel}")
                fault.placed = placed  # the copies verified before the fault still count
                raise fault from None
            except MirrorError as exc:  # unmounted between two files
                exc.placed = placed
                raise
        return placed, failed

    def _put_one(self, item: Item, throttle: Throttle, cancel: threading.Event) -> Placed:
        final = self.m.folder / item.rel
        created = durable.ensure_dir(final.parent)
        tmp = durable.temp_path_for(final, f"{os.getpid()}-m")
        try:
            copied_sha = self._copy(item, tmp, throttle, cancel)
            want = item.sha256 or copied_sha
            if copied_sha and copied_sha != want:
                raise _ItemFailed(f"{item.rel} changed on the backup disk while it was copied (its SHA-256 is not "
                                  f"the ledger's): run 'horos-backup verify --deep'")
            stored, conflict = item.rel, False
            if item.replaceable:
                os.replace(tmp, final)
                durable.sync_dir(final.parent)
            else:
                try:
                    durable.publish(tmp, final, created_dirs=created)
                except durable.AlreadyExists:
                    stored, conflict = self._taken(item, tmp, final, want, created)
            if self.m.verify == "size":
                size, sha = (self.m.folder / stored).stat().st_size, want
            else:
                size, sha = self._read_back(self.m.folder / stored)
            if size != item.size or sha != want:
                raise _ItemFailed(f"the copy of {item.rel} at {self.m.dest} reads back as {size} bytes, SHA-256 "
                                  f"{sha[:12]}..., not {item.size} bytes, {want[:12]}...: not recorded")
            return Placed(item, stored, sha, conflict)
        finally:
            durable.discard(tmp)

    def _taken(self, item: Item, tmp: Path, final: Path, want: str, created) -> Tuple[str, bool]:
        """``final`` exists. The same bytes (an earlier run copied them, then died before recording):
        adopted. Other bytes: kept, and the copy goes beside it (nothing is ever replaced)."""
        try:
            size, sha = sha256_of(final)
        except OSError:
            size, sha = -1, ""
        if size == item.size and sha == want:
            return item.rel, False
        beside = conflict_name(item.rel, want)
        try:
            durable.publish(tmp, self.m.folder / beside, created_dirs=created)
        except durable.AlreadyExists:
            pass  # an earlier run put it there: the read-back decides
        return beside, True

    def _copy(self, item: Item, tmp: Path, throttle: Throttle, cancel: threading.Event) -> str:
        """Copy ``item.src`` into the new file ``tmp`` and sync it; the SHA-256 of what was read when the
        ledger has none (a ZIP written before schema 5), else "" (the kernel copies; the read-back checks)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        src_fd = os.open(item.src, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            dst_fd = os.open(tmp, flags, durable.FILE_MODE)
            try:
                h = None if item.sha256 else hashlib.sha256()
                step = 8 << 20 if throttle.rate is None else max(64 << 10, min(8 << 20, throttle.rate // 4))
                total = 0
                while True:
                    if cancel.is_set():
                        raise _Cancelled()
                    if h is not None:
                        data = os.read(src_fd, CHUNK)
                        n = len(data)
                        if n:
                            h.update(data)
                            view, done = memoryview(data), 0
                            while done < n:
                                done += os.write(dst_fd, view[done:])
                    else:
                        n = platform.copy_range(src_fd, dst_fd, step)
                    if not n:
                        break
                    total += n
                    throttle.add(n)
                if total != item.size:
                    raise _ItemFailed(f"{item.rel} is {total} bytes on the backup disk, the ledger says {item.size}: "
                                      f"run 'horos-backup verify'")
                platform.full_fsync(dst_fd)
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)
        return h.hexdigest() if h is not None else ""

    def _read_back(self, path: Path) -> Tuple[int, str]:
        """(bytes, SHA-256) of the copy, read from the device where the system allows."""
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            platform.read_uncached(fd)
            h, n = hashlib.sha256(), 0
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            with os.fdopen(fd, "rb", buffering=0, closefd=False) as f:
                while True:
                    got = f.readinto(buf)
                    if not got:
                        break
                    h.update(view[:got])
                    n += got
            return n, h.hexdigest()
        finally:
            os.close(fd)

    def hashes(self, stored: Sequence[str]) -> Dict[str, Optional[Tuple[int, str]]]:
        self.check()
        out: Dict[str, Optional[Tuple[int, str]]] = {}
        for rel in stored:
            path = self.m.folder / rel
            try:
                if self.m.verify == "size":
                    out[rel] = (path.stat().st_size, "")
                else:
                    out[rel] = self._read_back(path)
            except FileNotFoundError:
                out[rel] = None
            except OSError as exc:
                raise dest_fault(self.m, exc, f"reading {rel} back") from None
        return out

    def fetch(self, stored_as: str, local: Path) -> None:
        self.check()
        src = self.m.folder / stored_as
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        src_fd = os.open(src, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            dst_fd = os.open(local, flags, durable.FILE_MODE)
            try:
                while platform.copy_range(src_fd, dst_fd, 8 << 20):
                    pass
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)

    def clean(self) -> int:
        self.check()
        return len(durable.remove_stale_temps(self.m.folder, max_depth=3))


class _ItemFailed(Exception):
    """One file could not be copied or did not read back equal; the others go on."""


class _Cancelled(Exception):
    """The mirror was asked to stop mid-file (its temp is removed)."""
