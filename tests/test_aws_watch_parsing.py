"""What a lost task says, parsed from Batch's response shapes, and how failed children stream.

The shapes below are recorded: ``MOTO_*`` from moto 5.2.5 (simple Batch mode, a failed array
child, and its ListJobs summary), ``AWS_*`` as AWS Batch's API reference documents a failed,
retried child (moto never fills ``container.exitCode`` in DescribeJobs, nor ``reason``).
The streaming tests drive `AwsRun` against `PagedBatch`, which answers in those shapes: moto
cannot show them (its ListJobs ignores ``maxResults`` and never pages).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from botocore.exceptions import ClientError
from helpers.fake_batch import FakeTarget, fake_aws_run, run_spec

from aioknot._backends.aws import run as aws_run
from aioknot._backends.aws.jobs import (
    JobShape,
    is_knots_job,
    is_rerun_name,
    job_name,
    rerun_name,
)
from aioknot._backends.aws.run import (
    AwsRun,
    attempt_count,
    exit_code,
    failure_reason,
    log_stream,
)
from aioknot._backends.base import Segment
from aioknot._exceptions import KnotError, WatchTimeout

PARENT = "6a2336e8-5f5e-4ccb-94c0-5cc1be5e0226"

# moto 5.2.5, DescribeJobs of a FAILED array child (simple mode): no exit code anywhere.
MOTO_CHILD: dict[str, Any] = {
    "jobArn": f"arn:aws:batch:us-east-1:123456789012:job/{PARENT}:0",
    "jobName": "j10000",
    "jobId": f"{PARENT}:0",
    "jobQueue": "arn:aws:batch:us-east-1:123456789012:job-queue/queue",
    "status": "FAILED",
    "attempts": [
        {
            "container": {
                "containerInstanceArn": "TBD",
                "taskArn": "arn:aws:batch:us-east-1:123456789012:job-definition/defn:1",
                "logStreamName": f"defn/default/{PARENT}:0",
                "networkInterfaces": [],
            },
            "startedAt": 1795273843955,
            "stoppedAt": 1795273843955,
        }
    ],
    "createdAt": 1795273843955,
    "startedAt": 1795273843955,
    "stoppedAt": 1795273843955,
    "dependsOn": [],
    "jobDefinition": "arn:aws:batch:us-east-1:123456789012:job-definition/defn:1",
    "parameters": {},
    "container": {
        "vcpus": 1,
        "memory": 128,
        "command": ["x"],
        "volumes": [],
        "environment": [{"name": "AWS_BATCH_JOB_ID", "value": f"{PARENT}:0"}],
        "readonlyRootFilesystem": False,
        "ulimits": [],
        "privileged": False,
        "logStreamName": f"defn/default/{PARENT}:0",
    },
    "tags": {},
}
# moto 5.2.5, the same child's ListJobs summary once its container exited with 3 (default
# mode: the summary is where moto puts the exit code).
MOTO_SUMMARY: dict[str, Any] = {
    "jobArn": f"arn:aws:batch:us-east-1:123456789012:job/{PARENT}:0",
    "jobId": f"{PARENT}:0",
    "jobName": "j10000",
    "createdAt": 1795273843955,
    "status": "FAILED",
    "jobDefinition": "arn:aws:batch:us-east-1:123456789012:job-definition/defn:1",
    "startedAt": 1795273843955,
    "stoppedAt": 1795273843955,
    "container": {"exitCode": 3},
}
# AWS Batch (API reference shape): a child reclaimed once (Spot), then killed for memory.
AWS_CHILD: dict[str, Any] = {
    "jobArn": f"arn:aws:batch:us-east-1:123456789012:job/{PARENT}:7",
    "jobName": "squares-20261121T000000-abcdef-1",
    "jobId": f"{PARENT}:7",
    "status": "FAILED",
    "statusReason": "Essential container in task exited",
    "arrayProperties": {"index": 7},
    "attempts": [
        {
            "container": {
                "taskArn": "arn:aws:ecs:us-east-1:123456789012:task/c/1",
                "logStreamName": "aioknot-squares/default/1111",
                "networkInterfaces": [],
            },
            "statusReason": "Host EC2 (instance i-0ab) terminated.",
        },
        {
            "container": {
                "taskArn": "arn:aws:ecs:us-east-1:123456789012:task/c/2",
                "exitCode": 137,
                "reason": "OutOfMemoryError: Container killed due to memory usage",
                "logStreamName": "aioknot-squares/default/2222",
                "networkInterfaces": [],
            },
            "statusReason": "Essential container in task exited",
        },
    ],
    "container": {
        "exitCode": 137,
        "reason": "OutOfMemoryError: Container killed due to memory usage",
        "logStreamName": "aioknot-squares/default/2222",
    },
}


def test_exit_code_from_the_description_container_first() -> None:
    summary = {**MOTO_SUMMARY, "container": {"exitCode": 1}}  # a stale summary loses
    assert exit_code(AWS_CHILD, summary) == 137
    assert attempt_count(AWS_CHILD) == 2
    assert log_stream(AWS_CHILD) == "aioknot-squares/default/2222"
    reason = failure_reason(AWS_CHILD)
    assert "Essential container in task exited" in reason and "OutOfMemoryError" in reason
    assert reason.startswith(f"AWS Batch job {PARENT}:7 FAILED")


def test_exit_code_from_the_last_attempt_when_the_container_lacks_it() -> None:
    described = copy.deepcopy(AWS_CHILD)
    del described["container"]["exitCode"]
    described["attempts"][0]["container"]["exitCode"] = 1  # not the last attempt: ignored
    assert exit_code(described, MOTO_SUMMARY) == 137
    assert failure_reason({"jobId": "j", "attempts": described["attempts"]}).endswith(
        "OutOfMemoryError: Container killed due to memory usage"
    )


def test_exit_code_from_the_list_jobs_summary_as_moto_gives_it() -> None:
    assert exit_code(MOTO_CHILD) is None  # moto's DescribeJobs has none
    assert exit_code(MOTO_CHILD, MOTO_SUMMARY) == 3
    assert exit_code({}, MOTO_SUMMARY) == 3  # not described at all
    assert attempt_count(MOTO_CHILD) == 1
    assert attempt_count({}) is None  # unknown, not zero
    assert log_stream(MOTO_CHILD) == f"defn/default/{PARENT}:0"
    assert failure_reason(MOTO_CHILD, MOTO_SUMMARY).endswith("Batch gave no reason")
    assert exit_code({"container": {"exitCode": True}}) is None  # a bool is no exit code


# --- streaming failed children --------------------------------------------------------------


class PagedBatch:
    """Batch for one array job whose children have all ended, answered in the recorded shapes
    above, ListJobs paged by ``maxResults`` as AWS does. Records each call, and how many
    losses the listener had seen when it came (to show that losses stream)."""

    def __init__(self, size: int, *, status: str = "FAILED") -> None:
        self.size = size
        self.status = status
        self.calls: list[tuple[str, int]] = []  # (operation, losses reported before it)
        self.reported = 0
        self.fail_next: list[Exception] = []
        self.submitted: list[dict[str, Any]] = []  # jobs Batch accepted
        self.lose_answers = 0  # SubmitJobs accepted whose answer is then lost (a 500)

    def _maybe_fail(self) -> None:
        if self.fail_next:
            raise self.fail_next.pop(0)

    async def submit_job(self, **request: Any) -> dict[str, Any]:
        self.calls.append(("submit_job", self.reported))
        self._maybe_fail()
        self.submitted.append({"jobId": PARENT, "jobName": request["jobName"]})
        if self.lose_answers:
            self.lose_answers -= 1
            raise _error("InternalError", 500)
        return {"jobId": PARENT}

    async def describe_jobs(self, jobs: list[str]) -> dict[str, Any]:
        assert len(jobs) <= 100
        self.calls.append(("describe_jobs", self.reported))
        self._maybe_fail()
        out: list[dict[str, Any]] = []
        for job_id in jobs:
            if job_id == PARENT:
                out.append(
                    {
                        "jobId": PARENT,
                        "status": self.status,
                        "arrayProperties": {
                            "size": self.size,
                            "statusSummary": {self.status: self.size},
                        },
                    }
                )
            else:
                child = {**copy.deepcopy(MOTO_CHILD), "jobId": job_id, "status": self.status}
                child["container"]["logStreamName"] = f"defn/default/{job_id}"
                out.append(child)
        return {"jobs": out}

    async def list_jobs(self, **arguments: Any) -> dict[str, Any]:
        self.calls.append(("list_jobs", self.reported))
        self._maybe_fail()
        if "jobQueue" in arguments:  # looking a job up by name
            (wanted,) = arguments["filters"][0]["values"]
            return {"jobSummaryList": [j for j in self.submitted if j["jobName"] == wanted]}
        assert arguments["arrayJobId"] == PARENT
        if arguments["jobStatus"] != self.status:
            return {"jobSummaryList": []}
        page = int(arguments.get("maxResults", 100))
        start = int(arguments.get("nextToken", 0))
        children = range(start, min(start + page, self.size))
        response: dict[str, Any] = {
            "jobSummaryList": [
                {**MOTO_SUMMARY, "jobId": f"{PARENT}:{i}", "status": self.status} for i in children
            ]
        }
        if children.stop < self.size:
            response["nextToken"] = str(children.stop)
        return response

    async def cancel_job(self, **_: Any) -> None:
        self.calls.append(("cancel_job", self.reported))

    async def terminate_job(self, **_: Any) -> None:
        self.calls.append(("terminate_job", self.reported))


class Listener:
    def __init__(self, batch: PagedBatch) -> None:
        self.batch = batch
        self.losses: dict[int, dict[str, Any]] = {}

    def done(self, first: int, count: int) -> None:
        pass

    def queued(self, first: int, count: int) -> None:
        pass

    def started(self, first: int, count: int) -> None:
        pass

    def ended(self, first: int, count: int) -> None:
        pass

    def lost(self, index: int, reason: str, **details: Any) -> None:
        self.losses[index] = {"reason": reason, **details}
        self.batch.reported = len(self.losses)


SPEC = run_spec("squares")


@asynccontextmanager
async def paged_run(
    batch: PagedBatch, watch_timeout: float = 60.0
) -> AsyncIterator[tuple[AwsRun, Listener]]:
    listener = Listener(batch)
    async with fake_aws_run(batch, listener, watch_timeout=watch_timeout) as run:
        yield run, listener


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shorter pauses between retries of a transient failure: the same path, in less time."""
    monkeypatch.setattr(aws_run, "RETRY_FIRST_SECONDS", 0.01)
    monkeypatch.setattr(aws_run, "RETRY_LONGEST_SECONDS", 0.05)


async def test_failed_children_stream_page_by_page_with_every_detail() -> None:
    batch = PagedBatch(2_500)
    async with paged_run(batch) as (run, listener):
        await run.submit([Segment(0, 2_500)], last=True)
        await run.watch()
    assert sorted(listener.losses) == list(range(2_500))
    described = aws_run.DESCRIBED_CHILDREN_MAX
    for child in (0, described - 1):
        loss = listener.losses[child]
        assert loss["job_id"] == f"{PARENT}:{child}"
        assert loss["exit_code"] == 3  # from the summary: moto's description has none
        assert loss["attempts"] == 1
        assert loss["log"] == f"defn/default/{PARENT}:{child}"
        assert loss["reason"].startswith(f"AWS Batch job {PARENT}:{child} FAILED")
    # Beyond the first children described, a report says what ListJobs says.
    beyond = listener.losses[described]
    assert beyond["job_id"] == f"{PARENT}:{described}" and beyond["exit_code"] == 3
    assert beyond["log"] is None and beyond["attempts"] is None
    operations = [name for name, _ in batch.calls]
    # 3 pages of up to 1,000; the described children once each, 100 a call; one poll.
    assert operations.count("list_jobs") == 3
    assert operations.count("describe_jobs") == 1 + described // 100
    # Each batch of 100 is reported before the next is described: losses stream.
    describes = [seen for name, seen in batch.calls if name == "describe_jobs"][1:]
    assert describes == [100 * n for n in range(described // 100)]
    pages = [seen for name, seen in batch.calls if name == "list_jobs"]
    assert pages == [0, 1_000, 2_000]  # each page reported before the next is listed
    assert "cancel_job" not in operations and "terminate_job" not in operations


async def test_succeeded_children_are_reported_when_they_end() -> None:
    batch = PagedBatch(300, status="SUCCEEDED")
    async with paged_run(batch) as (run, listener):
        await run.submit([Segment(0, 300)], last=True)
        await run.watch()
    assert sorted(listener.losses) == list(range(300))
    loss = listener.losses[299]
    assert "SUCCEEDED but wrote no result" in loss["reason"]
    assert loss["job_id"] == f"{PARENT}:299" and loss["log"] == f"defn/default/{PARENT}:299"


def _error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "x"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "DescribeJobs",
    )


async def test_transient_errors_are_retried_and_others_translated() -> None:
    batch = PagedBatch(10)
    throttled = functools.partial(_error, "TooManyRequestsException", 429)
    async with paged_run(batch) as (run, listener):
        await run.submit([Segment(0, 10)], last=True)
        batch.fail_next = [throttled(), _error("InternalError", 500), throttled()]
        await run.watch()
    assert sorted(listener.losses) == list(range(10))

    batch = PagedBatch(10)
    async with paged_run(batch) as (run, _):
        await run.submit([Segment(0, 10)], last=True)
        batch.fail_next = [_error("ClientException", 400)]
        with pytest.raises(KnotError, match="describing the jobs of run .*ClientException"):
            await run.watch()


async def test_a_submit_whose_answer_was_lost_is_not_submitted_twice() -> None:
    batch = PagedBatch(10)
    batch.fail_next = [_error("TooManyRequestsException", 429)]  # refused: simply retried
    batch.lose_answers = 1  # then accepted, but answered with a 500
    async with paged_run(batch) as (run, _):
        await run.submit([Segment(0, 10)], last=True)
    assert run.job_ids == [PARENT]
    assert len(batch.submitted) == 1  # found by its name, not submitted again
    assert [name for name, _ in batch.calls] == ["submit_job", "submit_job", "list_jobs"]


async def test_a_sustained_outage_ends_the_watch_with_watch_timeout() -> None:
    batch = PagedBatch(10)
    async with paged_run(batch, watch_timeout=0.5) as (run, listener):
        await run.submit([Segment(0, 10)], last=True)
        batch.fail_next = [_error("ServiceUnavailable", 503)] * 10_000
        with pytest.raises(WatchTimeout) as caught:
            await run.watch()
    error = caught.value
    assert error.run_id == SPEC.run_id
    assert isinstance(error.__cause__, ClientError)
    message = str(error)
    assert "describing the jobs of run" in message and "503 ServiceUnavailable" in message
    assert f'await knot.attach("{SPEC.run_id}")' in message and "Nothing was cancelled" in message
    assert listener.losses == {}
    assert not any(name in ("cancel_job", "terminate_job") for name, _ in batch.calls)


async def test_a_submission_outage_says_which_inputs_were_not_submitted() -> None:
    batch = PagedBatch(10)
    batch.fail_next = [_error("TooManyRequestsException", 429)] * 10_000
    async with paged_run(batch, watch_timeout=0.3) as (run, _):
        with pytest.raises(KnotError, match="Inputs 0 on were not submitted") as caught:
            await run.submit([Segment(0, 10)], last=True)
    assert not isinstance(caught.value, WatchTimeout)  # nothing to re-attach for them
    assert isinstance(caught.value.__cause__, ClientError)
    assert run.job_ids == []


async def test_a_reattached_run_reads_its_jobs_once_on_its_first_poll() -> None:
    """Re-attaching learns each job's inputs from its description; the first poll uses that
    same description instead of asking Batch again."""

    class AttachedBatch(PagedBatch):
        async def describe_jobs(self, jobs: list[str]) -> dict[str, Any]:
            response = await super().describe_jobs(jobs)
            for job in response["jobs"]:
                if job["jobId"] == PARENT:  # as submitted: the run's keys and segments
                    shape = JobShape(((0, self.size),), 1)
                    job["container"] = {"environment": shape.environment(SPEC)}
            return response

    batch = AttachedBatch(10)
    listener = Listener(batch)
    async with anyio.create_task_group() as group:
        run = AwsRun(FakeTarget(batch, group), SPEC, listener, job_ids=[PARENT])
        await run.watch()
        group.cancel_scope.cancel()
    operations = [name for name, _ in batch.calls]
    assert operations[:2] == ["describe_jobs", "list_jobs"]  # not describe_jobs twice
    assert sorted(listener.losses) == list(range(10))


def test_a_runs_jobs_are_named_and_recognized_by_one_rule() -> None:
    name = job_name("squares", SPEC.run_id, 3)
    assert name == f"squares-{SPEC.run_id}-3"
    assert is_knots_job(name, "squares")
    assert not is_knots_job(name, "square")  # another knot whose name is a prefix
    assert not is_knots_job(f"squares-{SPEC.run_id}", "squares")  # no job number
    assert not is_knots_job("someone-elses-job", "squares")
    rerun = rerun_name("squares", SPEC.run_id, 40)  # named by its first input
    assert rerun == f"squares-{SPEC.run_id}-r40" and is_knots_job(rerun, "squares")
    assert is_rerun_name(rerun) and not is_rerun_name(name)
