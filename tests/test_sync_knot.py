"""The blocking Knot: futures, jobs, threads, a running event loop, fork and close."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers.processes import (
    wait_for_no_workers,
    wait_until_gone,
    written_pids,
)
from helpers.waiting import wait_until

import aioknot
from aioknot import Knot, KnotError, TaskError

pytestmark = pytest.mark.usefixtures("aioknot_home")


def square(x: int) -> int:
    return x * x


def fails_on_two(x: int) -> int:
    if x == 2:
        raise KeyError("two")
    return x


def portal_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "run_blocking_portal" in repr(t._target)]  # type: ignore[attr-defined]


def announced(x: tuple[str, float]) -> float:
    """Writes its pid into the directory ``x[0]`` (so that the test knows it runs), then works
    ``x[1]`` seconds."""
    directory, seconds = x
    with open(os.path.join(directory, f"{os.getpid()}.pid"), "w") as file:
        file.write(str(os.getpid()))
    time.sleep(seconds)  # the work itself: still running when the test acts
    return seconds


def wait_until_running(directory: Path, inputs: int) -> None:
    """Until ``inputs`` inputs of `announced` run, each in a worker process of its own."""
    wait_until(lambda: written_pids(directory, inputs), timeout=30, what=f"{inputs} inputs running")


def test_map_returns_a_future_of_the_ordered_results() -> None:
    with Knot(square, name="squares", backend="local") as knot:
        future = knot.map(range(100))
        assert isinstance(future, concurrent.futures.Future)
        called = threading.Event()
        totals: list[int] = []
        future.add_done_callback(lambda f: (totals.append(sum(f.result())), called.set()))
        assert future.result(timeout=60) == [x * x for x in range(100)]
        assert called.wait(10) and totals == [sum(x * x for x in range(100))]
        assert future.done()


def test_jobs_and_view_jobs(capsys: pytest.CaptureFixture[str]) -> None:
    with Knot(square, name="viewed", backend="local") as knot:
        knot.map(range(10)).result(timeout=60)
        slow_knot_future = knot.map(range(5))
        assert len(knot.jobs) == 2
        job = knot.jobs[0]
        assert job.done and job.result() == [x * x for x in range(10)]
        assert job.status == "succeeded" and job.progress == (10, 10)
        slow_knot_future.result(timeout=60)
        knot.view_jobs()
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["id", "name", "status", "done/total"]
    assert out[1].split()[1:] == ["viewed", "succeeded", "10/10"]
    assert out[1].split()[0] == job.id


def test_a_failed_input_makes_the_future_raise() -> None:
    with Knot(fails_on_two, backend="local") as knot:
        future = knot.map(range(4))
        with pytest.raises(TaskError) as caught:
            future.result(timeout=60)
        assert caught.value.index == 2 and caught.value.remote_type == "KeyError"
        assert knot.jobs[0].status == "failed"


def test_works_inside_a_running_event_loop() -> None:
    """As in Jupyter: the caller's loop is running; the knot uses its own."""
    with Knot(square, backend="local") as knot:

        async def notebook_cell() -> list[int]:
            return knot.map(range(10)).result(timeout=60)

        assert asyncio.run(notebook_cell()) == [x * x for x in range(10)]


def test_works_from_eight_threads_at_once() -> None:
    results: dict[int, list[int]] = {}
    with Knot(square, backend="local") as knot:

        def worker(i: int) -> None:
            results[i] = knot.map(range(i, i + 25)).result(timeout=60)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
    assert results == {i: [x * x for x in range(i, i + 25)] for i in range(8)}


def test_a_forked_child_gets_a_fresh_loop_without_deadlock() -> None:
    knot = Knot(square, backend="local")
    assert knot.map(range(3)).result(timeout=60) == [0, 1, 4]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: must not touch the parent's loop thread
        code = 1
        try:
            value = knot.map(range(5)).result(timeout=60)
            knot.close()
            os.write(write, repr(value).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    child_said = os.read(read, 1000).decode()
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_said == "[0, 1, 4, 9, 16]"
    assert knot.map(range(3)).result(timeout=60) == [0, 1, 4]  # the parent is unharmed
    knot.close()


def test_close_stops_the_thread_and_the_workers(tmp_path: Path) -> None:
    before = len(portal_threads())
    knot = Knot(announced, backend="local", workers=2)
    future = knot.map([(str(tmp_path), 5.0)] * 2)
    wait_until_running(tmp_path, 2)
    assert len(portal_threads()) == before + 1
    knot.close()
    assert future.cancelled() or future.done()
    assert len(portal_threads()) == before
    assert wait_for_no_workers(os.getpid()) == []
    with pytest.raises(KnotError, match="closed"):
        knot.map([1])


def test_calling_from_the_knots_own_thread_raises_instead_of_deadlocking() -> None:
    with Knot(square, backend="local") as knot:
        outcome: concurrent.futures.Future[BaseException | None] = concurrent.futures.Future()

        def callback(future: concurrent.futures.Future[list[int]]) -> None:
            try:
                knot.map([1])
                outcome.set_result(None)
            except BaseException as error:
                outcome.set_result(error)

        knot.map([1, 2]).add_done_callback(callback)
        error = outcome.result(timeout=60)
        assert isinstance(error, KnotError) and "own event loop thread" in str(error)


def test_cancelling_the_future_cancels_the_run(tmp_path: Path) -> None:
    with Knot(announced, backend="local", workers=1) as knot:
        future = knot.map([(str(tmp_path), 3.0)] * 2)
        wait_until_running(tmp_path, 1)
        assert future.cancel() or future.done()
        assert wait_for_no_workers(os.getpid(), 10) == []


def test_bad_options_fail_in_the_callers_thread() -> None:
    with pytest.raises(aioknot.ConfigurationError, match="workers"):
        Knot(square, backend="local", workers=0)


INTERRUPTED_SCRIPT = r"""
import time, traceback, aioknot

def slow(x):
    time.sleep(30)  # still running when the test interrupts the wait

knot = aioknot.Knot(slow, backend="local", workers=1)
future = knot.map([1, 2])
while True:
    try:
        print("waiting", flush=True)
        future.result()
    except KeyboardInterrupt as interrupt:
        # The test is about an interrupt inside the wait: one that came before the wait began
        # (between the print and the call, at this frame) is asked for again.
        if len(traceback.extract_tb(interrupt.__traceback__)) > 1:
            break
knot.close()
print("interrupted", flush=True)
"""


def test_ctrl_c_interrupts_a_wait_and_close_cleans_up() -> None:
    """SIGINT while the main thread waits on a result: KeyboardInterrupt, then close() works."""
    process = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED_SCRIPT], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    try:
        for line in process.stdout:  # one SIGINT for each time the script says it waits
            if line.strip() != "waiting":
                break
            process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert line.strip() == "interrupted" and out == "" and process.returncode == 0
    assert wait_for_no_workers(process.pid, 5) == []


TERMINAL_SCRIPT = r"""
import os, time, aioknot

def slow(x):
    with open(os.path.join({pids!r}, f"{{x}}.pid"), "w") as file:
        file.write(str(os.getpid()))
    time.sleep(1.5)  # still running when the terminal's SIGINT comes
    return x

knot = aioknot.Knot(slow, backend="local", workers=2)
future = knot.map([1, 2])
try:
    print("waiting", flush=True)
    future.result()
except KeyboardInterrupt:
    print(future.result(timeout=30), flush=True)  # the run went on
knot.close()
"""


def test_ctrl_c_at_the_terminal_leaves_the_workers_running(tmp_path: Path) -> None:
    """A terminal sends SIGINT to the whole process group: the workers must not die of it."""
    process = subprocess.Popen(
        [sys.executable, "-c", TERMINAL_SCRIPT.format(pids=str(tmp_path))],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        # Both workers are running an input (each wrote its pid): the group's SIGINT meets them.
        wait_until(lambda: written_pids(tmp_path, 2), timeout=30, what="both inputs running")
        os.killpg(process.pid, signal.SIGINT)
        out, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert out.split("\n")[:2] == ["waiting", "[1, 2]"] and process.returncode == 0


def test_close_from_a_done_callback_raises_and_leaves_the_knot_closable() -> None:
    knot = Knot(square, backend="local")
    outcome: concurrent.futures.Future[BaseException | None] = concurrent.futures.Future()

    def callback(future: concurrent.futures.Future[list[int]]) -> None:
        try:
            knot.close()
            outcome.set_result(None)
        except BaseException as error:
            outcome.set_result(error)

    knot.map([1]).add_done_callback(callback)
    error = outcome.result(timeout=60)
    assert isinstance(error, KnotError) and "own event loop thread" in str(error)
    before = len(portal_threads())
    knot.close()  # from this thread it works, and stops everything
    assert len(portal_threads()) == before - 1
    assert wait_for_no_workers(os.getpid()) == []


LEAK_SCRIPT = r"""
import gc, glob, os, sys, tempfile, threading
import aioknot
sys.path.insert(0, {tests!r})
from helpers.processes import worker_processes
from helpers.waiting import poll

def double(x):
    return x * 2

pattern = os.path.join(tempfile.gettempdir(), "aioknot-worker-*")
before = set(glob.glob(pattern))
for _ in range(5):
    assert aioknot.Knot(double, workers=2).map(range(10)).result() == list(range(0, 20, 2))
gc.collect()
# Other processes and threads ending: they can only be looked at (what is left is printed).
poll(lambda: not worker_processes(os.getpid()) and threading.active_count() == 1, timeout=20)
print(len(worker_processes(os.getpid())), threading.active_count(),
      len(set(glob.glob(pattern)) - before))
"""

EXIT_SCRIPT = r"""
import os, sys, time
import aioknot

def sleepy(path):
    with open(path, "w") as file:
        file.write(str(os.getpid()))
    time.sleep(60)  # still running when the script ends

knot = aioknot.Knot(sleepy, workers=2)
future = knot.map([os.path.join({tmp!r}, f"pid{{i}}") for i in range(2)])
deadline = time.monotonic() + 30  # both inputs running (their pid files are written)
while len(os.listdir({tmp!r})) < 2 and time.monotonic() < deadline:
    time.sleep(0.05)
print("exiting with the map still running", flush=True)
"""


def test_a_knot_never_closed_leaks_nothing(tmp_path: Path) -> None:
    """The one-liner `Knot(f).map(xs).result()` in a loop leaves no worker, thread or file."""
    script = LEAK_SCRIPT.format(tests=str(Path(__file__).parent))
    private = tmp_path / "tmp"
    private.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=110,
        # A temp dir of its own: other processes' worker files must not count.
        env={**os.environ, "AIOKNOT_HOME": str(tmp_path / "home"), "TMPDIR": str(private)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # silently: no "cannot join current thread", no tracebacks
    workers, threads, temp_files = (int(n) for n in done.stdout.split())
    assert (workers, threads, temp_files) == (0, 1, 0)


def test_exiting_with_a_knot_open_stops_its_workers(tmp_path: Path) -> None:
    """At interpreter exit a knot nobody closed cancels its map and stops its workers."""
    pids = tmp_path / "pids"
    pids.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT.format(tmp=str(pids))],
        capture_output=True,
        text=True,
        timeout=110,
        env={**os.environ, "AIOKNOT_HOME": str(tmp_path / "home")},
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    running = [int(path.read_text()) for path in pids.iterdir()]
    assert len(running) == 2  # both inputs were running when the script ended
    assert wait_until_gone(running) == []


KILLED_CLIENT_SCRIPT = r"""
import os, sys, time
import aioknot

def sleepy(path):
    with open(path, "w") as file:
        file.write(str(os.getpid()))
    time.sleep(120)  # still running when the client is killed

knot = aioknot.Knot(sleepy, workers=2)
future = knot.map([os.path.join({pids!r}, f"pid{{i}}") for i in range(2)])
print("mapped", flush=True)
time.sleep(120)  # the client idles until the test kills it
"""


def test_workers_of_a_killed_client_exit_quietly_and_remove_their_files(tmp_path: Path) -> None:
    pids, private = tmp_path / "pids", tmp_path / "tmp"
    pids.mkdir()
    private.mkdir()
    client = subprocess.Popen(
        [sys.executable, "-c", KILLED_CLIENT_SCRIPT.format(pids=str(pids))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "AIOKNOT_HOME": str(tmp_path / "home"), "TMPDIR": str(private)},
    )
    try:
        workers = wait_until(
            lambda: written_pids(pids, 2, "pid*"), timeout=60, what="both inputs running"
        )
        assert list(private.glob("aioknot-worker-*"))  # their progress files, while they run
    finally:
        client.kill()  # as a crashed notebook dies: no close, no atexit
        _, stderr = client.communicate(timeout=30)
    assert wait_until_gone(workers) == []
    assert list(private.glob("aioknot-worker-*")) == []
    assert b"Traceback" not in stderr
