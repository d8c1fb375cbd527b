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
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from helpers.processes import wait_for_no_workers, worker_processes

import aioknot
from aioknot import AsyncKnot, SerializationError, TaskError, TaskLost

pytestmark = pytest.mark.usefixtures("aioknot_home")


def square(x: int) -> int:
    return x * x


def add(a: int, b: int) -> int:
    return a + b


def sleepy(seconds: float) -> float:
    time.sleep(seconds)
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


async def test_leaving_amap_early_stops_its_workers() -> None:
    async with AsyncKnot(sleepy, backend="local", workers=2) as knot:
        async for _ in knot.amap([0.01] + [5.0] * 6):
            break
        # The generator is closed when the loop is left; its run is cancelled at once.
        await anyio.sleep(0.2)
        assert await anyio.to_thread.run_sync(wait_for_no_workers, os.getpid(), 5.0) == []


async def test_cancelling_the_consuming_task_stops_its_workers() -> None:
    async with AsyncKnot(sleepy, backend="local", workers=2) as knot:
        with anyio.move_on_after(1.0):
            async for _ in knot.amap([5.0] * 4):
                pass
        assert await anyio.to_thread.run_sync(wait_for_no_workers, os.getpid(), 5.0) == []


async def test_closing_the_knot_leaves_no_process() -> None:
    async with AsyncKnot(sleepy, backend="local", workers=2) as knot:
        run = await knot.map([5.0] * 4)
        await anyio.sleep(0.3)
        assert worker_processes(os.getpid())
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
            time.sleep(30)
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


async def test_local_backend_with_the_s3_store(aws: object) -> None:
    import aioboto3

    async with aioboto3.Session().client("s3") as s3:
        await s3.create_bucket(Bucket="local-on-s3")
    async with AsyncKnot(square, backend="local", bucket="s3://local-on-s3/work") as knot:
        run = await knot.map(range(40))
        assert await run.gather() == [x * x for x in range(40)]
    async with aioboto3.Session().client("s3") as s3:
        listed = await s3.list_objects_v2(Bucket="local-on-s3", Prefix="work/knots/square/")
        assert listed["KeyCount"] > 0
