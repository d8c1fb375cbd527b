"""Batch job definitions and array-job submission: what a knot registers and how a run is cut.

**Job definitions** are registered through the Batch API (not the stack), one name per knot
(``aioknot-<knot>``), one revision per distinct (image, resources, environment, job role). A
revision carries a tag with the hash of those, so an unchanged knot finds its ACTIVE revision
with one DescribeJobDefinitions and registers nothing. The image is named by digest
(``repo@sha256:...``), so a revision runs exactly the image it was registered with. API tokens
travel as ``secrets`` (ARNs that Batch resolves at start through the knot's execution role),
never as plain environment values.

**Retries** (`RETRY_RULES`): a child is retried (``retries``, default 3 attempts) when the
infrastructure failed it (its host was reclaimed, its container could not be started or
inspected) and never when its container exited with a code: the worker records a function's
exception as a result and exits 0, so a non-zero code means the user's code killed the
process (``os._exit``, a segfault, the kernel's OOM killer), which would only happen again.
A retried child cannot duplicate or corrupt a record: the worker writes each record whole,
with one PUT per key (S3 makes an object visible only complete), so a second attempt either
rewrites a key with a whole record or writes a record for the same inputs under another
grouping, and the client counts each input once, whichever record it reads.

**Submission** cuts a run's stored segments into array jobs. The first job goes as soon as the
first segment is stored (time to first result); later segments gather into jobs of up to
``JOB_MAX_INPUTS`` inputs, so 50,000 inputs take 4 SubmitJob calls. A job of more than
10,000 inputs (Batch's array limit) gives each child a chunk (one worker's range of
inputs) of ``chunk_size`` consecutive inputs. A job of one input is a plain job. The container
overrides carry only the run's keys and the compact segment list (``first:count,...``), a few
hundred characters whatever the input count.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..._errors import aws_errors
from ..._names import RUN_ID_PATTERN
from ..._worker import format_segments, parse_segments
from ..base import RunSpec, Segment
from .options import RESERVED_TAG_PREFIX, AwsOptions
from .template import ENVIRONMENT_TAG, KNOT_TAG

if TYPE_CHECKING:  # the published stubs (types-aiobotocore): no import at run time
    from types_aiobotocore_batch.client import BatchClient
    from types_aiobotocore_batch.type_defs import (
        ContainerPropertiesOutputTypeDef,
        ContainerPropertiesTypeDef,
        DescribeJobDefinitionsRequestTypeDef,
        EvaluateOnExitTypeDef,
        JobDefinitionTypeDef,
        KeyValuePairTypeDef,
        RegisterJobDefinitionRequestTypeDef,
        ResourceRequirementTypeDef,
        RetryStrategyTypeDef,
        SecretTypeDef,
        SubmitJobRequestTypeDef,
    )

DEFINITION_FORMAT = 1
DEFINITION_PREFIX = "aioknot-"
DEFINITION_TAG = f"{RESERVED_TAG_PREFIX}definition"
# Which knot stack (template + parameters) the revision's job role came from: a revision with
# the current fingerprint names a usable role, so a repeat map need not describe that stack.
KNOT_STACK_TAG = f"{RESERVED_TAG_PREFIX}knot-stack"
LOG_GROUP = "/aws/batch/job"
# The image's entrypoint is the worker; any argument but --serve runs one Batch child.
WORKER_COMMAND = ["--batch"]

MAX_ARRAY_SIZE = 10_000  # Batch's limit on children per array job
JOB_MAX_INPUTS = 2 * MAX_ARRAY_SIZE  # inputs per job after the first (children take 2 each)
# Segments per job: their list travels in the job's environment (AIOKNOT_SEGMENTS), and
# container overrides hold at most 8,192 characters. Only a pipeline's segments (one per
# stretch of upstream results) come small and many.
JOB_MAX_SEGMENTS = 200

# Batch applies the first rule that matches an attempt that failed (at most 5 rules), and
# RETRIES an attempt that matches none. So: retry what the infrastructure did, exit on any
# exit code, and leave what has neither (a task that failed to start, an image pull that
# failed, an agent that lost the task) to Batch's default, a retry.
RETRY_RULES: tuple[EvaluateOnExitTypeDef, ...] = (
    # A Spot reclaim or a host that went away: "Host EC2 (instance i-...) terminated."
    {"onStatusReason": "Host EC2*", "action": "RETRY"},
    # The container never ran (the agent could not start it): may carry an exit code.
    {"onReason": "CannotStartContainerError*", "action": "RETRY"},
    # The container may have run, but the agent lost track of it: its records, if any, are
    # whole, and a second attempt rewrites them whole.
    {"onReason": "CannotInspectContainerError*", "action": "RETRY"},
    {"onReason": "DockerTimeoutError*", "action": "RETRY"},
    # The container exited with a code: the worker's own verdict (0 records every result,
    # even a function's exception; anything else is the user's code killing the process).
    {"onExitCode": "*", "action": "EXIT"},
)
# A job over the timeout is never retried by Batch (its docs), a terminated or cancelled one
# neither: only the user's intent stops a job.


def definition_name(knot: str) -> str:
    return f"{DEFINITION_PREFIX}{knot}"


def retry_strategy(retries: int) -> RetryStrategyTypeDef:
    # moto answers HTTP 500 to a definition without one, and Batch's default retries nothing.
    return {"attempts": retries, "evaluateOnExit": [rule.copy() for rule in RETRY_RULES]}


def definition_environment(options: AwsOptions, region: str) -> list[KeyValuePairTypeDef]:
    # Batch sets the region in its containers itself; saying it here makes the worker's S3
    # client sign for the bucket's region on any runner (moto's containers get nothing).
    variables = {"AWS_DEFAULT_REGION": region, **options.env}
    return [{"name": name, "value": variables[name]} for name in sorted(variables)]


def definition_secrets(options: AwsOptions) -> list[SecretTypeDef]:
    return [{"name": name, "valueFrom": options.secrets[name]} for name in sorted(options.secrets)]


def container_properties(
    options: AwsOptions,
    *,
    image: str,
    job_role_arn: str,
    region: str,
    execution_role_arn: str | None = None,
) -> ContainerPropertiesTypeDef:
    resources: list[ResourceRequirementTypeDef] = [
        {"type": "VCPU", "value": f"{options.vcpus:g}"},
        {"type": "MEMORY", "value": str(options.memory)},
    ]
    if options.gpus:
        resources.append({"type": "GPU", "value": str(options.gpus)})
    properties: ContainerPropertiesTypeDef = {
        "image": image,
        "command": list(WORKER_COMMAND),
        "jobRoleArn": job_role_arn,
        "resourceRequirements": resources,
        "environment": definition_environment(options, region),
    }
    if options.secrets:
        # Resolved by Batch when the container starts, with the execution role (scoped to
        # exactly these ARNs): the values are never in the definition, the job or the image.
        properties["secrets"] = definition_secrets(options)
    if (options.is_fargate or options.secrets) and execution_role_arn is not None:
        properties["executionRoleArn"] = execution_role_arn
    if options.is_fargate:
        # Public subnets without a NAT gateway: the task needs an address to reach ECR and S3.
        properties["networkConfiguration"] = {"assignPublicIp": "ENABLED"}
        properties["fargatePlatformConfiguration"] = {"platformVersion": "LATEST"}
    return properties


def definition_key(
    options: AwsOptions,
    *,
    image: str,
    region: str,
    knot_stack: str,
    execution_role_arn: str | None = None,
) -> str:
    """The hash a revision is found by: everything that shapes it except the role's ARN, which
    the knot stack's fingerprint stands for (so it is known without describing the stack)."""
    identity = {
        "format": DEFINITION_FORMAT,
        "image": image,
        "vcpus": options.vcpus,
        "memory": options.memory,
        "gpus": options.gpus,
        "timeout": options.timeout,
        "retries": options.retries,
        "rules": RETRY_RULES,
        "environment": definition_environment(options, region),
        "secrets": definition_secrets(options),
        "fargate": options.is_fargate,
        "execution_role": execution_role_arn,
        "knot_stack": knot_stack,
    }
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def definition_request(
    knot: str,
    options: AwsOptions,
    *,
    image: str,
    job_role_arn: str,
    region: str,
    knot_stack: str,
    execution_role_arn: str | None = None,
) -> RegisterJobDefinitionRequestTypeDef:
    """The RegisterJobDefinition arguments for this knot's current revision."""
    key = definition_key(
        options,
        image=image,
        region=region,
        knot_stack=knot_stack,
        execution_role_arn=execution_role_arn,
    )
    request: RegisterJobDefinitionRequestTypeDef = {
        "jobDefinitionName": definition_name(knot),
        "type": "container",
        "containerProperties": container_properties(
            options,
            image=image,
            job_role_arn=job_role_arn,
            region=region,
            execution_role_arn=execution_role_arn,
        ),
        "retryStrategy": retry_strategy(options.retries),
        "platformCapabilities": ["FARGATE" if options.is_fargate else "EC2"],
        "tags": {
            **options.tags,
            KNOT_TAG: knot,
            DEFINITION_TAG: key,
            KNOT_STACK_TAG: knot_stack,
            # Which environment's queue the knot submits to: clobber(environment=True) of
            # another knot must not delete an environment this knot still uses.
            ENVIRONMENT_TAG: definition_environment_tag(options),
        },
    }
    if options.timeout is not None:
        request["timeout"] = {"attemptDurationSeconds": options.timeout}
    return request


def definition_environment_tag(options: AwsOptions) -> str:
    """The environment a knot's definitions are tagged with: its name, or the queue it names."""
    return options.job_queue or options.environment


def is_knots(definition: JobDefinitionTypeDef, knot: str) -> bool:
    return bool(definition.get("tags", {}).get(KNOT_TAG) == knot)


async def describe_definitions(
    batch: BatchClient, knot: str, *, status: str | None = "ACTIVE"
) -> list[JobDefinitionTypeDef]:
    """The knot's job definition revisions (tagged as the knot's), newest first."""
    arguments: DescribeJobDefinitionsRequestTypeDef = {"jobDefinitionName": definition_name(knot)}
    if status is not None:
        arguments["status"] = status
    found: list[JobDefinitionTypeDef] = []
    with aws_errors(f"describing the job definitions of knot {knot!r}"):
        while True:
            response = await batch.describe_job_definitions(**arguments)
            found.extend(response.get("jobDefinitions", []))
            token = response.get("nextToken")
            if not token:
                break
            arguments["nextToken"] = token
    mine = [d for d in found if is_knots(d, knot)]
    return sorted(mine, key=lambda d: int(d.get("revision", 0)), reverse=True)


def find_revision(definitions: Sequence[JobDefinitionTypeDef], key: str) -> str | None:
    for definition in definitions:
        if definition.get("tags", {}).get(DEFINITION_TAG) == key:
            return str(definition["jobDefinitionArn"])
    return None


def roles_of_knot_stack(
    definitions: Sequence[JobDefinitionTypeDef], knot_stack: str
) -> dict[str, str] | None:
    """The roles of a revision registered with this knot stack fingerprint, if any, as the
    knot stack's outputs name them (``JobRoleArn``, and ``JobExecutionRoleArn`` when set)."""
    for definition in definitions:
        if definition.get("tags", {}).get(KNOT_STACK_TAG) == knot_stack:
            properties: ContainerPropertiesOutputTypeDef = definition.get("containerProperties", {})
            role = properties.get("jobRoleArn")
            if role:
                roles = {"JobRoleArn": str(role)}
                if properties.get("executionRoleArn"):
                    roles["JobExecutionRoleArn"] = str(properties["executionRoleArn"])
                return roles
    return None


async def register_definition(
    batch: BatchClient, request: RegisterJobDefinitionRequestTypeDef
) -> str:
    with aws_errors(f"registering job definition {request['jobDefinitionName']}"):
        response = await batch.register_job_definition(**request)
    return str(response["jobDefinitionArn"])


# --- submission -------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobShape:
    """What one submitted job covers: consecutive stored segments, each array child a chunk of
    ``chunk_size`` consecutive inputs (the last child's may be shorter)."""

    segments: tuple[tuple[int, int], ...]
    chunk_size: int

    @classmethod
    def of(cls, segments: Sequence[Segment]) -> JobShape:
        pairs = tuple((segment.first, segment.count) for segment in segments)
        count = sum(c for _, c in pairs)
        return cls(pairs, max(1, math.ceil(count / MAX_ARRAY_SIZE)))

    @property
    def first(self) -> int:
        return self.segments[0][0]

    @property
    def stop(self) -> int:
        first, count = self.segments[-1]
        return first + count

    @property
    def count(self) -> int:
        return self.stop - self.first

    @property
    def size(self) -> int:
        """Array children; 0 for a plain job (one input: Batch's arrays start at 2)."""
        children = math.ceil(self.count / self.chunk_size)
        return children if children >= 2 else 0

    def child_inputs(self, child: int) -> range:
        start = self.first + child * self.chunk_size
        return range(start, min(start + self.chunk_size, self.stop))

    def child_of(self, index: int) -> int:
        return (index - self.first) // self.chunk_size

    def environment(
        self, spec: RunSpec, upstream: str | None = None, upstream_lost: str = ""
    ) -> list[KeyValuePairTypeDef]:
        variables = {
            **dict(spec.store_environment),
            "AIOKNOT_STORE": spec.store_url,
            "AIOKNOT_RUN": spec.run_prefix,
            "AIOKNOT_FUNCTION": spec.function_key,
            "AIOKNOT_STARMAP": "1" if spec.starmap else "0",
            "AIOKNOT_SEGMENTS": format_segments(list(self.segments)),
            "AIOKNOT_CHUNK": str(self.chunk_size),
        }
        if upstream is not None:  # a pipeline's: the inputs are that run's results
            variables["AIOKNOT_UPSTREAM"] = upstream
        if upstream_lost:  # a rerun's: what Batch said of the upstream container that died
            variables["AIOKNOT_UPSTREAM_LOST"] = upstream_lost
        return [{"name": name, "value": value} for name, value in variables.items()]

    @classmethod
    def from_environment(cls, environment: Sequence[KeyValuePairTypeDef]) -> JobShape | None:
        """The shape of a submitted job, read back from its description (re-attaching)."""
        variables = {item.get("name"): item.get("value") for item in environment}
        segments, size = variables.get("AIOKNOT_SEGMENTS"), variables.get("AIOKNOT_CHUNK")
        if not segments:
            return None
        return cls(tuple(parse_segments(segments)), int(size or 1))


def job_name(knot: str, run_id: str, number: int) -> str:
    """The name of a run's ``number``-th job (0, 1, ...): ``<knot>-<run id>-<number>``.

    Batch's pattern: letters, digits, hyphens and underscores, up to 128 (a knot's name is at
    most 48, a run id 22). Unique per run, so a lost SubmitJob answer is found by name."""
    return f"{run_jobs_prefix(knot, run_id)}{number}"


def rerun_name(knot: str, run_id: str, first: int) -> str:
    """The name of a pipeline run's job that runs again, from input ``first`` on, inputs
    Batch failed unrun: ``<knot>-<run id>-r<first>``. Named by what it covers, so that a
    second client finds it (`AwsRun._rerun`) rather than submitting another."""
    return f"{run_jobs_prefix(knot, run_id)}r{first}"


def run_jobs_prefix(knot: str, run_id: str) -> str:
    """What the names of every job of a run begin with (ListJobs' ``JOB_NAME`` filter)."""
    return f"{knot}-{run_id}-"


def is_rerun_name(name: str) -> bool:
    return re.search(r"-r[0-9]+$", name) is not None


def is_knots_job(name: str, knot: str) -> bool:
    """Whether a job called ``name`` is one of ``knot``'s runs' (`job_name`, `rerun_name`)."""
    run_id = RUN_ID_PATTERN.pattern.removeprefix("^").removesuffix("$")
    return re.fullmatch(rf"{re.escape(knot)}-{run_id}-r?[0-9]+", name) is not None


def submit_request(
    spec: RunSpec,
    shape: JobShape,
    *,
    name: str,
    queue: str,
    definition: str,
    upstream: str | None = None,
    after: str | None = None,
    upstream_lost: str = "",
) -> SubmitJobRequestTypeDef:
    """The SubmitJob request of a run's job called ``name`` (`job_name`, `rerun_name`).

    A pipeline's job has ``upstream``, the run prefix of the run whose results are its inputs,
    and, unless it runs again what Batch failed without running, ``after``: the upstream job
    of the same shape, on whose children its children each depend (N_TO_N), so that each
    starts as soon as its own upstream child succeeds, whether or not a client is watching.
    A rerun's ``upstream_lost`` is why its upstream children failed (Batch's words)."""
    request: SubmitJobRequestTypeDef = {
        "jobName": name,
        "jobQueue": queue,
        "jobDefinition": definition,
        "containerOverrides": {"environment": shape.environment(spec, upstream, upstream_lost)},
        "tags": {KNOT_TAG: spec.knot, f"{RESERVED_TAG_PREFIX}run": spec.run_id},
    }
    if shape.size:
        request["arrayProperties"] = {"size": shape.size}
    if after is not None:
        # N_TO_N needs arrays of one size on both sides; a plain job waits for the whole job.
        request["dependsOn"] = [
            {"jobId": after, "type": "N_TO_N"} if shape.size else {"jobId": after}
        ]
    return request


class JobBatcher:
    """Decides which stored segments go out together as one job, and when."""

    def __init__(self, max_inputs: int = JOB_MAX_INPUTS) -> None:
        self.max_inputs = max_inputs
        self.pending: list[Segment] = []
        self.jobs = 0

    @property
    def pending_inputs(self) -> int:
        return sum(segment.count for segment in self.pending)

    def add(self, segment: Segment) -> list[list[Segment]]:
        """Take one stored segment; return the groups to submit now."""
        if self.jobs == 0 and not self.pending:
            self.jobs += 1
            return [[segment]]  # the first inputs start at once
        ready = []
        if self.pending and (
            self.pending_inputs + segment.count > self.max_inputs
            # A job's children cover consecutive inputs (`JobShape`): a segment that does not
            # go on from the pending ones (a pipeline's, stored as upstream completes) starts
            # a job of its own.
            or segment.first != self.pending[-1].stop
            or len(self.pending) >= JOB_MAX_SEGMENTS
        ):
            ready.append(self._take())
        self.pending.append(segment)
        if self.pending_inputs >= self.max_inputs:
            ready.append(self._take())
        return ready

    def flush(self) -> list[Segment]:
        return self._take() if self.pending else []

    def _take(self) -> list[Segment]:
        group, self.pending = self.pending, []
        self.jobs += 1
        return group
