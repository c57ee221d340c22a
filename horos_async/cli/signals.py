"""The one signal helper every long command uses (``run``, ``verify``, and any later long command).

SIGTERM (launchd stopping the job) and SIGINT (Ctrl-C) ask the work to stop cleanly. A signal that
arrives before the event loop runs is remembered and honoured as soon as it does. A command stopped by a
signal exits 130 (README "Exit codes") whatever its work returned, so a stopped command never looks like
a finished one.

A clean stop can be held up by a thread blocked in the kernel (a read on a stuck network volume, a sync
on a dying disk): ``FORCE_EXIT_SECONDS`` after the first signal the process exits 130 anyway, after one
line on stderr and ``on_force`` (the health record). That is a kill the tool is built to survive: the
run lock is the kernel's and goes with the process, nothing unfinished was recorded done, and the next
run removes the temp files and adopts a ZIP published but not yet recorded (docs/design/durability.md
§4, §7). launchd can always start the next run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from typing import Awaitable, Callable, List, Optional, Tuple, TypeVar

from horos_async.errors import EXIT_INTERRUPTED

T = TypeVar("T")
SIGNALS = (signal.SIGTERM, signal.SIGINT)
FORCE_EXIT_SECONDS = 6.0
"""After a stop signal, how long a clean stop may take before the process exits regardless."""


def run_stoppable(make: Callable[[], Tuple[Callable[[], Awaitable[T]], Callable[[], None]]],
                  on_force: Optional[Callable[[str], None]] = None) -> Tuple[T, bool]:
    """Run ``work()`` on a new event loop with SIGTERM/SIGINT wired to ``stop()``.

    ``make`` builds the pair after the early handlers are in place (building may take a moment: a signal
    then is not lost). Returns the work's result and whether a stop signal arrived. A stop that has not
    ended the work after ``FORCE_EXIT_SECONDS`` ends the process (exit 130), ``on_force(message)`` first.
    """
    early: List[int] = []
    for sig in SIGNALS:
        signal.signal(sig, lambda signum, _frame: early.append(signum))
    work, stop = make()
    timer: List[threading.Timer] = []
    work_over.clear()

    def on_signal() -> None:
        early.append(0)
        if not timer:
            timer.append(_arm_force_exit(on_force))
        stop()

    async def go():
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.add_signal_handler(sig, on_signal)
        if early:
            if not timer:
                timer.append(_arm_force_exit(on_force))
            stop()
        return await work()

    try:
        result = asyncio.run(go())
    finally:
        # The timer stays armed: the interpreter's exit joins worker threads, and one blocked in the
        # kernel would hold the exit too. It then ends the process quietly (the attempt is recorded).
        work_over.set()
    return result, bool(early)


work_over = threading.Event()
"""Set once the stoppable work has returned (the force exit then needs no record of its own)."""


def _arm_force_exit(on_force: Optional[Callable[[str], None]]) -> threading.Timer:
    """Start the daemon timer that ends the process if the clean stop hangs."""

    def force() -> None:
        if work_over.is_set():
            os._exit(EXIT_INTERRUPTED)
        message = (f"interrupted: a clean stop did not finish within {FORCE_EXIT_SECONDS:g}s (a read or write "
                   f"blocked on a stuck volume?); exiting now. Nothing unfinished was recorded; the next run "
                   f"cleans up and resumes")
        try:
            os.write(2, f"horos-backup: {message}\n".encode())
            if on_force is not None:
                on_force(message)
        finally:
            os._exit(EXIT_INTERRUPTED)

    t = threading.Timer(FORCE_EXIT_SECONDS, force)
    t.daemon = True
    t.start()
    return t


def stopped_code(code: int, stopped: bool) -> int:
    """The exit code of a command that ``stopped`` on a signal: 130 unless it already failed harder."""
    if stopped and code in (0, EXIT_INTERRUPTED):
        return EXIT_INTERRUPTED
    return code
