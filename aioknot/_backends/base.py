"""The Backend seam: who runs the worker (local processes, or AWS Batch array jobs).

A backend is an async context manager owned by a knot. For each run it hands out a
``BackendRun``, which takes stored input segments as they become ready, says which tasks it
saw die (and, when it knows, which finished) through a ``TaskListener``, and answers status
and cancellation. Results themselves always come from the store, never from the backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


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


class TaskListener(Protocol):
    def done(self, first: int, count: int) -> None:
        """A hint: the records of ``first .. first + count - 1`` are in the store now, as one
        object (saves discovering them)."""
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


class BackendRun(Protocol):
    @property
    def job_ids(self) -> list[str]:
        """The backend's ids for what it submitted (recorded in the run's manifest)."""
        ...

    async def submit(self, segments: Sequence[Segment], *, last: bool) -> None:
        """Run these stored segments; ``last`` says no more will come for this run."""
        ...

    async def watch(self) -> None:
        """Return once the backend says every submitted task is over, reporting deaths."""
        ...

    async def status(self) -> dict[str, int]:
        """Counts of this run's tasks by the backend's states (e.g. queued, running)."""
        ...

    async def cancel(self) -> None:
        """Stop every task of this run that is queued or running."""
        ...


class Backend(Protocol):
    name: str
    # Whether a run's tasks go on without the client (Batch jobs do; local workers belong to
    # the knot): closing a knot then leaves its map() runs running, to be re-attached.
    runs_outlive_client: bool

    async def prepare(self) -> None:
        """Make the environment ready (worker pool, stack, image); may run beside uploads."""
        ...

    def open_run(self, spec: RunSpec, listener: TaskListener) -> BackendRun: ...

    def attach_run(
        self, spec: RunSpec, listener: TaskListener, manifest: dict[str, object]
    ) -> BackendRun:
        """A run submitted earlier (maybe by another process), re-attached from its manifest."""
        ...

    async def aclose(self) -> None: ...


class EndedRun:
    """A re-attached run that is known to be over (it was cancelled): nothing more will come."""

    def __init__(self, job_ids: list[str]) -> None:
        self._job_ids = job_ids

    @property
    def job_ids(self) -> list[str]:
        return self._job_ids

    async def submit(self, segments: Sequence[Segment], *, last: bool) -> None:
        raise RuntimeError("a run that is over takes no new inputs")

    async def watch(self) -> None:
        return None

    async def status(self) -> dict[str, int]:
        return {}

    async def cancel(self) -> None:
        return None
