"""The worker's part, played, for moto's simple Batch mode (which runs no container).

In simple mode a job is SUCCEEDED (or FAILED, with ``MOTO_SIMPLE_BATCH_FAIL_AFTER=0``) the
moment it is submitted, and nothing writes a record. `PlayedWorker` writes, right before each
SubmitJob, the record every child of the job would write, with the worker's own encoder: one
grouped record per child, straight to moto (not through a fault proxy: the workers' own
retries are not what the tests and benchmarks built on it measure). `playing` hooks it into
`AwsRun`'s submission. Used by tests/test_aws_faults.py and benchmarks/aws_faults.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import anyio.to_thread
from botocore.config import Config

from aioknot._backends.aws.jobs import JobShape
from aioknot._backends.aws.run import AwsRun
from aioknot._backends.base import Segment
from aioknot._worker import encode_results, result_key

from .aws import BUCKET, MotoClients


def square(x: int) -> int:
    """The function every played child runs (the knot's function must be the same)."""
    return x * x


class PlayedWorker:
    """Writes the records a worker would write for each submitted job.

    ``skip`` names children (by their place among all children submitted) that write
    nothing; ``hold`` keeps every record back until `release` (a worker still running);
    ``after_first_submit`` is called once the first job is in, before the watch first polls.
    """

    def __init__(self, url: str, *, skip: frozenset[int] = frozenset(), threads: int = 16) -> None:
        self._clients = MotoClients(url, config=Config(max_pool_connections=threads))
        self._s3 = self._clients("s3")
        self._pool = ThreadPoolExecutor(threads)
        self.skip = skip
        self.hold = False
        self.held: list[tuple[str, bytes]] = []
        self.shapes: list[JobShape] = []
        self.children: list[range] = []  # inputs of every child submitted, in order
        self.after_first_submit: Callable[[], None] | None = None

    def close(self) -> None:
        self._pool.shutdown()
        self._clients.close()

    def job_submitted(self, run_prefix: str, shape: JobShape) -> None:
        self.shapes.append(shape)
        records = []
        for child in range(max(shape.size, 1)):
            inputs = shape.child_inputs(child) if shape.size else range(shape.first, shape.stop)
            number = len(self.children)
            self.children.append(inputs)
            if number in self.skip:
                continue
            data = encode_results(inputs.start, [square(i) for i in inputs])
            records.append((result_key(run_prefix, inputs.start, len(inputs)), data))
        if self.hold:
            self.held.extend(records)
        else:
            self._put(records)

    def release(self) -> None:
        """The held records are written (the workers finish)."""
        self.hold = False
        held, self.held = self.held, []
        self._put(held)

    def _put(self, records: list[tuple[str, bytes]]) -> None:
        def put(record: tuple[str, bytes]) -> None:
            self._s3.put_object(Bucket=BUCKET, Key=record[0], Body=record[1])

        list(self._pool.map(put, records))


@contextlib.contextmanager
def playing(worker: PlayedWorker) -> Iterator[PlayedWorker]:
    """Every job an `AwsRun` submits meanwhile has its records played by ``worker``."""
    original = AwsRun._submit_group

    async def submit_group(self: AwsRun, group: list[Segment]) -> None:
        # The worker's part: its records exist before Batch says the job ended.
        shape = JobShape.of(group)
        await anyio.to_thread.run_sync(worker.job_submitted, self._spec.run_prefix, shape)
        first = not self.job_ids
        await original(self, group)
        if first and worker.after_first_submit is not None:
            worker.after_first_submit()  # no await since: the watch has not polled yet

    AwsRun._submit_group = submit_group  # type: ignore[method-assign]
    try:
        yield worker
    finally:
        AwsRun._submit_group = original  # type: ignore[method-assign]
        worker.close()
