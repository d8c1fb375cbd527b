"""The complete blocking face: map with return_exceptions and kwargs, imap, submit, attach."""

from __future__ import annotations

import os
import signal
import time

import pytest
from helpers.processes import wait_for_no_workers
from helpers.waiting import wait_until

import aioknot
from aioknot import Job, Knot, TaskError


def scale(x: int, factor: int = 1, offset: int = 0) -> int:
    if x < 0:
        raise ValueError(f"negative: {x}")
    return x * factor + offset


def nap(seconds: float) -> float:
    time.sleep(seconds)  # the work itself: an input that takes this long
    return seconds


def test_map_takes_kwargs_and_return_exceptions(aioknot_home: str) -> None:
    with Knot(scale, workers=2) as knot:
        assert knot.map(range(4), kwargs={"factor": 3}).result(timeout=60) == [0, 3, 6, 9]
        values = knot.map([1, -1, 2], return_exceptions=True).result(timeout=60)
        assert values[0] == 1 and values[2] == 2
        assert isinstance(values[1], TaskError) and values[1].index == 1
        assert "negative: -1" in values[1].remote_message


async def test_the_async_face_takes_kwargs(aioknot_home: str) -> None:
    async with aioknot.AsyncKnot(scale, workers=2) as knot:
        run = await knot.map([(1,), (2,)], starmap=True, kwargs={"factor": 10, "offset": 1})
        assert await run.gather() == [11, 21]
        got = sorted([y async for y in knot.amap(range(3), kwargs={"offset": 5})])
        assert got == [5, 6, 7]
        with pytest.raises(aioknot.ConfigurationError, match="kwargs="):
            await knot.map([1], kwargs=[("factor", 2)])  # type: ignore[arg-type]


def test_imap_yields_as_completed_and_in_order(aioknot_home: str) -> None:
    with Knot(nap, workers=2) as knot:
        knot.map([0.0] * 4).result(timeout=60)  # both workers up: the order is the work's
        as_completed = list(knot.imap([0.6, 0.0, 0.0]))
        assert sorted(as_completed) == [0.0, 0.0, 0.6]
        assert as_completed[-1] == 0.6  # the slow one last
        assert list(knot.imap([0.3, 0.0, 0.1], ordered=True)) == [0.3, 0.0, 0.1]


def test_breaking_out_of_imap_cancels_its_run(aioknot_home: str) -> None:
    with Knot(nap, workers=2) as knot:
        started = time.monotonic()
        for value in knot.imap([0.0] + [30.0] * 3):
            assert value == 0.0
            break
        # The 30 s inputs were cancelled, not waited for: the knot is free at once.
        assert knot.map([0.0], kwargs=None).result(timeout=30) == [0.0]
        assert time.monotonic() - started < 25


def test_ctrl_c_while_imap_waits_cancels_its_run(aioknot_home: str) -> None:
    # A KeyboardInterrupt raised by a signal handler in the main thread, as SIGINT's is,
    # while imap blocks on a result (a timer's SIGALRM stands in for the user's key).
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        with Knot(nap, workers=2) as knot:
            started = time.monotonic()
            signal.setitimer(signal.ITIMER_REAL, 1.0)
            with pytest.raises(KeyboardInterrupt):
                for _ in knot.imap([30.0] * 2):
                    pass
            # The 30 s inputs were cancelled, not left running: the knot is free at once.
            assert knot.map([0.0]).result(timeout=30) == [0.0]
            assert time.monotonic() - started < 25
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_imap_raises_a_failure_unless_return_exceptions(aioknot_home: str) -> None:
    with Knot(scale, workers=1) as knot:
        with pytest.raises(TaskError):
            list(knot.imap([1, -1], ordered=True))
        values = list(knot.imap([1, -1], ordered=True, return_exceptions=True))
        assert values[0] == 1 and isinstance(values[1], TaskError)


def test_submit_runs_one_call(aioknot_home: str) -> None:
    with Knot(scale, workers=2) as knot:
        futures = [knot.submit(i, factor=2, offset=1) for i in range(3)]
        assert [f.result(timeout=60) for f in futures] == [1, 3, 5]
        with pytest.raises(TaskError, match="negative"):
            knot.submit(-5).result(timeout=60)


def test_attach_returns_a_blocking_job(aioknot_home: str) -> None:
    with Knot(nap, workers=2) as knot:
        first = knot.map([0.0, 0.1])
        assert first.result(timeout=60) == [0.0, 0.1]
        run_id = knot.jobs[0].id
        job = knot.attach(run_id)
        assert isinstance(job, Job)
        assert job.result(timeout=60) == [0.0, 0.1]
        assert job.status == "succeeded" and job.done


def test_cancelling_an_attached_job(aioknot_home: str) -> None:
    with Knot(nap, workers=2) as knot:
        future = knot.map([20.0, 20.0])
        # The map's inputs are stored on the knot's own thread; its run appears then.
        wait_until(lambda: knot.jobs[0].run, timeout=30, what="the map's run")
        job = knot.attach(knot.jobs[0].id)
        assert job.status == "running"
        assert job.cancel()
        assert job.status == "cancelled"
        assert future.cancel()  # the map that runs the tasks: its workers stop
    assert wait_for_no_workers(os.getpid()) == []
