"""One run on AWS Batch: its array jobs going in, and what Batch says became of them.

Results come from the store (the run's watcher); Batch is asked only what the store cannot
tell: which children died. ``watch`` polls DescribeJobs (100 ids a call) for the jobs not yet
over, backing off while nothing changes; a rise in an array's FAILED count costs one ListJobs
of its FAILED children and one DescribeJobs per 100 of them (for the log stream), and every
input of such a child is reported lost with Batch's reason and exit code. Once Batch says
every job is over, ``watch`` returns and the watcher's last look turns any input still
without a record into ``TaskLost``: nothing waits on a job that Batch says is over.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import anyio.abc
from botocore.exceptions import BotoCoreError, ClientError

from ._aws_errors import error_code, translate
from ._aws_jobs import LOG_GROUP, JobBatcher, JobShape, submit_job, submit_request
from ._backend import RunSpec, Segment, TaskListener
from ._exceptions import KnotError

DESCRIBE_BATCH = 100  # DescribeJobs takes at most 100 ids
FIRST_POLL_SECONDS = 1.0
MAX_POLL_SECONDS = 30.0
POLL_BACKOFF = 1.5
# Segments waiting for the next job go out when no new one came for this long (inputs that
# trickle in), or when the oldest has waited this long (a steady but slow stream).
IDLE_FLUSH_SECONDS = 1.0
MAX_PENDING_SECONDS = 30.0

TERMINAL = frozenset({"SUCCEEDED", "FAILED"})
QUEUED = ("SUBMITTED", "PENDING", "RUNNABLE")
RUNNING = ("STARTING", "RUNNING")
CANCEL_REASON = "cancelled by aioknot (run.cancel)"


class BatchTarget(Protocol):
    """What a run needs from its backend: clients, where to submit, and a task group."""

    knot: str

    async def client(self, service: str) -> Any: ...

    async def ensure_ready(self) -> tuple[str, str]:
        """The job queue and job definition ARNs (preparing again after a clobber)."""
        ...

    @property
    def group(self) -> anyio.abc.TaskGroup: ...


@dataclass
class _Job:
    job_id: str
    shape: JobShape | None  # None until read back from Batch (a re-attached run)
    status: str = "SUBMITTED"
    summary: dict[str, int] = field(default_factory=dict)
    failed_children: set[int] = field(default_factory=set)
    over: bool = False


def child_index(child_id: str, summary: Mapping[str, Any]) -> int | None:
    index = summary.get("arrayProperties", {}).get("index")
    if isinstance(index, int):
        return index
    head, colon, tail = child_id.rpartition(":")
    return int(tail) if colon and tail.isdigit() else None


def failure_reason(description: Mapping[str, Any]) -> str:
    """Batch's words for why a job failed, e.g. ``Host EC2 (instance i-0ab) terminated``."""
    container = description.get("container") or {}
    parts = [description.get("statusReason"), container.get("reason")]
    reason = "; ".join(str(part) for part in parts if part)
    job = description.get("jobId", "?")
    return f"AWS Batch job {job} FAILED: {reason or 'Batch gave no reason'}"


def log_stream(description: Mapping[str, Any]) -> str | None:
    container = description.get("container") or {}
    if container.get("logStreamName"):
        return str(container["logStreamName"])
    for attempt in reversed(description.get("attempts") or []):
        stream = (attempt.get("container") or {}).get("logStreamName")
        if stream:
            return str(stream)
    return None


def log_streams(description: Mapping[str, Any]) -> list[str]:
    """Every attempt's log stream, oldest first (a retried child has several)."""
    streams = [
        str(attempt["container"]["logStreamName"])
        for attempt in description.get("attempts") or []
        if (attempt.get("container") or {}).get("logStreamName")
    ]
    latest = (description.get("container") or {}).get("logStreamName")
    if latest and latest not in streams:
        streams.append(str(latest))
    return streams


def exit_code(description: Mapping[str, Any]) -> int | None:
    code = (description.get("container") or {}).get("exitCode")
    return int(code) if isinstance(code, int) else None


def status_counts(jobs: Iterable[tuple[JobShape | None, str, Mapping[str, int]]]) -> dict[str, int]:
    """Inputs by Batch state: ``queued`` (submitted, pending, runnable), ``starting``,
    ``running`` and ``exited`` (succeeded or failed, with or without a record).

    Array children are counted from ``statusSummary``; a child of ``chunk`` inputs counts as
    ``chunk`` (the last child of a job may hold fewer, so this is an upper bound there).
    """
    counts = {"queued": 0, "starting": 0, "running": 0, "exited": 0}
    for shape, status, summary in jobs:
        if shape is None:
            continue
        if shape.size and summary:
            per_state = {state: summary.get(state, 0) * shape.chunk for state in summary}
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


class AwsRun:
    """The ``BackendRun`` of one run on AWS Batch."""

    def __init__(
        self,
        target: BatchTarget,
        spec: RunSpec,
        listener: TaskListener,
        job_ids: Sequence[str] = (),
    ) -> None:
        self._target = target
        self._spec = spec
        self._listener = listener
        self._jobs: list[_Job] = [_Job(job_id, None) for job_id in job_ids]
        self._restored = not job_ids
        self._batcher = JobBatcher()
        self._last = bool(job_ids)  # a re-attached run takes no more inputs
        self._cancelled = False
        self._lock = anyio.Lock()
        self._wake = anyio.Event()
        self._error: BaseException | None = None
        self._activity = 0.0  # when submit() last ran
        self._pending_since = 0.0
        self._timer = False

    @property
    def job_ids(self) -> list[str]:
        return [job.job_id for job in self._jobs]

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

    async def _submit_group(self, group: Sequence[Segment]) -> None:
        queue, definition = await self._target.ensure_ready()
        shape = JobShape.of(group)
        request = submit_request(
            self._spec, shape, number=len(self._jobs), queue=queue, definition=definition
        )
        batch = await self._target.client("batch")
        job_id = await submit_job(batch, request)
        self._jobs.append(_Job(job_id, shape))
        self._wake.set()

    async def _flush_when_idle(self) -> None:
        """Send segments that wait for company once inputs stop coming (or wait too long)."""
        try:
            while True:
                due = min(
                    self._activity + IDLE_FLUSH_SECONDS, self._pending_since + MAX_PENDING_SECONDS
                )
                if anyio.current_time() < due:
                    await anyio.sleep(due - anyio.current_time())
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

    async def watch(self) -> None:
        delay = FIRST_POLL_SECONDS
        while True:
            self._wake = anyio.Event()
            if self._error is not None:
                raise self._error
            if self._cancelled:
                return
            await self._restore()
            active = [job for job in self._jobs if not job.over]
            changed = await self._poll(active) if active else False
            if self._last and not self._batcher.pending and all(j.over for j in self._jobs):
                return
            with anyio.move_on_after(delay if active else MAX_POLL_SECONDS):
                await self._wake.wait()
            delay = FIRST_POLL_SECONDS if changed else min(delay * POLL_BACKOFF, MAX_POLL_SECONDS)

    async def _describe(self, job_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        batch = await self._target.client("batch")
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(job_ids), DESCRIBE_BATCH):
            ids = list(job_ids[start : start + DESCRIBE_BATCH])
            try:
                response = await batch.describe_jobs(jobs=ids)
            except (ClientError, BotoCoreError) as error:
                raise translate(error, f"describing the jobs of run {self._spec.run_id}") from error
            for description in response.get("jobs", []):
                found[str(description["jobId"])] = description
        return found

    async def _restore(self) -> None:
        """A re-attached run learns each job's inputs from the job's own overrides."""
        if self._restored:
            return
        descriptions = await self._describe([job.job_id for job in self._jobs])
        for job in self._jobs:
            description = descriptions.get(job.job_id, {})
            environment = (description.get("container") or {}).get("environment") or []
            job.shape = JobShape.from_environment(environment)
        self._restored = True

    async def _poll(self, jobs: Sequence[_Job]) -> bool:
        descriptions = await self._describe([job.job_id for job in jobs])
        changed = False
        for job in jobs:
            description = descriptions.get(job.job_id)
            if description is None:
                continue  # just submitted: DescribeJobs may not know it yet
            changed = await self._update(job, description) or changed
        return changed

    async def _update(self, job: _Job, description: Mapping[str, Any]) -> bool:
        status = str(description.get("status", job.status))
        summary = dict((description.get("arrayProperties") or {}).get("statusSummary") or {})
        changed = status != job.status or summary != job.summary
        job.status, job.summary = status, summary
        shape = job.shape
        if shape is None:
            job.over = status in TERMINAL
            return changed
        if shape.size:
            if summary.get("FAILED", 0) > len(job.failed_children):
                await self._report_failed_children(job, shape)
            finished = summary.get("SUCCEEDED", 0) + summary.get("FAILED", 0)
            # moto leaves a parent with failed children SUBMITTED: count the children.
            job.over = status in TERMINAL or finished >= shape.size
            if job.over and status == "FAILED" and not summary:
                self._lose(shape.first, shape.stop, description)
        else:
            job.over = status in TERMINAL
            if status == "FAILED":
                self._lose(shape.first, shape.stop, description)
        return changed

    def _lose(self, start: int, stop: int, description: Mapping[str, Any]) -> None:
        reason, stream, code = (
            failure_reason(description),
            log_stream(description),
            exit_code(description),
        )
        for index in range(start, stop):
            self._listener.lost(index, reason, log=stream, exit_code=code)

    async def _report_failed_children(self, job: _Job, shape: JobShape) -> None:
        batch = await self._target.client("batch")
        arguments: dict[str, Any] = {"arrayJobId": job.job_id, "jobStatus": "FAILED"}
        fresh: dict[str, int] = {}
        try:
            while True:
                response = await batch.list_jobs(**arguments)
                for summary in response.get("jobSummaryList", []):
                    child = child_index(str(summary["jobId"]), summary)
                    if child is not None and child not in job.failed_children:
                        fresh[str(summary["jobId"])] = child
                token = response.get("nextToken")
                if not token:
                    break
                arguments["nextToken"] = token
        except (ClientError, BotoCoreError) as error:
            raise translate(error, f"listing the failed children of job {job.job_id}") from error
        # The summaries lack the log stream; the full descriptions have it.
        descriptions = await self._describe(list(fresh))
        for child_id, child in fresh.items():
            description = descriptions.get(child_id, {"jobId": child_id})
            inputs = shape.child_inputs(child)
            self._lose(inputs.start, inputs.stop, description)
            job.failed_children.add(child)

    # -- status, cancel, logs ----------------------------------------------------------------

    async def status(self) -> dict[str, int]:
        await self._restore()
        active = [job for job in self._jobs if not job.over]
        descriptions = await self._describe([job.job_id for job in active])
        for job in active:
            description = descriptions.get(job.job_id)
            if description is not None:
                job.status = str(description.get("status", job.status))
                array = description.get("arrayProperties") or {}
                job.summary = dict(array.get("statusSummary") or {})
        return status_counts((job.shape, job.status, job.summary) for job in self._jobs)

    async def cancel(self) -> None:
        """CancelJob what is still queued, TerminateJob what runs (an array: both, as needed)."""
        self._cancelled = True
        self._wake.set()
        async with self._lock:  # a SubmitJob under way finishes first, then is cancelled too
            self._batcher.pending.clear()
        await self._restore()
        active = [job for job in self._jobs if not job.over]
        if not active:
            return
        batch = await self._target.client("batch")
        descriptions = await self._describe([job.job_id for job in active])
        calls: list[tuple[str, str]] = []
        for job in active:
            description = descriptions.get(job.job_id, {})
            status = str(description.get("status", job.status))
            summary = (description.get("arrayProperties") or {}).get("statusSummary") or {}
            if summary:
                queued = any(summary.get(state, 0) for state in QUEUED)
                running = any(summary.get(state, 0) for state in RUNNING)
            else:
                queued, running = status in QUEUED, status in RUNNING
            if queued:
                calls.append(("cancel_job", job.job_id))
            if running:
                calls.append(("terminate_job", job.job_id))
        errors: list[Exception] = []

        async def call(name: str, job_id: str) -> None:
            try:
                await getattr(batch, name)(jobId=job_id, reason=CANCEL_REASON)
            except (ClientError, BotoCoreError) as error:
                errors.append(translate(error, f"stopping job {job_id}"))

        async with anyio.create_task_group() as group:
            for name, job_id in calls:
                group.start_soon(call, name, job_id)
        if errors:
            raise errors[0]

    async def logs(self, index: int) -> list[str]:
        """The CloudWatch log lines of the child that ran ``index``, every attempt in order."""
        await self._restore()
        job = next(
            (
                j
                for j in self._jobs
                if j.shape is not None and j.shape.first <= index < j.shape.stop
            ),
            None,
        )
        if job is None or job.shape is None:
            raise KnotError(f"input {index} of run {self._spec.run_id} was not submitted")
        child_id = f"{job.job_id}:{job.shape.child_of(index)}" if job.shape.size else job.job_id
        description = (await self._describe([child_id])).get(child_id)
        if description is None:
            raise KnotError(f"AWS Batch no longer knows job {child_id} (it keeps jobs ~7 days)")
        logs = await self._target.client("logs")
        lines: list[str] = []
        for stream in log_streams(description):
            lines.extend(await _read_stream(logs, stream))
        return lines


async def _read_stream(logs: Any, stream: str) -> list[str]:
    arguments: dict[str, Any] = {
        "logGroupName": LOG_GROUP,
        "logStreamName": stream,
        "startFromHead": True,
    }
    lines: list[str] = []
    try:
        while True:
            response = await logs.get_log_events(**arguments)
            lines.extend(str(event.get("message", "")) for event in response.get("events", []))
            token = response.get("nextForwardToken")
            # The forward token repeats once the end of the stream is reached.
            if not token or token == arguments.get("nextToken") or not response.get("events"):
                return lines
            arguments["nextToken"] = token
    except ClientError as error:
        if error_code(error) == "ResourceNotFoundException":
            return lines  # the task never started, so it never logged
        raise translate(error, f"reading log stream {stream}") from error
    except BotoCoreError as error:
        raise translate(error, f"reading log stream {stream}") from error
