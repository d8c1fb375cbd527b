"""``Knot``: the blocking face of ``AsyncKnot``, for scripts and notebooks (cloudknot's API).

One private event loop runs on a daemon thread (an anyio blocking portal) and owns the
``AsyncKnot``; every method hands a coroutine to it and waits, or, for ``map``, returns the
``concurrent.futures.Future`` of the ordered results at once. Because the loop is not the
caller's, a ``Knot`` works the same from a plain script, from many threads at once and from
inside a running event loop (Jupyter).

What each blocking call does...
* from the knot's own loop thread (e.g. a done-callback calling ``knot.map``): raises
  ``KnotError`` instead of deadlocking;
* after ``os.fork()``: the child gets a fresh loop and a fresh ``AsyncKnot`` on first use (the
  parent's thread and worker processes are the parent's; the child never touches them);
* on Ctrl-C: ``Job.result()`` / ``Future.result()`` wait interruptibly; the run goes on until
  ``knot.close()`` (which cancels it) or ``job.cancel()``;
* on cancellation: ``future.cancel()`` / ``job.cancel()`` cancels the task and its run.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import logging
import os
import threading
import weakref
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sized,
)
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._exceptions import KnotError
from ._knot import AsyncKnot
from ._options import KnotOptionsDict
from ._progress import ProgressBar
from ._run import Run
from ._tasks import task_group

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._backends.base import Backend
    from ._estimate import Estimate, Resources

R = TypeVar("R")  # what the function returns
T = TypeVar("T")  # what a job's result is

logger = logging.getLogger("aioknot")

_LIVE_KNOTS: weakref.WeakSet[Knot[Any]] = weakref.WeakSet()
_LIVE_LOOPS: weakref.WeakSet[_Loop] = weakref.WeakSet()
# After a fork, the parent's loops are kept here, never closed nor collected: closing (or
# collecting) a portal's context manager would wait on a loop thread the child does not have.
_ABANDONED_IN_CHILD: list[object] = []
# How long closing a dropped knot at interpreter exit may take before the exit goes on.
EXIT_CLOSE_SECONDS = 30.0


class _Loop:
    """The private event loop thread of one ``Knot`` and the ``AsyncKnot`` entered on it.

    Kept apart from the ``Knot`` so that a knot dropped without ``close()`` can be closed by
    its finalizer (which must not hold the knot) and at interpreter exit: its thread and its
    worker processes stop, silently.
    """

    def __init__(self, knot: AsyncKnot[Any]) -> None:
        self.knot = knot
        self._lock = threading.Lock()
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = None
        self.portal: BlockingPortal | None = None
        self._knot_cm: AbstractContextManager[AsyncKnot[Any]] | None = None
        self.closing = False
        self._closed = threading.Event()
        self._pid = os.getpid()
        _LIVE_LOOPS.add(self)

    def in_loop_thread(self) -> bool:
        portal = self.portal
        return portal is not None and portal._event_loop_thread_id == threading.get_ident()

    def open(self) -> BlockingPortal:
        """The portal, starting the thread and entering the knot on first use."""
        with self._lock:
            if self.closing:
                raise KnotError(
                    f"knot {self.knot.name!r} is closed: create a new Knot to run again"
                )
            if self.portal is not None:
                return self.portal
            portal_cm = start_blocking_portal()
            portal = portal_cm.__enter__()
            try:
                knot_cm = portal.wrap_async_context_manager(self.knot)
                knot_cm.__enter__()
            except BaseException as error:
                portal_cm.__exit__(type(error), error, error.__traceback__)
                raise
            self._portal_cm, self.portal, self._knot_cm = portal_cm, portal, knot_cm
            return portal

    def close(self, timeout: float | None = None) -> None:
        """Close the knot on its loop, then stop the loop thread. Idempotent; a second caller
        waits for the first (up to ``timeout``)."""
        with self._lock:
            if self.closing:
                first = False
            else:
                first = self.closing = True
                portal_cm, knot_cm = self._portal_cm, self._knot_cm
                self._portal_cm = self.portal = self._knot_cm = None
        if not first:
            self._closed.wait(timeout)
            return
        try:
            if os.getpid() != self._pid:
                return  # a forked child never touches its parent's loop
            if knot_cm is not None:
                knot_cm.__exit__(None, None, None)
        finally:
            try:
                if portal_cm is not None and os.getpid() == self._pid:
                    portal_cm.__exit__(None, None, None)
            finally:
                self._closed.set()

    def close_dropped(self) -> None:
        """The finalizer of a knot that was never closed: close it without a word, off the
        thread that collected it (which may be the loop thread, or hold a lock)."""
        if self.closing or os.getpid() != self._pid:
            return
        threading.Thread(target=self._close_quietly, name="aioknot close", daemon=True).start()

    def _close_quietly(self) -> None:
        try:
            self.close()
        except Exception:  # nobody is left to tell: the knot was dropped
            logger.debug("closing a dropped knot failed", exc_info=True)


@atexit.register
def _close_dropped_loops() -> None:
    """At exit, stop every knot's loop and workers that nobody closed (or is closing)."""
    for loop in list(_LIVE_LOOPS):
        if os.getpid() != loop._pid:
            continue
        try:
            loop.close(timeout=EXIT_CLOSE_SECONDS)
        except Exception:
            logger.debug("closing a knot at exit failed", exc_info=True)


@dataclass
class _Read:
    """The read of `_iterate` under way on the loop, if any: cancelled by its close."""

    scope: anyio.CancelScope | None = None
    over: anyio.Event | None = None


def _iterate(
    portal: BlockingPortal,
    results: AsyncIterator[T],
    loop: _Loop,
    bar: ProgressBar | None = None,
) -> Iterator[T]:
    """``results``, an async iterator on the knot's loop, as a blocking iterator: each item
    is awaited on the loop; breaking out, Ctrl-C or the end closes it there."""
    reading = _Read()

    async def next_result() -> tuple[bool, Any]:
        reading.over = anyio.Event()
        try:
            with anyio.CancelScope() as reading.scope:
                try:
                    return True, await results.__anext__()
                except StopAsyncIteration:
                    return False, None
            return False, None  # cancelled by close()
        finally:
            reading.over.set()

    async def close() -> None:
        # Ctrl-C comes while a read still waits on the loop: it is cancelled, and has ended,
        # before the iterator is closed (closing a generator that runs is refused, which left
        # imap's run running).
        if reading.scope is not None and reading.over is not None:
            reading.scope.cancel()
            await reading.over.wait()
        aclose = getattr(results, "aclose", None)
        if aclose is not None:
            await aclose()

    try:
        while True:
            more, value = portal.start_task_soon(next_result).result()
            if not more:
                return
            if bar is not None:
                bar.add(value)
            yield value
    finally:
        if bar is not None:
            bar.close()
        # Breaking out, Ctrl-C, or the end: closed (imap's run is cancelled; a no-op once over).
        if not loop.closing:
            with contextlib.suppress(Exception):
                portal.call(close)


class Job(Generic[T]):
    """One ``knot.map`` call: ``.done``, ``.result(timeout=None)``, ``.status``, ``.cancel()``."""

    def __init__(
        self,
        name: str,
        future: concurrent.futures.Future[T],
        runs: list[Run[Any]],
        portal: BlockingPortal | None = None,
        loop: _Loop | None = None,
    ) -> None:
        self.name = name
        self.future = future
        self._runs = runs  # holds the run once every input is submitted
        self._portal = portal
        self._loop = loop

    @property
    def run(self) -> Run[Any] | None:
        return self._runs[0] if self._runs else None

    @property
    def id(self) -> str:
        return self.run.id if self.run is not None else "(submitting)"

    @property
    def done(self) -> bool:
        return self.future.done()

    def result(self, timeout: float | None = None) -> T:
        """The results in input order (the value, for a ``submit``); raises the first
        failure, or ``TimeoutError``."""
        return self.future.result(timeout)

    def cancel(self) -> bool:
        """Cancel the job and its run (its tasks stop; unfinished inputs become TaskLost)."""
        return self.future.cancel()

    @overload
    def logs(self, index: int, *, follow: Literal[False] = False) -> list[str]: ...

    @overload
    def logs(self, index: int, *, follow: Literal[True]) -> Iterator[str]: ...

    @overload
    def logs(self, index: int, *, follow: bool) -> list[str] | Iterator[str]: ...

    def logs(self, index: int, *, follow: bool = False) -> list[str] | Iterator[str]:
        """The log lines of the task that runs input ``index`` (see ``Run.logs``); with
        ``follow=True``, a blocking iterator of its lines as they are written, ending once
        the input has an outcome (breaking out of it stops following; the run goes on)."""
        run = self.run
        if run is None or self._portal is None or self._loop is None:
            raise KnotError(f"job {self.id} has no run yet: its inputs are still being stored")
        if follow:
            # Made on the loop: a wrong index raises here, in the caller's thread.
            lines: AsyncIterator[str] = self._portal.call(lambda: run.logs(index, follow=True))
            return _iterate(self._portal, lines, self._loop)
        written: list[str] = self._portal.call(run.logs, index)
        return written

    @property
    def status(self) -> str:
        if self.future.cancelled():
            return "cancelled"
        if self.future.done():
            return "failed" if self.future.exception() is not None else "succeeded"
        return "running" if self.run is not None else "submitting"

    @property
    def progress(self) -> tuple[int, int]:
        """``(finished, total)`` inputs so far."""
        return (self.run.finished, len(self.run)) if self.run is not None else (0, 0)

    def __repr__(self) -> str:
        finished, total = self.progress
        return f"<Job {self.id} {self.status} {finished}/{total}>"


class Knot(Generic[R]):
    """Run ``func`` over many inputs, blocking: ``knot.map(xs)`` returns a ``Future``.

    >>> knot = Knot(f, name="squares", backend="local")
    >>> future = knot.map(range(100))
    >>> future.result()[:3]
    [0, 1, 4]
    >>> knot.close()
    """

    def __init__(
        self,
        func: Callable[..., R],
        *,
        name: str | None = None,
        backend: str | Backend | None = None,
        **options: Unpack[KnotOptionsDict],
    ) -> None:
        # Built here so that a bad name, option or function fails in the caller's thread.
        self._arguments = (func, name, backend, options)
        self._async = AsyncKnot(func, name=name, backend=backend, **options)
        self.name = self._async.name
        self.jobs: list[Job[Any]] = []
        self._loop = _Loop(self._async)
        # A knot dropped without close() stops its thread and workers when it is collected.
        self._finalizer = weakref.finalize(self, self._loop.close_dropped)
        self._finalizer.atexit = False  # at exit, _close_dropped_loops closes it, blocking
        _LIVE_KNOTS.add(self)

    def __repr__(self) -> str:
        state = "closed" if self._loop.closing else "open"
        chosen = f" resources=({self.resources})" if self.resources is not None else ""
        return f"<Knot {self.name!r} backend={self._async.backend!r}{chosen} {state}>"

    @property
    def backend(self) -> str:
        return self._async.backend

    @property
    def resources(self) -> Resources | None:
        """What ``resources="auto"`` chose (see ``AsyncKnot.resources``)."""
        return self._async.resources

    # -- the private loop ----------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        """The parent's loop thread does not exist here: start over on first use."""
        func, name, backend, options = self._arguments
        self._finalizer.detach()
        _ABANDONED_IN_CHILD.append(self._loop)
        _LIVE_LOOPS.discard(self._loop)
        self._async = AsyncKnot(func, name=name, backend=backend, **options)
        self._loop = _Loop(self._async)
        self._finalizer = weakref.finalize(self, self._loop.close_dropped)
        self._finalizer.atexit = False
        self.jobs = []

    def _open(self) -> BlockingPortal:
        if self._loop.in_loop_thread():
            raise KnotError(
                f"knot {self.name!r} was called from its own event loop thread (from a "
                "done-callback, say), where waiting would deadlock: use AsyncKnot "
                "there, or call the Knot from another thread"
            )
        return self._loop.open()

    # -- the API -------------------------------------------------------------------------

    def map(
        self,
        inputs: Iterable[Any],
        *,
        starmap: bool = False,
        return_exceptions: bool = False,
        kwargs: Mapping[str, Any] | None = None,
        progress: bool = False,
    ) -> concurrent.futures.Future[list[R]]:
        """Submit ``func`` over ``inputs``; returns a ``Future`` of the results in input order.

        A failed input makes the future raise its ``TaskError`` / ``TaskLost``, unless
        ``return_exceptions`` (then it stands in the list in place of the value). ``kwargs``
        are keyword arguments given to every call. ``progress=True`` shows a tqdm bar (a
        widget in a notebook) with the done, failed and lost counts. Cancelling the future
        cancels the run.
        """

        async def start() -> Run[R]:
            return await self._async.map(
                inputs, starmap=starmap, return_exceptions=return_exceptions, kwargs=kwargs
            )

        async def gather(run: Run[R]) -> list[R]:
            if not progress:
                return await run.gather()
            bar = ProgressBar(f"{self.name} {run.id}", total=len(run))

            async def show() -> None:
                with contextlib.suppress(Exception):  # the run's failure is gather's to raise
                    async for counts in run.progress():
                        bar.show(counts)

            try:
                async with task_group() as group:
                    group.start_soon(show)
                    results = await run.gather()
                    bar.show(await run.status())
                    group.cancel_scope.cancel()
                return results
            finally:
                bar.close()

        return self._start_job("map", start, gather)

    def _start_job(
        self,
        what: str,
        start: Callable[[], Awaitable[Run[Any]]],
        finish: Callable[[Run[Any]], Awaitable[T]],
    ) -> concurrent.futures.Future[T]:
        """Start a run on the knot's loop and ``finish`` it there; a ``Job`` tracks it.

        The run is cancelled when the job ends: a cancelled future, a failure raised, or the
        loop stopping. ``start`` refers to ``self`` (it calls the knot), on purpose: a running
        job keeps its knot, and so its loop and workers, alive, so that
        ``Knot(f).map(xs).result()`` works with the knot dropped.
        """
        portal = self._open()
        runs: list[Run[Any]] = []  # the task may start before the Job exists: hand the run over

        async def job() -> T:
            run = await start()
            runs.append(run)
            try:
                return await finish(run)
            finally:
                await run.cancel()

        future = portal.start_task_soon(job, name=f"aioknot {what} of {self.name}")
        self.jobs.append(Job(self.name, future, runs, portal, self._loop))
        return future

    def _map_each(
        self, inputs: Iterable[Any], on_result: Callable[[int, Any], None]
    ) -> concurrent.futures.Future[None]:
        """A map whose every ``(index, value or TaskFailure)`` is handed to ``on_result`` as
        it completes, on the knot's thread (for ``Executor``: each future settles at once).
        Cancelling the returned future cancels the run."""

        async def start() -> Run[Any]:
            return await self._async.map(inputs, return_exceptions=True)

        async def each(run: Run[Any]) -> None:
            async for index, value in run.items():
                on_result(index, value)

        return self._start_job("calls", start, each)

    def imap(
        self,
        inputs: Iterable[Any],
        *,
        starmap: bool = False,
        ordered: bool = False,
        return_exceptions: bool = False,
        kwargs: Mapping[str, Any] | None = None,
        progress: bool = False,
    ) -> Iterator[R]:
        """Results as they complete (or in input order with ``ordered``), blocking.

        The run belongs to the iteration, as with ``AsyncKnot.amap``: breaking out of the
        loop (or an exception in it) cancels the run and stops its tasks. ``progress=True``
        shows a tqdm bar of the results yielded so far.
        """
        portal = self._open()
        results = self._async.amap(
            inputs,
            starmap=starmap,
            ordered=ordered,
            return_exceptions=return_exceptions,
            kwargs=kwargs,
        )
        total = len(inputs) if isinstance(inputs, Sized) else None
        bar = ProgressBar(self.name, total=total) if progress else None
        return _iterate(portal, results, self._loop, bar)

    def submit(self, *args: Any, **kwargs: Any) -> concurrent.futures.Future[R]:
        """One call ``func(*args, **kwargs)`` on the backend; a ``Future`` of its value."""

        async def start() -> Run[R]:
            return await self._async.map([args], starmap=True, kwargs=kwargs)

        async def value(run: Run[R]) -> R:
            (only,) = await run.gather()
            return only

        return self._start_job("call", start, value)

    def estimate(
        self,
        sample_inputs: Iterable[Any],
        *,
        trials: int = 3,
        starmap: bool = False,
        kwargs: Mapping[str, Any] | None = None,
    ) -> Estimate:
        """Measure the function on ``sample_inputs``, blocking (see ``AsyncKnot.estimate``):
        ``print(knot.estimate(inputs[:3]))`` shows the figures, the suggested resources and
        what 1,000 inputs would take and cost."""
        estimate: Estimate = self._open().call(
            lambda: self._async.estimate(
                sample_inputs, trials=trials, starmap=starmap, kwargs=kwargs
            )
        )
        return estimate

    def view_jobs(self) -> None:
        """Print one line per job: id, name, status and finished/total inputs."""
        print(f"{'id':<24} {'name':<24} {'status':<11} done/total")
        for job in self.jobs:
            finished, total = job.progress
            print(f"{job.id:<24} {job.name:<24} {job.status:<11} {finished}/{total}")

    def attach(self, run_id: str) -> Job[list[R]]:
        """A blocking handle on a run started earlier (maybe by another process or day):
        ``job.status``, ``job.result(timeout)``, ``job.cancel()``, ``job.logs(index)``."""
        portal = self._open()
        run: Run[Any] = portal.call(self._async.attach, run_id)

        async def gather() -> list[Any]:
            try:
                return await run.gather()
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    await run.cancel()  # job.cancel() cancels the run, as for a map
                raise

        future = portal.start_task_soon(gather, name=f"aioknot attached run {run_id}")
        job = Job(self.name, future, [run], portal, self._loop)
        self.jobs.append(job)
        return job

    def gather(self, run: Run[R] | Job[list[R]], timeout: float | None = None) -> list[R]:
        """The results of an attached run, in input order (blocking)."""
        if isinstance(run, Job):
            results: list[Any] = run.result(timeout)
            return results
        values: list[Any] = self._open().start_task_soon(run.gather).result(timeout)
        return values

    def clobber(
        self, *, environment: bool = False, images: bool = False, force: bool = False
    ) -> int:
        """Delete what this knot made (see ``AsyncKnot.clobber``); returns objects deleted."""
        deleted: int = self._open().call(
            lambda: self._async.clobber(environment=environment, images=images, force=force)
        )
        return deleted

    def close(self) -> None:
        """Cancel unfinished jobs, stop the workers, and stop the private loop thread."""
        if self._loop.in_loop_thread():
            raise KnotError(
                f"knot {self.name!r} cannot be closed from its own event loop thread (a "
                "done-callback, say): closing waits for that thread. Close it from "
                "another thread"
            )
        if self._loop.closing:
            return
        for job in self.jobs:
            job.future.cancel()
        self._finalizer.detach()
        self._loop.close()

    def __enter__(self) -> Knot[R]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _reset_after_fork() -> None:
    for knot in list(_LIVE_KNOTS):
        knot._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
