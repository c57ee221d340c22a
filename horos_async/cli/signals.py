"""The one signal helper every long command uses (``run``, ``verify``, and any later long command).

SIGTERM (launchd stopping the job) and SIGINT (Ctrl-C) ask the work to stop cleanly. A signal that
arrives before the event loop runs is remembered and honoured as soon as it does. A command stopped by a
signal exits 130 (README "Exit codes") whatever its work returned, so a stopped command never looks like
a finished one.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Awaitable, Callable, List, Tuple, TypeVar

from horos_async.errors import EXIT_INTERRUPTED

T = TypeVar("T")
SIGNALS = (signal.SIGTERM, signal.SIGINT)


def run_stoppable(make: Callable[[], Tuple[Callable[[], Awaitable[T]], Callable[[], None]]]) -> Tuple[T, bool]:
    """Run ``work()`` on a new event loop with SIGTERM/SIGINT wired to ``stop()``.

    ``make`` builds the pair after the early handlers are in place (building may take a moment: a signal
    then is not lost). Returns the work's result and whether a stop signal arrived.
    """
    early: List[int] = []
    for sig in SIGNALS:
        signal.signal(sig, lambda signum, _frame: early.append(signum))
    work, stop = make()

    def on_signal() -> None:
        early.append(0)
        stop()

    async def go():
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.add_signal_handler(sig, on_signal)
        if early:
            stop()
        return await work()

    result = asyncio.run(go())
    return result, bool(early)


def stopped_code(code: int, stopped: bool) -> int:
    """The exit code of a command that ``stopped`` on a signal: 130 unless it already failed harder."""
    if stopped and code in (0, EXIT_INTERRUPTED):
        return EXIT_INTERRUPTED
    return code
