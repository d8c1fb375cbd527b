"""One run on AWS Batch: its array jobs going in, and what Batch says became of them.

Results come from the store (the run's watcher); Batch is asked only what the store cannot
tell: which children ended, and how. ``watch`` polls DescribeJobs (100 ids a call) for the jobs
not yet over, backing off while nothing changes. A rise in an array's FAILED count streams
ListJobs pages of its FAILED children (up to 1,000 a page) into losses, each with the job id,
Batch's reason and the exit code from the summary. What summaries lack (the log stream, the
attempt count) costs one DescribeJobs per 100 children, for the first
``DESCRIBED_CHILDREN_MAX`` children of each array in each state: a mass failure is one cause
repeated, and ``run.logs(i)`` finds any child's log on demand. A rise in its SUCCEEDED
count lists the newly SUCCEEDED children the same way (at most once per ``SUCCEEDED_LIST_SECONDS``
per page, and once more when the job is over), and reports their inputs too: the watcher drops
a report for an input whose record exists, so only a child that succeeded without writing one
becomes ``TaskLost``, when that child ends rather than when the run ends.

Every call to Batch and CloudWatch Logs is retried while it fails transiently (throttling,
5xx, connection errors, credentials being refreshed), on this run's own clock, with jittered
backoff on top of botocore's retries. Only an outage with no successful call for
``watch_timeout`` seconds ends the watch, with `WatchTimeout`; nothing here ever cancels or
terminates a job on its own (only `cancel`, the user's intent, does).
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import anyio
import anyio.abc
from botocore.exceptions import ClientError

from ..._errors import AWS_ERRORS, aws_error, error_code, error_summary
from ..._exceptions import KnotError, WatchTimeout
from ..._retry import backoff_delays, is_throttling, is_transient, retry_transient
from ..._tasks import task_group
from ..base import BackendRun, LogTail, RunSpec, Segment, TaskListener
from .jobs import (
    LOG_GROUP,
    JobBatcher,
    JobShape,
    is_rerun_name,
    job_name,
    rerun_name,
    run_jobs_prefix,
    submit_request,
)

if TYPE_CHECKING:  # the published stubs (types-aiobotocore): no import at run time
    from types_aiobotocore_batch.client import BatchClient
    from types_aiobotocore_batch.type_defs import (
        ArrayPropertiesDetailTypeDef,
        ArrayPropertiesSummaryTypeDef,
        AttemptContainerDetailTypeDef,
        AttemptDetailTypeDef,
        ContainerDetailTypeDef,
        ContainerSummaryTypeDef,
        JobDetailTypeDef,
        JobSummaryTypeDef,
        ListJobsRequestTypeDef,
        SubmitJobRequestTypeDef,
    )
    from types_aiobotocore_logs.client import CloudWatchLogsClient
    from types_aiobotocore_logs.type_defs import (
        GetLogEventsRequestTypeDef,
        GetLogEventsResponseTypeDef,
    )

T = TypeVar("T")
logger = logging.getLogger("aioknot")

DESCRIBE_BATCH = 100  # DescribeJobs takes at most 100 ids
LIST_PAGE = 1000  # ListJobs with a jobStatus returns at most 1,000 summaries a page
FIRST_POLL_SECONDS = 1.0
MAX_POLL_SECONDS = 30.0
POLL_BACKOFF = 1.5
# Children of one array described for their log stream and attempts, per state: beyond this,
# reports carry what ListJobs says (10,000 failed children cost 10 DescribeJobs, not 100).
DESCRIBED_CHILDREN_MAX = 1_000
# Retrying a transient failure: the first pause and the longest (jittered, doubling).
RETRY_FIRST_SECONDS = 0.5
RETRY_LONGEST_SECONDS = 30.0
# Listing SUCCEEDED children only finds the rare child that wrote no record, so a running
# array's are listed at most once per this many seconds per page of the last listing (and once
# more when the array is over): a 10,000-child array costs ~1 ListJobs every 15 s, not 10.
SUCCEEDED_LIST_SECONDS = 15.0
# Segments waiting for the next job go out when no new one came for this long (inputs that
# trickle in), or when the oldest has waited this long (a steady but slow stream).
IDLE_FLUSH_SECONDS = 1.0
MAX_PENDING_SECONDS = 30.0

TERMINAL = frozenset({"SUCCEEDED", "FAILED"})
QUEUED = ("SUBMITTED", "PENDING", "RUNNABLE")
RUNNING = ("STARTING", "RUNNING")
# A child in one of these may have written records (its container ran); before them, none can.
STARTED = frozenset({"RUNNING", "SUCCEEDED", "FAILED"})
CANCEL_REASON = "cancelled by aioknot (run.cancel)"
LOST_REASON_MAX = 1_000  # characters of Batch's reason passed on to a rerun (8 KiB of variables)


class BatchTarget(Protocol):
    """What a run needs from its backend: clients, where to submit, and a task group."""

    knot: str
    watch_timeout: float  # seconds without a successful call before the watch gives up

    async def client(self, service: str) -> Any:
        """The backend's open client for ``service`` (typed by the caller: `AwsRun._batch`)."""
        ...

    async def ensure_ready(self) -> tuple[str, str]:
        """The job queue and job definition ARNs (preparing again after a clobber)."""
        ...

    @property
    def group(self) -> anyio.abc.TaskGroup: ...


@dataclass
class _Job:
    job_id: str
    shape: JobShape | None  # None until read back from Batch (a re-attached run)
    after: str | None = None  # a pipeline's: the upstream job its children each wait for
    rerun: set[int] = field(default_factory=set)  # children whose inputs a rerun runs
    is_rerun: bool = False  # it runs again inputs Batch failed unrun (`AwsRun._rerun`)
    queue: str | None = None  # where it was submitted, and with which definition (its
    definition: str | None = None  # reruns go the same way, whatever the knot uses now)
    status: str = "SUBMITTED"
    summary: dict[str, int] = field(default_factory=dict)
    failed_children: set[int] = field(default_factory=set)  # reported lost
    succeeded_children: set[int] = field(default_factory=set)  # reported (for the watcher)
    next_succeeded_listing: float = 0.0
    described: dict[str, int] = field(default_factory=dict)  # children described, by state
    over: bool = False
    started: bool = False  # told the watcher that its tasks started
    succeeded: int = 0  # SUCCEEDED children (or 1: a plain job) told to the watcher as ended


# What the code reads of Batch's answers is typed by the published stubs (types-aiobotocore):
# a description (DescribeJobs) or a summary (ListJobs) may lack any optional field (moto's
# leave out several), and one that was not fetched is None.


def child_index(child_id: str, summary: JobSummaryTypeDef) -> int | None:
    array: ArrayPropertiesSummaryTypeDef = summary.get("arrayProperties") or {}
    index = array.get("index")
    if isinstance(index, int):
        return index
    head, colon, tail = child_id.rpartition(":")
    return int(tail) if colon and tail.isdigit() else None


def _container(description: JobDetailTypeDef | None) -> ContainerDetailTypeDef:
    return (description.get("container") or {}) if description else {}


def _attempts(description: JobDetailTypeDef | None) -> list[AttemptDetailTypeDef]:
    return (description.get("attempts") or []) if description else []


def _last_attempt_container(description: JobDetailTypeDef | None) -> AttemptContainerDetailTypeDef:
    attempts = _attempts(description)
    return (attempts[-1].get("container") or {}) if attempts else {}


def _listed_container(summary: JobSummaryTypeDef | None) -> ContainerSummaryTypeDef:
    return (summary.get("container") or {}) if summary else {}


def failure_reason(
    description: JobDetailTypeDef | None, summary: JobSummaryTypeDef | None = None
) -> str:
    """Batch's words for why a job failed, e.g. ``Host EC2 (instance i-0ab) terminated``.

    ``summary`` is the job's ListJobs summary, which carries the same fields when the
    description lacks them (or was not fetched).
    """
    job = (
        (description.get("jobId") if description else None)
        or (summary.get("jobId") if summary else None)
        or "?"
    )
    return f"AWS Batch job {job} FAILED: {batch_words(description, summary)}"


def batch_words(
    description: JobDetailTypeDef | None, summary: JobSummaryTypeDef | None = None
) -> str:
    """The job's status reason and its container's, e.g. ``Essential container in task
    exited; OutOfMemoryError: Container killed due to memory usage``."""
    parts = [
        (description.get("statusReason") if description else None)
        or (summary.get("statusReason") if summary else None),
        _container(description).get("reason")
        or _last_attempt_container(description).get("reason")
        or _listed_container(summary).get("reason"),
    ]
    return "; ".join(str(part) for part in parts if part) or "Batch gave no reason"


def log_stream(description: JobDetailTypeDef | None) -> str | None:
    stream = _container(description).get("logStreamName")
    if stream:
        return str(stream)
    for attempt in reversed(_attempts(description)):
        stream = (attempt.get("container") or {}).get("logStreamName")
        if stream:
            return str(stream)
    return None


def log_streams(description: JobDetailTypeDef | None) -> list[str]:
    """Every attempt's log stream, oldest first (a retried child has several)."""
    streams: list[str] = []
    for attempt in _attempts(description):
        stream = (attempt.get("container") or {}).get("logStreamName")
        if stream:
            streams.append(str(stream))
    latest = _container(description).get("logStreamName")
    if latest and latest not in streams:
        streams.append(str(latest))
    return streams


def _code(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def exit_code(
    description: JobDetailTypeDef | None, summary: JobSummaryTypeDef | None = None
) -> int | None:
    """The job's exit code: the description's ``container.exitCode``, else its last attempt's
    (moto's DescribeJobs leaves the former out), else the ListJobs summary's."""
    for code in (
        _container(description).get("exitCode"),
        _last_attempt_container(description).get("exitCode"),
        _listed_container(summary).get("exitCode"),
    ):
        found = _code(code)
        if found is not None:
            return found
    return None


def attempt_count(description: JobDetailTypeDef | None) -> int | None:
    """How many attempts Batch made (0: it never started); None when not described."""
    attempts = description.get("attempts") if description else None
    return len(attempts) if isinstance(attempts, list) else None


def _counted(job: _Job) -> tuple[JobShape | None, str, Mapping[str, int]]:
    """What `status_counts` takes of ``job``: without the children whose inputs a rerun runs
    (counted there), so that no input counts twice."""
    if not job.rerun:
        return job.shape, job.status, job.summary
    if job.shape is None or not job.shape.size:
        return None, job.status, job.summary  # a plain job run again whole
    summary = dict(job.summary)
    summary["FAILED"] = max(0, summary.get("FAILED", 0) - len(job.rerun))
    return job.shape, job.status, summary


def _consecutive(children: Mapping[int, str]) -> list[tuple[list[int], str]]:
    """``children`` (index: reason) as runs of consecutive indices with one reason."""
    groups: list[tuple[list[int], str]] = []
    for child in sorted(children):
        reason = children[child]
        if groups and child == groups[-1][0][-1] + 1 and reason == groups[-1][1]:
            groups[-1][0].append(child)
        else:
            groups.append(([child], reason))
    return groups


def _learn_where(job: _Job, description: JobDetailTypeDef | None) -> None:
    """What a described job says of itself beyond its shape: where it went, and whether it
    is a rerun (by its name)."""
    if description is not None:
        job.queue = str(description.get("jobQueue") or "") or None
        job.definition = str(description.get("jobDefinition") or "") or None
        job.is_rerun = is_rerun_name(str(description.get("jobName", "")))


def status_counts(jobs: Iterable[tuple[JobShape | None, str, Mapping[str, int]]]) -> dict[str, int]:
    """Inputs by Batch state: ``queued`` (submitted, pending, runnable), ``starting``,
    ``running`` and ``exited`` (succeeded or failed, with or without a record).

    Array children are counted from ``statusSummary``; a child counts as ``chunk_size`` inputs
    (the last child of a job may hold fewer, so this is an upper bound there).
    """
    counts = {"queued": 0, "starting": 0, "running": 0, "exited": 0}
    for shape, status, summary in jobs:
        if shape is None:
            continue
        if shape.size and summary:
            per_state = {state: summary.get(state, 0) * shape.chunk_size for state in summary}
        else:
            per_state = {status: shape.count}
        for state, inputs in per_state.items():
            inputs = min(inputs, shape.count)
            if state in QUEUED:
                counts["queued"] += inputs
            elif state == "STARTING":
                counts["starting"] += inputs
            elif state == "RUNNING":
                counts["running"] += inputs
            elif state in TERMINAL:
                counts["exited"] += inputs
    return counts


class AwsRun(BackendRun):
    """The ``BackendRun`` of one run on AWS Batch."""

    backend_name = "aws"

    def __init__(
        self,
        target: BatchTarget,
        spec: RunSpec,
        listener: TaskListener,
        job_ids: Sequence[str] | None = None,
    ) -> None:
        self._target = target
        self._spec = spec
        self._listener = listener
        # ``job_ids`` None: a new run. A list: a re-attached run's jobs, which may be none
        # (a pipeline whose every upstream input failed has only the records the client wrote).
        attached = job_ids is not None
        self._jobs: list[_Job] = [_Job(job_id, None) for job_id in job_ids or ()]
        self._upstream: str | None = None  # a pipeline's: the prefix of the run it follows
        self._may_rerun = True  # False: an operator's client, which submits nothing
        self._restored = not attached
        self._batcher = JobBatcher()
        self._last = attached  # a re-attached run takes no more inputs
        self._cancelled = False
        self._lock = anyio.Lock()
        self._restoring = anyio.Lock()
        self._wake = anyio.Event()
        self._error: BaseException | None = None
        self._activity = 0.0  # when submit() last ran
        self._pending_since = 0.0
        self._timer = False
        # When the current outage began (the first transient failure since the last success).
        self._failing_since: float | None = None
        if not attached:
            # A new run: no job yet, so none of its inputs can have a record until a poll sees
            # a job's children start (`_tell_watcher`); the watcher need not look till then,
            # however long the image build or the wait for more inputs takes.
            listener.queued(0, sys.maxsize)

    @property
    def job_ids(self) -> list[str]:
        return [job.job_id for job in self._jobs]

    async def _batch(self) -> BatchClient:
        client: BatchClient = await self._target.client("batch")
        return client

    async def _logs(self) -> CloudWatchLogsClient:
        client: CloudWatchLogsClient = await self._target.client("logs")
        return client

    # -- every call to AWS -------------------------------------------------------------------

    async def _call(
        self,
        doing: str,
        call: Callable[[], Awaitable[T]],
        *,
        outage: str | None = None,
        job_id: str | None = None,
    ) -> T:
        """``await call()``, retried while it fails transiently and the run's outage (no
        successful call to AWS) has lasted less than ``watch_timeout``; our errors otherwise.

        The clock is the run's, not the call's: a poll that fails after an earlier one already
        failed for ten minutes has five left, whichever call it is. An outage that outlasts it
        is `WatchTimeout`, saying that the jobs keep running and how to re-attach, unless
        ``outage`` says what it means instead (a submission: `KnotError`).
        """

        async def attempt() -> T:
            try:
                result = await call()
            except Exception as error:
                if self._failing_since is None and is_transient(error):
                    self._failing_since = anyio.current_time()
                raise
            self._failing_since = None
            return result

        since = self._failing_since
        left = self._target.watch_timeout
        if since is not None:
            left -= anyio.current_time() - since
        try:
            return await retry_transient(
                attempt,
                give_up_after=max(left, 0.0),
                first=RETRY_FIRST_SECONDS,
                longest=RETRY_LONGEST_SECONDS,
            )
        except KnotError:
            raise
        except Exception as error:
            if is_transient(error):
                now = anyio.current_time()
                waited = now - (self._failing_since or now)
                raise self._outage(doing, error, waited, outage) from error
            if isinstance(error, AWS_ERRORS):
                raise aws_error(error, doing, run_id=self._spec.run_id, job_id=job_id) from error
            raise

    def _outage(
        self, doing: str, error: BaseException, waited: float, consequence: str | None
    ) -> KnotError:
        run_id = self._spec.run_id
        failed = (
            f"{doing} has failed for {waited:.0f} s (last: {error_summary(error)}); the "
            f"watch_timeout is {self._target.watch_timeout:g} s. "
        )
        if consequence is not None:
            return KnotError(failed + consequence)
        return WatchTimeout(
            failed + "Nothing was cancelled: AWS Batch keeps running the run's jobs and their "
            "results keep being stored. Once AWS answers again, re-attach with "
            f'`await knot.attach("{run_id}")`.',
            run_id=run_id,
        )

    # -- submission ------------------------------------------------------------------------

    async def submit(self, segments: Sequence[Segment], *, last: bool) -> None:
        if self._error is not None:
            raise self._error
        self._activity = anyio.current_time()
        try:
            async with self._lock:
                if self._cancelled:
                    return
                was_pending = bool(self._batcher.pending)
                groups = [group for s in segments for group in self._batcher.add(s)]
                if last:
                    groups.append(self._batcher.flush())
                for group in groups:
                    if group:
                        await self._submit_group(group)
                if self._batcher.pending and not was_pending:
                    self._pending_since = anyio.current_time()
                self._last = self._last or last
        finally:
            self._activity = anyio.current_time()
        if self._batcher.pending and not self._timer:
            self._timer = True
            self._target.group.start_soon(self._flush_when_idle)
        self._wake.set()

    def can_follow(self, upstream: BackendRun) -> bool:
        return isinstance(upstream, AwsRun)

    async def follow(self, upstream: BackendRun, upstream_prefix: str) -> None:
        """One job per upstream job, of its shape, each child after its upstream child."""
        assert isinstance(upstream, AwsRun)
        await upstream._restore()  # an upstream run re-attached here learns its jobs' shapes
        async with self._lock:
            self._upstream = upstream_prefix
            for job in upstream._jobs:
                if job.is_rerun:
                    # The upstream's own rerun: its inputs are those of a child mirrored
                    # already. (That mirrored child fails unrun, and as its upstream child
                    # never ran, its inputs are lost here: a chain's known gap.)
                    continue
                if job.shape is None:
                    raise KnotError(
                        f"job {job.job_id} of run {upstream._spec.run_id} does not say which "
                        "inputs it runs (was it submitted by aioknot?): its results cannot be "
                        "followed on AWS Batch"
                    )
                await self._submit_shape(job.shape, after=job.job_id)
            self._last = True
        self._wake.set()

    async def _submit_group(self, group: Sequence[Segment]) -> None:
        await self._submit_shape(JobShape.of(group))

    async def _submit_shape(self, shape: JobShape, after: str | None = None) -> None:
        queue, definition = await self._target.ensure_ready()
        request = submit_request(
            self._spec,
            shape,
            name=job_name(self._spec.knot, self._spec.run_id, len(self._jobs)),
            queue=queue,
            definition=definition,
            upstream=self._upstream,
            after=after,
        )
        job_id = await self._send(request, shape)
        self._jobs.append(_Job(job_id, shape, after, queue=queue, definition=definition))
        self._wake.set()

    async def _send(self, request: SubmitJobRequestTypeDef, shape: JobShape) -> str:
        """SubmitJob, retried; a submission whose answer was lost is found by its name."""
        batch = await self._batch()
        name, queue = str(request["jobName"]), str(request["jobQueue"])
        maybe_sent = False

        async def once() -> str:
            nonlocal maybe_sent
            if maybe_sent:
                # The last try may have been accepted before its answer was lost: a second
                # job would run every input again, so look for the first by its unique name.
                found = await _find_job(batch, queue, name)
                if found is not None:
                    return found
            try:
                response = await batch.submit_job(**request)
            except Exception as error:
                # Throttling refuses a request; a reset or a 5xx may hide one accepted.
                maybe_sent = maybe_sent or (is_transient(error) and not is_throttling(error))
                raise
            return str(response["jobId"])

        job_id: str = await self._call(
            f"submitting job {name} of run {self._spec.run_id}",
            once,
            outage=f"Inputs {shape.first} on were not submitted; the jobs submitted before "
            "keep running.",
        )
        return job_id

    async def _flush_when_idle(self) -> None:
        """Send segments that wait for company once inputs stop coming (or wait too long)."""
        try:
            while True:
                due = min(
                    self._activity + IDLE_FLUSH_SECONDS, self._pending_since + MAX_PENDING_SECONDS
                )
                if anyio.current_time() < due:
                    await anyio.sleep(max(0.0, due - anyio.current_time()))
                    continue
                async with self._lock:
                    now = anyio.current_time()
                    if self._cancelled or self._last or not self._batcher.pending:
                        return
                    if now < self._activity + IDLE_FLUSH_SECONDS and (
                        now < self._pending_since + MAX_PENDING_SECONDS
                    ):
                        continue  # a segment came while this waited for the lock
                    await self._submit_group(self._batcher.flush())
                    return
        except Exception as error:  # surfaces in watch() and the next submit()
            self._error = error
            self._wake.set()
        finally:
            self._timer = False

    # -- watching --------------------------------------------------------------------------

    def watch_only(self) -> None:
        self._may_rerun = False

    async def watch(self) -> None:
        # Polls slow down while nothing changes and start over quick when something does
        # (unjittered: a poll, not a retry).
        def slowing() -> Iterator[float]:
            return backoff_delays(FIRST_POLL_SECONDS, MAX_POLL_SECONDS, POLL_BACKOFF, jitter=False)

        delays = slowing()
        delay = next(delays)
        while True:
            self._wake = anyio.Event()
            if self._error is not None:
                raise self._error
            if self._cancelled:
                return
            restored = await self._restore()  # a re-attached run's first poll reads once
            active = [job for job in self._jobs if not job.over]
            changed = await self._poll(active, restored) if active else False
            if self._last and not self._batcher.pending and all(j.over for j in self._jobs):
                return
            with anyio.move_on_after(delay if active else MAX_POLL_SECONDS):
                await self._wake.wait()
            if changed:
                delays = slowing()
            delay = next(delays)

    async def _describe(self, job_ids: Sequence[str]) -> dict[str, JobDetailTypeDef]:
        batch = await self._batch()
        found: dict[str, JobDetailTypeDef] = {}
        for start in range(0, len(job_ids), DESCRIBE_BATCH):
            ids = list(job_ids[start : start + DESCRIBE_BATCH])
            response = await self._call(
                f"describing the jobs of run {self._spec.run_id}",
                functools.partial(batch.describe_jobs, jobs=ids),
            )
            for description in response.get("jobs", []):
                found[str(description["jobId"])] = description
        return found

    async def _restore(self) -> dict[str, JobDetailTypeDef] | None:
        """A re-attached run learns each job's inputs from the job's own overrides.

        A pipeline run also finds its reruns that the manifest does not list yet
        (`_find_reruns`). Returns the descriptions it read (every job's, all still active),
        so that the first poll, status or cancel that follows need not read them again; None
        once restored, or restored meanwhile (the watch and a status() may ask at once, and
        the jobs are learnt once).
        """
        if self._restored:
            return None
        async with self._restoring:
            if self._restored:
                return None
            return await self._learn_jobs()

    async def _learn_jobs(self) -> dict[str, JobDetailTypeDef]:
        jobs = list(self._jobs)
        descriptions = await self._describe([job.job_id for job in jobs])
        for job in jobs:
            description = descriptions.get(job.job_id)
            environment = _container(description).get("environment") or []
            job.shape = JobShape.from_environment(environment)
            variables = {item.get("name"): item.get("value") for item in environment}
            self._upstream = variables.get("AIOKNOT_UPSTREAM") or self._upstream
            depends = (description.get("dependsOn") if description else None) or []
            job.after = depends[0].get("jobId") if depends else None
            _learn_where(job, description)
        if self._upstream is not None:
            queues = {str(d["jobQueue"]) for d in descriptions.values() if d.get("jobQueue")}
            descriptions.update(await self._find_reruns(queues))
            for job in self._jobs:
                self._mark_rerun(job)
        self._restored = True
        return descriptions

    async def _find_reruns(self, queues: Iterable[str]) -> dict[str, JobDetailTypeDef]:
        """A re-attached pipeline run's reruns (`_rerun`) that its manifest does not list yet
        (written when the run ends), found in ``queues`` by the run's job names: so that none
        is submitted twice, and its children's logs are found."""
        batch = await self._batch()
        prefix = run_jobs_prefix(self._spec.knot, self._spec.run_id)
        known = {job.job_id for job in self._jobs}
        found: list[str] = []
        for queue in sorted(queues):
            arguments: ListJobsRequestTypeDef = {
                "jobQueue": queue,
                "filters": [{"name": "JOB_NAME", "values": [f"{prefix}*"]}],
            }
            while True:
                response = await self._call(
                    f"listing the jobs of run {self._spec.run_id}",
                    functools.partial(batch.list_jobs, **arguments),
                )
                for summary in response.get("jobSummaryList", []):
                    job_id = str(summary["jobId"])
                    if job_id not in known and ":" not in job_id:  # a parent, not a child
                        known.add(job_id)
                        found.append(job_id)
                token = response.get("nextToken")
                if not token:
                    break
                arguments["nextToken"] = token
        descriptions = await self._describe(found) if found else {}
        for job_id in found:
            self._adopt(job_id, descriptions.get(job_id))
        return descriptions

    def _adopt(self, job_id: str, description: JobDetailTypeDef | None) -> None:
        """Watch a rerun another client submitted, as its description says."""
        environment = _container(description).get("environment") or []
        shape = JobShape.from_environment(environment)
        if shape is not None and job_id not in {job.job_id for job in self._jobs}:
            job = _Job(job_id, shape, is_rerun=True)
            _learn_where(job, description)
            self._jobs.append(job)
            self._wake.set()

    def _mark_rerun(self, job: _Job) -> None:
        """Put in ``job.rerun`` its children whose inputs a known rerun runs (so that they
        are neither reported lost nor counted twice)."""
        shape = job.shape
        if job.after is None or shape is None:
            return
        for rerun in self._jobs:
            if rerun.is_rerun and rerun.shape is not None:
                first = max(rerun.shape.first, shape.first)
                last = min(rerun.shape.stop, shape.stop) - 1
                if first <= last:
                    job.rerun.update(range(shape.child_of(first), shape.child_of(last) + 1))

    async def _poll(
        self, jobs: Sequence[_Job], described: Mapping[str, JobDetailTypeDef] | None = None
    ) -> bool:
        """Read what Batch says of ``jobs`` (unless ``described`` just did) and report it."""
        if described is None:
            described = await self._describe([job.job_id for job in jobs])
        descriptions = described
        changed = False
        for job in jobs:
            description = descriptions.get(job.job_id)
            if description is None:
                continue  # just submitted: DescribeJobs may not know it yet
            changed = await self._update(job, description) or changed
        return changed

    async def _update(self, job: _Job, description: JobDetailTypeDef) -> bool:
        status = str(description.get("status", job.status))
        array: ArrayPropertiesDetailTypeDef = description.get("arrayProperties") or {}
        summary = dict(array.get("statusSummary") or {})
        changed = status != job.status or summary != job.summary
        job.status, job.summary = status, summary
        shape = job.shape
        if shape is None:
            job.over = status in TERMINAL
            return changed
        self._tell_watcher(job, shape, status, summary)
        if not shape.size:
            job.over = status in TERMINAL
            if job.over:  # a plain job: its own description says it all
                lost = status == "FAILED"
                unrun = await self._unrun(job, [(job.job_id, 0, description)]) if lost else {}
                if unrun:
                    await self._rerun(job, shape, unrun)
                if 0 not in job.rerun:  # else a rerun runs its inputs: their own outcomes
                    self._report(shape.first, shape.stop, job.job_id, description, None, status)
            return changed
        failed, succeeded = summary.get("FAILED", 0), summary.get("SUCCEEDED", 0)
        if failed > len(job.failed_children):
            await self._report_children(job, shape, "FAILED")
        # moto leaves a parent with failed children SUBMITTED: count the children.
        job.over = status in TERMINAL or succeeded + failed >= shape.size
        if succeeded > len(job.succeeded_children) and (
            job.over or anyio.current_time() >= job.next_succeeded_listing
        ):
            await self._report_children(job, shape, "SUCCEEDED")
        if job.over and status == "FAILED" and not summary:
            # The array failed as a whole (before it had children): every input is lost.
            self._report(shape.first, shape.stop, job.job_id, description, None, status)
        return changed

    def _tell_watcher(
        self, job: _Job, shape: JobShape, status: str, summary: Mapping[str, int]
    ) -> None:
        """Say what this poll learned of the job's tasks: that they started (records may turn
        up), and that more of them SUCCEEDED (records to fetch now). From the counts that
        DescribeJobs gives anyway: no call of its own. Which children is not known without a
        ListJobs, so it names the job's inputs; a job once started stays so (a retried child
        back in RUNNABLE may have written records before it failed)."""
        if shape.size:
            started = status in STARTED or any(summary.get(state, 0) for state in STARTED)
            succeeded = summary.get("SUCCEEDED", 0) or (shape.size if status == "SUCCEEDED" else 0)
        else:
            started = status in STARTED
            succeeded = 1 if status == "SUCCEEDED" else 0
        if succeeded > job.succeeded:
            job.succeeded, job.started = succeeded, True
            self._listener.ended(shape.first, shape.count)
        elif started and not job.started:
            job.started = True
            self._listener.started(shape.first, shape.count)

    def _report(
        self,
        start: int,
        stop: int,
        job_id: str,
        description: JobDetailTypeDef | None,
        summary: JobSummaryTypeDef | None,
        status: str,
    ) -> None:
        """Tell the watcher that the inputs ``start .. stop - 1`` of this job are over.

        A FAILED job's inputs become ``TaskLost``; a SUCCEEDED job's only if it wrote no
        record for them (the watcher drops the report of an input whose record exists).
        """
        if status == "FAILED":
            reason = failure_reason(description, summary)
        else:
            reason = f"AWS Batch job {job_id} SUCCEEDED but wrote no result for it"
        stream = log_stream(description)
        code = exit_code(description, summary)
        attempts = attempt_count(description)
        for index in range(start, stop):
            self._listener.lost(
                index, reason, log=stream, exit_code=code, job_id=job_id, attempts=attempts
            )

    async def _report_children(
        self, job: _Job, shape: JobShape, status: Literal["FAILED", "SUCCEEDED"]
    ) -> None:
        """Stream the array's children in ``status`` (FAILED or SUCCEEDED) not yet reported,
        page by page, each 100 reported at once (once described, for the first
        ``DESCRIBED_CHILDREN_MAX``)."""
        batch = await self._batch()
        reported = job.failed_children if status == "FAILED" else job.succeeded_children
        arguments: ListJobsRequestTypeDef = {
            "arrayJobId": job.job_id,
            "jobStatus": status,
            "maxResults": LIST_PAGE,
        }
        pages = 0
        while True:
            response = await self._call(
                f"listing the {status} children of job {job.job_id} (run {self._spec.run_id})",
                functools.partial(batch.list_jobs, **arguments),
            )
            pages += 1
            fresh: list[tuple[str, int, JobSummaryTypeDef]] = []
            for summary in response.get("jobSummaryList", []):
                child_id = str(summary["jobId"])
                child = child_index(child_id, summary)
                if child is not None and child not in reported and 0 <= child < shape.size:
                    fresh.append((child_id, child, summary))
            for start in range(0, len(fresh), DESCRIBE_BATCH):
                children = fresh[start : start + DESCRIBE_BATCH]
                budget = DESCRIBED_CHILDREN_MAX - job.described.get(status, 0)
                # Summaries carry the reason and exit code, never the log stream or the
                # attempts: each reported child is described (up to the budget), once.
                wanted = [child_id for child_id, _, _ in children][: max(budget, 0)]
                descriptions = await self._describe(wanted) if wanted else {}
                job.described[status] = job.described.get(status, 0) + len(wanted)
                if status == "FAILED":
                    said = [(id_, child, descriptions.get(id_) or s) for id_, child, s in children]
                    unrun = await self._unrun(job, said)
                    if unrun:
                        await self._rerun(job, shape, unrun)
                for child_id, child, summary in children:
                    if child in reported:
                        continue  # listed twice within one page
                    reported.add(child)
                    if child in job.rerun:
                        continue  # a rerun runs its inputs: they get their own outcomes
                    inputs = shape.child_inputs(child)
                    description = descriptions.get(child_id)
                    self._report(inputs.start, inputs.stop, child_id, description, summary, status)
            token = response.get("nextToken")
            if not token:
                break
            arguments["nextToken"] = token
        if status == "SUCCEEDED":
            job.next_succeeded_listing = anyio.current_time() + SUCCEEDED_LIST_SECONDS * pages

    # -- a pipeline's children that Batch failed without running them ------------------------

    async def _unrun(
        self,
        job: _Job,
        children: Sequence[tuple[str, int, JobDetailTypeDef | JobSummaryTypeDef | None]],
    ) -> dict[int, str]:
        """Which of ``job``'s FAILED ``children`` (id, index, what Batch says of it) Batch
        failed without starting them because their upstream children failed, each with what
        Batch says of its upstream child's failure.

        Batch fails a dependent child whose upstream child failed (a lost container: OOM, Spot,
        a timeout), but the upstream inputs need not all be lost: those that raised have
        records that say so, and a child of many inputs (a run past 10,000) may have stored
        some values before it died. Such children are run again (`_rerun`) rather than lost.
        Those a rerun already covers (one a re-attached run found) join ``job.rerun`` here.
        """
        if job.after is None or job.shape is None or self._cancelled or not self._may_rerun:
            return {}
        shape = job.shape
        self._mark_rerun(job)  # a rerun found on re-attaching runs them already
        unstarted = [
            (child, f"{job.after}:{child}" if shape.size else job.after)
            for _, child, said in children
            if child not in job.rerun
            and (
                not said
                or (
                    not said.get("attempts")
                    and not said.get("startedAt")
                    # Cancelled (by this run's user, maybe from another process): not again.
                    and said.get("statusReason") != CANCEL_REASON
                )
            )
        ]
        if not unstarted:
            return {}
        upstream = await self._describe([upstream_id for _, upstream_id in unstarted])
        # Only an upstream child whose container ran and died has final records to read. One
        # that never ran either (a chain's middle stage, which its own client runs again) or
        # that its user cancelled has nothing to give: those inputs are lost here too.
        failed = {
            upstream_id: f"its AWS Batch job failed: {batch_words(description)}"
            for upstream_id, description in upstream.items()
            if description.get("status") == "FAILED"
            and description.get("statusReason") != CANCEL_REASON
            and (description.get("attempts") or description.get("startedAt"))
        }
        return {
            child: failed[upstream_id] for child, upstream_id in unstarted if upstream_id in failed
        }

    async def _rerun(self, job: _Job, shape: JobShape, children: Mapping[int, str]) -> None:
        """Submit again, without their dependency, the inputs of ``shape``'s ``children``
        (each with why its upstream child failed), consecutive ones as one job, to the queue
        and definition of ``job``: the worker reads each upstream record, writes the failure
        of an upstream input that raised or has no record (lost: for that reason), naming it,
        and runs the function on a value that exists.

        A rerun is named by its first input: one another client submitted already (found by
        that name) is watched instead of submitted twice."""
        if job.queue is None or job.definition is None:
            job.queue, job.definition = await self._target.ensure_ready()
        queue, definition = job.queue, job.definition
        batch = await self._batch()
        groups = _consecutive(children)
        async with self._lock:
            while groups and not self._cancelled:
                group, reason = groups.pop(0)
                start = shape.child_inputs(group[0]).start
                stop = shape.child_inputs(group[-1]).stop
                name = rerun_name(self._spec.knot, self._spec.run_id, start)
                found = await self._call(
                    f"looking for job {name} of run {self._spec.run_id}",
                    functools.partial(_find_job, batch, queue, name),
                )
                if found is not None:
                    self._adopt(found, (await self._describe([found])).get(found))
                    self._mark_rerun(job)
                    if group[0] in job.rerun:  # the rest, if it covers fewer, go on their own
                        groups[:0] = _consecutive(
                            {c: children[c] for c in group if c not in job.rerun}
                        )
                        continue
                logger.info(
                    "run %s: AWS Batch failed inputs %d..%d without running them, as their "
                    "upstream failed; they are submitted again without the dependency, so that "
                    "each gets its own outcome",
                    self._spec.run_id,
                    start,
                    stop - 1,
                )
                rerun = JobShape(((start, stop - start),), shape.chunk_size)
                request = submit_request(
                    self._spec,
                    rerun,
                    name=name,
                    queue=queue,
                    definition=definition,
                    upstream=self._upstream,
                    upstream_lost=reason[:LOST_REASON_MAX],
                )
                job_id = await self._send(request, rerun)
                self._jobs.append(
                    _Job(job_id, rerun, is_rerun=True, queue=queue, definition=definition)
                )
                job.rerun.update(group)
                self._wake.set()

    # -- status, cancel, logs ----------------------------------------------------------------

    async def status(self) -> dict[str, int]:
        restored = await self._restore()
        active = [job for job in self._jobs if not job.over]
        descriptions = restored or await self._describe([job.job_id for job in active])
        for job in active:
            description = descriptions.get(job.job_id)
            if description is not None:
                job.status = str(description.get("status", job.status))
                array: ArrayPropertiesDetailTypeDef = description.get("arrayProperties") or {}
                job.summary = dict(array.get("statusSummary") or {})
        return status_counts(_counted(job) for job in self._jobs)

    async def cancel(self) -> None:
        """CancelJob what is still queued, TerminateJob what runs (an array: both, as needed).

        The user's intent only (``run.cancel()``, leaving ``amap``, closing a knot with
        ``amap`` runs): nothing the watch sees ever calls this.
        """
        self._cancelled = True
        self._wake.set()
        async with self._lock:  # a SubmitJob under way finishes first, then is cancelled too
            self._batcher.pending.clear()
        restored = await self._restore()
        active = [job for job in self._jobs if not job.over]
        if not active:
            return
        batch = await self._batch()
        descriptions = restored or await self._describe([job.job_id for job in active])
        calls: list[tuple[Callable[..., Awaitable[object]], str]] = []
        for job in active:
            description = descriptions.get(job.job_id)
            status = str(description.get("status", job.status)) if description else job.status
            array: ArrayPropertiesDetailTypeDef = (
                description.get("arrayProperties") or {} if description else {}
            )
            summary = array.get("statusSummary") or {}
            if summary:
                queued = any(summary.get(state, 0) for state in QUEUED)
                running = any(summary.get(state, 0) for state in RUNNING)
            else:
                queued, running = status in QUEUED, status in RUNNING
            if queued:
                calls.append((batch.cancel_job, job.job_id))
            if running:
                calls.append((batch.terminate_job, job.job_id))

        async def stop(call: Callable[..., Awaitable[object]], job_id: str) -> None:
            await self._call(
                f"stopping job {job_id} of run {self._spec.run_id}",
                functools.partial(call, jobId=job_id, reason=CANCEL_REASON),
                outage="The job may still be running: cancel the run again once AWS answers.",
                job_id=job_id,
            )

        async with task_group() as group:  # the first failure raised as itself
            for call, job_id in calls:
                group.start_soon(stop, call, job_id)

    async def logs(self, index: int) -> list[str]:
        """The CloudWatch log lines of the child that ran ``index``, every attempt in order."""
        return await self.tail_logs(index).read(final=True)

    def tail_logs(self, index: int) -> LogTail:
        return CloudWatchTail(self, index)

    async def _child_of(self, index: int) -> str | None:
        """The id of the job (the array child) that runs input ``index``; None if no job
        holding it was submitted (yet)."""
        await self._restore()
        job = next(  # the latest: a rerun runs inputs a child Batch failed unrun held
            (
                j
                for j in reversed(self._jobs)
                if j.shape is not None and j.shape.first <= index < j.shape.stop
            ),
            None,
        )
        if job is None or job.shape is None:
            return None
        return f"{job.job_id}:{job.shape.child_of(index)}" if job.shape.size else job.job_id

    async def _log_streams(self, child_id: str, *, known: bool = True) -> list[str]:
        """The log streams of ``child_id``'s attempts so far, oldest first ([] before its
        first attempt started). A job Batch does not describe is one it forgot, unless it
        may not be ``known`` yet (just submitted, an array child whose parent is queued)."""
        description = (await self._describe([child_id])).get(child_id)
        if description is None:
            if not known:
                return []
            raise KnotError(f"AWS Batch no longer knows job {child_id} (it keeps jobs ~7 days)")
        return log_streams(description)

    async def _read_stream(
        self, stream: str, token: str | None, *, whole: bool
    ) -> tuple[list[str], str | None]:
        """The events of ``stream`` after ``token`` (from its start if None), and the token to
        read on from next time; ``([], token)`` while the stream does not exist yet. One page
        (up to 10,000 events), or with ``whole`` every page to the end of the stream."""
        logs = await self._logs()
        arguments: GetLogEventsRequestTypeDef = {
            "logGroupName": LOG_GROUP,
            "logStreamName": stream,
            "startFromHead": True,
        }
        if token is not None:
            arguments["nextToken"] = token
        lines: list[str] = []

        async def page(request: GetLogEventsRequestTypeDef) -> GetLogEventsResponseTypeDef | None:
            try:
                return await logs.get_log_events(**request)
            except ClientError as error:
                if error_code(error) == "ResourceNotFoundException":
                    return None  # not started yet (or never: then it never logged)
                raise

        while True:
            response = await self._call(
                f"reading log stream {stream}", functools.partial(page, arguments.copy())
            )
            if response is None:
                return lines, token
            lines.extend(str(event.get("message", "")) for event in response.get("events", []))
            following = response.get("nextForwardToken")
            # The end of the stream (for now): the forward token comes back as it was sent.
            # A page may be empty before that, so an empty page is no end.
            if not whole or not following or following == arguments.get("nextToken"):
                return lines, following or token
            arguments["nextToken"] = token = following


class CloudWatchTail(LogTail):
    """The CloudWatch log of the child that runs an input, read as it grows: each stream
    (one per attempt) read on from the forward token where the last read stopped.

    The child is described (DescribeJobs) for its streams at the first read, whenever a read
    finds nothing new (its attempt may have ended and a retry begun, on a stream of its own;
    or a pipeline's child failed unrun was run again, as another child: it is looked up anew)
    and at the final read, never while lines come. A stream that does not exist yet (the child
    is queued or starting) reads as nothing. A read takes one page (one GetLogEvents, up to
    10,000 events) of the current stream, as a follower reads again soon; the final read
    reads to the end. Once a later attempt's stream is known, an earlier one is read to its
    end one last time and left.
    """

    # The awslogs driver sends a container's lines every few seconds (5 by default), so the
    # last ones may reach CloudWatch after the child's result record is stored and seen.
    lag_seconds = 6.0

    def __init__(self, run: AwsRun, index: int) -> None:
        self._run = run
        self._index = index
        self._child: str | None = None
        self._streams: list[str] = []
        self._tokens: dict[str, str | None] = {}
        self._over: set[str] = set()  # streams of earlier attempts, read to their end
        self._quiet = True  # the last read found nothing: look for a new attempt

    async def read(self, *, final: bool = False) -> list[str]:
        run = self._run
        if self._child is None or self._quiet:  # a quiet child may have been run again
            self._child = await run._child_of(self._index) or self._child
            if self._child is None:
                # Its job is not submitted yet (segments go in together), or never will be: a
                # pipeline's input whose upstream input failed runs nowhere. No lines, either
                # way (the run has checked that the input is one of its own).
                return []
        if self._quiet or final or not self._streams:
            known = await run._log_streams(self._child, known=final)
            self._streams += [stream for stream in known if stream not in self._streams]
        lines: list[str] = []
        for place, stream in enumerate(self._streams):
            if stream in self._over:
                continue
            earlier = place < len(self._streams) - 1
            fresh, self._tokens[stream] = await run._read_stream(
                stream, self._tokens.get(stream), whole=final or earlier
            )
            lines += fresh
            if earlier:
                self._over.add(stream)
        self._quiet = not lines
        return lines


async def _find_job(batch: BatchClient, queue: str, name: str) -> str | None:
    """The id of the job called ``name`` in ``queue``, if Batch has one (any status)."""
    response = await batch.list_jobs(
        jobQueue=queue, filters=[{"name": "JOB_NAME", "values": [name]}]
    )
    for summary in response.get("jobSummaryList", []):
        if summary.get("jobName") == name:
            return str(summary["jobId"])
    return None
