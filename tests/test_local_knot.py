"""AsyncKnot on the local backend: real worker processes, a real store directory."""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
from helpers.aws import MotoClients, make_bucket
from helpers.processes import gone, wait_for_no_workers, worker_processes
from helpers.waiting import wait_until_async
from infra.fault_proxy import FaultProxy
from infra.moto import MotoServer

import aioknot
from aioknot import AsyncKnot, SerializationError, TaskError, TaskLost

pytestmark = pytest.mark.usefixtures("aioknot_home")


def square(x: int) -> int:
    return x * x


def add(a: int, b: int) -> int:
    return a + b


def sleepy(seconds: float) -> float:
    time.sleep(seconds)  # the work itself: an input that takes this long
    return seconds


def fails_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"three is not allowed (got {x})")
    return x


def returns_none(x: int) -> None:
    return None


def dies_on_three(x: int) -> int:
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


async def test_map_gather_equals_the_serial_computation() -> None:
    async with AsyncKnot(square, name="squares", backend="local") as knot:
        run = await knot.map(range(100))
        assert len(run) == 100
        assert await run.gather() == [x * x for x in range(100)]
        status = await run.status()
        assert status["succeeded"] == 100 and status["pending"] == 0


async def test_amap_yields_every_result_while_submitting() -> None:
    async with AsyncKnot(square, backend="local") as knot:
        results = [y async for y in knot.amap(range(2_000))]
    assert sorted(results) == sorted(x * x for x in range(2_000))


async def test_results_come_as_completed_not_in_input_order() -> None:
    durations = [0.6, 0.05, 0.05, 0.05]
    async with AsyncKnot(sleepy, backend="local", workers=2) as knot:
        run = await knot.map(durations)
        order = [index async for index, _ in run.items()]
        assert sorted(order) == [0, 1, 2, 3]
        assert order[-1] == 0  # the slow first input finishes last
        ordered = [value async for value in knot.amap(durations, ordered=True)]
        assert ordered == durations


async def test_starmap_over_itertools_product() -> None:
    pairs = itertools.product(range(5), range(7))
    async with AsyncKnot(add, backend="local") as knot:
        run = await knot.map(pairs, starmap=True)
        assert await run.gather() == [a + b for a, b in itertools.product(range(5), range(7))]


async def test_async_iterable_inputs_are_consumed_lazily() -> None:
    pulled: list[int] = []

    async def numbers() -> AsyncIterator[int]:
        for i in range(50):
            pulled.append(i)
            yield i

    async with AsyncKnot(square, backend="local") as knot:
        run = await knot.map(numbers())
        assert await run.gather() == [x * x for x in range(50)]
    assert pulled == list(range(50))


async def test_a_raising_input_raises_task_error_with_the_remote_traceback() -> None:
    async with AsyncKnot(fails_on_three, backend="local") as knot:
        run = await knot.map(range(6))
        with pytest.raises(TaskError) as caught:
            await run.gather()
        error = caught.value
        assert error.index == 3
        assert error.remote_type == "ValueError"
        assert "three is not allowed (got 3)" in error.remote_message
        assert "fails_on_three" in error.remote_traceback
        assert "Remote traceback" in str(error) and "fails_on_three" in str(error)
        assert isinstance(error.exception, ValueError)
        # The rest of the run was left running and finished.
        values = await run.gather(return_exceptions=True)
        assert values[:3] == [0, 1, 2] and values[4:] == [4, 5]
        assert isinstance(values[3], TaskError)


async def test_amap_raises_the_first_failure_unless_return_exceptions() -> None:
    async with AsyncKnot(fails_on_three, backend="local") as knot:
        seen = []
        with pytest.raises(TaskError):
            async for value in knot.amap(range(6), ordered=True):
                seen.append(value)
        assert seen == [0, 1, 2]
        values = [v async for v in knot.amap(range(6), ordered=True, return_exceptions=True)]
        assert values[:3] == [0, 1, 2] and isinstance(values[3], TaskError)


async def test_a_function_returning_none_gives_a_record_per_input() -> None:
    async with AsyncKnot(returns_none, backend="local") as knot:
        run = await knot.map(range(20))
        assert await run.gather() == [None] * 20
        assert (await run.status())["succeeded"] == 20


async def test_an_unpicklable_input_fails_naming_its_index_before_anything_runs(
    aioknot_home: str,
) -> None:
    inputs: list[object] = [1, 2, threading.Lock(), 4]  # a lock cannot be pickled
    async with AsyncKnot(square, backend="local") as knot:
        with pytest.raises(SerializationError) as caught:
            await knot.map(inputs)
        assert caught.value.index == 2
        assert "input 2" in str(caught.value) and "lock" in str(caught.value)
    # No input was stored, so nothing was submitted or run.
    assert not list(Path(aioknot_home).glob("knots/*/runs/*/inputs"))
    assert not list(Path(aioknot_home).glob("knots/*/runs/*/results"))


async def test_a_killed_worker_loses_only_the_input_it_was_running() -> None:
    async with AsyncKnot(dies_on_three, backend="local", workers=2) as knot:
        run = await knot.map(range(8))
        values = await run.gather(return_exceptions=True)
    assert isinstance(values[3], TaskLost)
    assert "SIGKILL" in values[3].reason
    assert values[3].index == 3
    assert [v for i, v in enumerate(values) if i != 3] == [0, 1, 2, 4, 5, 6, 7]


def busy_workers(knot: AsyncKnot) -> list[int]:
    """Pids of the knot's worker processes running an input now (and not being killed)."""
    backend = knot._backend
    return [
        w.process.pid
        for w in backend._processes  # type: ignore[union-attr]
        if w.chunk is not None and not w.killed
    ]


async def test_leaving_amap_early_stops_its_workers() -> None:
    async with AsyncKnot(sleepy, backend="local", workers=2) as knot:
        async for _ in knot.amap([0.01] + [5.0] * 6):
            busy = busy_workers(knot)
            break
        # The generator is closed when the loop is left; its run is cancelled at once: the
        # processes running its inputs are killed (idle pool processes stay for later runs).
        assert await gone(busy) == []
        assert busy_workers(knot) == [] and not knot._backend._queue  # type: ignore[union-attr]
    assert await anyio.to_thread.run_sync(wait_for_no_workers, os.getpid(), 5.0) == []


async def test_cancelling_the_consuming_task_stops_its_workers() -> None:
    async with AsyncKnot(sleepy, backend="local", workers=2) as knot:
        busy: list[int] = []
        with anyio.move_on_after(1.0):
            async for _ in knot.amap([5.0] * 4):
                pass
        busy = [w.process.pid for w in knot._backend._processes]  # type: ignore[union-attr]
        assert busy_workers(knot) == []
        assert await gone(busy) == []  # both were running its inputs
    assert await anyio.to_thread.run_sync(wait_for_no_workers, os.getpid(), 5.0) == []


async def test_closing_the_knot_leaves_no_process() -> None:
    async with AsyncKnot(sleepy, backend="local", workers=2) as knot:
        run = await knot.map([5.0] * 4)
        await wait_until_async(
            lambda: len(busy_workers(knot)) == 2, timeout=30, what="both workers running an input"
        )
    assert await anyio.to_thread.run_sync(wait_for_no_workers, os.getpid(), 5.0) == []
    values = await run.gather(return_exceptions=True)
    assert all(isinstance(v, TaskLost) and "cancelled" in v.reason for v in values)


async def test_run_cancel_gives_task_lost_for_what_had_not_finished() -> None:
    async with AsyncKnot(sleepy, backend="local", workers=1) as knot:
        run = await knot.map([0.0, 5.0, 5.0])
        async for index, _ in run.items():
            assert index == 0
            break
        await run.cancel()
        values = await run.gather(return_exceptions=True)
        assert values[0] == 0.0
        assert all(isinstance(v, TaskLost) for v in values[1:])
        assert (await run.status())["lost"] == 2


async def test_status_counts_by_state_while_running() -> None:
    async with AsyncKnot(sleepy, backend="local", workers=1) as knot:
        run = await knot.map([0.3] * 3)
        status = await run.status()
        assert status["total"] == 3 and status["pending"] + status["succeeded"] == 3
        assert status["queued"] + status["running"] == status["pending"]
        await run.gather()
        assert (await run.status())["succeeded"] == 3


async def test_the_manifest_lets_another_process_reattach(aioknot_home: str) -> None:
    async with AsyncKnot(square, name="attach-me", backend="local") as knot:
        run = await knot.map(range(30))
        await run.gather()
    manifest_path = Path(aioknot_home) / "knots/attach-me/runs" / run.id / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["format"] == 1 and manifest["total"] == 30 and manifest["complete"]
    script = textwrap.dedent(
        f"""
        import asyncio, aioknot
        def square(x):
            return x * x
        async def main():
            async with aioknot.AsyncKnot(square, name="attach-me", backend="local") as knot:
                run = await knot.attach({run.id!r})
                print(sum(await run.gather()))
        asyncio.run(main())
        """
    )
    result = await anyio.run_process([sys.executable, "-c", script], check=True)
    assert int(result.stdout) == sum(x * x for x in range(30))


async def test_reattaching_a_run_whose_process_died_gives_task_lost(aioknot_home: str) -> None:
    script = textwrap.dedent(
        """
        import asyncio, os, time, aioknot
        def slow(x):
            time.sleep(30)  # still running when its client dies
        async def main():
            async with aioknot.AsyncKnot(slow, name="orphan", backend="local", workers=1) as k:
                run = await k.map(range(3))
                print(run.id, flush=True)
                os._exit(0)  # dies without cleaning up, like a crashed notebook
        asyncio.run(main())
        """
    )
    result = await anyio.run_process([sys.executable, "-c", script])
    run_id = result.stdout.decode().strip()
    async with AsyncKnot(sleepy, name="orphan", backend="local") as knot:
        run = await knot.attach(run_id)
        with anyio.fail_after(10):
            values = await run.gather(return_exceptions=True)
    assert all(isinstance(v, TaskLost) for v in values)
    # The orphaned worker dies with its stdin closed after its current input; reap it here.
    for pid in worker_processes(1):
        os.kill(pid, signal.SIGKILL)


async def test_the_function_is_stored_once_per_content(aioknot_home: str) -> None:
    async with AsyncKnot(square, name="stored-once", backend="local") as knot:
        await (await knot.map(range(3))).gather()
        await (await knot.map(range(3))).gather()
    functions = list((Path(aioknot_home) / "knots/stored-once/functions").iterdir())
    assert len(functions) == 1


async def test_clobber_deletes_what_the_knot_stored(aioknot_home: str) -> None:
    async with AsyncKnot(square, name="to-clobber", backend="local") as knot:
        await (await knot.map(range(5))).gather()
        assert await knot.clobber() > 0
        assert not (Path(aioknot_home) / "knots/to-clobber").exists()
        # The knot still works afterwards: the function is stored again.
        assert await (await knot.map(range(3))).gather() == [0, 1, 4]


async def test_a_knot_opens_once() -> None:
    knot = AsyncKnot(square, backend="local")
    async with knot:
        pass
    with pytest.raises(aioknot.KnotError, match="opens once"):
        async with knot:
            pass
    with pytest.raises(aioknot.KnotError, match="async with"):
        await knot.map([1])


async def test_local_backend_with_the_s3_store(aws: MotoServer, boto: MotoClients) -> None:
    await make_bucket(aws.url, "local-on-s3")
    async with AsyncKnot(square, backend="local", bucket="s3://local-on-s3/work") as knot:
        run = await knot.map(range(40))
        assert await run.gather() == [x * x for x in range(40)]
    listed = boto("s3").list_objects_v2(Bucket="local-on-s3", Prefix="work/knots/square/")
    assert listed["KeyCount"] > 0


def raises_keyboard_interrupt(x: int) -> int:
    if x == 1:
        raise KeyboardInterrupt("from the function")
    return x


def exits_hard(x: int) -> int:
    if x == 1:
        os._exit(3)
    return x


def reads_stdin(x: int) -> str:
    return input()  # must not eat the worker's task channel


async def test_a_base_exception_from_the_function_is_a_task_error() -> None:
    async with AsyncKnot(raises_keyboard_interrupt, backend="local", workers=1) as knot:
        values = await (await knot.map(range(3))).gather(return_exceptions=True)
    assert values[0] == 0 and values[2] == 2
    assert isinstance(values[1], TaskError) and values[1].remote_type == "KeyboardInterrupt"


async def test_a_worker_that_exits_hard_gives_task_lost_with_the_exit_code() -> None:
    async with AsyncKnot(exits_hard, backend="local", workers=1) as knot:
        values = await (await knot.map(range(3))).gather(return_exceptions=True)
    assert values[0] == 0 and values[2] == 2
    assert isinstance(values[1], TaskLost) and values[1].exit_code == 3


async def test_the_function_reading_stdin_gets_nothing_and_the_worker_survives() -> None:
    async with AsyncKnot(reads_stdin, backend="local", workers=1) as knot:
        values = await (await knot.map(range(3))).gather(return_exceptions=True)
    assert all(isinstance(v, TaskError) and v.remote_type == "EOFError" for v in values)


async def test_a_trickle_of_async_inputs_starts_before_the_segment_fills() -> None:
    """The generator waits for the first result: without the flush timer this deadlocks."""
    first_result = anyio.Event()

    async def inputs() -> AsyncIterator[int]:
        for i in range(3):
            yield i
        await first_result.wait()
        yield 3

    async with AsyncKnot(square, backend="local") as knot:
        seen = []
        with anyio.fail_after(20):
            async for value in knot.amap(inputs()):
                seen.append(value)
                first_result.set()
    assert sorted(seen) == [0, 1, 4, 9]


async def test_a_blocking_sync_generator_does_not_block_the_event_loop() -> None:
    """Pulled in a worker thread: it may block (on I/O, here on the first result)."""
    first_result = threading.Event()

    def inputs() -> Iterator[int]:
        yield from range(3)
        assert first_result.wait(20), "the first result never came while inputs blocked"
        yield 3

    async with AsyncKnot(square, backend="local") as knot:
        seen = []
        with anyio.fail_after(30):
            async for value in knot.amap(inputs()):
                seen.append(value)
                first_result.set()
    assert sorted(seen) == [0, 1, 4, 9]


async def test_amap_over_inputs_that_raise_midway_stops_what_was_submitted() -> None:
    def inputs() -> Iterator[float]:
        yield from [0.5] * 20
        raise ValueError("the inputs broke")

    async with AsyncKnot(sleepy, backend="local", workers=2) as knot:
        with pytest.raises(ValueError, match="the inputs broke"):
            async for _ in knot.amap(inputs()):
                pass
        # The 20 stored inputs were cancelled, not left to run.
        assert busy_workers(knot) == [] and not knot._backend._queue  # type: ignore[union-attr]


async def test_attaching_in_the_same_process_a_run_that_was_cancelled(
    aioknot_home: str,
) -> None:
    async with AsyncKnot(sleepy, name="cancelled-run", backend="local", workers=1) as knot:
        run = await knot.map([0.0, 5.0, 5.0])
        async for _ in run.items():
            break
    async with AsyncKnot(sleepy, name="cancelled-run", backend="local") as knot:
        attached = await knot.attach(run.id)
        with anyio.fail_after(10):
            values = await attached.gather(return_exceptions=True)
    assert values[0] == 0.0
    assert all(isinstance(v, TaskLost) and "cancelled" in v.reason for v in values[1:])


async def test_tiny_tasks_on_an_s3_store_travel_in_large_chunks(
    aws: MotoServer, fault_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks are sized by the inputs' own time: the store's latency, paid once per chunk,
    must not shrink them (it did: one input per chunk, three requests per result)."""
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # every request goes through the counting proxy
    await make_bucket(fault_proxy.url, "tiny-tasks")
    fault_proxy.reset_counts()
    count = 2_000
    async with AsyncKnot(
        square, backend="local", bucket="s3://tiny-tasks/w", endpoint_url=fault_proxy.url
    ) as knot:
        run = await knot.map(range(count))
        assert await run.gather() == [x * x for x in range(count)]
    requests = sum(fault_proxy.counts.values())
    assert requests < count / 10, fault_proxy.counts


def fails_on_two_waits_from_five(x: int, gate: str) -> int:
    if x == 2:
        raise ValueError("two is not allowed")
    while x >= 5 and not os.path.exists(gate):
        time.sleep(0.01)  # the input's own work: it runs until the test opens the gate
    return x


async def test_gather_raises_the_first_failure_once_every_input_before_it_is_done(
    tmp_path: Path,
) -> None:
    """As soon as inputs 0..2 are in and 2 failed, no lower failure can come: gather raises
    it while the inputs after it still run (they finish later, and stay in the run)."""
    gate = tmp_path / "gate"
    async with AsyncKnot(fails_on_two_waits_from_five, backend="local", workers=2) as knot:
        run = await knot.map(range(10), kwargs={"gate": str(gate)})
        with pytest.raises(TaskError, match="two is not allowed") as raised:
            await run.gather()
        assert raised.value.index == 2
        status = await run.status()
        assert status["pending"] > 0  # inputs 5.. were still running when it raised
        gate.touch()
        values = await run.gather(return_exceptions=True)
        assert [v for i, v in enumerate(values) if i != 2] == [0, 1, 3, 4, 5, 6, 7, 8, 9]
        assert isinstance(values[2], TaskError)
