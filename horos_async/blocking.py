"""The one crossing point from the event loop into threads (aiosqlite's pattern: one ``_execute``).

Blocking work (a ZIP build or open, an ``fsync``, a directory walk, a DICOM header read, a ``stat``
of a study's files) must never run on the event loop: the loop drives every job's progress, the
live status and the signal handlers, and one slow USB disk would stall them all. Every module that
has blocking work to do awaits it through an :class:`Offload`; nothing else in ``horos_async`` calls
``run_in_executor`` (``tests/test_blocking.py`` checks it).

The engine binds one to its own pool, sized by the ``concurrency`` knob; everyone else uses
:data:`offload`, bound to the loop's default executor.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import Executor
from typing import Any, Callable, Optional, TypeVar

T = TypeVar("T")


class Offload:
    """``await offload(fn, *args, **kwargs)`` runs ``fn`` in one executor and returns its result."""

    def __init__(self, executor: Optional[Executor] = None) -> None:
        self.executor = executor
        """The thread pool the work runs in; None: the running loop's default executor."""

    def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> "asyncio.Future[T]":
        return asyncio.get_running_loop().run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))


offload = Offload()
"""The seam bound to the loop's default executor (planner, reconcile, ledger, operator commands)."""
