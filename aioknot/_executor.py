"""``Executor``: a ``concurrent.futures.Executor`` over a knot's backend and store.

Code written for any executor (``executor.submit(fn, x)``, ``executor.map(fn, xs)``,
``as_completed``, ``wait``) runs locally or on Batch unchanged. Each call travels as one input
``(fn, args, kwargs)`` of a knot whose function applies it; calls submitted close together
(within ``batch_seconds``) go to the backend together as one run, so 10,000 ``submit`` calls
are a handful of runs, not 10,000 jobs.

Futures follow the standard library's rules: a future is cancellable until its batch is sent;
``result()`` raises the function's own exception (the original, when it could be unpickled
here; else the ``TaskError``), or ``TaskLost`` when the task died; ``shutdown(wait=True,
cancel_futures=False)`` stops taking calls, optionally cancels those not yet sent, waits, and
closes the knot.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from ._exceptions import TaskError, TaskFailure
from ._pickling import pickle_function
from ._sync import Knot

if TYPE_CHECKING:
    from ._backends.base import Backend

P = ParamSpec("P")
T = TypeVar("T")

# Calls submitted within this long of the first waiting one go to the backend together.
DEFAULT_BATCH_SECONDS = 0.02
# A call as it travels: the function pickled as a knot's function is (local modules of the
# user's project by value), its positional and its keyword arguments.
Call = tuple[bytes, tuple[Any, ...], dict[str, Any]]


def _make_applier() -> Callable[[Call], Any]:
    # Made in a function so cloudpickle ships it by value: the worker (a Batch image holds
    # only the function's requirements) needs no aioknot to run it.
    def apply(call: Call) -> Any:
        import pickle

        function, args, kwargs = call
        return pickle.loads(function)(*args, **kwargs)

    return apply


_APPLY = _make_applier()


class Executor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` whose calls run on a knot's backend.

    >>> with aioknot.Executor(backend="local") as executor:
    ...     print(list(executor.map(pow, [2, 3], [5, 2])))
    [32, 9]

    ``options`` are a knot's (``workers=``, ``bucket=``, the AWS options...).
    """

    def __init__(
        self,
        *,
        name: str = "executor",
        backend: str | Backend | None = None,
        batch_seconds: float = DEFAULT_BATCH_SECONDS,
        **options: Any,
    ) -> None:
        self._knot = Knot(_APPLY, name=name, backend=backend, **options)
        self._batch_seconds = batch_seconds
        self._lock = threading.Lock()
        self._waiting: list[tuple[concurrent.futures.Future[Any], Call]] = []
        self._flush_scheduled = False
        self._sent: list[concurrent.futures.Future[None]] = []
        self._shutdown = False
        self._pickled: dict[Callable[..., Any], bytes] = {}  # each function pickled once

    @property
    def knot(self) -> Knot[Any]:
        """The knot the calls run on (``knot.view_jobs()``, ``knot.clobber()``...)."""
        return self._knot

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            try:
                function = self._pickled[fn]
            except (KeyError, TypeError):  # TypeError: an unhashable callable
                function = pickle_function(fn).data
                with contextlib.suppress(TypeError):
                    self._pickled[fn] = function
            self._waiting.append((future, (function, args, dict(kwargs))))
            schedule = not self._flush_scheduled
            self._flush_scheduled = True
        if schedule:
            timer = threading.Timer(self._batch_seconds, self._flush)
            timer.daemon = True
            timer.start()
        return future

    def _flush(self) -> None:
        """Send every call still waiting (and not cancelled) as one run."""
        with self._lock:
            waiting, self._waiting = self._waiting, []
            self._flush_scheduled = False
        batch = [(f, call) for f, call in waiting if f.set_running_or_notify_cancel()]
        if not batch:
            return
        futures = [future for future, _ in batch]
        try:
            run = self._knot._map_each(
                [call for _, call in batch], lambda index, value: _settle(futures[index], value)
            )
        except Exception as error:  # the knot is closed, say: every call of the batch fails
            for future in futures:
                future.set_exception(error)
            return
        with self._lock:
            # Only runs still going are kept: a long-lived executor sends many batches.
            self._sent = [sent for sent in self._sent if not sent.done()] + [run]
        run.add_done_callback(lambda done: _settle_the_rest(futures, done))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                for future, _ in self._waiting:
                    future.cancel()
        self._flush()  # what is left goes now, not after the timer
        if wait:
            self._close_when_done()
        else:
            threading.Thread(target=self._close_when_done, daemon=True).start()

    def _close_when_done(self) -> None:
        """Wait for every run sent, then close the knot (its loop and workers)."""
        with self._lock:
            sent = list(self._sent)
        concurrent.futures.wait(sent)
        self._knot.close()


def _settle(future: concurrent.futures.Future[Any], value: Any) -> None:
    """Hand one call's value or error to its future, as the run yields it."""
    if isinstance(value, TaskError):
        # The function's own exception, as a process pool would raise it.
        future.set_exception(value.exception if value.exception is not None else value)
    elif isinstance(value, TaskFailure):
        future.set_exception(value)  # TaskLost: the task died without a result
    else:
        future.set_result(value)


def _settle_the_rest(
    futures: list[concurrent.futures.Future[Any]], run: concurrent.futures.Future[None]
) -> None:
    """The run ended: a future it left unsettled (the knot closed, the store failed) fails."""
    error = None if run.cancelled() else run.exception()
    for future in futures:
        if future.done():
            continue
        future.set_exception(
            error or concurrent.futures.CancelledError("the executor's knot was closed")
        )
