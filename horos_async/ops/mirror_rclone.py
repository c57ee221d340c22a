"""An rclone mirror destination (``rclone:REMOTE:path``): S3, Backblaze B2, SFTP, SMB, a ``crypt`` remote...

We write no cloud transport: rclone copies. One batch costs a handful of rclone processes, never one per
file (docs/design/mirror.md §5): ``lsjson`` (what is there already), one ``copy --files-from-raw
--checksum --immutable`` (``--immutable``: rclone refuses to replace a file that differs), and one
``hashsum sha256`` over the batch (``--download`` for remotes that keep no SHA-256, a ``crypt`` remote
for one) or, with ``verify = "size"``, the sizes from ``lsjson``. Only copies read back equal are
reported. A smaller file under a ZIP's name that the ledger never recorded is an upload cut short (a
killed rclone): it is moved aside to a hidden ``.partial`` name, never deleted, and copied again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from horos_async.errors import MirrorError
from horos_async.ops.mirror_dest import Destination, Item, Placed, conflict_name

RCLONE_ENV = "HOROS_RCLONE"
"""Names the rclone program to run (default: ``rclone`` on PATH)."""
_UNSUPPORTED = ("hash type not supported", "hash unsupported", "not supported")


class RcloneDest(Destination):
    """A mirror on an rclone remote."""

    def __init__(self, m, work_dir: Path, root: Path) -> None:
        super().__init__(m)
        self.work_dir = work_dir
        self.root = root
        """The local folder every item's ``rel`` is relative to (``backup_dir``)."""
        self.remote = m.remote.rstrip("/") if not m.remote.endswith(":") else m.remote
        self.download = False  # set once the remote says it keeps no SHA-256

    # -- running rclone ------------------------------------------------------------------------------
    def _program(self) -> str:
        name = os.environ.get(RCLONE_ENV) or "rclone"
        found = shutil.which(name)
        if found is None:
            raise MirrorError(f"mirror {self.m.dest}: rclone is not installed (no '{name}' on PATH). Install it "
                              f"('brew install rclone' on a Mac, 'apt install rclone'), then 'rclone config' the "
                              f"remote; README 'Mirror'")
        return found

    def _run(self, args: Sequence[str], doing: str, cancel: Optional[threading.Event] = None,
             check: bool = True) -> Tuple[int, str, str]:
        """Run rclone; (exit code, stdout, stderr). ``check``: a failure raises MirrorError quoting rclone."""
        cmd = [self._program(), *args]
        with tempfile.TemporaryFile(dir=self.work_dir) as out, tempfile.TemporaryFile(dir=self.work_dir) as err:
            try:
                proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
            except OSError as exc:
                raise MirrorError(f"mirror {self.m.dest}: rclone could not be started ({exc.strerror or exc})") from None
            while True:
                try:
                    rc = proc.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    if cancel is not None and cancel.is_set():
                        proc.terminate()
                        try:
                            proc.wait(timeout=10)
                        except subprocess.TimeoutExpired:
                            proc.kill()
                            proc.wait()
                        rc = -15
                        break
            out.seek(0)
            err.seek(0)
            stdout = out.read().decode("utf-8", "replace")
            stderr = err.read().decode("utf-8", "replace")
        if rc != 0 and check and not (cancel is not None and cancel.is_set()):
            raise self._failed(rc, stderr, doing)
        return rc, stdout, stderr

    def _failed(self, rc: int, stderr: str, doing: str) -> MirrorError:
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if "ERROR" in ln or "Failed" in ln or "error" in ln.lower()] or lines
        quoted = " | ".join(errors[-3:])[-600:] or "no message"
        hint = ""
        if "didn't find section in config" in stderr or "not found in config" in stderr.lower():
            hint = " The remote is not in rclone's config: run 'rclone config' (or set RCLONE_CONFIG)."
        return MirrorError(f"mirror {self.m.dest}: rclone failed (exit {rc}) {doing}: {quoted}.{hint} Nothing "
                           f"unverified was recorded; the next mirror resumes")

    def _path(self, rel: str) -> str:
        return f"{self.remote}/{rel}" if not self.remote.endswith(":") else f"{self.remote}{rel}"

    def _list_file(self, names: Sequence[str]) -> Path:
        fd, name = tempfile.mkstemp(prefix="mirror-", suffix=".list", dir=self.work_dir)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(n + "\n" for n in names))
        return Path(name)

    def _common(self) -> List[str]:
        flags = ["--retries", "2", "--low-level-retries", "3", "-q"]
        if self.m.bwlimit:
            flags += ["--bwlimit", self.m.bwlimit]
        return flags

    # -- the interface -------------------------------------------------------------------------------
    def check(self) -> None:
        self._run(["mkdir", *self._common(), self.remote], "reaching the remote (rclone mkdir)")

    def _sizes(self, names: Sequence[str], cancel: Optional[threading.Event] = None) -> Dict[str, int]:
        """Sizes of those of ``names`` (paths under the root) that exist at the remote."""
        if not names:
            return {}
        listing = self._list_file(names)
        try:
            _, out, _ = self._run(["lsjson", "-R", "--files-only", "--no-mimetype", "--files-from-raw", str(listing),
                                   *self._common(), self.remote], "listing the destination (rclone lsjson)", cancel)
        finally:
            listing.unlink()
        try:
            entries = json.loads(out or "[]")
        except ValueError:
            raise MirrorError(f"mirror {self.m.dest}: rclone lsjson gave output that is not JSON") from None
        return {e["Path"]: int(e.get("Size", -1)) for e in entries if not e.get("IsDir")}

    def _sha256(self, names: Sequence[str], cancel: Optional[threading.Event] = None) -> Dict[str, str]:
        """SHA-256 of those of ``names`` that exist, read back by the remote (or downloaded)."""
        if not names:
            return {}
        listing = self._list_file(names)
        try:
            args = ["hashsum", "sha256", "--files-from-raw", str(listing), *self._common()]
            rc, out, err = self._run(args + (["--download"] if self.download else []) + [self.remote],
                                     "reading the copies back (rclone hashsum sha256)", cancel, check=False)
            if not self.download and (rc != 0 and any(u in err.lower() for u in _UNSUPPORTED)
                                      or _blank_hashes(out)):
                self.download = True  # this remote keeps no SHA-256: download and hash (a crypt remote, B2, S3)
                rc, out, err = self._run(args + ["--download", self.remote],
                                         "reading the copies back (rclone hashsum sha256 --download)", cancel,
                                         check=False)
            if rc != 0 and not out.strip():
                if cancel is not None and cancel.is_set():
                    return {}
                raise self._failed(rc, err, "reading the copies back (rclone hashsum)")
        finally:
            listing.unlink()
        found: Dict[str, str] = {}
        for line in out.splitlines():
            sha, _, name = line.partition("  ")
            if len(sha) == 64 and name:
                found[name] = sha
        return found

    pipelined = True
    """The mirror run overlaps this batch's upload with the previous batch's read-back (two rclone
    processes at once: one mostly I/O, one mostly hashing)."""

    def put(self, items: Sequence[Item], cancel: threading.Event) -> Tuple[List[Placed], List[Tuple[Item, str]]]:
        return self.confirm(items, self.send(items, cancel), cancel)

    def send(self, items: Sequence[Item], cancel: threading.Event) -> str:
        """Upload ``items`` (one ``rclone copy`` for the ZIPs and index files, one for the month lists);
        rclone's error, or "" (what arrived is for :meth:`confirm` to say)."""
        fixed = [i for i in items if not i.replaceable]
        rewritten = [i for i in items if i.replaceable]
        copy_error = ""
        # --immutable: a file already there that differs is refused, never replaced. With verify =
        # "sha256" our read-back replaces rclone's own MD5 check of the transfer (--ignore-checksum).
        verify_self = ["--ignore-checksum"] if self.m.verify == "sha256" else []
        for group, extra in ((fixed, ["--immutable"]), (rewritten, [])):
            if not group or cancel.is_set():
                continue
            listing = self._list_file([i.rel for i in group])
            try:
                rc, _, err = self._run(["copy", "--files-from-raw", str(listing), "--checksum", "--no-traverse",
                                        *extra, *verify_self, *self._common(), str(self.root), self.remote],
                                       "copying", cancel, check=False)
                if rc != 0 and not cancel.is_set():
                    copy_error = str(self._failed(rc, err, "copying"))
            finally:
                listing.unlink()
        return copy_error

    def confirm(self, items: Sequence[Item], copy_error: str,
                cancel: threading.Event) -> Tuple[List[Placed], List[Tuple[Item, str]]]:
        """Read the batch back in bulk; what is not there equal is looked at once more: an upload cut short
        by a kill (smaller, never recorded) is moved aside and sent again, another file under the name
        (nothing is ever replaced) gets the ZIP beside it."""
        stored = {i.rel: i.rel for i in items}
        placed, bad = self._check(items, stored, cancel)
        if not bad or cancel.is_set():
            return self._result(placed, bad, stored, copy_error)
        there = self._sizes([i.rel for i in bad], cancel)
        again: List[Item] = []
        conflicts = set()
        for item in bad:
            size = there.get(item.rel)
            if item.replaceable or size is None:
                again.append(item)
            elif size < item.size:
                # An upload cut short (rclone killed): never recorded, so never a copy; kept aside, not deleted.
                folder, _, name = item.rel.rpartition("/")
                hidden = f"{folder}/.{name}.{int(time.time())}.partial" if folder else f".{name}.{int(time.time())}.partial"
                self._run(["moveto", *self._common(), self._path(item.rel), self._path(hidden)],
                          f"moving the cut-short upload {item.rel} aside", cancel)
                again.append(item)
            else:
                stored[item.rel] = conflict_name(item.rel, item.sha256)
                conflicts.add(item.rel)
                self._run(["copyto", "--immutable", *self._common(), str(item.src), self._path(stored[item.rel])],
                          f"storing {item.rel} beside the other file under its name", cancel, check=False)
        if again and not cancel.is_set():
            copy_error = self.send(again, cancel) or copy_error
        more, still = self._check(bad, stored, cancel)
        placed += [Placed(p.item, p.stored_as, p.sha256, p.item.rel in conflicts) for p in more]
        return self._result(placed, still, stored, copy_error)

    def _check(self, items: Sequence[Item], stored: Dict[str, str],
               cancel: threading.Event) -> Tuple[List[Placed], List[Item]]:
        """(the items read back equal, the others): one ``hashsum sha256`` (the hash proves the size), or
        one ``lsjson`` with ``verify = "size"``."""
        names = [stored[i.rel] for i in items]
        if self.m.verify == "sha256":
            hashes = self._sha256(names, cancel)
            good = [i for i in items if hashes.get(stored[i.rel]) and (hashes[stored[i.rel]] == i.sha256 or not i.sha256)]
            placed = [Placed(i, stored[i.rel], hashes[stored[i.rel]]) for i in good]
        else:
            sizes = self._sizes(names, cancel)
            good = [i for i in items if sizes.get(stored[i.rel]) == i.size]
            placed = [Placed(i, stored[i.rel], i.sha256) for i in good]
        ok = {i.rel for i in good}
        return placed, [i for i in items if i.rel not in ok]

    def _result(self, placed: List[Placed], bad: Sequence[Item], stored: Dict[str, str], copy_error: str):
        """(placed, failed with why); raises when nothing of the batch arrived and rclone said why."""
        failed = [(i, copy_error or f"{stored[i.rel]} at {self.m.dest} is missing or differs after the copy")
                  for i in bad]
        if copy_error and not placed and failed:
            raise MirrorError(copy_error)
        return placed, failed

    def hashes(self, stored: Sequence[str]) -> Dict[str, Optional[Tuple[int, str]]]:
        sizes = self._sizes(stored)
        hashes = self._sha256([n for n in stored if n in sizes]) if self.m.verify == "sha256" else {}
        return {n: ((sizes[n], hashes.get(n, "")) if n in sizes else None) for n in stored}

    def fetch(self, stored_as: str, local: Path) -> None:
        self._run(["copyto", *self._common(), self._path(stored_as), str(local)], f"fetching {stored_as}")


def _blank_hashes(out: str) -> bool:
    """rclone prints an empty or all-blank hash for each file when the remote cannot give one."""
    lines = [ln for ln in out.splitlines() if ln.strip()]
    return bool(lines) and all(len(ln.partition("  ")[0].strip()) != 64 for ln in lines)
