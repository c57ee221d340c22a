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
            _, out, _ = self._run(["lsjson", "-R", "--files-only", "--files-from-raw", str(listing), *self._common(),
                                   self.remote], "listing the destination (rclone lsjson)", cancel)
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

    def put(self, items: Sequence[Item], cancel: threading.Event) -> Tuple[List[Placed], List[Tuple[Item, str]]]:
        fixed = [i for i in items if not i.replaceable]
        rewritten = [i for i in items if i.replaceable]
        stored: Dict[str, str] = {i.rel: i.rel for i in items}
        conflicts: List[Item] = []
        there = self._sizes([i.rel for i in fixed], cancel)
        for item in fixed:
            size = there.get(item.rel)
            if size is None or size == item.size:
                continue  # not there, or perhaps this very file (the read-back decides)
            if size < item.size:
                # An upload cut short (rclone killed): never recorded, so never a copy; kept aside, not deleted.
                aside = item.rel.rpartition("/")
                hidden = f"{aside[0]}/.{aside[2]}.{int(time.time())}.partial" if aside[0] else f".{item.rel}.partial"
                self._run(["moveto", *self._common(), self._path(item.rel), self._path(hidden)],
                          f"moving the cut-short upload {item.rel} aside", cancel)
            else:
                conflicts.append(item)
                stored[item.rel] = conflict_name(item.rel, item.sha256)
        copy_error = ""
        plain = [i for i in fixed if i not in conflicts]
        for group, extra in ((plain, ["--immutable"]), (rewritten, [])):
            if not group or cancel.is_set():
                continue
            listing = self._list_file([i.rel for i in group])
            try:
                verify_self = ["--ignore-checksum"] if self.m.verify == "sha256" else []  # we hash it back below
                rc, _, err = self._run(["copy", "--files-from-raw", str(listing), "--checksum", "--no-traverse",
                                        *extra, *verify_self, *self._common(), str(self.root),
                                        self.remote], "copying", cancel, check=False)
                if rc != 0 and not cancel.is_set():
                    copy_error = str(self._failed(rc, err, "copying"))
            finally:
                listing.unlink()
        for item in conflicts:
            if cancel.is_set():
                break
            self._run(["copyto", "--immutable", *self._common(), str(item.src), self._path(stored[item.rel])],
                      f"storing {item.rel} beside the other file under its name", cancel, check=False)
        return self._verified(items, stored, {i.rel for i in conflicts}, copy_error, cancel)

    def _verified(self, items: Sequence[Item], stored: Dict[str, str], conflicts, copy_error: str,
                  cancel: threading.Event) -> Tuple[List[Placed], List[Tuple[Item, str]]]:
        names = [stored[i.rel] for i in items]
        sizes = self._sizes(names, cancel)
        hashes = self._sha256([n for n in names if n in sizes], cancel) if self.m.verify == "sha256" else {}
        placed: List[Placed] = []
        failed: List[Tuple[Item, str]] = []
        for item in items:
            name = stored[item.rel]
            size, sha = sizes.get(name), hashes.get(name, "")
            good = size == item.size and (self.m.verify == "size" or (sha and (sha == item.sha256 or not item.sha256)))
            if good:
                placed.append(Placed(item, name, sha or item.sha256, item.rel in conflicts))
            elif not cancel.is_set():
                why = copy_error or (f"{name} at {self.m.dest} is missing after the copy" if size is None else
                                     f"{name} at {self.m.dest} reads back as {size} bytes, SHA-256 {sha[:12] or '?'}"
                                     f"..., not {item.size} bytes, {item.sha256[:12]}...")
                failed.append((item, why))
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
