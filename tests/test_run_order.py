"""A Run's reading side on its own: outcomes handed to it in any order come out as they
completed (``items``, ``async for``), in input order (``items(ordered=True)``, ``gather``) with
gaps filled as they arrive, and a failure at its place, raised or returned.

No worker and no watcher loop runs: each test hands outcomes to the run through the callback
its watcher was given (`finish`), in the order the test chooses, and reads them back. Readers
run as tasks; the test waits for them with `anyio.wait_all_tasks_blocked`, never a sleep.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from aioknot import TaskError, TaskLost
from aioknot._backends.base import RunSpec
from aioknot._backends.local import LocalBackend
from aioknot._manifest import Manifest
from aioknot._run import Run
from aioknot._stores.local import LocalStore
from aioknot._watch import Outcome

RUN_ID = "20261121T000000-abcdef"


def a_run(tmp_path: Path, segments: list[tuple[int, int]]) -> Run[Any]:
    """A run whose inputs (``segments``) are all submitted, re-attached from its manifest: its
    backend run is inert (its process is this one), so only what the test hands it arrives."""
    prefix = f"knots/order/runs/{RUN_ID}"
    spec = RunSpec(
        knot="order",
        run_id=RUN_ID,
        run_prefix=prefix,
        function_key="knots/order/functions/x.pkl",
        store_url=f"file://{tmp_path}",
        starmap=False,
    )
    manifest = Manifest(
        knot="order",
        run=RUN_ID,
        backend="local",
        store=spec.store_url,
        function=spec.function_key,
        starmap=False,
        segments=tuple(segments),
        complete=True,
        total=sum(count for _, count in segments),
    )
    return Run.from_manifest(manifest, spec, LocalStore(str(tmp_path)), LocalBackend(workers=1))


def finish(run: Run[Any], *outcomes: Outcome) -> None:
    """Hand ``outcomes`` to the run as its watcher does: in one batch, through the callback the
    watcher was made with."""
    run.watcher._emit(list(outcomes))


def value(index: int) -> Outcome:
    return Outcome(index, value=index * 10)


def failed(index: int) -> Outcome:
    return Outcome(
        index,
        error=TaskError(
            index=index, remote_type="ValueError", remote_message="no", remote_traceback=""
        ),
    )


def lost(index: int) -> Outcome:
    return Outcome(index, error=TaskLost(index=index, reason="killed"))


class Reader:
    """Reads a run in a task of its own, keeping what it got so far."""

    def __init__(self) -> None:
        self.got: list[tuple[int, Any]] = []
        self.over = False
        self.error: BaseException | None = None

    async def read(self, run: Run[Any], **options: Any) -> None:
        try:
            async for index, result in run.items(**options):
                self.got.append((index, result))
        except Exception as error:
            self.error = error
        self.over = True


async def test_as_completed_is_the_order_outcomes_arrived_in(tmp_path: Path) -> None:
    run = a_run(tmp_path, [(0, 4), (4, 2)])
    reader = Reader()
    async with anyio.create_task_group() as group:
        group.start_soon(reader.read, run)
        await anyio.wait_all_tasks_blocked()
        assert reader.got == []  # nothing finished: the reader waits
        finish(run, value(5))  # the last input first
        await anyio.wait_all_tasks_blocked()
        assert reader.got == [(5, 50)]
        finish(run, value(2), value(0))
        finish(run, value(3))
        await anyio.wait_all_tasks_blocked()
        assert [index for index, _ in reader.got] == [5, 2, 0, 3]
        assert not reader.over  # inputs 1 and 4 have no outcome yet
        finish(run, value(4), value(1))
    assert [index for index, _ in reader.got] == [5, 2, 0, 3, 4, 1]
    assert all(result == index * 10 for index, result in reader.got)
    assert reader.over and reader.error is None and run.done and run.finished == 6


async def test_ordered_holds_back_what_comes_after_a_gap_until_it_is_filled(
    tmp_path: Path,
) -> None:
    run = a_run(tmp_path, [(0, 16), (16, 4)])
    reader = Reader()
    async with anyio.create_task_group() as group:
        group.start_soon(lambda: reader.read(run, ordered=True))
        finish(run, value(2), value(1))
        await anyio.wait_all_tasks_blocked()
        assert reader.got == []  # input 0 is the gap: 1 and 2 wait behind it
        finish(run, value(0))
        await anyio.wait_all_tasks_blocked()
        assert reader.got == [(0, 0), (1, 10), (2, 20)]
        # A gap across a segment's end: 17..19 arrive, 3..16 are still out.
        finish(run, *(value(i) for i in range(17, 20)))
        finish(run, *(value(i) for i in range(3, 16)))
        await anyio.wait_all_tasks_blocked()
        assert [index for index, _ in reader.got] == list(range(16))
        finish(run, value(16))
    assert reader.got == [(i, i * 10) for i in range(20)]
    assert reader.over and reader.error is None


async def test_gather_is_in_input_order_once_the_last_outcome_is_in(tmp_path: Path) -> None:
    run = a_run(tmp_path, [(0, 5)])
    gathered: list[list[Any]] = []

    async def gather() -> None:
        gathered.append(await run.gather())

    async with anyio.create_task_group() as group:
        group.start_soon(gather)
        finish(run, value(4), value(0), value(2), value(1))
        await anyio.wait_all_tasks_blocked()
        assert gathered == []  # input 3 is still out
        finish(run, value(3))
    assert gathered == [[0, 10, 20, 30, 40]]


async def test_a_failure_is_raised_at_its_place_and_the_rest_still_comes(tmp_path: Path) -> None:
    run = a_run(tmp_path, [(0, 4)])
    finish(run, value(0), lost(3), failed(1), value(2))
    # In input order, the first failure raises where it stands ...
    seen = []
    with pytest.raises(TaskError) as raised:
        async for index, result in run.items(ordered=True):
            seen.append((index, result))
    assert seen == [(0, 0)] and raised.value.index == 1
    # ... as completed, the first to arrive does ...
    with pytest.raises(TaskLost) as first:
        async for _ in run:
            pass
    assert first.value.index == 3
    # ... gather raises the failure of the lowest input ...
    with pytest.raises(TaskError) as lowest:
        await run.gather()
    assert lowest.value.index == 1
    # ... and with return_exceptions every outcome is returned, failures as values.
    outcomes = await run.gather(return_exceptions=True)
    assert outcomes[0] == 0 and outcomes[2] == 20
    assert isinstance(outcomes[1], TaskError) and isinstance(outcomes[3], TaskLost)
    status = await run.status()
    assert (status["succeeded"], status["failed"], status["lost"]) == (2, 1, 1)


async def test_every_reader_of_a_run_sees_every_result(tmp_path: Path) -> None:
    run = a_run(tmp_path, [(0, 3)])
    readers = [Reader(), Reader(), Reader()]
    async with anyio.create_task_group() as group:
        group.start_soon(lambda: readers[0].read(run))
        group.start_soon(lambda: readers[1].read(run, ordered=True))
        finish(run, value(1))
        await anyio.wait_all_tasks_blocked()
        group.start_soon(lambda: readers[2].read(run))  # a late reader starts from the first
        finish(run, value(2), value(0))
    assert readers[0].got == readers[2].got == [(1, 10), (2, 20), (0, 0)]
    assert readers[1].got == [(0, 0), (1, 10), (2, 20)]
