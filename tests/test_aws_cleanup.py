"""`clobber()` on the AWS backend against a moto server: it never creates anything, it refuses
to delete an environment that other knots use (unless ``force=True``), and after the last
knot's ``clobber(environment=True, images=True)`` nothing that aioknot created remains.

Batch runs in moto's simple mode (jobs end at submit time); calls are counted through
botocore's event hooks on every session aioknot opens.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest
from helpers.aws import BUCKET, ECR_HOST, ECR_MANIFEST, Calls, MotoClients
from infra.moto import MotoServer

import aioknot
from aioknot._backends.aws import backend as aws_backend
from aioknot._exceptions import ConfigurationError

REPOSITORY = "aioknot"

pytestmark = pytest.mark.usefixtures("fast_polls", "simple_batch")


def square(x: int) -> int:
    return x * x


def cube(x: int) -> int:
    return x * x * x


def knot(func: Any = square, *, built: bool = False, **options: Any) -> aioknot.AsyncKnot:
    """A knot on a prebuilt image, or (``built``) on the image aioknot would build."""
    options.setdefault("name", "squares")
    if not built:
        options.setdefault("image", f"{ECR_HOST}/{REPOSITORY}:prebuilt")
    return aioknot.AsyncKnot(func, backend="aws", **options)


def what_remains(boto: MotoClients) -> dict[str, list[str]]:
    """Everything of the kinds aioknot creates that exists in the account now."""
    ecr_repositories = boto("ecr").describe_repositories()["repositories"]
    images = [
        f"{r['repositoryName']}@{i['imageDigest']}"
        for r in ecr_repositories
        for i in boto("ecr").describe_images(repositoryName=r["repositoryName"])["imageDetails"]
    ]
    buckets = [b["Name"] for b in boto("s3").list_buckets().get("Buckets", [])]
    objects = [
        f"{b}/{o['Key']}"
        for b in buckets
        for o in boto("s3").list_objects_v2(Bucket=b).get("Contents", [])
    ]
    batch = boto("batch")
    return {
        "stacks": [
            s["StackName"]
            for s in boto("cloudformation").describe_stacks()["Stacks"]
            if s["StackStatus"] != "DELETE_COMPLETE"
        ],
        "job definitions": [
            d["jobDefinitionArn"]
            for d in batch.describe_job_definitions(status="ACTIVE")["jobDefinitions"]
        ],
        "job queues": [
            q["jobQueueName"]
            for q in batch.describe_job_queues()["jobQueues"]
            if q.get("status") != "DELETED"
        ],
        "compute environments": [
            c["computeEnvironmentName"]
            for c in batch.describe_compute_environments()["computeEnvironments"]
            if c.get("status") != "DELETED"
        ],
        "roles": [r["RoleName"] for r in boto("iam").list_roles()["Roles"]],
        "instance profiles": [
            p["InstanceProfileName"]
            for p in boto("iam").list_instance_profiles()["InstanceProfiles"]
        ],
        "launch templates": [
            t["LaunchTemplateName"]
            for t in boto("ec2").describe_launch_templates()["LaunchTemplates"]
        ],
        "buckets": buckets,
        "objects": objects,
        "ecr repositories": [r["repositoryName"] for r in ecr_repositories],
        "ecr images": images,
    }


def put_knot_image(boto: MotoClients, k: aioknot.AsyncKnot) -> str:
    """Put the knot's content-tagged image in ECR as aioknot's build would have (moto cannot
    take a real push), in a repository tagged as aioknot's; returns the image's digest."""
    spec = k._backend.image_spec  # type: ignore[attr-defined]  # the AWS backend scanned it
    assert spec is not None
    ecr = boto("ecr")
    ecr.create_repository(
        repositoryName=REPOSITORY,
        imageTagMutability="IMMUTABLE",
        imageScanningConfiguration={"scanOnPush": True},
        tags=[{"Key": "aioknot:environment", "Value": "default"}],
    )
    image = ecr.put_image(repositoryName=REPOSITORY, imageManifest=ECR_MANIFEST, imageTag=spec.tag)
    return str(image["image"]["imageId"]["imageDigest"])


async def test_the_last_knots_clobber_leaves_nothing_behind(
    boto: MotoClients, calls: Calls
) -> None:
    before = what_remains(boto)
    assert not any(before.values()), before  # a fresh account: everything below is ours
    progress: list[str] = []
    k = knot(built=True, progress=progress.append)
    # In ECR before the knot opens, as after an earlier build: with no Docker engine here,
    # opening a knot whose image is neither there nor buildable fails before anything exists.
    digest = put_knot_image(boto, k)
    async with k:
        await (await k.map(range(3))).gather(return_exceptions=True)
        made = what_remains(boto)
        # What a knot creates (so that the emptiness below means something).
        assert sorted(made["stacks"]) == ["aioknot-default", "aioknot-knot-squares"]
        assert made["job queues"] and made["compute environments"] and made["roles"]
        assert made["launch templates"] and made["buckets"] == [BUCKET] and made["objects"]
        (definition,) = boto("batch").describe_job_definitions(status="ACTIVE")["jobDefinitions"]
        # The definition names the image by digest, not by its (content) tag.
        assert definition["containerProperties"]["image"] == f"{ECR_HOST}/{REPOSITORY}@{digest}"
        calls.made.clear()
        await k.clobber(environment=True, images=True)
    assert any(op.startswith("Delete") for _, op in calls.made)  # the counter saw the clobber
    assert what_remains(boto) == {kind: [] for kind in before}
    # Deleting creates nothing; the only changes are disabling what moto's CloudFormation
    # leaves behind (the queue and compute environment), before deleting them.
    assert set(calls.writes()) <= {
        ("batch", "UpdateJobQueue"),
        ("batch", "UpdateComputeEnvironment"),
    }
    assert any("deleted the default bucket" in line for line in progress)
    assert any("deleted ECR repository aioknot" in line for line in progress)


async def test_clobber_of_a_knot_that_never_ran_creates_nothing(
    boto: MotoClients, calls: Calls
) -> None:
    async with knot() as k:
        opened = what_remains(boto)
        assert opened["buckets"] == [BUCKET]  # the store opens (creates) the default bucket
        calls.made.clear()
        await k.clobber(environment=True, images=True)
    assert calls.made  # the counter saw the clobber's reads
    assert calls.writes() == []
    remains = what_remains(boto)
    assert remains["stacks"] == [] and remains["job definitions"] == []
    assert remains["buckets"] == []  # it was empty, and aioknot's


@contextlib.asynccontextmanager
async def squares_then_cubes(
    inputs: Iterable[int],
) -> AsyncIterator[tuple[aioknot.AsyncKnot, aioknot.AsyncKnot]]:
    """Two knots of one environment, each having run ``inputs``. The second opens once the
    first has made the environment: moto's CreateStack is not atomic, and two knots making the
    shared stack at once can leave a second compute environment behind, outside the stack (AWS
    refuses the second CreateStack, and the knot that lost waits for the stack, as here)."""
    async with knot() as squares:
        await (await squares.map(inputs)).gather(return_exceptions=True)
        async with knot(cube, name="cubes") as cubes:
            await (await cubes.map(inputs)).gather(return_exceptions=True)
            yield squares, cubes


async def test_environment_in_use_by_another_knot_is_refused_then_forced(
    boto: MotoClients, calls: Calls
) -> None:
    async with squares_then_cubes(range(2)) as (squares, cubes):
        with pytest.raises(ConfigurationError) as refused:
            await squares.clobber(environment=True)
        message = str(refused.value)
        assert "cubes" in message and "force=True" in message and "aioknot-default" in message
        remains = what_remains(boto)
        assert "aioknot-default" in remains["stacks"]
        # Refused before anything of AWS was touched: even squares' own definition stays.
        assert len(remains["job definitions"]) == 2

        # Once cubes has no definitions left, squares may delete the environment.
        await cubes.clobber()
        await squares.clobber(environment=True)
        remains = what_remains(boto)
        assert remains["stacks"] == ["aioknot-knot-cubes"]
        assert remains["job queues"] == [] and remains["compute environments"] == []

    # force=True deletes it even while another knot's definitions use it.
    async with squares_then_cubes([1]) as (squares, cubes):
        await squares.clobber(environment=True, force=True)
        remains = what_remains(boto)
        assert "aioknot-default" not in remains["stacks"] and remains["job queues"] == []
        assert len(remains["job definitions"]) == 1  # cubes' own, untouched
        await cubes.clobber(environment=True)
    assert what_remains(boto)["stacks"] == []


async def test_active_jobs_of_others_in_the_queue_refuse_the_environment(
    simple_batch: MotoServer, boto: MotoClients
) -> None:
    async with knot() as squares:
        await (await squares.map(range(2))).gather(return_exceptions=True)
        batch = boto("batch")
        (queue,) = batch.describe_job_queues()["jobQueues"]
        # A job someone else submitted to the queue, still waiting: moto's docker mode with no
        # engine leaves an array job's parent SUBMITTED.
        simple_batch.configure({"batch": {"use_docker": True}})
        (definition,) = batch.describe_job_definitions(status="ACTIVE")["jobDefinitions"]
        other = batch.submit_job(
            jobName="someone-elses-job",
            jobQueue=queue["jobQueueArn"],
            jobDefinition=definition["jobDefinitionArn"],
            arrayProperties={"size": 2},
        )
        status = batch.describe_jobs(jobs=[other["jobId"]])["jobs"][0]["status"]
        if status not in aws_backend.ACTIVE_JOB_STATUSES:
            pytest.skip(f"moto ended the job at once ({status}): no active job to show")
        # The parent, and its children too where moto's Batch reaches a Docker engine.
        with pytest.raises(ConfigurationError, match=r"\d+ active jobs in its job queue") as used:
            await squares.clobber(environment=True)
        assert "someone-elses-job" in str(used.value)
        assert "aioknot-default" in what_remains(boto)["stacks"]
        batch.terminate_job(jobId=other["jobId"], reason="test over")
        await squares.clobber(environment=True, force=True)
    assert what_remains(boto)["stacks"] == []
