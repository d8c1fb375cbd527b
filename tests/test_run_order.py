"""A Run's reading side: outcomes that arrive in any order come out as they completed
(``items``, ``async for``), in input order (``items(ordered=True)``, ``gather``) with gaps
filled as they arrive, and a failure at its place, raised or returned.

A run is driven as its knot drives it (`Run.start`, ``_send``, ``_watch``), on a local store,
but no worker runs: the backend's tasks never end on their own (`StillRunning`), and the test
writes each input's record itself, when it chooses, telling the watcher as a backend does
(`Fed`). Readers run as tasks; the test waits for what they got (events), never a sleep.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from aioknot import TaskError, TaskLost
from aioknot._backends.base import Backend, BackendRun, RunSpec, Segment, TaskListener
from aioknot._run import Run
from aioknot._stores.local import LocalStore
from aioknot._worker import encode_error_record, encode_value_record, result_key

RUN_ID = "20261121T000000-abcdef"


class StillRunning(BackendRun):
    """A run's tasks that never end on their own: only the records in the store finish it."""

    @property
    def job_ids(self) -> list[str]:
        return []

    async def submit(self, segments: Sequence[Segment], *, last: bool) -> None:
        pass

    async def watch(self) -> None:
        await anyio.sleep_forever()

    async def cancel(self) -> None:
        pass


class NoWorkers(Backend):
    name = "no-workers"

    def open_run(self, spec: RunSpec, listener: TaskListener) -> BackendRun:
        return StillRunning()


class Fed:
    """A run whose outcomes the test hands in: a record in the store and a hint to the
    watcher, as a worker and its backend would, or a loss the backend reports."""

    def __init__(self, run: Run[Any], store: LocalStore, prefix: str) -> None:
        self.run = run
        self._store = store
        self._prefix = prefix

    async def value(self, *indexes: int) -> None:
        """Input ``i`` returned ``10 * i``."""
        for index in indexes:
            await self._store.put(result_key(self._prefix, index), encode_value_record(index * 10))
        for index in indexes:
            self.run.watcher.done(index, 1)

    async def failed(self, index: int) -> None:
        """Input ``index`` raised ValueError."""
        record = encode_error_record(ValueError(f"no {index}"))
        await self._store.put(result_key(self._prefix, index), record)
        self.run.watcher.done(index, 1)

    def lost(self, index: int) -> None:
        """Input ``index``'s task died without a record."""
        self.run.watcher.lost(index, "killed")


@contextlib.asynccontextmanager
async def a_run(tmp_path: Path, count: int) -> AsyncIterator[Fed]:
    """A run of ``count`` inputs, stored and submitted, watched until each has an outcome."""
    store = LocalStore(str(tmp_path))
    prefix = f"knots/order/runs/{RUN_ID}"
    spec = RunSpec(
        knot="order",
        run_id=RUN_ID,
        run_prefix=prefix,
        function_key="knots/order/functions/x.pkl",
        store_url=store.url,
        starmap=False,
    )
    run: Run[Any] = Run.start(spec, store, NoWorkers(), retain=True, return_exceptions=False)

    async def ready() -> None:
        pass

    await run._send(range(count), ready=ready)
    async with anyio.create_task_group() as group:
        group.start_soon(run._watch)
        yield Fed(run, store, prefix)
        with anyio.fail_after(30):  # the watch ends once every input has its outcome
            await run._watched.wait()


class Reader:
    """Reads a run in a task of its own, keeping what it got so far."""

    def __init__(self) -> None:
        self.got: list[tuple[int, Any]] = []
        self.over = False
        self.error: BaseException | None = None
        self._more = anyio.Event()

    async def read(self, run: Run[Any], **options: Any) -> None:
        try:
            async for index, result in run.items(**options):
                self.got.append((index, result))
                self._more.set()
                self._more = anyio.Event()
        except Exception as error:
            self.error = error
        finally:
            self.over = True
            self._more.set()

    async def has(self, count: int) -> None:
        """Until this reader got ``count`` outcomes (or its iteration ended)."""
        with anyio.fail_after(30):
            while len(self.got) < count and not self.over:
                await self._more.wait()
        assert len(self.got) >= count, (self.got, self.error)

    @property
    def indexes(self) -> list[int]:
        return [index for index, _ in self.got]


async def test_as_completed_is_the_order_outcomes_arrived_in(tmp_path: Path) -> None:
    reader = Reader()
    async with a_run(tmp_path, 6) as fed, anyio.create_task_group() as group:
        group.start_soon(reader.read, fed.run)
        await anyio.wait_all_tasks_blocked()
        assert reader.got == []  # nothing finished: the reader waits
        for number, index in enumerate([5, 2, 0, 3], start=1):
            await fed.value(index)
            await reader.has(number)
        assert reader.indexes == [5, 2, 0, 3] and not reader.over  # 1 and 4 are still out
        await fed.value(4, 1)
    assert reader.indexes[:4] == [5, 2, 0, 3] and sorted(reader.indexes[4:]) == [1, 4]
    assert all(result == index * 10 for index, result in reader.got)
    assert reader.over and reader.error is None
    assert fed.run.done and fed.run.finished == 6


async def test_ordered_holds_back_what_comes_after_a_gap_until_it_is_filled(
    tmp_path: Path,
) -> None:
    ordered, witness = Reader(), Reader()
    async with a_run(tmp_path, 20) as fed, anyio.create_task_group() as group:
        group.start_soon(lambda: ordered.read(fed.run, ordered=True))
        group.start_soon(witness.read, fed.run)  # sees each outcome as it arrives
        await fed.value(2, 1)
        await witness.has(2)
        await anyio.wait_all_tasks_blocked()
        assert ordered.got == []  # input 0 is the gap: 1 and 2 wait behind it
        await fed.value(0)
        await ordered.has(3)
        assert ordered.got == [(0, 0), (1, 10), (2, 20)]
        # A gap across the end of the first segment (16 inputs): 17..19 and 3..15 are in.
        await fed.value(*range(17, 20), *range(3, 16))
        await witness.has(19)
        await anyio.wait_all_tasks_blocked()
        assert ordered.indexes == list(range(16))
        await fed.value(16)
    assert ordered.got == [(i, i * 10) for i in range(20)]
    assert ordered.over and ordered.error is None


async def test_gather_is_in_input_order_once_the_last_outcome_is_in(tmp_path: Path) -> None:
    gathered: list[list[Any]] = []
    witness = Reader()
    async with a_run(tmp_path, 5) as fed, anyio.create_task_group() as group:

        async def gather() -> None:
            gathered.append(await fed.run.gather())

        group.start_soon(gather)
        group.start_soon(witness.read, fed.run)
        await fed.value(4, 0, 2, 1)
        await witness.has(4)
        await anyio.wait_all_tasks_blocked()
        assert gathered == []  # input 3 is still out
        await fed.value(3)
    assert gathered == [[0, 10, 20, 30, 40]]


async def test_a_failure_is_raised_at_its_place_and_the_rest_still_comes(tmp_path: Path) -> None:
    witness = Reader()
    async with a_run(tmp_path, 4) as fed, anyio.create_task_group() as group:
        group.start_soon(lambda: witness.read(fed.run, return_exceptions=True))
        fed.lost(3)  # the first outcome: input 3's task died
        await witness.has(1)
        await fed.value(0, 2)
        await fed.failed(1)
    run = fed.run
    # In input order, the first failure raises where it stands ...
    seen = []
    with pytest.raises(TaskError) as raised:
        async for index, result in run.items(ordered=True):
            seen.append((index, result))
    assert seen == [(0, 0)] and raised.value.index == 1
    assert raised.value.remote_type == "ValueError" and raised.value.remote_message == "no 1"
    # ... as completed, the first to arrive does ...
    with pytest.raises(TaskLost) as first:
        async for _ in run:
            pass
    assert first.value.index == 3 and "killed" in first.value.reason
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
    readers = [Reader(), Reader(), Reader()]
    async with a_run(tmp_path, 3) as fed, anyio.create_task_group() as group:
        group.start_soon(readers[0].read, fed.run)
        group.start_soon(lambda: readers[1].read(fed.run, ordered=True))
        await fed.value(1)
        await readers[0].has(1)
        group.start_soon(readers[2].read, fed.run)  # a late reader starts from the first
        await fed.value(2)
        await readers[0].has(2)
        await fed.value(0)
    assert readers[0].got == readers[2].got == [(1, 10), (2, 20), (0, 0)]
    assert readers[1].got == [(0, 0), (1, 10), (2, 20)]
