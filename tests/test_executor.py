"""aioknot.Executor behaves as the standard library's executor tests expect of
ProcessPoolExecutor: map order and timeout, exceptions from result(), cancel() of pending
futures, shutdown(cancel_futures=True), as_completed and wait; and batches its calls."""

from __future__ import annotations

import concurrent.futures
import os
import time
from pathlib import Path

import pytest

import aioknot
from aioknot import TaskLost


def square(x: int) -> int:
    return x * x


def divide(a: float, b: float) -> float:
    return a / b


def nap(seconds: float) -> float:
    time.sleep(seconds)  # the work itself: a call that takes this long
    return seconds


def die(code: int) -> None:
    os._exit(code)


def test_submit_and_map_in_order(aioknot_home: str) -> None:
    with aioknot.Executor(workers=2) as executor:
        assert executor.submit(pow, 2, 10).result(timeout=60) == 1024
        assert list(executor.map(square, range(10))) == [x * x for x in range(10)]
        assert list(executor.map(pow, [2, 3], [5, 2])) == [32, 9]
        assert executor.submit(divide, b=4, a=2).result(timeout=60) == 0.5


def test_the_functions_own_exception_is_raised(aioknot_home: str) -> None:
    with aioknot.Executor(workers=1) as executor:
        future = executor.submit(divide, 1, 0)
        with pytest.raises(ZeroDivisionError):
            future.result(timeout=60)
        assert isinstance(future.exception(), ZeroDivisionError)
        with pytest.raises(ZeroDivisionError):
            list(executor.map(divide, [1, 1], [1, 0]))


def test_a_task_that_dies_is_task_lost(aioknot_home: str) -> None:
    with aioknot.Executor(workers=1) as executor:
        with pytest.raises(TaskLost) as lost:
            executor.submit(die, 7).result(timeout=60)
        assert lost.value.exit_code == 7


def test_pending_futures_can_be_cancelled(aioknot_home: str) -> None:
    with aioknot.Executor(workers=1, batch_seconds=5.0) as executor:
        kept = executor.submit(square, 3)
        dropped = executor.submit(square, 4)
        assert dropped.cancel() and dropped.cancelled()
        executor.shutdown(wait=True)  # sends what is waiting now, not after 5 s
        assert kept.result(timeout=1) == 9


def test_shutdown_cancel_futures_and_no_submit_after(aioknot_home: str) -> None:
    executor = aioknot.Executor(workers=1, batch_seconds=5.0)
    futures = [executor.submit(square, i) for i in range(3)]
    executor.shutdown(wait=True, cancel_futures=True)
    assert all(future.cancelled() for future in futures)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(square, 1)


def test_as_completed_wait_and_map_timeout(aioknot_home: str) -> None:
    with aioknot.Executor(workers=2) as executor:
        list(executor.map(nap, [0.0] * 4))  # both workers up: the order is the work's
        slow, fast = executor.submit(nap, 1.5), executor.submit(nap, 0.0)
        done, pending = concurrent.futures.wait([slow, fast], return_when="FIRST_COMPLETED")
        assert fast in done and slow in pending
        order = list(concurrent.futures.as_completed([slow, fast], timeout=60))
        assert set(order) == {slow, fast}
        with pytest.raises(concurrent.futures.TimeoutError):
            list(executor.map(nap, [5.0], timeout=0.5))


def test_calls_submitted_together_are_one_run(aioknot_home: str, tmp_path: Path) -> None:
    with aioknot.Executor(workers=2, batch_seconds=0.2) as executor:
        futures = [executor.submit(square, i) for i in range(1000)]
        assert [f.result(timeout=60) for f in futures] == [i * i for i in range(1000)]
        runs = executor.knot.jobs
    # 1,000 calls went out in very few runs (one per batch), not 1,000.
    assert 1 <= len(runs) <= 5
