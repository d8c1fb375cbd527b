"""``backend="aws"``: the knot's store in S3, and its runs as AWS Batch array jobs.

`AwsBackend.open_store` finds the account (STS) and opens the knot's bucket: the one named by
``bucket=`` or ``aioknot-<account>-<region>``, created private, encrypted and tagged when
missing; every S3 call names the account as the expected bucket owner.

`AwsBackend.prepare` makes a knot ready to submit. If an image must be built it first checks
that a Docker engine answers, before anything is created. Then, at the same time: the
environment stack (or the given ``job_queue``), the image (built and pushed, found, or
prebuilt) and the knot's job definitions; then the knot stack (its job role) only if no
current job definition already names the role, and a job definition only if no ACTIVE
revision matches. A repeat knot therefore costs one DescribeStacks, one
DescribeJobDefinitions and one image lookup, and creates nothing.

Preparing rides out transient AWS failures (throttling, 5xx, resets) beyond botocore's own
retries: every step is idempotent, so it is simply done again, for up to five minutes (or
``watch_timeout=``, if shorter).

`AwsBackend.clobber` only deletes, never creates (it never prepares the knot). With
``environment=True`` it first refuses, naming them, while other knots' ACTIVE job
definitions or active jobs use the environment (``force=True`` overrides); then it deletes
the knot and environment stacks, whatever Batch resources CloudFormation left behind (moto's
does), the default bucket if it is empty, and, with ``images=True``, the knot's images and
aioknot's ECR repository if it is left empty. What is not tagged as aioknot's stays.

Every AWS client is opened on first use, owned by the backend and closed in `aclose`;
botocore errors become aioknot errors here and in the modules this one drives.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aioboto3
import anyio
import anyio.abc
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ..._errors import aws_error, aws_errors, error_code
from ..._exceptions import ConfigurationError, KnotError
from ..._image.builder import is_aioknots_repository
from ..._image.dockerfile import ImageSpec
from ..._manifest import Manifest
from ..._names import knot_prefix
from ..._options import KnotOptions
from ..._retry import backoff_delays, is_transient, retry_transient
from ..._stores.s3 import S3Store
from ..._tasks import concurrently
from ..base import Backend, Capacity, KnotSetup, RunSpec, TaskListener
from . import AwsSettings
from .image import (
    ImageSettings,
    check_buildable,
    ecr_host,
    image_spec,
    plan_image,
    produce_image,
)
from .jobs import (
    definition_environment_tag,
    definition_key,
    definition_request,
    describe_definitions,
    find_revision,
    is_knots_job,
    register_definition,
    roles_of_knot_stack,
)
from .options import (
    FARGATE_MEMORY,
    RESERVED_TAG_PREFIX,
    AwsOptions,
    default_bucket_name,
)
from .run import AwsRun
from .stack import (
    default_vpc_subnets,
    delete_stack,
    describe_stack,
    ensure_stack,
    stack_is_current,
    stack_outputs,
    template_body,
)
from .template import (
    ENVIRONMENT_TAG,
    KNOT_TAG,
    environment_parameters,
    environment_tags,
    environment_template,
    knot_has_execution_role,
    knot_parameters,
    knot_stack_name,
    knot_tags,
    knot_template,
)

Progress = Callable[[str], None]

BUCKET_TAGS = {f"{RESERVED_TAG_PREFIX}bucket": "aioknot"}
# How long preparing (stacks, image lookup, job definition) rides out transient AWS failures.
PREPARE_OUTAGE_SECONDS = 300.0
PREPARE_FIRST_DELAY = 1.0
PREPARE_LONGEST_DELAY = 15.0
# Jobs that still need the environment's queue and compute environment.
ACTIVE_JOB_STATUSES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")
ENOUGH_JOBS_NAMED = 100
# Waiting for Batch to disable, then delete, a queue or compute environment (minutes on AWS).
CLEANUP_FIRST_POLL = 2.0
CLEANUP_LONGEST_POLL = 15.0
CLEANUP_TIMEOUT = 900.0
# Enough connections for the watcher, submission and status at once; Batch answers quickly.
CLIENT_CONFIG = Config(max_pool_connections=16, retries={"max_attempts": 5, "mode": "standard"})


def make_session(profile: str | None, region: str | None) -> aioboto3.Session:
    """One session per knot (a seam for tests that count calls through its event hooks)."""
    return aioboto3.Session(profile_name=profile, region_name=region)


def _session(options: KnotOptions) -> tuple[aioboto3.Session, str]:
    # botocore reads AWS_DEFAULT_REGION and the profile but not AWS_REGION (the variable the
    # newer SDKs and the CLI document): it is read here, so that both work as promised.
    region_name = options.region or os.environ.get("AWS_REGION") or None
    try:
        session = make_session(options.profile, region_name)
    except BotoCoreError as error:  # e.g. a profile that does not exist
        raise aws_error(error, "opening the AWS session") from error
    region = session.region_name
    if not region:
        raise ConfigurationError(
            "backend='aws' needs a region and none is set: pass region='us-east-1' (say), or "
            "set AWS_REGION or AWS_DEFAULT_REGION, or add region = ... to your profile in "
            "~/.aws/config"
        )
    return session, str(region)


async def caller_account(session: aioboto3.Session, endpoint_url: str | None) -> str:
    with aws_errors("asking STS which account the credentials belong to"):
        async with session.client("sts", endpoint_url=endpoint_url) as sts:
            identity = await sts.get_caller_identity()
    return str(identity["Account"])


def _stack_tags(stack: Mapping[str, Any]) -> dict[str, str]:
    return {item["Key"]: item["Value"] for item in stack.get("Tags") or []}


class AwsBackend(Backend):
    """Runs a knot's function as AWS Batch array jobs (see the module docstring)."""

    name = "aws"
    runs_outlive_client = True  # Batch jobs run on without the client; runs re-attach

    def __init__(self) -> None:
        self._store: S3Store | None = None
        self._progress: Progress | None = None
        self._clients: dict[str, Any] = {}
        self._client_lock = anyio.Lock()
        self._exit_stack = contextlib.AsyncExitStack()
        self._ready_lock = anyio.Lock()
        self.account = ""
        self.job_queue: str | None = None
        self.job_definition: str | None = None
        self.image_uri: str | None = None
        self._closed = False

    def bind(self, knot: KnotSetup) -> None:
        """Take the knot's AWS options, and scan its function's imports for the image's
        requirements now, offline, so that an import that is not installed fails before
        anything is created."""
        super().bind(knot)
        settings = knot.options.backend_options("aws", AwsSettings)
        self.knot = knot.name
        self.options: AwsOptions = settings.batch
        self.image: ImageSettings = settings.image
        # A knot that only operates runs ships no function: it needs no image.
        self.image_spec: ImageSpec | None = (
            None if knot.operating else image_spec(settings.image, knot.func, knot.function)
        )
        self._endpoint_url = knot.options.endpoint_url
        # Seconds without one successful answer before watching a run gives up (jobs go on).
        self.watch_timeout = knot.options.watch_timeout
        self._progress = knot.progress
        given = knot.options.store
        if given is not None and not isinstance(given, S3Store):
            raise ConfigurationError(
                "backend='aws' keeps its data in S3: pass store='s3://bucket/prefix' (or "
                f"bucket=), not a {type(given).__name__}"
            )

    async def open_store(self) -> S3Store:
        """The knot's S3 store, opened; the default bucket is created when missing.

        Finds the account (STS) first. Before the bucket (the first thing a knot may create),
        an image that must be built needs a Docker engine that answers: checked here, so that
        nothing exists if not.
        """
        options = self.setup.options
        self._session, self.region = _session(options)
        account = await caller_account(self._session, options.endpoint_url)
        async with contextlib.AsyncExitStack() as clients:

            async def ecr() -> Any:
                client = self._session.client(
                    "ecr", endpoint_url=options.endpoint_url, config=CLIENT_CONFIG
                )
                return await clients.enter_async_context(client)

            if not self.setup.operating:
                await check_buildable(
                    self.image, self.image_spec, ecr=ecr, account=account, region=self.region
                )
        if isinstance(options.store, S3Store):
            store = options.store
        else:
            store = await S3Store(
                options.bucket or default_bucket_name(account, self.region),
                endpoint_url=options.endpoint_url,
                region=self.region,
                profile=options.profile,
                expected_owner=account,
                # Operating runs creates nothing: a missing bucket is an error that says so.
                create_bucket=options.bucket is None and not self.setup.operating,
                tags={**BUCKET_TAGS, **self.options.tags},
                # Run data (inputs, results, manifests) expires after this many days (a
                # lifecycle rule on the bucket aioknot created); a user's bucket stays as it is.
                retention_days=options.retention_days,
            ).open()
        self._store = store
        self.account = store.expected_owner or account
        return store

    @property
    def store(self) -> S3Store:
        if self._store is None:
            raise KnotError("the AWS backend's store is not open yet")
        return self._store

    # -- plumbing --------------------------------------------------------------------------

    @property
    def group(self) -> anyio.abc.TaskGroup:
        if self._group is None:
            raise KnotError("the AWS backend was not started by its knot")
        return self._group

    def _report(self, message: str) -> None:
        if self._progress is not None:
            self._progress(message)

    async def client(self, service: str) -> Any:
        """The backend's client for ``service``, opened on first use, closed in `aclose`."""
        if self._closed:
            raise KnotError("the AWS backend is closed")
        async with self._client_lock:
            if service not in self._clients:
                client = self._session.client(
                    service, endpoint_url=self._endpoint_url, config=CLIENT_CONFIG
                )
                self._clients[service] = await self._exit_stack.enter_async_context(client)
            return self._clients[service]

    async def aclose(self) -> None:
        self._closed = True
        self._clients.clear()
        await self._exit_stack.aclose()

    # -- preparing ---------------------------------------------------------------------------

    @property
    def knot_data_prefix(self) -> str:
        """The knot's key prefix in the bucket: all its job role may touch."""
        base = f"{self.store.prefix}/" if self.store.prefix else ""
        return f"{base}{knot_prefix(self.knot)}/"

    def _knot_stack(self) -> tuple[dict[str, Any], dict[str, str], dict[str, str], str]:
        template = knot_template(self.options, self.knot)
        parameters = knot_parameters(bucket=self.store.bucket, prefix=self.knot_data_prefix)
        tags = knot_tags(self.options, self.knot)
        identity = json.dumps([template_body(template), parameters, tags], sort_keys=True)
        fingerprint = hashlib.sha256(identity.encode()).hexdigest()[:16]
        return template, parameters, tags, fingerprint

    async def ensure_ready(self) -> tuple[str, str]:
        """The job queue and definition to submit to, preparing (again) if needed."""
        if self.job_queue is None or self.job_definition is None:
            await self.prepare()
        assert self.job_queue is not None and self.job_definition is not None
        return self.job_queue, self.job_definition

    async def prepare(self) -> None:
        async with self._ready_lock:
            if self.job_queue is not None and self.job_definition is not None:
                return
            await self._prepare_riding_out_blips()

    async def _prepare_riding_out_blips(self) -> None:
        """`_prepare`, again while it fails because AWS failed transiently (throttling, 5xx,
        a reset, credentials being refreshed: the translated error's cause says so), on top
        of botocore's own retries, for up to `PREPARE_OUTAGE_SECONDS` (or ``watch_timeout``
        if shorter).

        Every step is idempotent (a stack is found, or waited for, before it is created; a
        definition is found by its hash before it is registered), so a retry repeats only
        what did not happen; a lost RegisterJobDefinition answer costs one spare revision.
        """

        def aws_failed_for_now(error: Exception) -> bool:
            cause = error.__cause__
            return isinstance(error, KnotError) and cause is not None and is_transient(cause)

        def report(error: Exception) -> None:
            self._report(f"preparing knot {self.knot} failed for now ({error}); retrying")

        await retry_transient(
            self._prepare,
            give_up_after=min(PREPARE_OUTAGE_SECONDS, self.watch_timeout),
            first=PREPARE_FIRST_DELAY,
            longest=PREPARE_LONGEST_DELAY,
            transient=aws_failed_for_now,
            on_retry=report,
        )

    async def _prepare(self) -> None:
        plan = await plan_image(
            self.image,
            self.image_spec,
            ecr=lambda: self.client("ecr"),
            account=self.account,
            region=self.region,
            tags={**self.options.tags, ENVIRONMENT_TAG: self.options.environment},
        )
        _, _, _, fingerprint = self._knot_stack()
        environment: dict[str, str] = {}
        found: dict[str, Any] = {}

        async def environment_step() -> None:
            environment.update(await self._ensure_environment())

        async def image_step() -> None:
            found["image"] = await produce_image(plan, self.image, self._progress)

        async def role_step() -> None:
            batch = await self.client("batch")
            definitions = await describe_definitions(batch, self.knot)
            found["definitions"] = definitions
            roles = roles_of_knot_stack(definitions, fingerprint)
            found["knot_outputs"] = roles if roles else await self._ensure_knot_stack()

        await concurrently(environment_step, image_step, role_step)
        image, definitions = str(found["image"]), found["definitions"]
        knot_outputs: dict[str, str] = found["knot_outputs"]
        if knot_has_execution_role(self.options):
            # Secrets (or Fargate in an existing queue): only the knot's own role will do.
            execution_role = knot_outputs.get("JobExecutionRoleArn")
            if not execution_role:
                # A revision of this fingerprint without the role: ask the stack itself.
                knot_outputs = await self._ensure_knot_stack()
                execution_role = knot_outputs.get("JobExecutionRoleArn")
        else:
            execution_role = environment.get("JobExecutionRoleArn")
        if (self.options.is_fargate or self.options.secrets) and not execution_role:
            raise KnotError(
                f"no execution role for knot {self.knot}: the environment and knot stacks "
                "have none; clobber the knot's stacks (environment=True) and try again"
            )
        key = definition_key(
            self.options,
            image=image,
            region=self.region,
            knot_stack=fingerprint,
            execution_role_arn=execution_role,
        )
        arn = find_revision(definitions, key)
        if arn is None:
            batch = await self.client("batch")
            arn = await register_definition(
                batch,
                definition_request(
                    self.knot,
                    self.options,
                    image=image,
                    job_role_arn=knot_outputs["JobRoleArn"],
                    region=self.region,
                    knot_stack=fingerprint,
                    execution_role_arn=execution_role,
                ),
            )
            self._report(f"registered job definition {arn}")
        self.image_uri = image
        self.job_queue = environment["JobQueueArn"]
        self.job_definition = arn

    async def _ensure_environment(self) -> dict[str, str]:
        """The environment stack's outputs, with one DescribeStacks when it is current."""
        options = self.options
        if options.job_queue is not None:
            return {"JobQueueArn": options.job_queue}
        cloudformation = await self.client("cloudformation")
        name = options.environment_stack_name
        template = environment_template(options)
        tags = environment_tags(options)
        stack = await describe_stack(cloudformation, name)
        if stack is not None:
            recorded = {
                p["ParameterKey"]: str(p.get("ParameterValue", ""))
                for p in stack.get("Parameters") or []
            }
            # The default VPC it was made with stands for the default VPC now: looking it up
            # again would cost two EC2 calls on every knot for a value that does not change.
            vpc = recorded.get("VpcId") if options.use_default_vpc else None
            subnets = recorded.get("SubnetIds", "").split(",") if vpc else []
            try:
                parameters = environment_parameters(options, vpc_id=vpc, subnet_ids=subnets)
            except ConfigurationError:
                parameters = None
            if parameters is not None and stack_is_current(
                stack, template_body(template), parameters, tags
            ):
                return stack_outputs(stack)
        vpc_id: str | None = None
        subnet_ids: list[str] = []
        if options.use_default_vpc:
            vpc_id, subnet_ids = await default_vpc_subnets(await self.client("ec2"))
        return await ensure_stack(
            cloudformation,
            name=name,
            template=template,
            parameters=environment_parameters(options, vpc_id=vpc_id, subnet_ids=subnet_ids),
            tags=tags,
            progress=self._progress,
        )

    async def _ensure_knot_stack(self) -> dict[str, str]:
        template, parameters, tags, _ = self._knot_stack()
        return await ensure_stack(
            await self.client("cloudformation"),
            name=knot_stack_name(self.knot),
            template=template,
            parameters=parameters,
            tags=tags,
            progress=self._progress,
        )

    # -- resources (knot.estimate, resources="auto") ----------------------------------------

    def capacity(self) -> Capacity:
        options = self.options
        return Capacity(
            tasks=max(1, int(options.max_vcpus // options.vcpus)),
            max_vcpus=options.max_vcpus,
            compute_type=options.compute_type,
            enforced=True,
        )

    def fit_resources(self, vcpus: float, memory: int) -> tuple[float, int]:
        """On Fargate, the smallest of its sizes that holds both (the largest, if none does);
        on EC2, whole vCPUs up to ``max_vcpus`` and memory in steps of 256 MiB."""
        if self.options.is_fargate:
            for size, allowed in FARGATE_MEMORY.items():
                if size >= vcpus and allowed[-1] >= memory:
                    return size, next(step for step in allowed if step >= memory)
            size, allowed = list(FARGATE_MEMORY.items())[-1]
            return size, allowed[-1]
        whole, fitted = super().fit_resources(vcpus, memory)
        return min(whole, self.options.max_vcpus), fitted

    async def use_resources(self, vcpus: float, memory: int) -> None:
        """Jobs submitted from now on get a definition revision with ``vcpus`` and
        ``memory`` (found by its hash, or registered, before the next job goes)."""
        async with self._ready_lock:
            self.options = dataclasses.replace(self.options, vcpus=vcpus, memory=memory)
            self.job_definition = None

    # -- runs --------------------------------------------------------------------------------

    def open_run(self, spec: RunSpec, listener: TaskListener) -> AwsRun:
        return AwsRun(self, spec, listener)

    def attach_run(self, spec: RunSpec, listener: TaskListener, manifest: Manifest) -> AwsRun:
        job_ids = list(manifest.jobs)
        # A pipeline run may have no job and still be whole: every upstream input failed, and
        # the client wrote each input's record instead of running it.
        if not job_ids and manifest.upstream is None:
            raise ConfigurationError(f"run {spec.run_id} has no Batch jobs in its manifest")
        return AwsRun(self, spec, listener, job_ids)

    # -- cleanup -----------------------------------------------------------------------------

    async def check_clobber(self, *, environment: bool, images: bool, force: bool) -> None:
        if environment and not force:
            await self.check_environment_unused()

    async def clobber(
        self, *, environment: bool = False, images: bool = False, force: bool = False
    ) -> None:
        """Deregister the knot's job definitions; delete its stacks and images if asked.

        Only what carries this knot's (or this environment's) aioknot tag is touched, and
        nothing is ever created: no stack, definition, repository or bucket (this never
        prepares the knot). ``environment=True`` refuses with `ConfigurationError`, naming
        them, while other knots' ACTIVE job definitions or active jobs use the environment;
        ``force=True`` deletes it anyway.
        """
        if environment and not force:
            await self.check_environment_unused()
        batch = await self.client("batch")
        definitions = await describe_definitions(batch, self.knot, status=None)
        active = [d for d in definitions if d.get("status") == "ACTIVE"]
        for definition in active:
            with aws_errors(f"deregistering job definition {definition['jobDefinitionArn']}"):
                await batch.deregister_job_definition(jobDefinition=definition["jobDefinitionArn"])
        self._report(f"deregistered {len(active)} job definitions of knot {self.knot}")
        self.job_definition = None
        if images:
            uris = {str(d.get("containerProperties", {}).get("image", "")) for d in definitions}
            if self.image_uri:
                uris.add(self.image_uri)
            await self._delete_images(uris, repositories_too=environment)
        if environment:
            cloudformation = await self.client("cloudformation")
            await self._delete_stack(
                cloudformation, knot_stack_name(self.knot), KNOT_TAG, self.knot
            )
            if self.options.creates_environment:
                await self._delete_environment(cloudformation)
            self.job_queue = None
            await self._delete_default_bucket_if_empty()

    async def check_environment_unused(self) -> None:
        """Raise `ConfigurationError` naming what else uses this knot's environment: other
        knots' ACTIVE job definitions and active jobs (SUBMITTED..RUNNING) in its job queue.

        Read-only (DescribeJobDefinitions, DescribeStacks, ListJobs), so a knot may call it
        before deleting anything at all.
        """
        if not self.options.creates_environment:
            return  # the queue is the user's: clobber(environment=True) leaves it alone
        knots = await self._other_knots_of_environment()
        jobs = await self._other_active_jobs()
        if not knots and not jobs:
            return
        named = []
        if knots:
            named.append(f"the ACTIVE job definitions of knots {', '.join(sorted(knots))}")
        if jobs:
            shown = ", ".join(sorted(jobs)[:5]) + (" ..." if len(jobs) > 5 else "")
            count = f"{len(jobs)}+" if len(jobs) >= ENOUGH_JOBS_NAMED else str(len(jobs))
            named.append(f"{count} active jobs in its job queue ({shown})")
        raise ConfigurationError(
            f"environment {self.options.environment!r} (stack "
            f"{self.options.environment_stack_name}) is still used by {' and '.join(named)}: "
            "clobber those knots first and let their jobs finish (or cancel them), or pass "
            "force=True to delete the environment anyway, which fails their jobs"
        )

    async def _other_knots_of_environment(self) -> set[str]:
        batch = await self.client("batch")
        with aws_errors("listing the ACTIVE job definitions"):
            active = await _paged(
                functools.partial(batch.describe_job_definitions, status="ACTIVE"),
                "jobDefinitions",
            )
        knots: set[str] = set()
        for definition in active:
            tags = definition.get("tags") or {}
            knot = tags.get(KNOT_TAG)
            if knot is None or knot == self.knot:
                continue
            # A definition from before environments were tagged may use any of them.
            used = tags.get(ENVIRONMENT_TAG)
            if used is None or used == definition_environment_tag(self.options):
                knots.add(str(knot))
        return knots

    async def _other_active_jobs(self) -> list[str]:
        """Names of the active jobs in the environment's queue that are not this knot's."""
        cloudformation = await self.client("cloudformation")
        stack = await describe_stack(cloudformation, self.options.environment_stack_name)
        queue = stack_outputs(stack).get("JobQueueArn") if stack else None
        if not queue:
            return []
        batch = await self.client("batch")
        names: list[str] = []
        for status in ACTIVE_JOB_STATUSES:
            arguments: dict[str, Any] = {"jobQueue": queue, "jobStatus": status}
            with aws_errors(f"listing the {status} jobs of queue {queue}"):
                while True:
                    response = await batch.list_jobs(**arguments)
                    for job in response.get("jobSummaryList", []):
                        name = str(job.get("jobName", ""))
                        if not is_knots_job(name, self.knot):
                            names.append(name or str(job.get("jobId")))
                    token = response.get("nextToken")
                    if not token or len(names) >= ENOUGH_JOBS_NAMED:
                        break
                    arguments["nextToken"] = token
            if len(names) >= ENOUGH_JOBS_NAMED:
                break  # enough to refuse; a million queued jobs need not be paged through
        return names

    async def _delete_environment(self, cloudformation: Any) -> None:
        name = self.options.environment_stack_name
        stack = await describe_stack(cloudformation, name)
        outputs = stack_outputs(stack) if stack else {}
        await self._delete_stack(
            cloudformation, name, ENVIRONMENT_TAG, self.options.environment, described=stack
        )
        # CloudFormation deletes the queue and compute environment with the stack on AWS;
        # moto's leaves them behind. Whatever is still there (tagged as this environment's,
        # or named by the stack's outputs) is disabled, then deleted, queue first: on AWS
        # this finds nothing and costs two Describe calls.
        await self._delete_batch_leftovers(
            outputs.get("JobQueueArn"), outputs.get("ComputeEnvironmentArn")
        )

    def _is_environments(self, resource: Mapping[str, Any], arns: set[str]) -> bool:
        tags = resource.get("tags") or {}
        arn = resource.get("jobQueueArn") or resource.get("computeEnvironmentArn")
        return tags.get(ENVIRONMENT_TAG) == self.options.environment or arn in arns

    async def _delete_batch_leftovers(self, queue: str | None, compute: str | None) -> None:
        """Disable and delete the environment's job queues, then its compute environments
        (Batch's order: a compute environment goes once no queue uses it)."""
        batch = await self.client("batch")
        arns = {arn for arn in (queue, compute) if arn}
        kinds = (
            ("job queue", "jobQueue", batch.describe_job_queues, batch.update_job_queue,
             batch.delete_job_queue),
            ("compute environment", "computeEnvironment", batch.describe_compute_environments,
             batch.update_compute_environment, batch.delete_compute_environment),
        )  # fmt: skip
        for what, field, describe, update, delete in kinds:
            key = f"{field}s"  # the Describe answer's list, and the filter's argument
            with aws_errors(f"looking for the environment's {what}s"):
                found = [
                    item
                    for item in await _paged(describe, key)
                    if self._is_environments(item, arns) and item.get("status") != "DELETED"
                ]
            for item in found:
                arn = str(item[f"{field}Arn"])
                await self._disable_and_delete(
                    what=f"{what} {arn}",
                    disable=functools.partial(update, **{field: arn, "state": "DISABLED"}),
                    delete=functools.partial(delete, **{field: arn}),
                    describe=functools.partial(describe, **{key: [arn]}),
                    key=key,
                    state=str(item.get("state", "")),
                )

    async def _disable_and_delete(
        self,
        *,
        what: str,
        disable: Callable[[], Awaitable[Any]],
        delete: Callable[[], Awaitable[Any]],
        describe: Callable[[], Awaitable[Any]],
        key: str,
        state: str,
    ) -> None:
        """Batch's order for a queue or compute environment: disable, wait until it is
        VALID again, delete, wait until it is gone (each wait bounded)."""

        async def settled(gone: bool) -> bool:
            with aws_errors(f"describing {what}"):
                items = (await describe()).get(key, [])
            if not items or items[0].get("status") == "DELETED":
                return True
            return not gone and items[0].get("status") not in ("CREATING", "UPDATING")

        if state != "DISABLED":
            with aws_errors(f"disabling {what}"):
                await disable()
            await self._until(lambda: settled(False), f"{what} to be disabled")
        with aws_errors(f"deleting {what}"):
            await delete()
        await self._until(lambda: settled(True), f"{what} to be deleted")
        self._report(f"deleted {what}")

    async def _until(self, done: Callable[[], Awaitable[bool]], waiting_for: str) -> None:
        deadline = anyio.current_time() + CLEANUP_TIMEOUT
        delays = backoff_delays(CLEANUP_FIRST_POLL, CLEANUP_LONGEST_POLL, 1.5, jitter=False)
        while not await done():
            delay = next(delays)
            if anyio.current_time() + delay > deadline:
                raise KnotError(
                    f"gave up waiting for {waiting_for} after {CLEANUP_TIMEOUT:g} s; AWS goes "
                    "on with it: run clobber(environment=True) again later"
                )
            await anyio.sleep(delay)

    async def _delete_default_bucket_if_empty(self) -> None:
        """Delete the default bucket when aioknot created it and nothing is left in it (the
        knot's own objects went first); a bucket that holds anything, or that the user named,
        stays. The next knot that opens the default store creates it again."""
        store = self._store
        if not isinstance(store, S3Store) or not store.create_bucket:
            return
        s3 = await self.client("s3")
        owner = {"ExpectedBucketOwner": self.account} if self.account else {}
        bucket = store.bucket
        with aws_errors(f"deleting the default bucket {bucket}"):
            try:
                tagging = await s3.get_bucket_tagging(Bucket=bucket, **owner)
            except ClientError as error:
                if error_code(error) in ("NoSuchBucket", "NoSuchTagSet"):
                    return
                raise
            tags = {t["Key"]: t["Value"] for t in tagging.get("TagSet", [])}
            if not any(tags.get(key) == value for key, value in BUCKET_TAGS.items()):
                return
            listed = await s3.list_objects_v2(Bucket=bucket, MaxKeys=1, **owner)
            if listed.get("KeyCount", 0):
                self._report(f"the default bucket {bucket} still holds objects; keeping it")
                return
            try:
                await s3.delete_bucket(Bucket=bucket, **owner)
            except ClientError as error:
                if error_code(error) not in ("BucketNotEmpty", "NoSuchBucket"):
                    raise
                return  # another knot wrote to it meanwhile, or deleted it: both are fine
        self._report(f"deleted the default bucket {bucket}, which was empty")

    async def _delete_stack(
        self,
        cloudformation: Any,
        name: str,
        tag: str,
        value: str,
        *,
        described: Mapping[str, Any] | None = None,
    ) -> None:
        """Delete stack ``name`` if it is tagged ``tag=value`` (``described``: its description,
        if the caller has it already)."""
        stack = described if described is not None else await describe_stack(cloudformation, name)
        if stack is None:
            self._report(f"stack {name} does not exist; nothing to delete")
            return
        if _stack_tags(stack).get(tag) != value:
            self._report(f"stack {name} is not tagged {tag}={value}; leaving it alone")
            return
        await delete_stack(cloudformation, name=name, progress=self._progress)

    async def _delete_images(self, uris: set[str], *, repositories_too: bool) -> None:
        """Delete the images the knot's definitions named (by digest or tag), when they live
        in this account's ECR; with ``repositories_too``, then each repository that is left
        empty and that aioknot created (an ``aioknot:`` tag)."""
        host = ecr_host(self.account, self.region) + "/"
        by_repository: dict[str, list[dict[str, str]]] = {}
        for uri in sorted(uris):
            path = uri[len(host) :] if uri.startswith(host) else ""
            repository, at, digest = path.partition("@")
            if at:
                image = {"imageDigest": digest}
            else:
                repository, colon, tag = path.rpartition(":")
                image = {"imageTag": tag}
                if not colon:
                    repository = ""
            if not repository:
                if uri:
                    self._report(f"image {uri} is not in this account's ECR; not deleting it")
                continue
            by_repository.setdefault(repository, []).append(image)
        if not by_repository:
            return
        ecr = await self.client("ecr")
        for repository, ids in by_repository.items():
            for start in range(0, len(ids), 100):  # BatchDeleteImage takes 100 ids a call
                with aws_errors(f"deleting images of ECR repository {repository}"):
                    await ecr.batch_delete_image(
                        repositoryName=repository, imageIds=ids[start : start + 100]
                    )
            self._report(f"deleted {len(ids)} images from ECR repository {repository}")
            if repositories_too:
                await self._delete_repository_if_empty(ecr, repository)

    async def _delete_repository_if_empty(self, ecr: Any, repository: str) -> None:
        with aws_errors(f"deleting ECR repository {repository}"):
            try:
                described = await ecr.describe_repositories(repositoryNames=[repository])
            except ClientError as error:
                if error_code(error) == "RepositoryNotFoundException":
                    return
                raise
            arn = described["repositories"][0]["repositoryArn"]
            tags = (await ecr.list_tags_for_resource(resourceArn=arn)).get("tags", [])
            if not is_aioknots_repository(tags):
                return  # the user's repository: never ours to delete
            images = await ecr.list_images(repositoryName=repository, maxResults=1)
            if images.get("imageIds"):
                self._report(f"ECR repository {repository} still holds images; keeping it")
                return
            try:
                # Without force: if another knot pushed meanwhile, ECR refuses, and it stays.
                await ecr.delete_repository(repositoryName=repository)
            except ClientError as error:
                if error_code(error) not in (
                    "RepositoryNotEmptyException",
                    "RepositoryNotFoundException",
                ):
                    raise
                return
        self._report(f"deleted ECR repository {repository}, which was empty")


async def _paged(call: Callable[..., Awaitable[Any]], key: str) -> list[dict[str, Any]]:
    """Every item of a Describe call that pages with nextToken."""
    items: list[dict[str, Any]] = []
    arguments: dict[str, Any] = {}
    while True:
        response = await call(**arguments)
        items.extend(response.get(key, []))
        token = response.get("nextToken")
        if not token:
            return items
        arguments["nextToken"] = token
