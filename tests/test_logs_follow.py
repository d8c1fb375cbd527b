"""``run.logs(index, follow=True)``: a task's log lines as they are written, ending once the
input has an outcome (issue 12). Locally with real worker processes (the worker stores a
running input's log as it grows); on Batch with moto's CloudWatch Logs, whose events the test
puts by hand (moto's containers write nothing), and whose simple-mode jobs end the moment they
are submitted: the run's watch is held back until the test lets the task end. The blocking
face (``Job.logs(index, follow=True)``) and the CLI's ``--follow`` (tests/test_cli.py) go
through the same iterator.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aioboto3
import anyio
import anyio.abc
import pytest
from helpers.aws import IMAGE, MotoClients
from helpers.fake_batch import FakeTarget, Losses, run_spec
from helpers.waiting import wait_until, wait_until_async
from infra.moto import MotoServer

from aioknot import AsyncKnot, Knot, KnotError, TaskLost, _run
from aioknot._backends.aws.jobs import LOG_GROUP
from aioknot._backends.aws.run import AwsRun, CloudWatchTail
from aioknot._backends.base import Segment
from aioknot._backends.local import LocalLogTail
from aioknot._run import Run

pytestmark = pytest.mark.usefixtures("aioknot_home")


# -- local workers ----------------------------------------------------------------------------


def prints_until_gate(gate: str) -> str:
    """Prints two lines, runs until the test opens ``gate`` (having seen them), prints again,
    ends with a line without its line break, and says it ended (``<gate>.ended``)."""
    print("early 1", flush=True)
    time.sleep(0.2)
    print("early 2", flush=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)  # the long task under test: it runs until the test says
    print("late" if os.path.exists(gate) else "the gate never opened", flush=True)
    print("no line break", end="")
    Path(gate + ".ended").touch()
    return "done"


async def test_follow_yields_the_lines_of_a_running_task_and_ends_with_its_outcome(
    tmp_path: Path,
) -> None:
    gate = str(tmp_path / "gate")
    async with AsyncKnot(prints_until_gate, name="followed", backend="local", workers=1) as knot:
        run = await knot.map([gate])
        seen: list[tuple[str, bool]] = []  # each line, and whether the task had ended then
        with anyio.fail_after(60):
            async for line in run.logs(0, follow=True):
                seen.append((line, os.path.exists(gate + ".ended")))
                if line == "early 2":
                    Path(gate).touch()  # the task ends only once its early lines were seen
        # The early lines came while the task ran; the rest, the unfinished last line
        # included, after it ended, and the iteration ended once the input had its outcome.
        assert seen == [
            ("early 1", False),
            ("early 2", False),
            ("late", True),
            ("no line break", True),
        ]
        assert run.finished == 1
        assert await run.gather() == ["done"]
        assert await run.logs(0) == [line for line, _ in seen]


def talks(x: int) -> int:
    if x:
        print(f"first {x}")
        print(f"second {x}\rthird {x}", flush=True)  # a progress bar's \r ends a line too
    return x


async def test_follow_of_a_finished_input_yields_every_line_and_ends() -> None:
    async with AsyncKnot(talks, name="finished", backend="local", workers=2) as knot:
        run = await knot.map(range(3))
        assert await run.gather() == [0, 1, 2]
        with anyio.fail_after(30):
            followed = [line async for line in run.logs(2, follow=True)]
            quiet = [line async for line in run.logs(0, follow=True)]
        assert followed == ["first 2", "second 2", "third 2"] == await run.logs(2)
        assert quiet == []


def dies_once(directory: str) -> str:
    marker = Path(directory) / "died"
    if not marker.exists():
        print("first attempt", flush=True)
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    print("second attempt")
    return "survived"


async def test_follow_goes_on_to_a_retried_attempt(tmp_path: Path) -> None:
    async with AsyncKnot(dies_once, name="retried", backend="local", workers=1, retries=2) as knot:
        run = await knot.map([str(tmp_path)])
        with anyio.fail_after(60):
            followed = [line async for line in run.logs(0, follow=True)]
        assert followed == ["first attempt", "second attempt"]
        assert await run.gather() == ["survived"]


async def test_an_index_out_of_range_fails_at_once_naming_the_range() -> None:
    async with AsyncKnot(talks, name="ranged", backend="local", workers=1) as knot:
        run = await knot.map(range(3))
        # Said when called, before anything is read or iterated.
        with pytest.raises(
            KnotError, match=r"input 3 of run .* the run has 3 inputs, numbered 0 to 2"
        ):
            run.logs(3, follow=True)
        with pytest.raises(KnotError, match=r"input -1 of run .* numbered 0 to 2"):
            await run.logs(-1)
        await run.gather()


async def test_follow_ends_when_reading_took_longer_than_the_tails_lag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A read (or the consumer) slower than the lag: the time left to wait has gone negative,
    # and following still ends with every line rather than failing on a negative sleep.
    monkeypatch.setattr(LocalLogTail, "lag_seconds", 0.01)
    read = LocalLogTail.read

    async def slow_read(self: LocalLogTail, *, final: bool) -> list[str]:
        lines = await read(self, final=final)
        await anyio.sleep(0.05)
        return lines

    monkeypatch.setattr(LocalLogTail, "read", slow_read)
    async with AsyncKnot(talks, name="slow-tail", backend="local", workers=1) as knot:
        run = await knot.map([4])
        assert await run.gather() == [4]
        with anyio.fail_after(30):
            followed = [line async for line in run.logs(0, follow=True)]
        assert followed == ["first 4", "second 4", "third 4"]


# -- the blocking face ------------------------------------------------------------------------


def test_job_logs_follow_is_a_blocking_iterator(tmp_path: Path) -> None:
    gate = str(tmp_path / "gate")
    with Knot(prints_until_gate, name="blocking", backend="local", workers=1) as knot:
        future = knot.map([gate])
        job = knot.jobs[-1]
        wait_until(lambda: job.run is not None, timeout=30, what="the job's run submitted")
        seen = []
        for line in job.logs(0, follow=True):
            seen.append((line, os.path.exists(gate + ".ended")))
            if line == "early 2":
                Path(gate).touch()
        assert seen == [
            ("early 1", False),
            ("early 2", False),
            ("late", True),
            ("no line break", True),
        ]
        assert future.result(timeout=30) == ["done"]
        assert job.logs(0) == [line for line, _ in seen]
        with pytest.raises(KnotError, match="numbered 0 to 0"):
            job.logs(1, follow=True)


def test_breaking_out_of_job_logs_stops_following(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[Any] = []  # the async iterators Run.logs hands out
    original = Run.logs

    def logs(self: Run[Any], index: int, *, follow: bool = False) -> Any:
        made.append(original(self, index, follow=follow))
        return made[-1]

    monkeypatch.setattr(Run, "logs", logs)
    gate = str(tmp_path / "gate")
    with Knot(prints_until_gate, name="blocking", backend="local", workers=1) as knot:
        future = knot.map([gate])
        job = knot.jobs[-1]
        wait_until(lambda: job.run is not None, timeout=30, what="the job's run submitted")
        for line in job.logs(0, follow=True):
            assert line == "early 1"
            break
        (following,) = made
        assert following.ag_frame is None  # closed on the knot's loop: no more reads
        assert not future.done()  # the run goes on
        Path(gate).touch()
        assert future.result(timeout=30) == ["done"]


# -- AWS Batch (moto): CloudWatch Logs -------------------------------------------------------


def cube(x: int) -> int:
    return x**3


class LogRequests:
    """The parameters of every GetLogEvents aioknot makes, and its DescribeJobs count."""

    def __init__(self) -> None:
        self.reads: list[dict[str, Any]] = []
        self.describes = 0

    def record(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        if model.name == "GetLogEvents":
            self.reads.append(dict(params))
        elif model.name == "DescribeJobs":
            self.describes += 1


@pytest.fixture
def log_requests(monkeypatch: pytest.MonkeyPatch) -> LogRequests:
    requests = LogRequests()
    original = aioboto3.Session

    class CountingSession(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.events.register("before-parameter-build", requests.record)

    monkeypatch.setattr(aioboto3, "Session", CountingSession)
    return requests


def put(boto: MotoClients, stream: str, *messages: str) -> None:
    now = int(time.time() * 1000)
    boto("logs").put_log_events(
        logGroupName=LOG_GROUP,
        logStreamName=stream,
        logEvents=[{"timestamp": now, "message": message} for message in messages],
    )


@pytest.mark.usefixtures("fast_polls")
async def test_follow_on_batch_reads_cloudwatch_on_from_where_it_was(
    simple_batch: MotoServer,
    boto: MotoClients,
    log_requests: LogRequests,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Simple mode ends each job as it is submitted: Batch's answer is held back until the
    # test lets the task end, as a running job's would be.
    task_over = anyio.Event()
    watch = AwsRun.watch

    async def held_watch(self: AwsRun) -> None:
        await task_over.wait()
        await watch(self)

    monkeypatch.setattr(AwsRun, "watch", held_watch)
    # Reads closer together than CloudWatch's seconds of delay call for: the same path sooner.
    monkeypatch.setattr(_run, "FOLLOW_FIRST_SECONDS", 0.05)
    monkeypatch.setattr(_run, "FOLLOW_LONGEST_SECONDS", 0.5)
    monkeypatch.setattr(CloudWatchTail, "lag_seconds", 1.0)
    async with AsyncKnot(cube, name="followed", backend="aws", image=IMAGE) as knot:
        run = await knot.map(range(3))
        child = f"{run.backend_run.job_ids[0]}:2"
        description = boto("batch").describe_jobs(jobs=[child])["jobs"][0]
        stream = description["container"]["logStreamName"]
        seen: list[str] = []
        ended = anyio.Event()

        async def follow() -> None:
            async with contextlib.aclosing(run.logs(2, follow=True)) as lines:
                async for line in lines:
                    seen.append(line)
            ended.set()

        async with anyio.create_task_group() as group:
            group.start_soon(follow)
            # No stream yet (the task is "starting"): nothing, and no error; it keeps waiting.
            await wait_until_async(
                lambda: len(log_requests.reads) >= 2, timeout=30, what="two reads of no stream"
            )
            assert seen == [] and not ended.is_set()
            logs = boto("logs")
            logs.create_log_group(logGroupName=LOG_GROUP)
            logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
            put(boto, stream, "one", "two")
            await wait_until_async(lambda: seen == ["one", "two"], timeout=30, what="first lines")
            read_before = len(log_requests.reads)
            put(boto, stream, "three")
            await wait_until_async(lambda: len(seen) == 3, timeout=30, what="the third line")
            assert len(log_requests.reads) > read_before  # another read, on from the token
            put(boto, stream, "four")  # written just before the task ends
            task_over.set()
            await wait_until_async(lambda: run._has(2), timeout=30, what="the input's outcome")
            reads = len(log_requests.reads)
            await wait_until_async(
                lambda: len(log_requests.reads) > reads, timeout=30, what="a read after it"
            )
            # Written before the end, but in CloudWatch only after the outcome was seen and
            # read after (the awslogs driver sends every few seconds): still followed, within
            # the tail's lag.
            put(boto, stream, "five")
            with anyio.fail_after(30):
                await ended.wait()
        assert seen == ["one", "two", "three", "four", "five"]
        outcome = (await run.gather(return_exceptions=True))[2]
        assert isinstance(outcome, TaskLost)  # simple mode ran nothing: no record
    # Once the stream had lines, each read went on from the forward token of the one before
    # (the stream was never read again from its start).
    first_lines = next(
        i for i, params in enumerate(log_requests.reads) if params["logStreamName"] == stream
    )
    tokened = [params for params in log_requests.reads[first_lines:] if "nextToken" in params]
    assert len(tokened) >= 2
    assert all(params["startFromHead"] for params in log_requests.reads)


class OneJob:
    """A fake Batch with one job, whose description the test sets (queued, running, retried)."""

    def __init__(self) -> None:
        self.description: dict[str, Any] = {"status": "RUNNABLE"}
        self.describes = 0

    async def submit_job(self, **request: Any) -> dict[str, Any]:
        return {"jobId": "job0"}

    async def describe_jobs(self, jobs: list[str]) -> dict[str, Any]:
        self.describes += 1
        return {"jobs": [{**self.description, "jobId": job_id} for job_id in jobs]}

    async def list_jobs(self, **arguments: Any) -> dict[str, Any]:
        return {"jobSummaryList": []}


class LogsTarget(FakeTarget):
    """`FakeTarget` whose CloudWatch Logs client is a real one (on moto)."""

    def __init__(self, batch: object, logs: object, group: anyio.abc.TaskGroup) -> None:
        super().__init__(batch, group)
        self.logs = logs

    async def client(self, service: str) -> Any:
        return self.logs if service == "logs" else self.batch


@contextlib.asynccontextmanager
async def aws_run_with_logs(batch: OneJob) -> AsyncIterator[AwsRun]:
    async with (
        aioboto3.Session().client("logs") as logs,
        anyio.create_task_group() as group,
    ):
        yield AwsRun(LogsTarget(batch, logs, group), run_spec("squares"), Losses())
        group.cancel_scope.cancel()


async def test_a_cloudwatch_tail_waits_for_the_stream_and_goes_on_to_a_retry(
    aws: MotoServer, boto: MotoClients
) -> None:
    batch = OneJob()
    logs = boto("logs")
    logs.create_log_group(logGroupName=LOG_GROUP)
    async with aws_run_with_logs(batch) as run:
        await run.submit([Segment(0, 1)], last=True)
        tail = run.tail_logs(0)
        assert await tail.read() == []  # queued: no stream named yet
        batch.description = {"status": "RUNNING", "container": {"logStreamName": "d/default/a"}}
        assert await tail.read() == []  # named, not created yet
        logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName="d/default/a")
        put(boto, "d/default/a", "a1", "a2")
        assert await tail.read() == ["a1", "a2"]
        described = batch.describes
        put(boto, "d/default/a", "a3")
        assert await tail.read() == ["a3"]
        assert batch.describes == described  # lines came: no DescribeJobs
        # The host goes away: attempt 1 is over, attempt 2 runs and logs to a stream of its own.
        batch.description = {
            "status": "RUNNING",
            "attempts": [{"container": {"logStreamName": "d/default/a"}}],
            "container": {"logStreamName": "d/default/b"},
        }
        put(boto, "d/default/a", "a4")  # the last of attempt 1
        logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName="d/default/b")
        put(boto, "d/default/b", "b1")
        followed: list[str] = []
        for _ in range(4):  # a quiet read of attempt 1's stream, then Batch is asked again
            followed += await tail.read()
            if "b1" in followed:
                break
        assert followed == ["a4", "b1"]
        put(boto, "d/default/b", "b2")
        assert await tail.read(final=True) == ["b2"]
        # And read whole, as `run.logs(0)` does: every attempt's stream, in order.
        assert await run.logs(0) == ["a1", "a2", "a3", "a4", "b1", "b2"]
