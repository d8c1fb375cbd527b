"""The Backend seam: who runs the worker (local processes, AWS Batch array jobs, ...).

A backend is owned by one knot. The knot binds it (``bind``, in the knot's constructor: pure
checks that must fail before anything is created), may let it open the store (``open_store``),
starts it in the knot's task group (``start``), prepares it beside the first uploads
(``prepare``), and for each run asks it for a ``BackendRun`` (``open_run``, or ``attach_run``
for a run started earlier). A ``BackendRun`` takes stored input segments as they become ready,
says which tasks it saw die (and, when it knows, which finished) through a ``TaskListener``,
and answers status, cancellation and logs. Results themselves always come from the store.

Every capability is declared here. Those a backend may lack have a default that does
nothing (``start``, ``prepare``, ``clobber``, ``aclose``) or that says plainly that this
backend cannot (``attach_run``, ``check_clobber`` of an environment or images, ``logs``).
A new backend is a subclass in a package of its own plus one line in the registry
(``aioknot._backends``).
"""

from __future__ import annotations

import abc
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import anyio.abc

from .._exceptions import ConfigurationError

if TYPE_CHECKING:
    from .._manifest import Manifest
    from .._options import KnotOptions
    from .._pickling import PickledFunction
    from .._stores.base import Store


@dataclass(frozen=True)
class KnotSetup:
    """What a backend is told about the knot it serves, in the knot's constructor."""

    name: str
    func: Callable[..., Any]
    function: PickledFunction  # the knot's function, pickled (its digest keys the store)
    options: KnotOptions
    progress: Callable[[str], None]  # reports a step to the user (and the log)
    # The knot only looks at and manages runs (the CLI): it runs nothing, so the backend
    # prepares nothing and opening creates nothing (no bucket, image or stack).
    operating: bool = False


@dataclass(frozen=True)
class RunSpec:
    """What any worker needs to run one run's inputs."""

    knot: str
    run_id: str
    run_prefix: str  # the run's key prefix in the store
    function_key: str
    store_url: str
    starmap: bool
    store_environment: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Segment:
    """Stored inputs ``first .. first + count - 1`` (one object in the store)."""

    first: int
    count: int

    @property
    def stop(self) -> int:
        return self.first + self.count


@dataclass(frozen=True)
class Capacity:
    """Where a knot's tasks run, as an estimate needs it (`Backend.capacity`)."""

    tasks: int  # tasks that run at once (local: the worker processes)
    # Batch: the compute environment's vCPUs, which tasks share (tasks at once: max_vcpus //
    # a task's vcpus); None where that does not follow from a task's vCPUs.
    max_vcpus: int | None = None
    # Whose prices apply ("EC2", "SPOT", "FARGATE", "FARGATE_SPOT"); None: this machine's.
    compute_type: str | None = None
    # Whether a task is held to its vcpus and memory (Batch) or they are only advice (local).
    enforced: bool = False


@dataclass(frozen=True)
class BackendKind:
    """What the registry names for a backend: its options, and how to make one."""

    name: str
    option_names: frozenset[str]
    # The backend's own options (only those named in option_names), checked without I/O into
    # a frozen object; `KnotOptions.backend_options` hands it back. Given the core options.
    parse_options: Callable[[Mapping[str, object], KnotOptions], object]
    # A backend for a knot with these options (bound to the knot afterwards).
    create: Callable[[KnotOptions], Backend]


def not_supported(backend: str, what: str, instead: str) -> ConfigurationError:
    """The error for a capability a backend does not have, saying what to do instead."""
    return ConfigurationError(f"the {backend} backend cannot {what}: {instead}")


class TaskListener(Protocol):
    """What a backend tells a run's watcher about its tasks. Every call is a hint that saves
    looking at the store (or says when looking is pointless); the store stays the truth for
    results, and a backend that says nothing gets a watcher that finds every record anyway.

    Task states (``queued``, ``started``, ``ended``) go together: a backend that says some
    inputs are queued must say when their tasks start and when tasks end, for the watcher
    does not look for a queued input's record until then.
    """

    def done(self, first: int, count: int) -> None:
        """A hint: the records of ``first .. first + count - 1`` are in the store now, as one
        object (saves discovering them)."""
        ...

    def queued(self, first: int, count: int) -> None:
        """The tasks of inputs ``first .. first + count - 1`` have not started (Batch: their
        job waits to be submitted, or its children are SUBMITTED, PENDING, RUNNABLE or
        STARTING), so none of them can have written a record: the watcher does not look for
        their records until `started` or `ended` names them. ``count`` may run past the run's
        inputs: a backend that has started nothing says ``queued(0, sys.maxsize)``."""
        ...

    def started(self, first: int, count: int) -> None:
        """Tasks of inputs in ``first .. first + count - 1`` may have started (some run or
        ran): their records may turn up from now on."""
        ...

    def ended(self, first: int, count: int) -> None:
        """Tasks of inputs in ``first .. first + count - 1`` ended since the last call (Batch:
        the job's SUCCEEDED count rose): their records should be in the store now, so the
        watcher looks at once. Implies `started`."""
        ...

    def lost(
        self,
        index: int,
        reason: str,
        *,
        log: str | None = None,
        exit_code: int | None = None,
        job_id: str | None = None,
        attempts: int | None = None,
    ) -> None:
        """The backend saw the task of ``index`` end, perhaps without writing a record.

        Only a hint: the input becomes ``TaskLost`` (with these details) if no record holding
        it exists, grouped records included; a record found later wins.
        """
        ...


class LogTail(abc.ABC):
    """One input's log, read as it grows (``run.logs(index, follow=True)``): each `read`
    returns the lines written since the one before, so that following a long task's log
    never reads it again from the start."""

    # How long after a task ends its last lines may still be on their way to the log: a
    # follower reads on that long after the input's outcome before its final read.
    lag_seconds: float = 0.0

    @abc.abstractmethod
    async def read(self, *, final: bool = False) -> list[str]:
        """The lines written since the last read ([] if none, or no log exists yet).

        ``final``: the input has an outcome, so nothing more will be written: every line,
        a last one without its line break included (otherwise held back until it is whole).
        """


class _RereadTail(LogTail):
    """A tail for a backend that can only read a log whole (`BackendRun.logs`): each read
    reads it all and returns the lines past those returned before."""

    def __init__(self, run: BackendRun, index: int) -> None:
        self._run = run
        self._index = index
        self._seen = 0

    async def read(self, *, final: bool = False) -> list[str]:
        lines = await self._run.logs(self._index)
        fresh = lines[self._seen :]
        self._seen = max(self._seen, len(lines))
        return fresh


class BackendRun(abc.ABC):
    """One run's tasks on a backend."""

    backend_name: ClassVar[str] = "this"

    @property
    @abc.abstractmethod
    def job_ids(self) -> list[str]:
        """The backend's ids for what it submitted (recorded in the run's manifest)."""

    @abc.abstractmethod
    async def submit(self, segments: Sequence[Segment], *, last: bool) -> None:
        """Run these stored segments; ``last`` says no more will come for this run."""

    def can_follow(self, upstream: BackendRun) -> bool:
        """Whether this run can take its inputs from ``upstream``'s records by itself (a
        pipeline whose values never pass through the client): see `follow`."""
        return False

    async def follow(self, upstream: BackendRun, upstream_prefix: str) -> None:
        """Run every input ``i`` on the value of ``upstream``'s input ``i``, read by the
        worker from the records under ``upstream_prefix``, each as soon as that record can
        exist, without the client (the run's segments mirror upstream's: `can_follow`)."""
        raise NotImplementedError

    def watch_only(self) -> None:
        """Its client only looks (an operator's knot, the CLI's): the run submits nothing
        of its own accord, such as a task run again."""
        return None  # most backends submit nothing unasked

    @abc.abstractmethod
    async def watch(self) -> None:
        """Return once the backend says every submitted task is over, reporting deaths."""

    async def status(self) -> dict[str, int]:
        """Counts of this run's tasks by the backend's states (e.g. queued, running)."""
        return {}

    @abc.abstractmethod
    async def cancel(self) -> None:
        """Stop every task of this run that is queued or running."""

    async def logs(self, index: int) -> list[str]:
        """The log lines of the task that ran input ``index``."""
        raise not_supported(
            self.backend_name,
            "show a task's logs",
            "its workers write to the stderr of the process that runs them",
        )

    def tail_logs(self, index: int) -> LogTail:
        """Input ``index``'s log, to be read as it grows (see `LogTail`). By default each
        read reads the whole log through `logs`; a backend that can read from where it
        left off says so here."""
        return _RereadTail(self, index)


class Backend(abc.ABC):
    """Who runs a knot's tasks. Subclasses set ``name`` and implement ``open_run``."""

    name: ClassVar[str]
    # Whether a run's tasks go on without the client (Batch jobs do; local workers belong to
    # the knot): closing a knot then leaves its map() runs running, to be re-attached.
    runs_outlive_client: ClassVar[bool] = False

    _setup: KnotSetup | None = None
    _group: anyio.abc.TaskGroup | None = None
    _knot_store: Store | None = None

    def bind(self, knot: KnotSetup) -> None:
        """Serve ``knot``. Called once, in the knot's constructor: a backend checks here,
        without any I/O, what must fail before anything is created (the AWS backend scans the
        function's imports). A backend object serves one knot."""
        if self._setup is not None and self._setup.name != knot.name:
            raise ConfigurationError(
                f"this {self.name} backend object already serves knot {self._setup.name!r}: "
                f"make one backend object per knot (for {knot.name!r} too)"
            )
        self._setup = knot

    @property
    def setup(self) -> KnotSetup:
        """The knot this backend serves (see `bind`)."""
        if self._setup is None:
            raise ConfigurationError(f"the {self.name} backend is not bound to a knot")
        return self._setup

    async def open_store(self) -> Store | None:
        """The knot's store, if this backend decides it (AWS: the account's bucket), opened;
        None to use the store the options name."""
        return None

    def start(self, group: anyio.abc.TaskGroup, store: Store) -> None:
        """Keep ``group``, the knot's task group, for the backend's own background tasks, and
        ``store``, the knot's open store (the local backend keeps tasks' logs there)."""
        self._group = group
        self._knot_store = store

    @property
    def knot_store(self) -> Store:
        """The knot's open store (see `start`)."""
        if self._knot_store is None:
            raise ConfigurationError(f"the {self.name} backend was not started by its knot")
        return self._knot_store

    async def prepare(self) -> None:
        """Make the environment ready (worker pool, stack, image); runs beside uploads."""
        return None  # nothing to make ready

    @abc.abstractmethod
    def open_run(self, spec: RunSpec, listener: TaskListener) -> BackendRun:
        """A new run's tasks, to be given segments as they are stored."""

    def attach_run(self, spec: RunSpec, listener: TaskListener, manifest: Manifest) -> BackendRun:
        """A run submitted earlier (maybe by another process), re-attached from its manifest."""
        raise not_supported(
            self.name, "re-attach a run", "its runs end with the knot that started them"
        )

    async def check_clobber(self, *, environment: bool, images: bool, force: bool) -> None:
        """Raise, saying why, if `clobber` with these arguments would be refused: the knot
        asks before it deletes anything, so that a refusal deletes nothing. Read-only."""
        if environment or images:
            raise not_supported(
                self.name,
                "delete an environment or images",
                "it has none; call clobber() without environment= or images=",
            )

    async def clobber(self, *, environment: bool, images: bool, force: bool) -> None:
        """Delete what this backend created for the knot (the store is the knot's business),
        after `check_clobber` passed."""
        return None  # nothing of its own

    def capacity(self) -> Capacity:
        """How many tasks run at once, and on what: what an estimate's duration and price
        follow (``knot.estimate``)."""
        return Capacity(tasks=os.cpu_count() or 1)

    def fit_resources(self, vcpus: float, memory: int) -> tuple[float, int]:
        """The smallest resources this backend gives a task that hold ``vcpus`` and
        ``memory`` MiB: whole vCPUs (at least 1), memory in steps of 256 MiB (at least 512)."""
        return max(1, math.ceil(vcpus)), max(512, -(-memory // 256) * 256)

    async def use_resources(self, vcpus: float, memory: int) -> None:
        """Give the tasks submitted from now on ``vcpus`` and ``memory`` MiB
        (``resources="auto"``). A backend that does not hold tasks to resources ignores it."""
        return None

    async def aclose(self) -> None:
        """Stop everything the backend started and close its clients."""
        return None  # nothing started


class EndedRun(BackendRun):
    """A re-attached run that is known to be over (it was cancelled): nothing more will come;
    its tasks' logs are read through ``reader`` (the backend's re-attached run), if any."""

    def __init__(self, job_ids: Sequence[str], reader: BackendRun | None = None) -> None:
        self._job_ids = list(job_ids)
        self._reader = reader

    async def logs(self, index: int) -> list[str]:
        if self._reader is None:
            return await super().logs(index)
        return await self._reader.logs(index)

    def tail_logs(self, index: int) -> LogTail:
        if self._reader is None:
            return super().tail_logs(index)
        return self._reader.tail_logs(index)

    @property
    def job_ids(self) -> list[str]:
        return self._job_ids

    async def submit(self, segments: Sequence[Segment], *, last: bool) -> None:
        raise RuntimeError("a run that is over takes no new inputs")

    async def watch(self) -> None:
        return None

    async def cancel(self) -> None:
        return None
