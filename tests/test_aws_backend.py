"""The AWS Batch backend against a moto server (simple Batch mode: jobs end at submit time).

Every test uses a prebuilt ``image=`` so no Docker engine is needed; the real-container run is
tests/test_aws_end_to_end.py. Calls are counted through botocore's event hooks on every
session aioknot opens (the `calls` fixture). Paths moto cannot take (jobs still queued or
running, throttling, pagination) run `AwsRun` against `FakeBatch`, which answers in Batch's
shapes.
"""

from __future__ import annotations

import ast
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from helpers.aws import BUCKET, ECR_MANIFEST, IMAGE, Calls, MotoClients
from helpers.fake_batch import Losses, fake_aws_run
from infra.fault_proxy import Fault, FaultProxy
from infra.moto import MotoServer

import aioknot
from aioknot._backends.aws import backend as aws_backend
from aioknot._backends.aws.jobs import (
    JOB_MAX_INPUTS,
    JOB_MAX_SEGMENTS,
    MAX_ARRAY_SIZE,
    RETRY_RULES,
    JobBatcher,
    JobShape,
)
from aioknot._backends.aws.run import AwsRun, status_counts
from aioknot._backends.base import Segment
from aioknot._exceptions import ConfigurationError, TaskLost

pytestmark = pytest.mark.usefixtures("fast_polls")


def square(x: int) -> int:
    return x * x


def active_definitions(boto: MotoClients, knot: str = "squares") -> list[dict[str, Any]]:
    """The knot's job definitions that Batch holds ACTIVE."""
    described = boto("batch").describe_job_definitions(
        jobDefinitionName=f"aioknot-{knot}", status="ACTIVE"
    )
    return list(described["jobDefinitions"])


def knot(func: Any = square, **options: Any) -> aioknot.AsyncKnot:
    options.setdefault("image", IMAGE)
    options.setdefault("name", "squares")
    return aioknot.AsyncKnot(func, backend="aws", **options)


# --- against moto ---------------------------------------------------------------------------


async def test_simple_mode_succeeded_without_record_is_lost_promptly(
    simple_batch: MotoServer, boto: MotoClients, calls: Calls
) -> None:
    async with knot() as k:
        run = await k.map(range(5))
        started = time.monotonic()
        outcomes = await run.gather(return_exceptions=True)
        waited = time.monotonic() - started
    assert all(isinstance(o, TaskLost) for o in outcomes)
    assert [o.index for o in outcomes] == list(range(5))
    # Each child says it ended without a record (the watcher's wording, job id included).
    assert all("no result" in o.reason for o in outcomes)
    assert waited < 3.0  # the first poll after the last SubmitJob sees every job over
    # A bucket of its own, private and encrypted, and every object call names the owner.
    s3 = boto("s3")
    blocked = s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"]
    assert blocked["BlockPublicAcls"]
    assert s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]


async def test_repeat_knot_reuses_stacks_and_job_definition(
    simple_batch: MotoServer, boto: MotoClients, calls: Calls
) -> None:
    async with knot() as k:
        await (await k.map(range(3))).gather(return_exceptions=True)
    first = calls.of("cloudformation")
    assert first["CreateStack"] == 2  # the environment and the knot's job role
    assert calls.count("batch", "RegisterJobDefinition") == 1

    calls.clear()
    async with knot() as k:
        await (await k.map(range(3))).gather(return_exceptions=True)
        # A second map of the same knot prepares nothing again.
        before = len(calls.made)
        await (await k.map(range(2))).gather(return_exceptions=True)
        second_map = Counter(o for s, o in calls.made[before:] if s != "s3")
    assert calls.of("cloudformation") == Counter({"DescribeStacks": 1})
    assert calls.of("ec2") == Counter()
    assert calls.count("batch", "RegisterJobDefinition") == 0
    assert calls.count("batch", "DescribeJobDefinitions") == 1
    assert calls.count("ecr") == 0  # a prebuilt image needs no lookup
    assert calls.count("sts") == 1
    assert set(second_map) <= {"SubmitJob", "DescribeJobs", "ListJobs"}

    # Another knot shares the environment stack and makes only its own job role.
    calls.clear()
    async with knot(name="cubes") as k:
        await (await k.map(range(2))).gather(return_exceptions=True)
    assert calls.of("cloudformation")["CreateStack"] == 1
    cfn = boto("cloudformation")
    names = {s["StackName"] for s in cfn.describe_stacks()["Stacks"]}
    assert names == {"aioknot-default", "aioknot-knot-squares", "aioknot-knot-cubes"}


async def test_changed_resources_register_a_new_revision(
    simple_batch: MotoServer, boto: MotoClients, calls: Calls
) -> None:
    async with knot() as k:
        await k.map([1])
    async with knot(memory=4096) as k:
        await k.map([1])
    async with knot(memory=4096) as k:
        await k.map([1])
    assert calls.count("batch", "RegisterJobDefinition") == 2
    definitions = [s["jobDefinition"] for s in calls.submits]
    assert definitions[0].endswith(":1") and definitions[1].endswith(":2")
    assert definitions[2] == definitions[1]
    batch = boto("batch")
    described = batch.describe_job_definitions(jobDefinitionName="aioknot-squares")
    revision = next(d for d in described["jobDefinitions"] if d["revision"] == 2)
    assert revision["retryStrategy"]["evaluateOnExit"][0]["onStatusReason"] == "Host EC2*"
    assert revision["containerProperties"]["jobRoleArn"].startswith("arn:aws:iam::")
    assert {"type": "MEMORY", "value": "4096"} in revision["containerProperties"][
        "resourceRequirements"
    ]


async def test_definitions_retry_infrastructure_failures_and_exit_on_exit_codes(
    simple_batch: MotoServer,
    boto: MotoClients,
) -> None:
    async with knot() as k:
        await k.map([1])
    (definition,) = active_definitions(boto)
    strategy = definition["retryStrategy"]
    # Three attempts by default; Batch takes at most 5 rules and applies the first match.
    assert strategy["attempts"] == 3
    # (moto answers the actions in lower case; Batch takes them in any case.)
    rules = [{**rule, "action": rule["action"].upper()} for rule in strategy["evaluateOnExit"]]
    assert rules == [dict(rule) for rule in RETRY_RULES] and len(rules) <= 5
    assert rules[0] == {"onStatusReason": "Host EC2*", "action": "RETRY"}  # Spot reclaims
    retried = {rule.get("onReason") for rule in rules if rule["action"] == "RETRY"}
    assert {"CannotStartContainerError*", "CannotInspectContainerError*"} <= retried
    # Any exit code is the worker's verdict (0: every result recorded; else the user's code
    # killed it): never retried, and it is the last rule, so nothing above can be shadowed.
    assert rules[-1] == {"onExitCode": "*", "action": "EXIT"}
    # The environment the definition's knot uses, for clobber(environment=True) of others.
    assert definition["tags"]["aioknot:environment"] == "default"
    # No plain-text secret and no credentials in the definition.
    assert [e["name"] for e in definition["containerProperties"]["environment"]] == [
        "AWS_DEFAULT_REGION"
    ]


async def test_retries_option_sets_the_attempts(
    simple_batch: MotoServer, boto: MotoClients
) -> None:
    async with knot(retries=1) as k:
        await k.map([1])
    (definition,) = active_definitions(boto)
    assert definition["retryStrategy"]["attempts"] == 1


async def test_secrets_reach_the_definition_through_a_scoped_execution_role(
    simple_batch: MotoServer,
    boto: MotoClients,
) -> None:
    secrets = boto("secretsmanager")
    secret = secrets.create_secret(Name="api-token", SecretString="s3cr3t-value")["ARN"]
    ssm = boto("ssm")
    ssm.put_parameter(Name="/team/token", Value="other-s3cr3t", Type="SecureString")
    parameter = ssm.get_parameter(Name="/team/token")["Parameter"]["ARN"]
    async with knot(secrets={"API_TOKEN": secret, "TEAM_TOKEN": parameter}) as k:
        await (await k.map([1, 2])).gather(return_exceptions=True)
    (definition,) = active_definitions(boto)
    container = definition["containerProperties"]
    assert container["secrets"] == [
        {"name": "API_TOKEN", "valueFrom": secret},
        {"name": "TEAM_TOKEN", "valueFrom": parameter},
    ]
    assert "s3cr3t" not in str(definition)  # the values stay in their stores
    # The execution role is the knot stack's, and may read exactly those two, nothing else.
    cfn = boto("cloudformation")
    (stack,) = cfn.describe_stacks(StackName="aioknot-knot-squares")["Stacks"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert container["executionRoleArn"] == outputs["JobExecutionRoleArn"]
    assert container["jobRoleArn"] == outputs["JobRoleArn"] != outputs["JobExecutionRoleArn"]
    iam = boto("iam")
    role = outputs["JobExecutionRoleArn"].rpartition("/")[2]
    (policy_name,) = iam.list_role_policies(RoleName=role)["PolicyNames"]
    document = iam.get_role_policy(RoleName=role, PolicyName=policy_name)["PolicyDocument"]
    job_role = outputs["JobRoleArn"].rpartition("/")[2]
    job_policies = [
        iam.get_role_policy(RoleName=job_role, PolicyName=name)["PolicyDocument"]
        for name in iam.list_role_policies(RoleName=job_role)["PolicyNames"]
    ]
    if isinstance(document, str):  # moto keeps a CloudFormation policy as its Python repr
        document = ast.literal_eval(document)
    granted = {(s["Action"], r) for s in document["Statement"] for r in s["Resource"]}
    assert granted == {
        ("secretsmanager:GetSecretValue", secret),
        ("ssm:GetParameters", parameter),
    }
    assert "secretsmanager" not in str(job_policies) and "DeleteObject" not in str(job_policies)

    # A repeat knot finds both roles on the definition: no stack is described again.
    async with knot(secrets={"API_TOKEN": secret, "TEAM_TOKEN": parameter}) as k:
        await k.map([3])
    assert len(active_definitions(boto)) == 1


async def test_preparation_rides_out_a_control_plane_outage(
    simple_batch: MotoServer,
    boto: MotoClients,
    fault_proxy: FaultProxy,
    calls: Calls,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """More failures in a row than botocore's own attempts, on the calls that prepare a knot:
    the map still goes through, and no stack or definition is made twice."""
    # Shorter pauses between the backend's own retries: the same path, in less time.
    monkeypatch.setattr(aws_backend, "PREPARE_FIRST_DELAY", 0.1)
    monkeypatch.setattr(aws_backend, "PREPARE_LONGEST_DELAY", 0.5)
    # botocore's own 3 attempts (max_attempts counts retries) instead of 6: its backoff would
    # make the test wait ~45 s for the same point. Each rule below outlasts them, so only the
    # backend's retry can cope.
    monkeypatch.setattr(
        aws_backend,
        "CLIENT_CONFIG",
        Config(max_pool_connections=16, retries={"max_attempts": 2, "mode": "standard"}),
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.url)  # every AWS call via the proxy
    faults = [
        Fault(kind="throttle", service="cloudformation", operation="DescribeStacks", times=5),
        Fault(kind="500", service="batch", operation="registerjobdefinition", times=3),
        Fault(kind="reset", service="batch", operation="describejobdefinitions", times=3),
    ]
    for fault in faults:
        fault_proxy.add(fault)
    progress: list[str] = []
    async with knot(progress=progress.append) as k:
        outcomes = await (await k.map(range(4))).gather(return_exceptions=True)
    assert [fault.injected for fault in faults] == [5, 3, 3]  # every fault was met
    assert any("retrying" in line for line in progress)  # and outlasted botocore's retries
    assert len(outcomes) == 4 and all(isinstance(o, TaskLost) for o in outcomes)  # simple mode
    assert calls.count("cloudformation", "CreateStack") == 2  # each stack once
    # A RegisterJobDefinition whose answer was lost may leave one spare revision, never more.
    assert 1 <= len(active_definitions(boto)) <= 2


async def test_a_permanent_refusal_is_not_retried(
    simple_batch: MotoServer, fault_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.url)  # every AWS call via the proxy
    denied = fault_proxy.add(Fault(kind="403", service="batch", operation="describejobdefinitions"))
    async with knot() as k:
        with pytest.raises(ConfigurationError, match="AccessDenied"):
            await k.map([1])
    assert denied.injected == 1  # asked once: retrying a refusal only delays the message


def _submitted(calls: Calls) -> list[tuple[int, int, int]]:
    """(array size or 0, chunk, inputs) of each SubmitJob, and the overrides' sizes."""
    shapes = []
    for request in calls.submits:
        env = {e["name"]: e["value"] for e in request["containerOverrides"]["environment"]}
        inputs = sum(int(p.split(":")[1]) for p in env["AIOKNOT_SEGMENTS"].split(","))
        size = request.get("arrayProperties", {}).get("size", 0)
        shapes.append((size, int(env["AIOKNOT_CHUNK"]), inputs))
        assert len(str(request["containerOverrides"])) < 2048
    return shapes


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        (1, [(0, 1, 1)]),
        (3, [(3, 1, 3)]),
        (10_000, [(16, 1, 16), (9_984, 1, 9_984)]),
        # Segments of 25,000 / 4 inputs after the first (the count is known), grouped whole.
        (25_000, [(16, 1, 16), (9_375, 2, 18_750), (6_234, 1, 6_234)]),
    ],
)
@pytest.mark.timeout(300)
async def test_array_submission_sizes(
    simple_batch: MotoServer, calls: Calls, inputs: int, expected: list[tuple[int, int, int]]
) -> None:
    async with knot() as k:
        run = await k.map(range(inputs))
        assert len(run.backend_run.job_ids) == len(expected)  # type: ignore[union-attr]
    assert calls.count("batch", "SubmitJob") == len(expected)
    assert _submitted(calls) == expected
    assert "arrayProperties" not in calls.submits[0] or inputs > 1


async def test_failed_children_are_lost_with_reason_and_log(
    failing_batch: MotoServer, calls: Calls
) -> None:
    async with knot() as k:
        run = await k.map(range(4))
        outcomes = await run.gather(return_exceptions=True)
        single = await (await k.map([7])).gather(return_exceptions=True)
    for index, outcome in enumerate(outcomes):
        assert isinstance(outcome, TaskLost)
        assert outcome.index == index
        assert "FAILED" in outcome.reason and ":" + str(index) in outcome.reason
        assert outcome.log is not None and outcome.log.startswith("aioknot-squares/default/")
    assert calls.count("batch", "ListJobs") >= 1
    assert isinstance(single[0], TaskLost) and "FAILED" in single[0].reason


async def test_logs_read_every_attempt_of_the_child(
    simple_batch: MotoServer, boto: MotoClients
) -> None:
    async with knot() as k:
        run = await k.map(range(3))
        await run.gather(return_exceptions=True)
        batch = boto("batch")
        child = f"{run.backend_run.job_ids[0]}:2"  # type: ignore[union-attr]
        stream = batch.describe_jobs(jobs=[child])["jobs"][0]["container"]["logStreamName"]
        logs = boto("logs")
        logs.create_log_group(logGroupName="/aws/batch/job")
        logs.create_log_stream(logGroupName="/aws/batch/job", logStreamName=stream)
        now = int(time.time() * 1000)
        logs.put_log_events(
            logGroupName="/aws/batch/job",
            logStreamName=stream,
            logEvents=[{"timestamp": now, "message": "hello"}, {"timestamp": now, "message": "2"}],
        )
        assert await run.logs(2) == ["hello", "2"]
        assert await run.logs(0) == []  # its stream was never written


async def test_attach_reads_job_shapes_back_from_batch(simple_batch: MotoServer) -> None:
    async with knot() as k:
        run = await k.map(range(40))
        await run.gather(return_exceptions=True)
        again = await k.attach(run.id)
        assert again.backend_run is not None
        assert await again.backend_run.status() == {
            "queued": 0,
            "starting": 0,
            "running": 0,
            "exited": 40,
        }


async def test_clobber_leaves_nothing_tagged_behind(
    simple_batch: MotoServer, boto: MotoClients, calls: Calls
) -> None:
    ecr = boto("ecr")
    ecr.create_repository(repositoryName="aioknot")
    ecr.put_image(repositoryName="aioknot", imageManifest=ECR_MANIFEST, imageTag="prebuilt")
    ecr.put_image(repositoryName="aioknot", imageManifest=ECR_MANIFEST, imageTag="other")
    progress: list[str] = []
    async with knot(progress=progress.append) as k:
        await (await k.map(range(3))).gather(return_exceptions=True)
        await k.clobber(environment=True, images=True)
    cfn = boto("cloudformation")
    live = [
        s
        for s in cfn.describe_stacks()["Stacks"]
        if s["StackStatus"] != "DELETE_COMPLETE"
        and any(t["Key"].startswith("aioknot:") for t in s.get("Tags", []))
    ]
    assert live == []
    assert active_definitions(boto) == []
    tags = [i["imageTags"] for i in ecr.describe_images(repositoryName="aioknot")["imageDetails"]]
    assert tags == [["other"]]  # only the knot's image went
    repositories = ecr.describe_repositories()["repositories"]
    assert [r["repositoryName"] for r in repositories] == ["aioknot"]  # the user's: it stays
    s3 = boto("s3")
    buckets = [b["Name"] for b in s3.list_buckets().get("Buckets", [])]
    assert buckets == []  # the default bucket went with the knot's objects: it was empty
    assert any("deleting stack aioknot-default" in line for line in progress)
    assert any("deregistered 1 job definitions" in line for line in progress)


@pytest.mark.parametrize(
    "options",
    [
        {"name": "no_underscores"},
        {"memory": "lots"},
        {"compute_type": "FARGATE", "vcpus": 3},
        {"env": {"AWS_SECRET_ACCESS_KEY": "x"}},
        {"job_queue": "not-an-arn"},
        {"memroy": 4096},
    ],
)
async def test_bad_option_fails_before_any_call(
    aws: MotoServer, calls: Calls, options: dict[str, Any]
) -> None:
    with pytest.raises(ConfigurationError):
        knot(**options)
    assert calls.made == []


async def test_bad_image_option_fails_before_any_call(aws: MotoServer, calls: Calls) -> None:
    with pytest.raises(ConfigurationError, match="image"):
        knot(image="not an image")  # in the constructor: nothing can have been called
    assert calls.made == []


# --- pure parts -----------------------------------------------------------------------------


def test_batcher_first_job_goes_at_once_then_jobs_fill_up() -> None:
    batcher = JobBatcher()
    segments, first = [], 0
    for count in [16, 32, 64, 128, 256, 512] + [1000] * 48 + [992]:
        segments.append(Segment(first, count))
        first += count
    groups = [group for segment in segments for group in batcher.add(segment)]
    groups.append(batcher.flush())
    shapes = [JobShape.of(group) for group in groups if group]
    assert shapes[0].count == 16
    assert len(shapes) <= 5 and sum(s.count for s in shapes) == first == 50_000
    assert all(s.count <= JOB_MAX_INPUTS and s.size <= MAX_ARRAY_SIZE for s in shapes)


def test_batcher_groups_only_consecutive_segments() -> None:
    """A pipeline's segments come as its upstream completes, out of order and with gaps: a
    job covers consecutive inputs only, and at most JOB_MAX_SEGMENTS segments."""
    batcher = JobBatcher()
    arriving = [Segment(0, 2), Segment(6, 2), Segment(4, 2), Segment(8, 1), Segment(2, 1)]
    groups = [group for segment in arriving for group in batcher.add(segment)]
    groups.append(batcher.flush())
    shapes = [JobShape.of(group) for group in groups if group]
    covered = sorted(i for shape in shapes for i in range(shape.first, shape.stop))
    assert covered == [0, 1, 2, 4, 5, 6, 7, 8]  # each input once; 3 has not come
    assert all(shape.count == sum(c for _, c in shape.segments) for shape in shapes)
    many = JobBatcher()
    many.add(Segment(0, 1))  # the first job goes at once
    singles = [
        group for i in range(1, 2 * JOB_MAX_SEGMENTS + 2) for group in many.add(Segment(i, 1))
    ]
    assert [len(group) for group in singles] == [JOB_MAX_SEGMENTS, JOB_MAX_SEGMENTS]


def test_job_shape_children_cover_inputs_exactly() -> None:
    shape = JobShape.of([Segment(100, 10_000), Segment(10_100, 5)])
    assert (shape.chunk_size, shape.size) == (2, 5_003)
    covered = [i for child in range(shape.size) for i in shape.child_inputs(child)]
    assert covered == list(range(100, 10_105))
    assert shape.child_of(10_104) == 5_002
    assert JobShape.of([Segment(7, 1)]).size == 0  # one input: a plain job


def test_status_counts_from_status_summary() -> None:
    array = JobShape.of([Segment(0, 10)])
    chunked = JobShape.of([Segment(10, 15_000)])
    plain = JobShape.of([Segment(15_010, 1)])
    counts = status_counts(
        [
            (array, "RUNNING", {"RUNNABLE": 3, "RUNNING": 5, "SUCCEEDED": 1, "FAILED": 1}),
            (chunked, "PENDING", {"PENDING": 7_500}),
            (plain, "STARTING", {}),
        ]
    )
    assert counts == {"queued": 3 + 15_000, "starting": 1, "running": 5, "exited": 2}


# --- AwsRun against a fake Batch -------------------------------------------------------------


class FakeBatch:
    """Answers DescribeJobs/ListJobs from ``self.jobs`` and records what it is asked."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.throttle = 0
        self.page = 2

    async def submit_job(self, **request: Any) -> dict[str, Any]:
        self.calls.append(("submit_job", request))
        if self.throttle:
            self.throttle -= 1
            raise ClientError(
                {"Error": {"Code": "TooManyRequestsException", "Message": "slow down"}},
                "SubmitJob",
            )
        job_id = f"job{len(self.jobs)}"
        size = request.get("arrayProperties", {}).get("size", 0)
        self.jobs[job_id] = {"jobId": job_id, "status": "RUNNABLE", "size": size}
        return {"jobId": job_id}

    async def describe_jobs(self, jobs: list[str]) -> dict[str, Any]:
        assert len(jobs) <= 100
        self.calls.append(("describe_jobs", {"jobs": jobs}))
        out = []
        for job_id in jobs:
            if job_id in self.jobs:
                job = self.jobs[job_id]
                described = {"jobId": job_id, "status": job["status"]}
                if job.get("summary") is not None:
                    described["arrayProperties"] = {"statusSummary": job["summary"]}
                if job.get("container"):
                    described["container"] = job["container"]
                described["statusReason"] = job.get("reason")
                out.append(described)
        return {"jobs": out}

    async def list_jobs(self, **arguments: Any) -> dict[str, Any]:
        self.calls.append(("list_jobs", arguments))
        parent = self.jobs[arguments["arrayJobId"]]
        # Only failed children are kept here; a listing of another status finds none.
        wanted = arguments.get("jobStatus") in (None, "FAILED")
        failed = sorted(parent.get("failed", [])) if wanted else []
        start = int(arguments.get("nextToken", 0))
        page = failed[start : start + self.page]
        response: dict[str, Any] = {
            "jobSummaryList": [
                {"jobId": f"{parent['jobId']}:{i}", "status": "FAILED"} for i in page
            ]
        }
        if start + self.page < len(failed):
            response["nextToken"] = str(start + self.page)
        return response

    async def cancel_job(self, jobId: str, reason: str) -> None:  # noqa: N803
        self.calls.append(("cancel_job", {"jobId": jobId}))

    async def terminate_job(self, jobId: str, reason: str) -> None:  # noqa: N803
        self.calls.append(("terminate_job", {"jobId": jobId}))


@contextlib.asynccontextmanager
async def fake_run() -> AsyncIterator[tuple[AwsRun, FakeBatch, Losses]]:
    batch, listener = FakeBatch(), Losses()
    async with fake_aws_run(batch, listener) as run:
        yield run, batch, listener


async def test_throttled_submit_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    async with fake_run() as (run, batch, _):
        batch.throttle = 3
        await run.submit([Segment(0, 3)], last=True)
    assert [name for name, _ in batch.calls].count("submit_job") == 4
    assert run.job_ids == ["job0"]


async def test_cancel_cancels_queued_and_terminates_running() -> None:
    async with fake_run() as (run, batch, _):
        await run.submit([Segment(0, 16)], last=False)
        await run.submit([Segment(16, 32)], last=True)
        batch.jobs["job0"]["summary"] = {"RUNNABLE": 10, "RUNNING": 6}
        batch.jobs["job1"]["summary"] = {"RUNNING": 32}
        await run.cancel()
    stops = sorted((n, a["jobId"]) for n, a in batch.calls if n in ("cancel_job", "terminate_job"))
    assert stops == [("cancel_job", "job0"), ("terminate_job", "job0"), ("terminate_job", "job1")]


async def test_failed_children_listed_across_pages() -> None:
    async with fake_run() as (run, batch, listener):
        await run.submit([Segment(0, 15_000)], last=True)  # chunk 2: 7,500 children
        job = batch.jobs["job0"]
        job["failed"] = [0, 3, 7_499]
        job["summary"] = {"FAILED": 3, "SUCCEEDED": 7_497}
        job["status"] = "FAILED"
        await run.watch()
    assert sorted(listener.losses) == [0, 1, 6, 7, 14_998, 14_999]
    assert all("FAILED" in loss["reason"] for loss in listener.losses.values())
    failed_pages = [
        a for n, a in batch.calls if n == "list_jobs" and a.get("jobStatus") in (None, "FAILED")
    ]
    assert len(failed_pages) == 2  # two pages of failed children
