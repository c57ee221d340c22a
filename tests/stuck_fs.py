"""A real filesystem whose reads never return: a stuck network volume, for the no-hang tests.

A tiny FUSE server speaking the kernel protocol on ``/dev/fuse`` directly (no libfuse on this machine):
it serves a flat folder of files, answers every lookup, ``stat`` and ``open`` at once, and answers
``read`` only while ``stuck`` is False. A process reading one of its files once ``stuck`` is set blocks
in the kernel as on an NFS or SMB share whose server went away; a signal to the reader (its process
exiting) fails that read with EINTR, as a soft- or intr-mounted share does. Unmounting aborts the
connection and frees every blocked reader. Needs root and ``/dev/fuse``; the
fixture skips otherwise.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict

# Opcodes and structures of include/uapi/linux/fuse.h (protocol 7.22 replies: the kernel accepts them).
LOOKUP, FORGET, GETATTR, OPEN, READ, STATFS, RELEASE, FLUSH, INIT = 1, 2, 3, 14, 15, 17, 18, 25, 26
OPENDIR, READDIR, RELEASEDIR, INTERRUPT, DESTROY, BATCH_FORGET = 27, 28, 29, 36, 38, 42
IN_HEADER = struct.Struct("<IIQQIIII")  # len, opcode, unique, nodeid, uid, gid, pid, padding
OUT_HEADER = struct.Struct("<IiQ")  # len, error, unique
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # ino size blocks atime mtime ctime *nsec(3) mode nlink uid gid rdev blksize pad
FOPEN_DIRECT_IO = 1  # no page cache: every read goes to the server


class StuckFS:
    """Serve ``files`` (name -> bytes) at ``mountpoint``; set ``stuck`` to make reads hang."""

    def __init__(self, mountpoint: Path, files: Dict[str, bytes]) -> None:
        self.mountpoint = Path(mountpoint)
        self.names = list(files)
        self.data = [files[n] for n in self.names]
        self.stuck = False
        self.reads_held = 0  # read requests left unanswered
        self.fd = -1
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def mount(self) -> "StuckFS":
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.fd = os.open("/dev/fuse", os.O_RDWR)
        libc = ctypes.CDLL(None, use_errno=True)
        opts = f"fd={self.fd},rootmode=40755,user_id=0,group_id=0,allow_other".encode()
        if libc.mount(b"stuckfs", str(self.mountpoint).encode(), b"fuse", 0, opts) != 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(err, os.strerror(err), str(self.mountpoint))
        self.thread.start()
        return self

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True)
        try:
            with open(f"/sys/fs/fuse/connections/{os.stat(self.mountpoint).st_dev & 0xff}/abort", "w") as f:
                f.write("1")
        except OSError:
            pass
        if self.fd >= 0:
            os.close(self.fd)  # aborts the connection: blocked readers get ENOTCONN
            self.fd = -1

    # -- protocol ----------------------------------------------------------------------------------
    def _attr(self, node: int) -> bytes:
        now = int(time.time())
        if node == 1:
            return ATTR.pack(1, 0, 0, now, now, now, 0, 0, 0, 0o40755, 2, 0, 0, 0, 4096, 0)
        size = len(self.data[node - 2])
        return ATTR.pack(node, size, (size + 511) // 512, now, now, now, 0, 0, 0, 0o100644, 1, 0, 0, 0, 4096, 0)

    def _reply(self, unique: int, payload: bytes = b"", error: int = 0) -> None:
        try:
            os.write(self.fd, OUT_HEADER.pack(OUT_HEADER.size + len(payload), -error, unique) + payload)
        except OSError:
            pass  # the request was interrupted meanwhile, or the connection is gone

    def _serve(self) -> None:
        while True:
            try:
                buf = os.read(self.fd, 1 << 20)
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.EAGAIN):
                    continue
                return  # ENODEV: unmounted
            _len, op, unique, node, *_ = IN_HEADER.unpack_from(buf)
            body = buf[IN_HEADER.size:]
            if op == INIT:
                major, minor, readahead, flags = struct.unpack_from("<IIII", body)
                self._reply(unique, struct.pack("<IIIIHHI", 7, 22, readahead, 0, 16, 12, 1 << 17))
            elif op == LOOKUP:
                name = body.split(b"\0", 1)[0].decode()
                if node != 1 or name not in self.names:
                    self._reply(unique, error=errno.ENOENT)
                    continue
                child = self.names.index(name) + 2
                self._reply(unique, struct.pack("<QQQQII", child, 0, 1, 1, 0, 0) + self._attr(child))
            elif op == GETATTR:
                self._reply(unique, struct.pack("<QII", 1, 0, 0) + self._attr(node))
            elif op in (OPEN, OPENDIR):
                self._reply(unique, struct.pack("<QII", 0, FOPEN_DIRECT_IO if op == OPEN else 0, 0))
            elif op == READ:
                if self.stuck:
                    self.reads_held += 1  # never answered: the reader waits, as on a dead server
                    continue
                _fh, offset, size = struct.unpack_from("<QQI", body)
                self._reply(unique, self.data[node - 2][offset:offset + size])
            elif op in (RELEASE, RELEASEDIR, FLUSH):
                self._reply(unique)
            elif op == STATFS:
                self._reply(unique, struct.pack("<QQQQQIIII", 1000, 1000, 1000, 10, 10, 4096, 255, 4096, 0)
                            + b"\0" * 24)
            elif op == INTERRUPT:
                # The reader got a signal (a kill, the process exiting): the held read fails with EINTR,
                # as an NFS/SMB client mounted soft or intr does. Without this no process could ever
                # leave such a read, and no test could end.
                self._reply(struct.unpack_from("<Q", body)[0], error=errno.EINTR)
            elif op in (FORGET, BATCH_FORGET):
                continue  # no reply expected
            elif op == DESTROY:
                return
            else:
                self._reply(unique, error=errno.ENOSYS)
