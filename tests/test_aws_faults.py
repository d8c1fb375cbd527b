"""The AWS Batch watcher under faults, against moto through the fault-injecting proxy.

Batch runs in moto's simple mode (no container runs: a job is SUCCEEDED, or FAILED with
``MOTO_SIMPLE_BATCH_FAIL_AFTER=0``, the moment it is submitted), so the test plays the
worker's part: `PlayedWorker` (tests/helpers/played_worker.py) writes each child's grouped
record to the store, with the worker's own encoder, right before (or, for an outage, after)
the job goes in. The real containers run in tests/test_aws_end_to_end.py.

Every test checks what the user gets, that no input is lost, and that nothing was cancelled
or terminated: the proxy's count of CancelJob/TerminateJob requests is 0 and moto's jobs have
no stop reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from botocore.config import Config
from helpers.aws import IMAGE, MotoClients
from helpers.played_worker import PlayedWorker, playing, square
from helpers.waiting import wait_until_async
from infra.fault_proxy import Fault, FaultProxy
from infra.moto import MotoServer

import aioknot
from aioknot._backends.aws import backend as aws_backend
from aioknot._backends.aws import jobs as aws_jobs
from aioknot._backends.aws.jobs import JobShape
from aioknot._exceptions import TaskLost, WatchTimeout

pytestmark = pytest.mark.usefixtures("fast_polls")


@pytest.fixture(autouse=True)
def botocore_two_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's own retries cut to 2 attempts a call, so that a burst of a few faults
    reaches aioknot's retries (the layer under test) rather than being absorbed by botocore's."""
    monkeypatch.setattr(
        aws_backend,
        "CLIENT_CONFIG",
        Config(max_pool_connections=16, retries={"total_max_attempts": 2, "mode": "standard"}),
    )


@pytest.fixture
def worker(simple_batch: MotoServer) -> Iterator[PlayedWorker]:
    with playing(PlayedWorker(simple_batch.url)) as played:
        yield played


@pytest.fixture
def proxied(
    simple_batch: MotoServer, fault_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> FaultProxy:
    """Simple Batch mode, and every AWS call of this process through the fault proxy."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.url)
    return fault_proxy


def knot(**options: Any) -> aioknot.AsyncKnot:
    options.setdefault("image", IMAGE)
    options.setdefault("name", "squares")
    return aioknot.AsyncKnot(square, backend="aws", **options)


def assert_nothing_stopped(server: MotoServer, proxy: FaultProxy, job_ids: list[str]) -> None:
    """No CancelJob/TerminateJob went out, and Batch holds no stop reason for any job."""
    assert proxy.counts[("batch", "canceljob")] == 0
    assert proxy.counts[("batch", "terminatejob")] == 0
    with MotoClients(server.url) as boto:
        jobs = boto("batch").describe_jobs(jobs=job_ids)["jobs"]
    assert sorted(job["jobId"] for job in jobs) == sorted(job_ids)
    for job in jobs:
        assert "cancelled" not in str(job.get("statusReason", "")).lower()
        assert "terminated" not in str(job.get("statusReason", "")).lower()


# --- transient bursts ------------------------------------------------------------------------


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
        # with it, before the burst had shown anything. The proxy counts on its own thread:
        # there is no event to wait on.)
        await wait_until_async(
            lambda: rules[0].injected > 4, timeout=60, what="5 DescribeJobs faults"
        )
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
    monkeypatch: pytest.MonkeyPatch, failing_proxy: FaultProxy, failing_worker: PlayedWorker
) -> None:
    """Children FAILED (some after writing their grouped record), while ListJobs and
    DescribeJobs fail in bursts: every record counts, every other input is lost exactly."""
    monkeypatch.setattr(aws_jobs, "MAX_ARRAY_SIZE", 4)  # 12 inputs: children of 3 inputs
    inputs = list(range(12))
    for operation in ("describejobs", "listjobs"):
        failing_proxy.add(Fault("503", service="batch", operation=operation, times=3))
    async with knot() as k:
        run = await k.map(inputs)
        outcomes = await run.gather(return_exceptions=True)
        job_ids = list(run.backend_run.job_ids)  # type: ignore[union-attr]
    assert sum(failing_proxy.faults.values()) > 0  # the bursts happened
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
    assert failing_proxy.counts[("batch", "canceljob")] == 0
    assert failing_proxy.counts[("batch", "terminatejob")] == 0


def _job_of(shapes: list[JobShape], index: int) -> int:
    return next(n for n, shape in enumerate(shapes) if shape.first <= index < shape.stop)


@pytest.fixture
def failing_proxy(
    failing_batch: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FaultProxy]:
    """Every AWS call of this process through a fault proxy in front of `failing_batch`."""
    with FaultProxy(upstream=failing_batch.url) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        yield proxy


@pytest.fixture
def failing_worker(failing_batch: MotoServer) -> Iterator[PlayedWorker]:
    # Children 1 and 3 die before writing anything; the others wrote their record, then
    # failed (a crash on the way out, say).
    with playing(PlayedWorker(failing_batch.url, skip=frozenset({1, 3}))) as played:
        yield played


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
