"""``AsyncKnot``: one function, one store, one backend, and the runs of ``map`` / ``amap``.

A knot is an async context manager and owns everything it starts: its store client, its
backend (worker processes or AWS clients) and a task group in which every run's watcher and
background submission live. Leaving ``async with`` cancels those tasks and stops the workers;
no task outlives the knot.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import math
import time
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
import anyio.abc

from . import _host
from ._backends.base import Backend, EndedRun, RunSpec, Segment
from ._exceptions import ConfigurationError, KnotError
from ._image.dockerfile import ImageSpec
from ._inputs import PackedSegment, check_inputs, pack_inputs
from ._names import (
    default_home,
    default_knot_name,
    function_key,
    knot_prefix,
    manifest_key,
    new_run_id,
    run_prefix,
    validate_knot_name,
    validate_run_id,
)
from ._options import KnotOptions, KnotOptionsDict, parse_options
from ._pickling import PickledFunction, pickle_function
from ._run import CANCELLED_REASON, Run
from ._stores.base import Store
from ._tasks import task_group
from ._worker import segment_key

logger = logging.getLogger("aioknot")

Inputs = Iterable[Any] | AsyncIterable[Any]
# Closing a knot waits at most this long for each run it cancels (a store or control plane
# that is down must not hold the user's program up).
CLOSE_CANCEL_SECONDS = 10.0
# A knot open for days looks again whether its function is stored: the bucket's lifecycle
# rule (retention_days, at least 1) may have expired it.
FUNCTION_RECHECK_SECONDS = 6 * 3600.0


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


if TYPE_CHECKING:
    from typing_extensions import Unpack

R = TypeVar("R")  # what the function returns


class AsyncKnot(Generic[R]):
    """Run ``func`` over many inputs on a backend, asynchronously.

    >>> async with AsyncKnot(f, name="squares", backend="local") as knot:
    ...     async for y in knot.amap(range(100)):   # results as they complete
    ...         ...
    ...     run = await knot.map(range(100))        # every input stored and submitted
    ...     ys = await run.gather()                 # in input order
    """

    def __init__(
        self,
        func: Callable[..., R],
        *,
        name: str | None = None,
        backend: str | None = None,
        **options: Unpack[KnotOptionsDict],
    ) -> None:
        self.func = func
        self.name = validate_knot_name(name) if name is not None else default_knot_name(func)
        self.options: KnotOptions = parse_options(backend, options)
        self._function: PickledFunction = pickle_function(func)
        # For AWS, the image's requirements come from the function's imports: scanned here,
        # offline, so an import that is not installed fails before anything is created.
        self._image_spec: ImageSpec | None = None
        if self.options.backend == "aws":
            from ._backends.aws.image import image_settings, image_spec

            self._image_spec = image_spec(image_settings(self.options.aws), func, self._function)
        self._state = _State.UNOPENED
        self._exit_stack = contextlib.AsyncExitStack()
        self._group: anyio.abc.TaskGroup | None = None
        self._store: Store | None = None
        self._backend: Backend | None = None
        # Functions by key (with kwargs bound, or not), and which of them the store has.
        self._functions: dict[str, PickledFunction] = {}
        self._stored_functions: dict[str, float] = {}  # key -> when last seen stored
        self._prepared = anyio.Event()
        self._prepare_error: BaseException | None = None
        self._preparing: anyio.CancelScope | None = None  # clobber() stops preparation by it
        # The knot's host task (see _host): opened, asked to close, done (made anew when the
        # knot opens, on its loop); and what failed opening or closing.
        self._opened = self._closing = self._host_done = anyio.Event()
        self._open_error: BaseException | None = None
        self._close_error: BaseException | None = None
        self._runs: weakref.WeakSet[Run[Any]] = weakref.WeakSet()  # to cancel on close

    @property
    def backend(self) -> str:
        return self.options.backend

    @property
    def function_key(self) -> str:
        return function_key(self.name, self._function.digest)

    def __repr__(self) -> str:
        return f"<AsyncKnot {self.name!r} backend={self.backend!r} {self._state.value}>"

    def _progress(self, message: str) -> None:
        logger.info("%s: %s", self.name, message)
        if self.options.progress is not None:
            self.options.progress(message)

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> AsyncKnot[R]:
        if self._state is not _State.UNOPENED:
            raise KnotError(
                f"knot {self.name!r} was already {self._state.value}: a knot opens once; "
                "create a new AsyncKnot to run again"
            )
        self._state = _State.OPENED
        self._opened, self._closing, self._host_done = anyio.Event(), anyio.Event(), anyio.Event()
        _host.spawn(self._host)
        try:
            await self._opened.wait()
        except BaseException:  # cancelled while opening: the host closes what it opened
            self._state = _State.CLOSED
            self._closing.set()
            with anyio.CancelScope(shield=True):
                await self._host_done.wait()
            raise
        if self._open_error is not None:
            self._state = _State.CLOSED
            raise self._open_error
        return self

    async def _host(self) -> None:
        """The knot's own task: opens the store, the backend and the task group, keeps them
        until the knot closes (from whichever task), then closes them in the same task."""
        try:
            try:
                self._store = await self._open_store()
                self._exit_stack.push_async_callback(self._store.aclose)
                self._backend = self._make_backend()
                self._exit_stack.push_async_callback(self._backend.aclose)
                self._group = await self._exit_stack.enter_async_context(task_group())
                # Runs first on exit: stop every watcher and worker before the group is awaited.
                self._exit_stack.callback(self._group.cancel_scope.cancel)
                start = getattr(self._backend, "start", None)
                if start is not None:
                    start(self._group)
                # clobber() may cancel it before the task even starts.
                self._preparing = anyio.CancelScope()
                self._group.start_soon(self._prepare)
            except BaseException as error:
                self._open_error = error
                self._opened.set()
                await self._exit_stack.aclose()
                return
            self._opened.set()
            await self._closing.wait()
            # Not shielded: a cancel scope here would not nest with the task group's. Nobody
            # cancels this task but the event loop's own shutdown.
            await self._exit_stack.aclose()
        except BaseException as error:  # closing failed: aclose() raises it
            self._close_error = error
        finally:
            self._opened.set()
            self._host_done.set()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel the runs that end with the knot, stop the workers, close the clients.

        ``amap`` runs and local runs are cancelled (their readers get ``TaskLost``); a ``map``
        run on a backend whose jobs go on without the client (Batch) keeps running, to be
        re-attached, and its readers get a ``KnotError`` that says so. It may be called from
        another task than the one that opened the knot (a notebook's next cell).
        """
        if self._state is not _State.OPENED:
            self._state = _State.CLOSED
            return
        self._state = _State.CLOSED
        try:
            await self._settle_runs_on_close()
        finally:
            # Whatever happened above, the task group, the workers and the clients close.
            self._closing.set()
            with anyio.CancelScope(shield=True):
                await self._host_done.wait()
        if self._close_error is not None:
            raise self._close_error

    async def _settle_runs_on_close(self) -> None:
        """Cancel the runs whose work belongs to this knot; leave the others running."""
        backend = self._backend
        outlive = backend is not None and backend.runs_outlive_client
        with anyio.CancelScope(shield=True):
            for run in list(self._runs):
                if outlive and run.retained and not run.done:
                    # Not the user's intent to cancel: the jobs go on, the results are stored,
                    # and the run can be re-attached. Readers still waiting are told so.
                    run._fail(
                        KnotError(
                            f"knot {self.name!r} was closed while run {run.id} was still "
                            f"going: its jobs keep running on the {self.backend} backend; "
                            f"re-attach with `await knot.attach({run.id!r})` to collect them"
                        )
                    )
                    continue
                # Readers still waiting on a run get TaskLost("cancelled"), not a hang. A
                # backend that cannot be reached does not hold the close up for long.
                with contextlib.suppress(Exception), anyio.move_on_after(CLOSE_CANCEL_SECONDS):
                    await run.cancel()

    async def _open_store(self) -> Store:
        options = self.options
        if options.backend == "aws":
            from ._backends.aws.backend import open_aws_store

            return await open_aws_store(self.name, options, self._image_spec)
        if options.bucket is not None:
            from ._stores.s3 import S3Store

            return await S3Store(
                options.bucket,
                endpoint_url=options.endpoint_url,
                region=options.region,
                profile=options.profile,
            ).open()
        from ._stores.local import LocalStore

        return LocalStore(options.directory or default_home())

    def _make_backend(self) -> Backend:
        if self.options.backend == "aws":
            from ._backends.aws.backend import AwsBackend

            assert self._store is not None
            backend: Backend = AwsBackend(
                knot=self.name,
                options=self.options,
                image_spec=self._image_spec,
                store=self._store,
                progress=self._progress,
            )
            return backend
        from ._backends.local import LocalBackend

        return LocalBackend(workers=self.options.workers)

    async def _prepare(self) -> None:
        """Make the backend ready (stack, image) while the first inputs are uploaded."""
        try:
            assert self._preparing is not None
            with self._preparing:
                assert self._backend is not None
                await self._backend.prepare()
        except Exception as error:
            self._prepare_error = error
        finally:
            self._prepared.set()

    async def _stop_preparing(self) -> None:
        """Stop the background preparation (clobber must not race it into recreating what it
        deletes); a later map prepares again, on demand, through the backend."""
        if self._preparing is not None:
            self._preparing.cancel()
        await self._prepared.wait()
        self._prepare_error = None

    async def _wait_prepared(self) -> None:
        await self._prepared.wait()
        if self._prepare_error is not None:
            raise self._prepare_error

    def _check_open(self) -> tuple[Store, Backend, anyio.abc.TaskGroup]:
        if self._state is not _State.OPENED:
            raise KnotError(
                f"knot {self.name!r} is {self._state.value}: use it inside "
                "'async with AsyncKnot(...) as knot:'"
            )
        assert self._store is not None and self._backend is not None and self._group is not None
        return self._store, self._backend, self._group

    # -- runs ----------------------------------------------------------------------------

    def _new_run(
        self,
        *,
        starmap: bool,
        retain: bool,
        return_exceptions: bool,
        kwargs: Mapping[str, Any] | None,
    ) -> Run[R]:
        store, backend, _ = self._check_open()
        function = self._function_with(kwargs)  # before anything is stored or started
        run_id = new_run_id()
        spec = RunSpec(
            knot=self.name,
            run_id=run_id,
            run_prefix=run_prefix(self.name, run_id),
            function_key=function_key(self.name, function.digest),
            store_url=store.url,
            starmap=starmap,
            store_environment=tuple(sorted(store.worker_environment().items())),
        )
        run: Run[R] = Run(
            spec, store, backend.name, retain=retain, return_exceptions=return_exceptions
        )
        run.backend_run = backend.open_run(spec, run.watcher)
        self._functions[spec.function_key] = function
        self._runs.add(run)
        return run

    def _function_with(self, kwargs: Mapping[str, Any] | None) -> PickledFunction:
        """The function to store for a run: the knot's own, or with ``kwargs=`` bound."""
        if kwargs is None or (isinstance(kwargs, Mapping) and not kwargs):
            return self._function
        if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
            raise ConfigurationError(
                "kwargs= must be a dict of keyword arguments shared by every call, e.g. "
                f"kwargs={{'scale': 2}}; got {type(kwargs).__name__}"
            )
        return pickle_function(self.func, kwargs)

    async def _store_function(self, store: Store, key: str) -> None:
        checked = self._stored_functions.get(key)
        if checked is not None and time.monotonic() - checked < FUNCTION_RECHECK_SECONDS:
            return
        (exists,) = await store.exists_many([key])
        if not exists:  # content-addressed: an unchanged function is stored once
            await store.put(key, self._functions[key].data)
        self._stored_functions[key] = time.monotonic()

    async def _submit(self, run: Run[R], inputs: Inputs) -> None:
        """Store the inputs segment by segment, submitting each as soon as it is stored.

        Storing never waits for the backend: while it is still getting ready (a stack, an
        image), stored segments queue up and are submitted together the moment it is.
        """
        store, _, _ = self._check_open()
        backend_run = run.backend_run
        assert backend_run is not None
        await self._store_function(store, run._spec.function_key)
        send, receive = anyio.create_memory_object_stream[Segment](math.inf)
        failure: list[BaseException] = []  # raised as itself, not as an ExceptionGroup

        async def store_segment(packed: PackedSegment) -> None:
            await store.put(segment_key(run._spec.run_prefix, packed.segment.first), packed.data)
            if packed.segment.first == 0:  # re-attachable from the first segment on
                await run._write_manifest()
            await send.send(packed.segment)

        async def store_segments() -> None:
            async with send:
                try:
                    await pack_inputs(inputs, starmap=run._spec.starmap, store=store_segment)
                except Exception as error:
                    failure.append(error)

        async with task_group() as group, receive:
            group.start_soon(store_segments)
            await self._wait_prepared()
            async for segment in receive:
                ready = [segment]
                while True:  # everything stored meanwhile goes in one submission
                    try:
                        ready.append(receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                for stored in ready:
                    run._stored(stored)  # before submitting: the watcher must expect them
                await backend_run.submit(ready, last=False)
        if failure:
            raise failure[0]
        await backend_run.submit([], last=True)
        run._submission_finished()
        await run._write_manifest()

    async def _watch(self, run: Run[R]) -> None:
        """Watch a run until every input has an outcome, or watching fails.

        A failed watch (a store or control-plane outage outlasting its retries) ends the run's
        readers with the error, and nothing else: the jobs keep running and their results
        keep being stored, so the run can be re-attached. Only the user cancels work.
        """
        assert run.backend_run is not None
        try:
            await run.watcher.run(run.backend_run)
        except Exception as error:
            run._fail(error)

    async def map(
        self,
        inputs: Inputs,
        *,
        starmap: bool = False,
        return_exceptions: bool = False,
        kwargs: Mapping[str, Any] | None = None,
    ) -> Run[R]:
        """Store every input and submit every task; returns the ``Run`` to read results from.

        ``return_exceptions`` sets the default for iterating and gathering the run;
        ``kwargs`` are keyword arguments given to every call (``func(x, **kwargs)``).
        """
        check_inputs(inputs)
        _, _, group = self._check_open()
        run = self._new_run(
            starmap=starmap, retain=True, return_exceptions=return_exceptions, kwargs=kwargs
        )
        group.start_soon(self._watch, run)
        try:
            await self._submit(run, inputs)
        except BaseException:
            await run.cancel()
            raise
        return run

    def amap(
        self,
        inputs: Inputs,
        *,
        starmap: bool = False,
        ordered: bool = False,
        return_exceptions: bool = False,
        kwargs: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[R]:
        """Results while inputs are still being submitted: as completed, or in input order.

        The run belongs to the iteration: leaving the ``async for`` early (or cancelling the
        task that iterates) cancels it and stops its workers.
        """
        check_inputs(inputs)
        _, _, group = self._check_open()
        run = self._new_run(
            starmap=starmap, retain=False, return_exceptions=return_exceptions, kwargs=kwargs
        )
        return self._iterate(group, run, inputs, ordered)

    async def _iterate(
        self, group: anyio.abc.TaskGroup, run: Run[R], inputs: Inputs, ordered: bool
    ) -> AsyncIterator[R]:
        submission = anyio.CancelScope()

        async def submit_in_background() -> None:
            with submission:
                try:
                    await self._submit(run, inputs)
                except Exception as error:
                    run._fail(error)
                    await run.cancel()

        group.start_soon(self._watch, run)
        group.start_soon(submit_in_background)
        try:
            async for _, value in run.items(ordered=ordered):
                yield value
        finally:
            submission.cancel()
            await run.cancel()

    async def attach(self, run_id: str) -> Run[R]:
        """A run of this knot started earlier, maybe by another process, from its manifest."""
        store, backend, group = self._check_open()
        prefix = run_prefix(self.name, validate_run_id(run_id))
        key = manifest_key(prefix)
        try:
            data = await store.get(key)
        except KeyError:
            raise ConfigurationError(
                f"knot {self.name!r} has no run {run_id!r} in {store.url}"
            ) from None
        manifest = read_manifest(data, f"{store.url}/{key}")
        if manifest.get("format") != 1 or not manifest.get("complete"):
            raise ConfigurationError(
                f"run {run_id!r} cannot be attached: its manifest is "
                + ("of an unknown format" if manifest.get("format") != 1 else "incomplete")
                + " (a run can be attached once its map() has returned)"
            )
        spec = RunSpec(
            knot=self.name,
            run_id=run_id,
            run_prefix=prefix,
            function_key=manifest["function"],
            store_url=store.url,
            starmap=manifest["starmap"],
        )
        run: Run[R] = Run(spec, store, backend.name, retain=True)
        run.created = float(manifest["created"])
        if manifest.get("cancelled"):
            # Whatever has no record will never get one.
            run.backend_run = EndedRun(list(manifest.get("jobs", [])))
            run.watcher.no_record_reason = CANCELLED_REASON
        else:
            run.backend_run = backend.attach_run(spec, run.watcher, manifest)
        for first, count in manifest["segments"]:
            run._stored(Segment(first, count))
        run._submission_finished()
        self._runs.add(run)
        group.start_soon(self._watch, run)
        return run

    async def clobber(
        self, *, environment: bool = False, images: bool = False, force: bool = False
    ) -> int:
        """Delete everything this knot stored (functions, inputs, results, manifests).

        With the AWS backend it also deregisters the knot's job definitions, and with
        ``environment=True`` deletes the environment stack (refused while other knots use it,
        unless ``force=True``), with ``images=True`` its images. It first stops the knot's
        own background preparation and its runs, and never creates anything. After
        ``environment=True`` the default bucket may be gone too (it is deleted when empty):
        open a new knot to run again.
        Returns the number of stored objects deleted.
        """
        store, backend, _ = self._check_open()
        await self._stop_preparing()
        check = getattr(backend, "check_environment_unused", None)
        if environment and not force and check is not None:
            # Checked here, before anything is deleted, so that a refusal deletes nothing;
            # once checked, the backend need not ask again (force=True below).
            await check()
            force = True
        for run in list(self._runs):
            await run.cancel()
        deleted = await store.delete_prefix(knot_prefix(self.name) + "/")
        self._stored_functions.clear()
        self._progress(f"deleted {deleted} objects under {knot_prefix(self.name)}/")
        clobber_backend = getattr(backend, "clobber", None)
        if clobber_backend is not None:
            await clobber_backend(environment=environment, images=images, force=force)
        elif environment or images:
            raise ConfigurationError(
                f"the {backend.name} backend has no environment or images to delete"
            )
        return deleted


# Fields a manifest must have, and their types, to be attached.
_MANIFEST_FIELDS: dict[str, type | tuple[type, ...]] = {
    "function": str,
    "starmap": bool,
    "created": (int, float),
    "segments": list,
}


def read_manifest(data: bytes, where: str) -> dict[str, Any]:
    """A run's manifest, parsed and checked; a corrupt one is a ConfigurationError naming it."""
    try:
        manifest: object = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigurationError(
            f"the run manifest {where} is corrupt (not JSON: {error}); the run cannot be "
            "attached. Its results, if any, are still stored beside it"
        ) from None
    problems = []
    if not isinstance(manifest, dict):
        problems.append("it is not a JSON object")
        manifest = {}
    else:
        for name, kind in _MANIFEST_FIELDS.items():
            if not isinstance(manifest.get(name), kind):
                problems.append(f"{name!r} is missing or of the wrong type")
        segments = manifest.get("segments")
        if isinstance(segments, list) and not all(
            isinstance(pair, list)
            and len(pair) == 2
            and all(isinstance(n, int) and n >= 0 for n in pair)
            for pair in segments
        ):
            problems.append("'segments' is not a list of [first, count] pairs")
    if problems:
        raise ConfigurationError(
            f"the run manifest {where} is corrupt ({'; '.join(problems)}); the run cannot be "
            "attached. Its results, if any, are still stored beside it"
        )
    return manifest
