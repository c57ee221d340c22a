"""Keep glibc's malloc from handing the ZIP jobs' 1 MiB buffers back to the kernel after every chunk.

Each ZIP job reads, compresses, inflates and checks its files in 1 MiB chunks, in a worker thread.
glibc gives each such thread its own heap and, by default, trims a heap (``MADV_DONTNEED``) as soon
as more than 128 KiB-2 MiB lies free at its top. With two jobs, the planner, aiosqlite and aiofiles
sharing those heaps, that happens after most chunks: every new buffer is then faulted in afresh,
page by page. Measured on the bench library (1.2 GB), a run took a million page faults and a third
of its CPU time in the kernel; with fixed thresholds, ten thousand (``scripts/bench.py``).

:func:`tune` fixes the thresholds with ``mallopt`` (what ``MALLOC_TRIM_THRESHOLD_`` and
``MALLOC_MMAP_THRESHOLD_`` do from the environment): blocks up to 8 MiB come from the heaps, and a
heap keeps up to 32 MiB free before trimming. The memory a job needs stays the same (a few MiB);
only the churn goes. On other C libraries (macOS's allocator caches large blocks by itself) it does
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from typing import Optional

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 32 << 20
MMAP_THRESHOLD = 8 << 20

_done: Optional[bool] = None


def _glibc_mallopt():
    """glibc's ``mallopt``, or None on any other C library."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # only glibc has it (musl has mallopt as a no-op stub)
        fn = libc.mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def tune() -> bool:
    """Fix glibc's trim and mmap thresholds once per process; True when they are set."""
    global _done
    if _done is None:
        mallopt = _glibc_mallopt()
        _done = bool(mallopt and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                     and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
        log.debug("malloc thresholds %s", "fixed (glibc)" if _done else "left as they are (not glibc)")
    return _done
