"""A run: one ``map`` of a knot's function over inputs, and the results as they arrive.

A ``Run`` is handed out once every input is stored and submitted (``knot.map``), or drives
``knot.amap`` while inputs are still being submitted. Results are collected by a
``ResultWatcher`` that runs in the knot's task group; any number of readers iterate them.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
import weakref
from array import array
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
)
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

import anyio

from ._backends.base import Backend, BackendRun, EndedRun, RunSpec, Segment
from ._exceptions import KnotError, TaskError, TaskFailure, TaskLost
from ._inputs import PackedSegment, StretchPacker, pack_inputs
from ._manifest import Manifest
from ._names import manifest_key
from ._stores.base import Store
from ._tasks import task_group
from ._watch import Outcome, ResultWatcher, Values
from ._worker import (
    UpstreamFailed,
    encode_group,
    encode_upstream_record,
    result_key,
    segment_key,
)

if TYPE_CHECKING:
    from ._estimate import Resources

R = TypeVar("R")  # what the knot's function returns
# Completed stretches kept as (first, stop) before they are spelled out (`_collect`).
SPANS_KEPT = 1_024
_PENDING: Any = object()
_FAILED: Any = object()
_TAKEN: Any = object()
Inputs = Iterable[Any] | AsyncIterable[Any]

CANCELLED_REASON = "the run was cancelled"
# The runs this process started, by id, while they are referenced: a run re-attached here is
# cancelled through the run itself.
_STARTED: weakref.WeakValueDictionary[str, Run[Any]] = weakref.WeakValueDictionary()
MANIFEST_ON_CANCEL_SECONDS = 3.0
# How often progress() asks the backend for its own counts (queued, running): on Batch each
# ask is a DescribeJobs, and the watcher polls Batch on its own clock already.
BACKEND_STATUS_SECONDS = 5.0
# logs(index, follow=True): the pause between two reads of the log, this short while lines
# come, doubling up to LONGEST while none do (CloudWatch shows lines seconds after they are
# written; a local task's log is stored at most every second while it runs).
FOLLOW_FIRST_SECONDS = 0.5
FOLLOW_LONGEST_SECONDS = 5.0


def stretches(outcomes: dict[int, Any]) -> Iterator[tuple[int, list[Any]]]:
    """``(first, values)`` of each stretch of consecutive inputs in ``outcomes`` (sorted by
    index) that are all failures (`TaskFailure`) or all values."""
    first, failed = -1, False
    values: list[Any] = []
    for index, value in outcomes.items():
        failure = isinstance(value, TaskFailure)
        if values and (index != first + len(values) or failure != failed):
            yield first, values
            values = []
        if not values:
            first, failed = index, failure
        values.append(value)
    if values:
        yield first, values


class Run(Generic[R]):
    """The inputs, jobs and results of one map. Iterate it for results as they complete.

    Made by its knot with `Run.start` (a new run) or `Run.from_manifest` (one started earlier);
    the knot then drives it with `_send` (store and submit the inputs) and `_watch` (collect
    the outcomes), and each transition is a method here, never a field set from outside.
    """

    def __init__(
        self,
        spec: RunSpec,
        store: Store,
        backend_name: str,
        *,
        retain: bool = True,
        return_exceptions: bool = False,
        created: float | None = None,
    ) -> None:
        self._spec = spec
        self._store = store
        self._backend_name = backend_name
        self._retain = retain
        self._return_exceptions = return_exceptions
        # Outcomes by input index, kept as plain lists rather than an object per result (a
        # million results would cost ~150 MB more): each input's value, or _FAILED (its
        # failure is in _failures), _PENDING, or _TAKEN (a private run's reader has it).
        self._values: list[Any] = []
        self._failures: dict[int, TaskFailure] = {}
        self._completed = array("q")  # indices in completion order; trimmed when not retained
        # Stretches (first, stop) completed since, in order: spelled out into _completed only
        # when a reader wants the completion order (gather never does: ~130 ns an input).
        self._completed_spans: list[tuple[int, int]] = []
        self._consumed = 0  # entries of _completed dropped from its front (not retained)
        self._changed = anyio.Event()
        self._segments: list[Segment] = []
        self._stop = 0  # every input below this one is stored (a pipeline's: or will be)
        self._total: int | None = None
        self._failure: BaseException | None = None  # submission or watching failed
        self._cancelled = False
        self._counts = {"succeeded": 0, "failed": 0, "lost": 0}
        # gather() raises the lowest failure as soon as every input before it has an outcome
        # (the watcher's `low`).
        self._lowest_failure: int | None = None
        self.watcher = ResultWatcher(store, spec.run_prefix, spec.run_id, self._collect)
        self._backend_run: BackendRun | None = None
        self.created = created if created is not None else time.time()
        self.finished_at: float | None = None  # when every input had an outcome, or cancel
        self._attached = False  # made from a manifest (Run.from_manifest)
        self._owner: Mapping[str, Any] | None = None  # None: this process submitted it
        self._watched = anyio.Event()  # its watch is over, and its manifest written
        # The vcpus and memory its tasks got from resources="auto" (None: the options').
        self.resources: Resources | None = None
        # A pipeline's: the run whose results are this run's inputs ("<knot>/<run id>"), and
        # whether its jobs mirror that run's (`_follow`): every input then has a job.
        self.upstream: str | None = None
        self._mirrored = False

    @classmethod
    def start(
        cls,
        spec: RunSpec,
        store: Store,
        backend: Backend,
        *,
        retain: bool,
        return_exceptions: bool,
    ) -> Run[R]:
        """A new run, its tasks opened on ``backend``; nothing is stored or submitted yet."""
        run: Run[R] = cls(
            spec, store, backend.name, retain=retain, return_exceptions=return_exceptions
        )
        run._backend_run = backend.open_run(spec, run.watcher)
        _STARTED[spec.run_id] = run
        return run

    @classmethod
    def from_manifest(
        cls, manifest: Manifest, spec: RunSpec, store: Store, backend: Backend
    ) -> Run[R]:
        """A run submitted earlier (maybe by another process), as its manifest describes it."""
        run: Run[R] = cls(spec, store, backend.name, retain=True, created=manifest.created)
        run._attached = True
        run._owner = manifest.owner  # who submitted it stays its owner, whoever writes
        run.upstream = manifest.upstream
        run.watcher.sweep_first = True
        if manifest.cancelled:
            # Whatever has no record will never get one; the logs stay readable.
            try:
                reader: BackendRun | None = backend.attach_run(spec, run.watcher, manifest)
            except KnotError:
                reader = None  # e.g. cancelled before any job was submitted
            run._backend_run = EndedRun(manifest.jobs, reader)
            run.watcher.no_record_reason = CANCELLED_REASON
        else:
            run._backend_run = backend.attach_run(spec, run.watcher, manifest)
        for first, count in manifest.segments:
            run._stored(Segment(first, count))
        run._submission_finished()
        return run

    @property
    def backend_run(self) -> BackendRun:
        """The run's tasks on its backend (job ids, status)."""
        assert self._backend_run is not None, "a Run is made by Run.start or Run.from_manifest"
        return self._backend_run

    # -- identity and size ---------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._spec.run_id

    @property
    def knot(self) -> str:
        return self._spec.knot

    @property
    def function_key(self) -> str:
        """Where the function this run calls is stored (content-addressed)."""
        return self._spec.function_key

    def __len__(self) -> int:
        """The number of inputs (so far, while ``amap`` is still submitting)."""
        return self._total if self._total is not None else self.submitted

    @property
    def retained(self) -> bool:
        """A run of ``map`` (kept, re-attachable), not the private run of an ``amap``."""
        return self._retain

    @property
    def submitted(self) -> int:
        return self._stop

    @property
    def done(self) -> bool:
        return self._failure is not None or (
            self._total is not None and self.finished == self._total
        )

    @property
    def finished(self) -> int:
        return sum(self._counts.values())

    def __repr__(self) -> str:
        chosen = f" resources=({self.resources})" if self.resources is not None else ""
        return (
            f"<Run {self.id} of knot {self.knot!r}: {self.finished}/{len(self)} finished{chosen}>"
        )

    # -- what the knot and the watcher tell the run --------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _collect(self, outcomes: list[Outcome | Values]) -> None:
        # Outcomes come only for stored inputs, which have their places (`_stored`).
        values, spans, counts = self._values, self._completed_spans, self._counts
        for outcome in outcomes:
            if isinstance(outcome, Values):  # inputs that all returned: one slice each
                first, stop = outcome.first, outcome.first + len(outcome.values)
                values[first:stop] = outcome.values
                spans.append((first, stop))
                counts["succeeded"] += stop - first
                continue
            index, error = outcome.index, outcome.error
            if spans and spans[-1][1] == index:
                spans[-1] = (spans[-1][0], index + 1)
            else:
                spans.append((index, index + 1))
            if error is None:
                values[index] = outcome.value
                counts["succeeded"] += 1
                continue
            values[index] = _FAILED
            self._failures[index] = error
            counts["lost" if isinstance(error, TaskLost) else "failed"] += 1
            if self._lowest_failure is None or index < self._lowest_failure:
                self._lowest_failure = index
        if len(spans) > SPANS_KEPT:  # outcomes one by one, out of order: spell them out
            self._spell_out_completed()
        if self.finished_at is None and self._all_finished:
            self.finished_at = time.time()
        self._notify()

    def _stored(self, segment: Segment) -> None:
        # Segments come in input order, but a pipeline's (`_send_results`) come in the order
        # upstream completes: the watcher awaits every input below the highest one stored.
        self._segments.append(segment)
        self._stop = max(self._stop, segment.stop)
        if segment.stop > len(self._values):
            self._values.extend(itertools.repeat(_PENDING, segment.stop - len(self._values)))
        self.watcher.submitted(segment.stop)

    def _submission_finished(self) -> None:
        self._total = self.submitted
        self.watcher.submission_over()
        self._notify()

    def _fail(self, error: BaseException) -> None:
        if self._failure is None:
            self._failure = error
        self._notify()

    # -- the manifest --------------------------------------------------------------------

    def manifest(self) -> Manifest:
        manifest = Manifest(
            knot=self.knot,
            run=self.id,
            backend=self._backend_name,
            store=self._spec.store_url,
            function=self._spec.function_key,
            starmap=self._spec.starmap,
            segments=tuple((s.first, s.count) for s in self._segments),
            created=self.created,
            finished=self.finished_at,
            counts=dict(self._counts) if self.finished_at is not None else {},
            complete=self._total is not None,
            cancelled=self._cancelled,
            total=self._total,
            jobs=tuple(self._backend_run.job_ids if self._backend_run else ()),
            upstream=self.upstream,
        )
        return manifest if self._owner is None else replace(manifest, owner=self._owner)

    async def _write_manifest(self) -> None:
        await self._store.put(manifest_key(self._spec.run_prefix), self.manifest().to_bytes())

    # -- storing and submitting, watching ------------------------------------------------

    async def _send(self, inputs: Inputs, *, ready: Callable[[], Awaitable[None]]) -> None:
        """Store the inputs segment by segment, submitting each as soon as it is stored."""
        starmap = self._spec.starmap
        await self._send_packed(
            lambda store_segment: pack_inputs(inputs, starmap=starmap, store=store_segment),
            ready=ready,
        )

    async def _send_packed(
        self,
        pack: Callable[[Callable[[PackedSegment], Awaitable[None]]], Awaitable[None]],
        *,
        ready: Callable[[], Awaitable[None]],
    ) -> None:
        """Store the segments ``pack`` makes (it calls ``store_segment`` with each),
        submitting each as soon as it is stored.

        Storing never waits for the backend: until ``ready()`` returns (a stack, an image),
        stored segments queue up and are submitted together the moment it does.
        """
        store, spec, backend_run = self._store, self._spec, self.backend_run
        send, receive = anyio.create_memory_object_stream[Segment](math.inf)
        failure: list[BaseException] = []  # raised as itself, not as an ExceptionGroup
        first_stored = False

        async def store_segment(packed: PackedSegment) -> None:
            nonlocal first_stored
            await store.put(segment_key(spec.run_prefix, packed.segment.first), packed.data)
            if not first_stored:  # re-attachable from the first segment on
                first_stored = True
                await self._write_manifest()
            await send.send(packed.segment)

        async def store_segments() -> None:
            async with send:
                try:
                    await pack(store_segment)
                except Exception as error:
                    failure.append(error)

        async with task_group() as group, receive:
            group.start_soon(store_segments)
            await ready()
            async for segment in receive:
                stored = [segment]
                while True:  # everything stored meanwhile goes in one submission
                    try:
                        stored.append(receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                for each in stored:
                    self._stored(each)  # before submitting: the watcher must expect them
                await backend_run.submit(stored, last=False)
        if failure:
            raise failure[0]
        await backend_run.submit([], last=True)
        self._submission_finished()
        await self._write_manifest()

    # -- pipelines: another run's results as the inputs -------------------------------------

    async def _follow(self, upstream: Run[Any], *, ready: Callable[[], Awaitable[None]]) -> None:
        """Input ``i`` is the value of ``upstream``'s input ``i``, run as soon as it exists.

        Where the backend can take the values from upstream's records itself (AWS Batch, one
        bucket: each downstream child depends on its upstream child), the values never pass
        through here and the jobs are all submitted now, so the client may go; otherwise
        (local workers, or two stores) `_send_results` passes them on as they come.
        """
        same_store = (upstream._spec.store_url, upstream._spec.store_environment) == (
            self._spec.store_url,
            self._spec.store_environment,
        )
        # An upstream whose own inputs came through a client (`_send_results`) may have
        # inputs no job covers (those its upstream failed): their values are not for a
        # mirrored job to read. Followed records, or no pipeline at all, leave none.
        whole = upstream.upstream is None or upstream._mirrored
        if not (
            same_store
            and whole
            and upstream._total is not None
            and upstream._backend_run is not None
            and self.backend_run.can_follow(upstream._backend_run)
        ):
            await self._send_results(upstream, upstream.items(return_exceptions=True), ready=ready)
            return
        self.upstream, self._mirrored = f"{upstream.knot}/{upstream.id}", True
        for segment in upstream._segments:
            self._stored(Segment(segment.first, segment.count))
        await self._write_manifest()
        await ready()
        await self.backend_run.follow(upstream._backend_run, upstream._spec.run_prefix)
        await self.backend_run.submit([], last=True)
        self._submission_finished()
        await self._write_manifest()

    async def _send_results(
        self,
        source: Run[Any],
        outcomes: AsyncGenerator[tuple[int, Any], None],
        *,
        ready: Callable[[], Awaitable[None]],
    ) -> None:
        """Store and submit the outcomes ``(index, value or TaskFailure)`` of the run
        ``source`` as they come: those that arrive together go in one segment per stretch of
        consecutive inputs. An input whose upstream input failed gets its record at once,
        naming that input, and is not run."""
        arrived: dict[int, Any] = {}
        wake = anyio.Event()
        ended = False
        upstream = self.upstream = f"{source.knot}/{source.id}"

        async def receive() -> None:
            nonlocal ended
            try:
                async with contextlib.aclosing(outcomes):
                    async for index, value in outcomes:
                        arrived[index] = value
                        wake.set()
            finally:
                ended = True
                wake.set()

        async def pack(store_segment: Callable[[PackedSegment], Awaitable[None]]) -> None:
            nonlocal wake
            packer = StretchPacker()
            async with task_group() as group:
                group.start_soon(receive)
                while arrived or not ended:
                    await wake.wait()
                    wake = anyio.Event()
                    batch = dict(sorted(arrived.items()))
                    arrived.clear()
                    for first, values in stretches(batch):
                        if isinstance(values[0], TaskFailure):
                            await self._upstream_failed(first, values, upstream)
                            continue
                        for packed in packer.pack(first, values):
                            await store_segment(packed)

        await self._send_packed(pack, ready=ready)

    async def _upstream_failed(self, first: int, failures: list[Any], upstream: str) -> None:
        """The records of inputs ``first..`` whose upstream inputs failed (not run)."""
        records = []
        for offset, failure in enumerate(failures):
            info = None
            if isinstance(failure, TaskError):
                info = {
                    "type": failure.remote_type,
                    "message": failure.remote_message,
                    "traceback": failure.remote_traceback,
                }
            reason = failure.reason if isinstance(failure, TaskLost) else ""
            failed = UpstreamFailed(upstream, first + offset, info, reason)
            records.append(encode_upstream_record(failed))
        key = result_key(self._spec.run_prefix, first, len(records))
        await self._store.put(key, encode_group(records))
        self._stored(Segment(first, len(records)))  # stored (as records): not submitted
        self.watcher.done(first, len(records))

    async def _watch(self) -> None:
        """Watch until every input has an outcome, or watching fails.

        A failed watch (a store or control-plane outage outlasting its retries) ends the
        readers with the error, and nothing else: the jobs keep running and their results
        keep being stored, so the run can be re-attached. Only the user cancels work.
        """
        try:
            await self.watcher.run(self.backend_run)
            if self._retain and self.finished_at is not None and not self._cancelled:
                # The manifest says when the run finished and how: listing runs reads it.
                # Best effort, briefly: the results are all stored either way.
                with (
                    contextlib.suppress(Exception),
                    anyio.move_on_after(MANIFEST_ON_CANCEL_SECONDS),
                ):
                    await self._write_manifest()
        except Exception as error:
            self._fail(error)
        finally:
            self._watched.set()

    # -- reading results -----------------------------------------------------------------

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _raise_lowest_failure(self, index: int) -> None:
        raise self._failures[index]

    def _spell_out_completed(self) -> None:
        for first, stop in self._completed_spans:
            self._completed.extend(range(first, stop))
        self._completed_spans.clear()

    async def _next_completed(self, position: int) -> int | None:
        """The index completed at ``position``, waiting for it; None once the run is over."""
        while True:
            self._raise_failure()  # a failed run (its inputs raised, say) ends every reader
            self._spell_out_completed()
            if position - self._consumed < len(self._completed):
                return self._completed[position - self._consumed]
            if self._total is not None and self.finished >= self._total:
                return None
            await self._changed.wait()

    def _has(self, index: int) -> bool:
        return index < len(self._values) and self._values[index] is not _PENDING

    def _take(self, index: int, return_exceptions: bool) -> Any:
        """Input ``index``'s value, or its failure (raised unless ``return_exceptions``); a
        private run lets go of it, as its one reader has it now."""
        value = self._values[index]
        if not self._retain:
            self._values[index] = _TAKEN
        if value is not _FAILED:
            return value
        error = self._failures[index] if self._retain else self._failures.pop(index)
        if not return_exceptions:
            raise error
        return error

    async def items(
        self, *, return_exceptions: bool | None = None, ordered: bool = False
    ) -> AsyncGenerator[tuple[int, R], None]:
        """``(index, value)`` pairs as they complete (or in input order with ``ordered``).

        A failed input raises its ``TaskError`` / ``TaskLost`` here, unless
        ``return_exceptions`` is true, in which case the exception is yielded as the value.
        The rest of the run keeps running either way.
        """
        keep_going = self._return_exceptions if return_exceptions is None else return_exceptions
        if ordered:
            index = 0
            while True:
                # The run's failure first: a generator that raised, say, cancels the run, and
                # the inputs that cancel turns into TaskLost must not hide it.
                self._raise_failure()
                if self._has(index):
                    yield index, self._take(index, keep_going)
                    index += 1
                    continue
                if self._total is not None and index >= self._total:
                    return
                await self._changed.wait()
        position = self._consumed
        while True:
            completed = await self._next_completed(position)
            if completed is None:
                return
            position += 1
            if not self._retain and position - self._consumed >= 1024:
                # A private run (amap) has one reader: drop what it has seen.
                del self._completed[: position - self._consumed]
                self._consumed = position
            yield completed, self._take(completed, keep_going)

    async def __aiter__(self) -> AsyncIterator[R]:
        async for _, value in self.items():
            yield value

    async def gather(self, *, return_exceptions: bool | None = None) -> list[R]:
        """Every result, in input order, once all are in.

        Raises the failure of the lowest failed input unless ``return_exceptions``.
        """
        keep_going = self._return_exceptions if return_exceptions is None else return_exceptions
        while not (self._total is not None and self.finished >= self._total):
            self._raise_failure()
            lowest = self._lowest_failure
            if not keep_going and lowest is not None and self.watcher.low > lowest:
                # Every input before it is done: no lower failure can come. The rest of the
                # run goes on, as with asyncio.gather; its results stay in the run.
                self._raise_lowest_failure(lowest)
            await self._changed.wait()
        self._raise_failure()
        # Once gathered, the run's books are closed too: its manifest says it finished.
        await self._watched.wait()
        values = self._values[: self._total]
        for index in sorted(self._failures):
            if not keep_going:
                raise self._failures[index]
            values[index] = self._failures[index]
        return values

    # -- status, cancel, logs ------------------------------------------------------------

    async def status(self) -> dict[str, int]:
        """Counts of inputs by state; the backend adds its own (queued, running, ...).

        A re-attached run first looks at the store, so that it counts the records already
        stored rather than none."""
        if self._attached:
            await self.watcher.looked.wait()
        return {**self._own_counts(), **await self._backend_counts()}

    def _own_counts(self) -> dict[str, int]:
        return {
            "total": len(self),
            "submitted": self.submitted,
            **self._counts,
            "pending": self.submitted - self.finished,
        }

    async def _backend_counts(self) -> dict[str, int]:
        if self._backend_run is None or self.done:
            return {}
        return await self._backend_run.status()

    async def progress(self, *, interval: float = 0.5) -> AsyncIterator[dict[str, int]]:
        """Status counts (as `status` gives them) each time they change, at most every
        ``interval`` seconds, ending with the counts of the finished run; for services that
        report progress (a web socket, a log line). Raises the run's failure, if it fails.

        The run's own counts are read at every step; the backend's (a DescribeJobs on Batch)
        at most every `BACKEND_STATUS_SECONDS`, however short the interval."""
        if self._attached:
            await self.watcher.looked.wait()
        last: dict[str, int] | None = None
        backend: dict[str, int] = {}
        asked = -math.inf
        while True:
            self._raise_failure()
            if anyio.current_time() - asked >= BACKEND_STATUS_SECONDS:
                backend, asked = await self._backend_counts(), anyio.current_time()
            counts = {**self._own_counts(), **(backend if not self.done else {})}
            if counts != last:
                yield counts
                last = counts
            if self._all_finished:
                return
            shown = anyio.current_time()
            # Woken by an outcome, or after the interval (the backend's own counts change
            # without one); never sooner than the interval after the last yield.
            with anyio.move_on_after(interval):
                await self._changed.wait()
            await anyio.sleep(max(0.0, shown + interval - anyio.current_time()))

    @property
    def _all_finished(self) -> bool:
        return self._total is not None and self.finished >= self._total

    async def cancel(self) -> None:
        """Stop every input that has not finished; each becomes ``TaskLost("cancelled")``.

        Also after the run failed (its inputs raised mid-way, the store failed): whatever
        was submitted stops too. The manifest says so, for whoever re-attaches.
        """
        if self._all_finished or self._cancelled:
            return
        with anyio.CancelScope(shield=True):
            started = _STARTED.get(self.id)
            if started is not None and started is not self:
                # Re-attached in the process that runs it: cancel the run itself, so that its
                # own readers hear "cancelled" and its manifest says so.
                await started.cancel()
            if self._backend_run is not None:
                # First: a backend that refuses (a local run another process runs) leaves
                # the run as it was.
                await self._backend_run.cancel()
            if self._cancelled:
                return  # cancelled meanwhile, by another task
            self._cancelled = True
            self.finished_at = time.time()
            self.watcher.abandon(CANCELLED_REASON)
            if self._total is None:
                self._total = self.submitted
            self._notify()
            if self.submitted:
                # Best effort, briefly: the run is stopped either way, and a store that is
                # down must not hold up the cancel (or the close that called it).
                with (
                    contextlib.suppress(Exception),
                    anyio.move_on_after(MANIFEST_ON_CANCEL_SECONDS),
                ):
                    await self._write_manifest()

    async def _remove_data(self) -> None:
        """Delete everything the run stored (inputs, results, manifest)."""
        await self._store.delete_prefix(self._spec.run_prefix + "/")

    @overload
    def logs(
        self, index: int, *, follow: Literal[False] = False
    ) -> Coroutine[Any, Any, list[str]]: ...

    @overload
    def logs(self, index: int, *, follow: Literal[True]) -> AsyncGenerator[str, None]: ...

    @overload
    def logs(
        self, index: int, *, follow: bool
    ) -> Coroutine[Any, Any, list[str]] | AsyncGenerator[str, None]: ...

    def logs(
        self, index: int, *, follow: bool = False
    ) -> Coroutine[Any, Any, list[str]] | AsyncGenerator[str, None]:
        """The log lines of the task that runs input ``index`` (every attempt, in order).

        ``await run.logs(i)``: the lines written so far. ``async for line in run.logs(i,
        follow=True)``: each line as it is written, ending once the input has an outcome (a
        last read then: no line is lost). Following waits for a task that has not started,
        and survives a retry (the new attempt's lines follow). An ``index`` that is not one of
        the run's inputs raises ``KnotError`` here, before anything is asked.
        """
        total = len(self)
        if not 0 <= index < total:
            so_far = "" if self._total is not None else " so far"
            numbered = f", numbered 0 to {total - 1}" if total else ""
            raise KnotError(
                f"input {index} of run {self.id} was not submitted: the run has "
                f"{total or 'no'} inputs{so_far}{numbered}"
            )
        if follow:
            return self._follow_logs(index)
        return self.backend_run.logs(index)

    async def _follow_logs(self, index: int) -> AsyncGenerator[str, None]:
        tail = self.backend_run.tail_logs(index)
        pause = FOLLOW_FIRST_SECONDS
        settled: float | None = None  # when the last lines are in (the outcome + the lag)
        while True:
            over = self._has(index)  # looked at before reading: the last read has every line
            if not over:
                self._raise_failure()  # a failed watch cannot tell when the input ends
            elif settled is None:
                settled = anyio.current_time() + tail.lag_seconds
            final = settled is not None and anyio.current_time() >= settled
            lines = await tail.read(final=final)
            for line in lines:
                yield line
            if final:
                return
            if settled is not None:  # lines written before the end may still be on the way
                # Reading and the consumer's own work may have used up the lag already.
                await anyio.sleep(
                    max(0.0, min(FOLLOW_FIRST_SECONDS, settled - anyio.current_time()))
                )
                continue
            if lines:
                pause = FOLLOW_FIRST_SECONDS
            with anyio.move_on_after(pause):  # woken early by the input's outcome
                while not self._has(index) and self._failure is None:
                    await self._changed.wait()
            pause = min(pause * 2, FOLLOW_LONGEST_SECONDS)
