"""An `AwsRun` without a backend, for the paths moto cannot take (jobs still queued or
running, throttling, pages of failed children): its Batch client is a fake that answers in
Batch's shapes, the test's own.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.abc

from aioknot._backends.aws.run import AwsRun
from aioknot._backends.base import RunSpec, TaskListener


def run_spec(knot: str) -> RunSpec:
    """The spec of a run of ``knot`` whose workers never run (the Batch client is a fake)."""
    run_id = "20261121T000000-abcdef"
    return RunSpec(
        knot=knot,
        run_id=run_id,
        run_prefix=f"knots/{knot}/runs/{run_id}",
        function_key=f"knots/{knot}/functions/x.pkl",
        store_url="s3://bucket",
        starmap=False,
    )


class FakeTarget:
    """What an `AwsRun` needs from its backend, with ``batch`` (a fake answering in Batch's
    shapes) as every client: the queue and definition exist, and the task group is the test's."""

    def __init__(
        self,
        batch: object,
        group: anyio.abc.TaskGroup,
        *,
        knot: str = "squares",
        watch_timeout: float = 60.0,
    ) -> None:
        self.batch = batch
        self.knot = knot
        self.watch_timeout = watch_timeout
        self._group = group

    async def client(self, service: str) -> Any:
        return self.batch

    async def ensure_ready(self) -> tuple[str, str]:
        return "queue", "definition"

    @property
    def group(self) -> anyio.abc.TaskGroup:
        return self._group


class Losses:
    """A run's listener that keeps every loss the run reports: ``{index: {"reason": ...,
    "log": ..., "exit_code": ..., ...}}`` (what finished comes from the store, not here)."""

    def __init__(self) -> None:
        self.losses: dict[int, dict[str, Any]] = {}
        self.states: list[tuple[str, int, int]] = []  # ("queued"/"started"/"ended", first, count)

    def done(self, first: int, count: int) -> None:
        pass

    def queued(self, first: int, count: int) -> None:
        self.states.append(("queued", first, count))

    def started(self, first: int, count: int) -> None:
        self.states.append(("started", first, count))

    def ended(self, first: int, count: int) -> None:
        self.states.append(("ended", first, count))

    def lost(self, index: int, reason: str, **details: Any) -> None:
        self.losses[index] = {"reason": reason, **details}


@contextlib.asynccontextmanager
async def fake_aws_run(
    batch: object,
    listener: TaskListener,
    *,
    knot: str = "squares",
    watch_timeout: float = 60.0,
) -> AsyncIterator[AwsRun]:
    """An `AwsRun` over a fake Batch client, with a task group for its flush timer, in the
    test's own task (a task group cannot live in a fixture, whose teardown runs in another)."""
    async with anyio.create_task_group() as group:
        target = FakeTarget(batch, group, knot=knot, watch_timeout=watch_timeout)
        yield AwsRun(target, run_spec(knot), listener)
        group.cancel_scope.cancel()
