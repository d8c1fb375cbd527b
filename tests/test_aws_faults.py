"""The AWS Batch watcher under faults, against moto through the fault-injecting proxy.

Batch runs in moto's simple mode (no container runs: a job is SUCCEEDED, or FAILED with
``MOTO_SIMPLE_BATCH_FAIL_AFTER=0``, the moment it is submitted), so the test plays the
worker's part: `PlayedWorker` writes each child's grouped record to the store, with the
worker's own encoder, right before (or, for an outage, after) the job goes in. The real
containers run in tests/test_aws_end_to_end.py.

Every test checks what the user gets, that no input is lost, and that nothing was cancelled
or terminated: the proxy's count of CancelJob/TerminateJob requests is 0 and moto's jobs have
no stop reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import anyio
import boto3
import pytest
from botocore.config import Config
from infra.fault_proxy import Fault, FaultProxy
from infra.moto import FAKE_CREDENTIALS, MotoServer, start_moto_server, stop_moto_server

import aioknot
from aioknot._backends.aws import backend as aws_backend
from aioknot._backends.aws import jobs as aws_jobs
from aioknot._backends.aws import run as aws_run
from aioknot._backends.aws import stack as aws_stack
from aioknot._backends.aws.jobs import JobShape
from aioknot._backends.aws.run import AwsRun
from aioknot._backends.base import Segment
from aioknot._exceptions import TaskLost, WatchTimeout
from aioknot._worker import encode_results, result_key

REGION = "us-east-1"
ACCOUNT = "123456789012"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/aioknot:prebuilt"
BUCKET = f"aioknot-{ACCOUNT}-{REGION}"


def square(x: int) -> int:
    return x * x


@pytest.fixture(autouse=True)
def quick_clocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short polls and retry pauses, and botocore's own retries cut to 2 attempts a call, so
    that a burst of a few faults reaches aioknot's retries (the layer under test) rather than
    being absorbed by botocore's."""
    monkeypatch.setattr(aws_run, "FIRST_POLL_SECONDS", 0.05)
    monkeypatch.setattr(aws_run, "MAX_POLL_SECONDS", 0.5)
    monkeypatch.setattr(aws_run, "RETRY_FIRST_SECONDS", 0.05)
    monkeypatch.setattr(aws_run, "RETRY_LONGEST_SECONDS", 0.5)
    monkeypatch.setattr(aws_stack, "FIRST_POLL_INTERVAL", 0.01)
    monkeypatch.setattr(aws_stack, "MAX_POLL_INTERVAL", 0.05)
    monkeypatch.setattr(
        aws_backend,
        "CLIENT_CONFIG",
        Config(max_pool_connections=16, retries={"total_max_attempts": 2, "mode": "standard"}),
    )


class PlayedWorker:
    """Writes the records a worker would write for each submitted job (moto's simple mode
    runs nothing), straight to moto, with the worker's encoder: one grouped record per child.

    ``skip`` names children (by their place among all children submitted) that write
    nothing; ``hold`` keeps every record back until `release` (a worker still running).
    """

    def __init__(self, server: MotoServer, *, skip: frozenset[int] = frozenset()) -> None:
        self.s3 = boto3.client("s3", endpoint_url=server.url, region_name=REGION)
        self.skip = skip
        self.hold = False
        self.held: list[tuple[str, bytes]] = []
        self.shapes: list[JobShape] = []
        self.children: list[range] = []  # inputs of every child submitted, in order
        self.after_first_submit: Callable[[], None] | None = None

    def close(self) -> None:
        self.s3.close()

    def job_submitted(self, run_prefix: str, shape: JobShape) -> None:
        self.shapes.append(shape)
        for child in range(max(shape.size, 1)):
            inputs = shape.child_inputs(child) if shape.size else range(shape.first, shape.stop)
            number = len(self.children)
            self.children.append(inputs)
            if number in self.skip:
                continue
            data = encode_results(inputs.start, [(True, square(i)) for i in inputs])
            key = result_key(run_prefix, inputs.start, len(inputs))
            if self.hold:
                self.held.append((key, data))
            else:
                self.s3.put_object(Bucket=BUCKET, Key=key, Body=data)

    def release(self) -> None:
        self.hold = False
        for key, data in self.held:
            self.s3.put_object(Bucket=BUCKET, Key=key, Body=data)
        self.held.clear()


@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch, aws: MotoServer) -> Iterator[PlayedWorker]:
    played = PlayedWorker(aws)
    yield from _playing(monkeypatch, played)


def _playing(monkeypatch: pytest.MonkeyPatch, played: PlayedWorker) -> Iterator[PlayedWorker]:
    original = AwsRun._submit_group

    async def submit_group(self: AwsRun, group: list[Segment]) -> None:
        # The worker's part, played here: its records exist before Batch says it ended.
        run_prefix = self._spec.run_prefix
        await anyio.to_thread.run_sync(played.job_submitted, run_prefix, JobShape.of(group))
        first = not self.job_ids
        await original(self, group)
        if first and played.after_first_submit is not None:
            played.after_first_submit()  # no await since: the watch has not polled yet

    monkeypatch.setattr(AwsRun, "_submit_group", submit_group)
    try:
        yield played
    finally:
        played.close()


@pytest.fixture
def proxied(
    aws: MotoServer, fault_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FaultProxy]:
    """Simple Batch mode, and every AWS call of this process through the fault proxy."""
    aws.configure({"batch": {"use_docker": False}})
    monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.url)
    try:
        yield fault_proxy
    finally:
        aws.configure({"batch": {"use_docker": True}})


def knot(**options: Any) -> aioknot.AsyncKnot:
    options.setdefault("image", IMAGE)
    options.setdefault("name", "squares")
    return aioknot.AsyncKnot(square, backend="aws", **options)


def assert_nothing_stopped(server: MotoServer, proxy: FaultProxy, job_ids: list[str]) -> None:
    """No CancelJob/TerminateJob went out, and Batch holds no stop reason for any job."""
    assert proxy.counts[("batch", "canceljob")] == 0
    assert proxy.counts[("batch", "terminatejob")] == 0
    batch = boto3.client("batch", endpoint_url=server.url, region_name=REGION)
    try:
        jobs = batch.describe_jobs(jobs=job_ids)["jobs"]
    finally:
        batch.close()
    assert sorted(job["jobId"] for job in jobs) == sorted(job_ids)
    for job in jobs:
        assert "cancelled" not in str(job.get("statusReason", "")).lower()
        assert "terminated" not in str(job.get("statusReason", "")).lower()


# --- transient bursts ------------------------------------------------------------------------


async def wait_for(condition: Callable[[], bool], what: str, seconds: float = 60.0) -> None:
    """Wait for ``condition``; the bound is generous, only against hanging forever."""
    with anyio.move_on_after(seconds):
        # The proxy counts on its own thread: there is no event to wait on.
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.05)
        return
    raise AssertionError(f"no {what} within {seconds:g} s")


@pytest.mark.parametrize("kind", ["throttle", "500", "503", "reset"])
async def test_describe_and_list_bursts_never_fail_the_run(
    proxied: FaultProxy, worker: PlayedWorker, aws: MotoServer, kind: str
) -> None:
    inputs = list(range(30))
    rules: list[Fault] = []

    def outage_begins() -> None:
        # Once the first job is in, Batch fails every DescribeJobs and ListJobs until the
        # test ends the burst.
        for operation in ("describejobs", "listjobs"):
            rules.append(proxied.add(Fault(kind, service="batch", operation=operation)))

    worker.after_first_submit = outage_begins
    worker.hold = True  # the records come later, as a running worker's would
    # The first SubmitJob fails 3 times: once through botocore's 2 attempts, so aioknot
    # looks the job up by name before submitting it again.
    proxied.add(Fault(kind, service="batch", operation="submitjob", times=3))
    async with knot() as k:
        run = await k.map(inputs)
        # More faults than botocore's 2 attempts a call: aioknot's own retries carry on.
        # (The records are held until then: with them in, the run could end, and its watch
        # with it, before the burst had shown anything.)
        await wait_for(lambda: rules[0].injected > 4, "5 DescribeJobs faults")
        await anyio.to_thread.run_sync(worker.release)  # the workers finish meanwhile
        for rule in rules:
            proxied.remove(rule)  # the burst ends
        values = await run.gather()
        job_ids = list(run.backend_run.job_ids)  # type: ignore[union-attr]
    assert values == [square(i) for i in inputs]
    assert proxied.faults[("batch", "submitjob", kind)] == 3
    assert len(job_ids) == len(worker.shapes)  # each job submitted once despite the faults
    assert_nothing_stopped(aws, proxied, job_ids)


async def test_listing_failed_children_through_bursts(
    monkeypatch: pytest.MonkeyPatch, failing_batch: FaultProxy, failing_worker: PlayedWorker
) -> None:
    """Children FAILED (some after writing their grouped record), while ListJobs and
    DescribeJobs fail in bursts: every record counts, every other input is lost exactly."""
    monkeypatch.setattr(aws_jobs, "MAX_ARRAY_SIZE", 4)  # 12 inputs: children of 3 inputs
    inputs = list(range(12))
    for operation in ("describejobs", "listjobs"):
        failing_batch.add(Fault("503", service="batch", operation=operation, times=3))
    async with knot() as k:
        run = await k.map(inputs)
        outcomes = await run.gather(return_exceptions=True)
        job_ids = list(run.backend_run.job_ids)  # type: ignore[union-attr]
    assert sum(failing_batch.faults.values()) > 0  # the bursts happened
    children = failing_worker.children
    assert sum(len(c) for c in children) == len(inputs) and len(children) > 2
    for number, child in enumerate(children):
        for index in child:
            outcome = outcomes[index]
            if number not in failing_worker.skip:
                assert outcome == square(index), f"input {index}: its grouped record counts"
                continue
            assert isinstance(outcome, TaskLost), f"input {index} has no record"
            assert outcome.index == index
            parent = job_ids[_job_of(failing_worker.shapes, index)]
            shape = failing_worker.shapes[_job_of(failing_worker.shapes, index)]
            expected = f"{parent}:{shape.child_of(index)}" if shape.size else parent
            assert outcome.job_id == expected
            assert outcome.attempts == 1
            assert outcome.log is not None and expected in outcome.log
            assert "FAILED" in outcome.reason and expected in outcome.reason
    assert failing_batch.counts[("batch", "canceljob")] == 0
    assert failing_batch.counts[("batch", "terminatejob")] == 0


def _job_of(shapes: list[JobShape], index: int) -> int:
    return next(n for n, shape in enumerate(shapes) if shape.first <= index < shape.stop)


@pytest.fixture(scope="module")
def failing_server() -> Iterator[MotoServer]:
    """A moto server of its own whose simple-mode jobs FAIL at submit."""
    server = start_moto_server({"MOTO_SIMPLE_BATCH_FAIL_AFTER": "0"})
    try:
        server.configure({"batch": {"use_docker": False}})
        yield server
    finally:
        stop_moto_server(server)


@pytest.fixture
def failing_batch(
    failing_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FaultProxy]:
    failing_server.reset()
    failing_server.configure({"batch": {"use_docker": False}})
    for key, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with FaultProxy(upstream=failing_server.url) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        yield proxy


@pytest.fixture
def failing_worker(
    monkeypatch: pytest.MonkeyPatch, failing_server: MotoServer
) -> Iterator[PlayedWorker]:
    # Children 1 and 3 die before writing anything; the others wrote their record, then
    # failed (a crash on the way out, say).
    yield from _playing(monkeypatch, PlayedWorker(failing_server, skip=frozenset({1, 3})))


# --- a sustained outage ----------------------------------------------------------------------


async def test_sustained_outage_ends_the_watch_and_attach_collects_everything(
    proxied: FaultProxy, worker: PlayedWorker, aws: MotoServer
) -> None:
    inputs = list(range(20))
    worker.hold = True  # the jobs are still "running": no record yet
    async with knot(watch_timeout=2.0) as k:
        outage = [
            proxied.add(Fault("503", service="batch", operation=operation))
            for operation in ("describejobs", "listjobs")
        ]
        run = await k.map(inputs)
        with pytest.raises(WatchTimeout) as from_gather:
            await run.gather()
        with pytest.raises(WatchTimeout) as from_iterator:
            async for _ in run:
                pass
        error = from_gather.value
        assert from_iterator.value is error  # the same failure, raised as itself
        assert error.run_id == run.id
        assert f'await knot.attach("{run.id}")' in str(error)
        assert "503" in str(error) and "Nothing was cancelled" in str(error)
        job_ids = list(run.backend_run.job_ids)  # type: ignore[union-attr]
        assert_nothing_stopped(aws, proxied, job_ids)

        # The outage ends; the jobs kept running and wrote their records.
        for rule in outage:
            proxied.remove(rule)
        await anyio.to_thread.run_sync(worker.release)
        again = await k.attach(run.id)
        assert await again.gather() == [square(i) for i in inputs]
    assert_nothing_stopped(aws, proxied, job_ids)
