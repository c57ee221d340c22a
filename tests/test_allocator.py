"""allocator.tune: 1 MiB buffers in a worker thread stop being faulted in afresh (glibc only)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from horos_async import allocator

CHURN = textwrap.dedent("""
    import resource, sys, threading
    from horos_async import allocator
    if sys.argv[1] == "tuned":
        assert allocator.tune()

    def work():
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        for _ in range(200):  # a ZIP job's pattern: read buffer, compressed output, inflated chunk
            a = bytes(1 << 20); b = bytes(1 << 20); c = bytes(1 << 20)
            del a, b, c
        print(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)

    t = threading.Thread(target=work)
    t.start()
    t.join()
""")

glibc_only = pytest.mark.skipif(allocator._glibc_mallopt() is None, reason="needs glibc")


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@glibc_only
def test_tuned_heaps_keep_their_pages():
    # 200 x 3 MiB is ~150,000 page faults when every buffer is fresh (glibc's default here)
    assert faults("tuned") < 5_000


def test_does_nothing_off_linux(monkeypatch):
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator._glibc_mallopt() is None
    monkeypatch.setattr(allocator, "_done", None)
    assert allocator.tune() is False
