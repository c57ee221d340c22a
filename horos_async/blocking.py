"""The one crossing point from the event loop into threads (aiosqlite's pattern: one ``_execute``).

Blocking work (a ZIP build or open, an ``fsync``, a directory walk, a DICOM header read, a ``stat``
of a study's files) must never run on the event loop: the loop drives every job's progress, the
live status and the signal handlers, and one slow USB disk would stall them all. Every module that
has blocking work to do awaits it through an :class:`Offload`; nothing else in ``horos_async`` calls
``run_in_executor`` (``tests/test_blocking.py`` checks it).

The engine binds one to its own pool, sized by the ``concurrency`` knob; everyone else uses
:data:`offload`, bound to the loop's default executor. Work that may never return (reading sources
that can sit on a stuck network volume) goes through :meth:`Offload.detached` instead: a thread of its
own that the awaiting job may give up on, and that never keeps the process from exiting
(docs/design/durability.md §7).
"""

from __future__ import annotations

import asyncio
import functools
import threading
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

    def detached(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> "asyncio.Future[T]":
        """Run ``fn`` in a new daemon thread; the future gets its result or exception.

        A pool thread blocked in a read would hold a worker for ever, and the interpreter joins pool
        threads at exit, so a stop would wait on it. Cancelling this future abandons the thread: its
        late result is dropped, and the process exits without waiting for it.
        """
        loop = asyncio.get_running_loop()
        future: "asyncio.Future[T]" = loop.create_future()

        def target() -> None:
            try:
                result, error = fn(*args, **kwargs), None
            except BaseException as exc:  # handed to the awaiting coroutine, as run_in_executor does
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the loop is closed: the run ended without waiting for this thread
                pass

        threading.Thread(target=target, name=f"detached-{getattr(fn, '__name__', 'work')}", daemon=True).start()
        return future


def _settle(future: "asyncio.Future", result: Any, error: Optional[BaseException]) -> None:
    if future.done():  # abandoned (cancelled) meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


offload = Offload()
"""The seam bound to the loop's default executor (planner, reconcile, ledger, operator commands)."""
