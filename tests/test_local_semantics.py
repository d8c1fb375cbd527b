"""The local backend means what AWS Batch means (issue 10): ``timeout=`` stops an input that
overruns, ``retries=`` runs again an input whose worker process died but never one whose
function raised, each input's output is kept as its log (``run.logs(index)``), and runs that
share a knot's workers are served in turn.

Nothing is mocked: real worker processes, real SIGKILLs (the function kills its own process),
real subprocesses, the real local store and a real moto server. Attempts are counted with
marker files that the function writes, since each attempt runs in another process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from helpers.aws import make_bucket
from helpers.processes import gone
from helpers.waiting import wait_until_async
from infra.moto import MotoServer

from aioknot import AsyncKnot, KnotError, TaskError, TaskLost

pytestmark = pytest.mark.usefixtures("aioknot_home")


def attempt(directory: str, index: int) -> int:
    """Record one more attempt of input ``index`` (a file per attempt); return its number."""
    number = 1
    while True:
        try:
            # O_EXCL: two processes never take the same number.
            os.close(os.open(f"{directory}/{index}.{number}", os.O_CREAT | os.O_EXCL))
            return number
        except FileExistsError:
            number += 1


def attempts_of(directory: Path, index: int) -> int:
    return len(list(directory.glob(f"{index}.*")))


# -- timeout= ---------------------------------------------------------------------------------


def overruns_on_one(x: tuple[int, int, str]) -> int:
    """Input ``slow`` runs (up to a minute) far past any timeout; the others are tiny."""
    index, slow, directory = x
    attempt(directory, index)
    if index == slow:
        with open(f"{directory}/slow.pid", "w") as file:
            file.write(str(os.getpid()))
        # The overrun under test: only timeout= ends it before its minute is up.
        time.sleep(60)
    return index * 2


@pytest.mark.parametrize("retries", [None, 3])
async def test_a_timeout_stops_an_overrunning_input_and_its_chunk_mates_still_succeed(
    tmp_path: Path, retries: int | None
) -> None:
    total, slow = 40, 20  # tiny tasks: the slow one sits mid-chunk, with mates on both sides
    inputs = [(i, slow, str(tmp_path)) for i in range(total)]
    options = {"retries": retries} if retries else {}
    async with AsyncKnot(
        overruns_on_one, backend="local", workers=1, timeout=0.4, **options
    ) as knot:
        run = await knot.map(inputs)
        with anyio.fail_after(30):  # far less than the slow input's minute
            values = await run.gather(return_exceptions=True)
        lost = values[slow]
        assert isinstance(lost, TaskLost)
        assert lost.reason.startswith("timeout") and "timeout=0.4s" in lost.reason
        assert lost.attempts == 1 and lost.exit_code == -signal.SIGKILL
        # Every other input succeeded, those queued behind the slow one in its chunk too
        # (they went back to the queue, and a new process ran them).
        assert values[:slow] + values[slow + 1 :] == [2 * i for i in range(total) if i != slow]
        status = await run.status()
        assert (status["succeeded"], status["lost"]) == (total - 1, 1)
    # The overrunning process was killed; as on Batch, a timed-out attempt is final, even
    # with retries= (that is for dying processes).
    assert await gone([int((tmp_path / "slow.pid").read_text())]) == []
    assert attempts_of(tmp_path, slow) == 1


def sleeps(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


async def test_inputs_within_the_timeout_are_not_stopped() -> None:
    # Each input runs well under the limit, the chunk of them well over it: the limit is
    # per input (a task), as Batch's is per child.
    async with AsyncKnot(sleeps, backend="local", workers=1, timeout=0.5) as knot:
        run = await knot.map([0.05] * 20)
        assert await run.gather() == [0.05] * 20


# -- retries= ---------------------------------------------------------------------------------


def dies_first(x: tuple[int, str]) -> int:
    """The first attempt of every third input kills its own process (SIGKILL, as the
    out-of-memory killer would); input 1 raises, every time."""
    index, directory = x
    number = attempt(directory, index)
    if index == 1:
        raise ValueError(f"input {index} is bad")
    if index % 3 == 0 and number == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return index * 10


async def test_retries_run_again_an_input_whose_process_died(tmp_path: Path) -> None:
    total = 12
    async with AsyncKnot(dies_first, backend="local", workers=2, retries=2) as knot:
        run = await knot.map([(i, str(tmp_path)) for i in range(total)])
        with anyio.fail_after(60):
            values = await run.gather(return_exceptions=True)
    error = values[1]
    assert isinstance(error, TaskError) and "input 1 is bad" in str(error)
    assert values[:1] + values[2:] == [10 * i for i in range(total) if i != 1]
    # Each killed input ran twice: killed, then again (alone) to success. (Its chunk mates
    # that had finished but whose records were not yet written ran again too: that is how a
    # dead process loses nothing, with or without retries.)
    assert all(attempts_of(tmp_path, i) == 2 for i in range(0, total, 3))


async def test_retries_never_run_again_an_input_whose_function_raised(tmp_path: Path) -> None:
    # One process: input 0 is a chunk of its own (a run's first chunk measures one input),
    # and its record is written before input 1 kills the process.
    async with AsyncKnot(dies_first, backend="local", workers=1, retries=3) as knot:
        run = await knot.map([(i, str(tmp_path)) for i in (1, 3, 2)])
        with anyio.fail_after(60):
            values = await run.gather(return_exceptions=True)
    assert isinstance(values[0], TaskError) and values[1:] == [30, 20]
    assert [attempts_of(tmp_path, i) for i in (1, 3, 2)] == [1, 2, 1]


async def test_without_retries_an_input_whose_process_died_is_lost_after_one_attempt(
    tmp_path: Path,
) -> None:
    async with AsyncKnot(dies_first, backend="local", workers=2) as knot:
        run = await knot.map([(i, str(tmp_path)) for i in range(6)])
        with anyio.fail_after(60):
            values = await run.gather(return_exceptions=True)
    for index in (0, 3):
        lost = values[index]
        assert isinstance(lost, TaskLost) and "SIGKILL" in lost.reason
        assert lost.attempts == 1 and lost.exit_code == -signal.SIGKILL
        assert attempts_of(tmp_path, index) == 1
    assert [values[i] for i in (2, 4, 5)] == [20, 40, 50]


def always_dies(x: tuple[int, str]) -> int:
    index, directory = x
    attempt(directory, index)
    if index == 2:
        print(f"attempt of {index} dies", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return index


async def test_an_input_that_always_kills_its_process_is_lost_after_every_attempt(
    tmp_path: Path,
) -> None:
    async with AsyncKnot(always_dies, backend="local", workers=2, retries=3) as knot:
        run = await knot.map([(i, str(tmp_path)) for i in range(5)])
        with anyio.fail_after(60):
            values = await run.gather(return_exceptions=True)
        lost = values[2]
        assert isinstance(lost, TaskLost) and lost.attempts == 3 and "SIGKILL" in lost.reason
        assert lost.log is not None and lost.log.endswith("/logs/000000002.3")
        # The log of every attempt, in order: on Batch, one log stream per attempt.
        assert await run.logs(2) == ["attempt of 2 dies"] * 3
    assert [values[i] for i in (0, 1, 3, 4)] == [0, 1, 3, 4]
    assert attempts_of(tmp_path, 2) == 3


# -- logs -------------------------------------------------------------------------------------


def talks(x: int) -> int:
    """Writes through Python, through the C level and through a child process, unless even."""
    if x % 2 == 0:
        return x
    print(f"python {x}")
    print(f"stderr {x}", file=sys.stderr)
    os.write(1, f"c-level {x}\n".encode())
    subprocess.run(["echo", f"subprocess {x}"], check=True)
    print(f"partial line {x}", end="")  # no newline: flushed when the input ends
    return x


async def test_logs_hold_each_inputs_own_output_from_python_c_and_subprocesses(
    capfd: pytest.CaptureFixture[str],
) -> None:
    total = 30
    async with AsyncKnot(talks, backend="local", workers=2) as knot:
        run = await knot.map(range(total))
        assert await run.gather() == list(range(total))
        for index in range(total):
            expected = (
                []
                if index % 2 == 0
                else [
                    f"python {index}",
                    f"stderr {index}",
                    f"c-level {index}",
                    f"subprocess {index}",
                    f"partial line {index}",
                ]
            )
            assert await run.logs(index) == expected, index
        with pytest.raises(KnotError, match="input 30 of run .* was not submitted"):
            await run.logs(total)
        # A run re-attached (here, from the same knot) reads the same logs from the store.
        attached = await knot.attach(run.id)
        assert await attached.logs(7) == await run.logs(7)
    # The output was also passed on to this process's stderr, as it always was.
    passed = capfd.readouterr().err
    assert "python 7\n" in passed and "subprocess 29\n" in passed
    assert "python 8" not in passed


def talks_then_dies(x: int) -> int:
    print(f"before {x}", flush=True)
    if x == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


async def test_the_output_of_a_killed_input_is_kept(capfd: pytest.CaptureFixture[str]) -> None:
    async with AsyncKnot(talks_then_dies, backend="local", workers=1) as knot:
        run = await knot.map(range(3))
        values = await run.gather(return_exceptions=True)
        assert isinstance(values[1], TaskLost) and values[1].log is not None
        assert [values[0], values[2]] == [0, 2]
        assert await run.logs(1) == ["before 1"]
        assert await run.logs(2) == ["before 2"]
    assert capfd.readouterr().err.count("before 1\n") == 1  # passed on once, not twice


def talks_until_released(release: str) -> str:
    print("started", flush=True)
    # The long task under test: it runs until the test has read its first line.
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)
    print("released")
    return release


async def test_the_log_of_a_long_input_grows_while_it_runs(tmp_path: Path) -> None:
    release = str(tmp_path / "release")
    async with AsyncKnot(talks_until_released, backend="local", workers=1) as knot:
        run = await knot.map([release])

        async def first_line() -> bool:
            return await run.logs(0) == ["started"]

        # As `aioknot logs --follow` reads it: the line is there before the input ends.
        await wait_until_async(first_line, timeout=30, what="the running input's log stored")
        Path(release).touch()
        assert await run.gather() == [release]
        assert await run.logs(0) == ["started", "released"]


async def test_logs_with_the_s3_store(aws: MotoServer) -> None:
    await make_bucket(aws.url, "local-logs")
    async with AsyncKnot(talks, backend="local", workers=2, bucket="s3://local-logs/k") as knot:
        run = await knot.map(range(4))
        assert await run.gather() == list(range(4))
        assert await run.logs(0) == []
        assert (await run.logs(3))[:2] == ["python 3", "stderr 3"]


# -- fair sharing -----------------------------------------------------------------------------


def ten_ms(x: int) -> int:
    time.sleep(0.01)
    return x


async def test_a_small_run_is_not_stuck_behind_a_large_one() -> None:
    big_total = 1_000  # ~5 s of work on two workers
    async with AsyncKnot(ten_ms, backend="local", workers=2) as knot:
        big = await knot.map(range(big_total))  # every input queued before the small run
        small = await knot.map(range(4))
        with anyio.fail_after(60):
            assert await small.gather() == list(range(4))
        # Served in turn, the small run finished while the big one had barely started;
        # first come, first served, it would have waited for all 1,000 inputs.
        big_done = (await big.status())["succeeded"]
        assert big_done < big_total // 4, big_done
        await big.cancel()  # what is left of it shows nothing more
