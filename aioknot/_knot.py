"""``AsyncKnot``: one function, one store, one backend, and the runs of ``map`` / ``amap``.

A knot is an async context manager and owns everything it starts: its store client, its
backend (worker processes or AWS clients) and a task group in which every run's watcher and
background submission live. Leaving ``async with`` cancels those tasks and stops the workers;
no task outlives the knot.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
import anyio.abc

from . import _host
from ._backends import make_backend
from ._backends.base import Backend, KnotSetup, RunSpec
from ._exceptions import ConfigurationError, KnotError
from ._inputs import check_inputs
from ._manifest import check_attachable, read_manifest
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
from ._retention import RunSummary, list_runs, sweep
from ._run import Inputs, Run
from ._stores import open_store
from ._stores.base import Store
from ._tasks import task_group

logger = logging.getLogger("aioknot")

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

    from ._estimate import AutoResources, Estimate, Resources

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
        backend: str | Backend | None = None,
        **options: Unpack[KnotOptionsDict],
    ) -> None:
        self._set_up(func, name, backend, options, operating=False)

    @classmethod
    def _operator(
        cls, name: str, *, backend: str | Backend | None = None, **options: Any
    ) -> AsyncKnot[Any]:
        """A knot without a function, to look at and manage its runs (the CLI's): opening it
        creates nothing (no bucket, image or stack), and it runs nothing."""
        knot: AsyncKnot[Any] = cls.__new__(cls)
        knot._set_up(_operating_only, name, backend, options, operating=True)
        return knot

    def _set_up(
        self,
        func: Callable[..., R],
        name: str | None,
        backend: str | Backend | None,
        options: Mapping[str, Any],
        *,
        operating: bool,
    ) -> None:
        self.func = func
        self.name = validate_knot_name(name) if name is not None else default_knot_name(func)
        self.options: KnotOptions = parse_options(backend, options)
        self._function: PickledFunction = pickle_function(func)
        self._operating = operating
        # The backend checks now, offline, what must fail before anything is created (the
        # AWS backend scans the function's imports for the image's requirements).
        self._backend: Backend = make_backend(backend, self.options)
        self._backend.bind(
            KnotSetup(
                self.name, func, self._function, self.options, self._progress, operating=operating
            )
        )
        self._state = _State.UNOPENED
        self._exit_stack = contextlib.AsyncExitStack()
        self._group: anyio.abc.TaskGroup | None = None
        self._store: Store | None = None
        # Functions by key (with kwargs bound, or not), and which of them the store has.
        self._functions: dict[str, PickledFunction] = {}
        self._stored_functions: dict[str, float] = {}  # key -> when last seen stored
        self._prepared = anyio.Event()
        self._prepare_error: BaseException | None = None
        self._preparing: anyio.CancelScope | None = None  # clobber() stops preparation by it
        self._sweeping: anyio.CancelScope | None = None  # ... and the sweep of old runs by this
        self._swept = anyio.Event()
        # The knot's host task (see _host): opened, asked to close, done (made anew when the
        # knot opens, on its loop); and what failed opening or closing.
        self._opened = self._closing = self._host_done = anyio.Event()
        self._open_error: BaseException | None = None
        self._close_error: BaseException | None = None
        self._runs: weakref.WeakSet[Run[Any]] = weakref.WeakSet()  # to cancel on close
        self._auto: AutoResources | None = None  # resources="auto": what the trial chose
        if self.options.resources == "auto":
            from ._estimate import AutoResources

            self._auto = AutoResources()

    @property
    def backend(self) -> str:
        return self.options.backend

    @property
    def store(self) -> Store:
        """The knot's open store."""
        store, _, _ = self._check_open()
        return store

    async def runs(self) -> list[RunSummary]:
        """This knot's runs in its store, newest first: id, created, finished, state, counts."""
        store, _, _ = self._check_open()
        return await list_runs(store, self.name)

    @property
    def function_key(self) -> str:
        return function_key(self.name, self._function.digest)

    @property
    def resources(self) -> Resources | None:
        """The vcpus and memory that ``resources="auto"`` chose for the knot's tasks (from a
        trial of the first map's first inputs); None until then, or without it."""
        return self._auto.chosen if self._auto is not None else None

    def __repr__(self) -> str:
        chosen = f" resources=({self.resources})" if self.resources is not None else ""
        return f"<AsyncKnot {self.name!r} backend={self.backend!r}{chosen} {self._state.value}>"

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
                self._exit_stack.push_async_callback(self._backend.aclose)
                self._store = await self._open_store()
                self._group = await self._exit_stack.enter_async_context(task_group())
                # Runs first on exit: stop every watcher and worker before the group is awaited.
                self._exit_stack.callback(self._group.cancel_scope.cancel)
                self._backend.start(self._group, self._store)
                # clobber() may cancel it before the task even starts.
                self._preparing, self._sweeping = anyio.CancelScope(), anyio.CancelScope()
                if not self._operating:
                    self._group.start_soon(self._prepare)
                    self._group.start_soon(self._sweep)
                else:
                    self._prepared.set()
                    self._swept.set()
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
        outlive = self._backend.runs_outlive_client
        with anyio.CancelScope(shield=True):
            for run in list(self._runs):
                # A re-attached run's work belongs to whoever started it (or to Batch).
                if (outlive and run.retained or run._attached) and not run.done:
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
        """The store the backend decides (AWS: the account's bucket), else the one the options
        name; closed with the knot unless the user passed it open (``store=`` an object)."""
        store = await self._backend.open_store()
        if store is None:
            store = self.options.store or await open_store(self.options, default_home())
        if store is not self.options.store:
            self._exit_stack.push_async_callback(store.aclose)
        return store

    async def _sweep(self) -> None:
        """Remove this knot's runs older than ``retention_days`` (at most once a day): in the
        background, and a failure is only logged (the store's own errors reach the user on
        the next map)."""
        assert self._store is not None and self._sweeping is not None
        try:
            with self._sweeping:
                await sweep(self._store, self.name, retention_days=self.options.retention_days)
        except Exception as error:
            logger.info("%s: sweeping old runs failed: %s", self.name, error)
        finally:
            self._swept.set()

    async def _prepare(self) -> None:
        """Make the backend ready (stack, image) while the first inputs are uploaded."""
        try:
            assert self._preparing is not None
            with self._preparing:
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
        if self._sweeping is not None:
            self._sweeping.cancel()
        await self._prepared.wait()
        await self._swept.wait()
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
        assert self._store is not None and self._group is not None
        return self._store, self._backend, self._group

    # -- runs ----------------------------------------------------------------------------

    def _check_runs_functions(self) -> None:
        if self._operating:
            raise KnotError(
                f"knot {self.name!r} was opened to look at its runs, not to run its function: "
                "open it with its function (AsyncKnot(func, name=...)) to map"
            )

    def _new_run(
        self,
        *,
        starmap: bool,
        retain: bool,
        return_exceptions: bool,
        kwargs: Mapping[str, Any] | None,
    ) -> Run[R]:
        store, backend, _ = self._check_open()
        self._check_runs_functions()
        function = self._function_with(kwargs)  # before anything is stored or started
        spec = self._run_spec(
            store, new_run_id(), function_key(self.name, function.digest), starmap=starmap
        )
        run: Run[R] = Run.start(
            spec, store, backend, retain=retain, return_exceptions=return_exceptions
        )
        self._functions[spec.function_key] = function
        self._runs.add(run)
        return run

    def _run_spec(self, store: Store, run_id: str, function: str, *, starmap: bool) -> RunSpec:
        return RunSpec(
            knot=self.name,
            run_id=run_id,
            run_prefix=run_prefix(self.name, run_id),
            function_key=function,
            store_url=store.url,
            starmap=starmap,
            store_environment=tuple(sorted(store.worker_environment().items())),
        )

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
        """Store the run's function (once per content), then its inputs, submitting them as
        they are stored; they queue up while the backend is still getting ready."""
        store, _, _ = self._check_open()
        await self._store_function(store, run.function_key)
        if isinstance(inputs, Run):  # a pipeline: input i is that run's result i
            await run._follow(inputs, ready=self._wait_prepared)
        elif isinstance(inputs, AmapIterator):  # a pipeline on an amap's results
            await run._send_results(inputs.run, inputs.outcomes(), ready=self._wait_prepared)
        else:
            if self._auto is not None:  # resources="auto": measured on the first inputs
                inputs = await self._auto.before_submit(self, run, inputs)
            await run._send(inputs, ready=self._wait_prepared)

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
        group.start_soon(run._watch)
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
        return AmapIterator(
            run, lambda pairs: self._iterate(group, run, inputs, ordered, pairs=pairs)
        )

    async def _iterate(
        self,
        group: anyio.abc.TaskGroup,
        run: Run[R],
        inputs: Inputs,
        ordered: bool,
        *,
        pairs: bool = False,
    ) -> AsyncGenerator[Any, None]:
        """The results of an amap's ``run`` (with ``pairs``: ``(index, value or failure)``,
        what a pipeline takes), submitting ``inputs`` meanwhile."""
        submission = anyio.CancelScope()
        submission_over = anyio.Event()

        async def submit_in_background() -> None:
            try:
                with submission:
                    try:
                        await self._submit(run, inputs)
                    except Exception as error:
                        run._fail(error)
                        await run.cancel()
            finally:
                submission_over.set()

        async def remove_data() -> None:
            # The run cannot be re-attached (it belonged to this iteration): its inputs and
            # results go once nothing more can write them. Best effort: what a closing knot
            # leaves behind, the retention sweep removes.
            await submission_over.wait()
            try:
                await run._remove_data()
            except Exception as error:
                logger.info(
                    "%s: removing the data of amap run %s failed: %s", self.name, run.id, error
                )

        group.start_soon(run._watch)
        group.start_soon(submit_in_background)
        try:
            if pairs:
                async for pair in run.items(ordered=ordered, return_exceptions=True):
                    yield pair
            else:
                async for _, value in run.items(ordered=ordered):
                    yield value
        finally:
            submission.cancel()
            await run.cancel()
            if self._state is _State.OPENED:  # a closed knot's task group takes no task
                group.start_soon(remove_data)

    async def estimate(
        self,
        sample_inputs: Inputs,
        *,
        trials: int = 3,
        starmap: bool = False,
        kwargs: Mapping[str, Any] | None = None,
    ) -> Estimate:
        """Measure the function on ``sample_inputs`` (each run ``trials`` times, on the
        knot's backend, each in a process of its own) and return an `Estimate`: wall time,
        CPU time, peak memory and bytes written per input, the vcpus and memory (and, on
        Batch, the instance family) they suggest, and the expected duration and cost of
        ``n`` inputs. A sample input that raises makes it raise `KnotError`, naming it.
        """
        from ._estimate import estimate

        return await estimate(self, sample_inputs, trials=trials, starmap=starmap, kwargs=kwargs)

    async def attach(self, run_id: str) -> Run[R]:
        """A run of this knot started earlier, maybe by another process, from its manifest."""
        store, backend, group = self._check_open()
        key = manifest_key(run_prefix(self.name, validate_run_id(run_id)))
        try:
            data = await store.get(key)
        except KeyError:
            raise ConfigurationError(
                f"knot {self.name!r} has no run {run_id!r} in {store.url}"
            ) from None
        manifest = read_manifest(data, f"{store.url}/{key}")
        check_attachable(manifest, run_id)
        spec = self._run_spec(store, run_id, manifest.function, starmap=manifest.starmap)
        run: Run[R] = Run.from_manifest(manifest, spec, store, backend)
        if self._operating:  # it runs nothing: a lost task stays lost
            run.backend_run.watch_only()
        self._runs.add(run)
        group.start_soon(run._watch)
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
        # Checked here, before anything is deleted, so that a refusal deletes nothing; once
        # checked, the backend need not ask again (force=True below).
        await backend.check_clobber(environment=environment, images=images, force=force)
        force = True
        for run in list(self._runs):
            await run.cancel()
            # A run that just finished may still be writing its manifest: let it, first, so
            # that nothing is written after the deletion below.
            with anyio.move_on_after(CLOSE_CANCEL_SECONDS):
                await run._watched.wait()
        deleted = await store.delete_prefix(knot_prefix(self.name) + "/")
        self._stored_functions.clear()
        self._progress(f"deleted {deleted} objects under {knot_prefix(self.name)}/")
        await backend.clobber(environment=environment, images=images, force=force)
        return deleted


class AmapIterator(AsyncIterator[R]):
    """What ``amap`` returns: its results, as completed (or in order), as an async iterator;
    and, given to another knot's ``map``/``amap``, the inputs of a pipeline (input ``i``
    downstream is result ``i`` here). Nothing runs until it is first iterated."""

    def __init__(self, run: Run[R], iterate: Callable[[bool], AsyncGenerator[Any, None]]) -> None:
        self.run = run
        self._iterate = iterate
        self._iterator: AsyncGenerator[Any, None] | None = None

    def __aiter__(self) -> AmapIterator[R]:
        return self

    async def __anext__(self) -> R:
        if self._iterator is None:
            self._iterator = self._iterate(False)
        value: R = await self._iterator.__anext__()
        return value

    async def aclose(self) -> None:
        """Stop iterating: the run is cancelled and its workers stop (as leaving the loop)."""
        if self._iterator is not None:
            await self._iterator.aclose()

    def outcomes(self) -> AsyncGenerator[tuple[int, Any], None]:
        """``(index, value or TaskFailure)`` as completed: what a pipeline downstream takes."""
        if self._iterator is not None:
            raise ConfigurationError(
                f"this amap's results (run {self.run.id}) are already being read: give a "
                "fresh knot.amap(...) to the next knot's map, or a Run (await knot.map(...))"
            )
        self._iterator = self._iterate(True)
        return self._iterator


def _operating_only(*args: object, **kwargs: object) -> None:
    """The function of a knot opened only to operate its runs: never called."""
    raise KnotError("this knot was opened to operate runs only")
