"""The Batch path's S3 requests per result (issue 11): what the client spends to discover and
fetch results, pinned on moto's simple Batch mode, and the task states `AwsRun` tells the
watcher from what DescribeJobs already says.

Simple mode runs no container (a job is SUCCEEDED the moment it is submitted), so
`PlayedWorker` writes each child's record right before its job goes in, as the worker would.
The run with real containers is measured by benchmarks/batch_requests.py.
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Iterator
from typing import Any

import aioboto3
import pytest
from helpers.aws import IMAGE
from helpers.fake_batch import Losses, fake_aws_run
from helpers.played_worker import PlayedWorker, playing, square
from infra.moto import MotoServer

import aioknot
from aioknot._backends.base import Segment

pytestmark = pytest.mark.usefixtures("fast_polls")

INPUTS = 50
MAX_REQUESTS_PER_RESULT = 2.0  # issue 11's target on Batch (HEAD + LIST + GET of results)


class ResultRequests:
    """The client's S3 requests on result keys (HEAD, GET, LIST of ``.../results/``), by
    operation, counted through botocore's before-parameter-build hook (it sees the call's
    own parameters: the key or prefix) on every aioboto3 session. A retried request counts
    once; moto answers at once, so none is."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def record(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        where = str(params.get("Key") or params.get("Prefix") or "")
        if "/results/" in where:
            self.counts[model.name] += 1


@pytest.fixture
def result_requests(monkeypatch: pytest.MonkeyPatch) -> ResultRequests:
    counter = ResultRequests()
    original = aioboto3.Session

    class CountingSession(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.events.register("before-parameter-build.s3", counter.record)

    monkeypatch.setattr(aioboto3, "Session", CountingSession)
    return counter


@pytest.fixture
def worker(simple_batch: MotoServer) -> Iterator[PlayedWorker]:
    with playing(PlayedWorker(simple_batch.url)) as played:
        yield played


async def test_simple_mode_batch_path_spends_at_most_two_requests_per_result(
    worker: PlayedWorker, result_requests: ResultRequests
) -> None:
    async with aioknot.AsyncKnot(square, backend="aws", image=IMAGE, name="squares") as knot:
        run = await knot.map(range(INPUTS))
        assert await run.gather() == [square(i) for i in range(INPUTS)]
    counts = result_requests.counts
    spent = counts["HeadObject"] + counts["GetObject"] + counts["ListObjectsV2"]
    assert spent / INPUTS <= MAX_REQUESTS_PER_RESULT, counts
    # One GET per record object (each child wrote one); discovery is the rest.
    assert counts["GetObject"] == len(worker.children), counts


# --- what AwsRun tells the watcher, against a fake Batch -------------------------------------


class CountedBatch:
    """Answers SubmitJob and DescribeJobs from ``summaries`` (job id -> statusSummary), and
    counts every call: the task states must come from what it already asks."""

    def __init__(self) -> None:
        self.summaries: dict[str, dict[str, int]] = {}
        self.calls: collections.Counter[str] = collections.Counter()

    async def submit_job(self, **request: Any) -> dict[str, Any]:
        self.calls["SubmitJob"] += 1
        job_id = f"job{len(self.summaries)}"
        size = request["arrayProperties"]["size"]
        self.summaries[job_id] = {"RUNNABLE": size}
        return {"jobId": job_id}

    async def describe_jobs(self, jobs: list[str]) -> dict[str, Any]:
        self.calls["DescribeJobs"] += 1
        return {
            "jobs": [
                {
                    "jobId": job_id,
                    "status": "PENDING",
                    "arrayProperties": {"statusSummary": self.summaries[job_id]},
                }
                for job_id in jobs
            ]
        }

    async def list_jobs(self, **arguments: Any) -> dict[str, Any]:
        self.calls["ListJobs"] += 1
        return {"jobSummaryList": []}


async def test_aws_run_tells_queued_started_and_ended_from_the_counts_it_polls() -> None:
    batch, listener = CountedBatch(), Losses()
    async with fake_aws_run(batch, listener) as run:
        # A new run: nothing has started, whatever it will be given (an image may be built).
        assert listener.states == [("queued", 0, sys.maxsize)]
        await run.submit([Segment(0, 8)], last=False)  # the first job goes at once
        await run.submit([Segment(8, 8)], last=True)

        async def poll(summary0: dict[str, int], summary1: dict[str, int]) -> list[Any]:
            batch.summaries["job0"], batch.summaries["job1"] = summary0, summary1
            listener.states.clear()
            await run._poll(run._jobs)
            return listener.states

        # STARTING is not started: its container has not run, so it wrote nothing.
        assert await poll({"RUNNABLE": 6, "STARTING": 2}, {"RUNNABLE": 8}) == []
        assert await poll({"RUNNABLE": 6, "RUNNING": 2}, {"RUNNABLE": 8}) == [("started", 0, 8)]
        assert await poll({"RUNNABLE": 6, "RUNNING": 2}, {"RUNNABLE": 8}) == []  # said once
        assert await poll({"RUNNING": 7, "SUCCEEDED": 1}, {"RUNNING": 8}) == [
            ("ended", 0, 8),
            ("started", 8, 8),
        ]
        assert await poll({"RUNNING": 7, "SUCCEEDED": 1}, {"RUNNING": 8}) == []
        # A child back in RUNNABLE (retried) leaves its job started; a FAILED one is no end
        # to look for (its inputs are reported lost, and a loss is settled with a LIST).
        assert await poll({"RUNNABLE": 1, "RUNNING": 5, "SUCCEEDED": 2}, {"FAILED": 1}) == [
            ("ended", 0, 8)
        ]
    # No call of their own: one DescribeJobs per poll (two jobs, one call); the two ListJobs
    # are the run's listings of FAILED children and (at most every 15 s) of SUCCEEDED ones.
    assert batch.calls == {"SubmitJob": 2, "DescribeJobs": 6, "ListJobs": 2}
