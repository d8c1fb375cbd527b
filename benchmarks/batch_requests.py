"""How many S3 requests does the client spend per result on AWS Batch, with real containers?

``AsyncKnot(task, backend="aws")`` against a moto server (default Batch mode) that runs every
array child as a real container of the image aioknot builds and pushes to a local registry
(tests/infra/containers.sh sets up the Docker engine, base image and registry, as for
tests/test_aws_end_to_end.py). ``--inputs`` (50) inputs of 1 to 3 s each (benchmarks/
_batch_task.py); inside, the real worker reads its inputs from moto's S3 and writes its records.

The same knot runs the map twice per round, ``--rounds`` (1) rounds, in turn:

* ``before``: the watcher as it was before issue 11: HEADs of every outstanding key while at
  most 32 are outstanding, LIST sweeps beyond, on its own backoff only (the task states
  `AwsRun` tells, ``queued``/``started``/``ended``, are ignored);
* ``after``: the watcher as it is: no look while every outstanding input's task is queued, a
  look at once when Batch says tasks SUCCEEDED, LIST-first, HEADs for the last 4.

Figures, counted with botocore hooks on every aioboto3 session of this process (the client;
the workers' boto3 requests are not): the client's requests on result keys (HEAD, GET, LIST of
``.../results/``) per result, HEADs answered 404, Batch calls (DescribeJobs, ListJobs), the
time from ``map()`` to the first result and to the last, and how long after the first record
was stored (its LastModified: moto keeps whole seconds, so up to 1 s too long) and after the
first child was SUCCEEDED (its ``stoppedAt``) the first result was in hand, both read from
moto after the run. moto's Batch says a child is RUNNING as soon as it is asked (before its
container starts) and SUCCEEDED seconds after its record is stored (it copies the container's
log first), so the watcher's own looks, not `ended`, find most records here.

The machine is shared and docker starts 50 containers on 2 cores: times vary by 2-3x from
run to run; the requests per result and the first result's lag behind its record do not.

Target (exit 1 when missed): at most 2.0 client requests per result to discover and fetch.

    python benchmarks/batch_requests.py [--inputs N] [--rounds N] [--modes before,after]
                                        [--trace]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _batch_task import task  # noqa: E402
from _common import FAKE_CREDENTIALS, Checks  # noqa: E402  (puts tests/ on the path)
from infra.containers import (  # noqa: E402
    ensure_container_stack,
    job_role_endpoint,
    knot_options,
)
from infra.moto import start_moto_server, stop_moto_server  # noqa: E402

MAX_REQUESTS_PER_RESULT = 2.0
REPOSITORY = "aioknot-bench-batch"
KNOT = "bench-batch"


# -- counting the client's requests ------------------------------------------------------------


@dataclass
class Counts:
    results: Counter[str] = field(default_factory=Counter)  # S3 operations on result keys
    head_404: int = 0
    batch: Counter[str] = field(default_factory=Counter)
    trace: bool = False  # print each counted request and each job's status summary
    since: float = 0.0

    def _say(self, what: str) -> None:
        if self.trace:
            print(f"    {time.monotonic() - self.since:7.2f} s  {what}", flush=True)

    def on_params(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        service = model.service_model.service_name
        if service == "batch":
            self.batch[model.name] += 1
        elif service == "s3" and "/results/" in str(params.get("Key") or params.get("Prefix")):
            self.results[model.name] += 1
            self._say(f"{model.name} {params.get('Key') or params.get('StartAfter') or ''}")

    def on_response(self, model: Any, http_response: Any, parsed: Any, **_: Any) -> None:
        if model.name == "HeadObject" and getattr(http_response, "status_code", 0) == 404:
            self.head_404 += 1
        if model.name == "ListObjectsV2":
            self._say(f"  listed {parsed.get('KeyCount')} keys")
        if model.name == "DescribeJobs":
            summaries = [
                (job.get("status"), (job.get("arrayProperties") or {}).get("statusSummary"))
                for job in parsed.get("jobs", [])
            ]
            self._say(f"DescribeJobs {summaries}")


COUNTS = Counts()


def trace_the_watcher() -> None:
    """Print what the backend tells the watcher (``--trace``)."""
    from aioknot import _watch

    for name in ("queued", "started", "ended", "lost"):
        original = getattr(_watch.ResultWatcher, name)

        def traced(
            self: Any, *args: Any, _original: Any = original, _name: str = name, **kwargs: Any
        ) -> Any:
            COUNTS._say(f"watcher.{_name}{args[:2]}")
            return _original(self, *args, **kwargs)

        setattr(_watch.ResultWatcher, name, traced)


def count_every_session() -> None:
    """Every aioboto3 session opened from now on reports its calls to ``COUNTS``."""
    import aioboto3

    original = aioboto3.Session

    class CountingSession(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # before-parameter-build sees the call's own parameters (the key or prefix); a
            # call retried by botocore counts once (moto answers at once: none is).
            self.events.register("before-parameter-build", COUNTS.on_params)
            self.events.register("after-call", COUNTS.on_response)

    aioboto3.Session = CountingSession


@contextlib.contextmanager
def watcher_before_issue_11() -> Iterator[None]:
    """The watcher as it was: 32 HEADs, and the task states AwsRun tells ignored."""
    from aioknot import _watch

    head_poll_max = _watch.HEAD_POLL_MAX
    names = ("queued", "started", "ended")
    originals = {name: getattr(_watch.ResultWatcher, name) for name in names}

    def ignored(self: Any, first: int, count: int) -> None:
        return None

    _watch.HEAD_POLL_MAX = 32
    for name in names:
        setattr(_watch.ResultWatcher, name, ignored)
    try:
        yield
    finally:
        _watch.HEAD_POLL_MAX = head_poll_max
        for name, method in originals.items():
            setattr(_watch.ResultWatcher, name, method)


# -- one map --------------------------------------------------------------------------------


@dataclass
class Measured:
    mode: str
    results: int
    result_requests: Counter[str]
    head_404: int
    batch: Counter[str]
    first_seconds: float
    all_seconds: float
    after_first_succeeded: float | None  # first result in hand minus first child's stoppedAt
    after_first_stored: float | None  # first result in hand minus first record's LastModified

    @property
    def per_result(self) -> float:
        return sum(self.result_requests.values()) / self.results


def _client(service: str, url: str) -> Any:
    import boto3

    return boto3.client(
        service,
        endpoint_url=url,
        region_name=FAKE_CREDENTIALS["AWS_DEFAULT_REGION"],
        aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


def first_stopped_at(url: str, job_ids: list[str], inputs: int) -> float | None:
    """When the first child of these jobs stopped (epoch seconds), from moto's DescribeJobs."""
    batch = _client("batch", url)
    ids = list(job_ids) + [f"{job}:{i}" for job in job_ids for i in range(inputs)]
    stopped = []
    for start in range(0, len(ids), 100):
        for job in batch.describe_jobs(jobs=ids[start : start + 100])["jobs"]:
            if job.get("status") == "SUCCEEDED" and job.get("stoppedAt"):
                stopped.append(job["stoppedAt"] / 1000)
    batch.close()
    return min(stopped) if stopped else None


def first_stored_at(url: str, bucket: str, run_id: str) -> float | None:
    """When the run's first record was stored (epoch seconds), from the objects' LastModified."""
    s3 = _client("s3", url)
    stored = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            if run_id in item["Key"] and "/results/" in item["Key"]:
                stored.append(item["LastModified"].timestamp())
    s3.close()
    return min(stored) if stored else None


async def measure(knot: Any, mode: str, inputs: int, url: str) -> Measured:
    COUNTS.results.clear()
    COUNTS.batch.clear()
    COUNTS.head_404 = 0
    started = COUNTS.since = time.monotonic()
    with watcher_before_issue_11() if mode == "before" else contextlib.nullcontext():
        run = await knot.map(range(inputs))
        first: float | None = None
        first_wall = 0.0
        values = []
        async for value in run:
            if first is None:
                first, first_wall = time.monotonic() - started, time.time()
                COUNTS._say("first result")
            values.append(value)
        everything = time.monotonic() - started
    assert sorted(values) == sorted(task_value(i) for i in range(inputs)), values
    job_ids = list(run.backend_run.job_ids)
    stopped = await asyncio.to_thread(first_stopped_at, url, job_ids, inputs)
    bucket = knot.store.url.removeprefix("s3://").split("/")[0]
    stored = await asyncio.to_thread(first_stored_at, url, bucket, run.id)
    return Measured(
        mode=mode,
        results=inputs,
        result_requests=Counter(COUNTS.results),
        head_404=COUNTS.head_404,
        batch=Counter(COUNTS.batch),
        first_seconds=first or 0.0,
        all_seconds=everything,
        after_first_succeeded=None if stopped is None else first_wall - stopped,
        after_first_stored=None if stored is None else first_wall - stored,
    )


def task_value(x: int) -> int:
    return x * x


def report(measured: Measured) -> None:
    r = measured.result_requests
    lag = measured.after_first_succeeded
    found = measured.after_first_stored
    print(
        f"  {measured.mode:6}: {measured.per_result:.2f} requests/result "
        f"(HEAD {r['HeadObject']}, of them 404: {measured.head_404}; LIST {r['ListObjectsV2']}; "
        f"GET {r['GetObject']}); Batch DescribeJobs {measured.batch['DescribeJobs']}, "
        f"ListJobs {measured.batch['ListJobs']}; first result {measured.first_seconds:.1f} s "
        f"({'?' if found is None else f'{found:+.1f}'} s after the first record was stored, "
        f"{'?' if lag is None else f'{lag:+.1f}'} s after moto said a child SUCCEEDED), "
        f"all {measured.all_seconds:.1f} s",
        flush=True,
    )


async def main(inputs: int, rounds: int, modes: list[str]) -> int:
    stack = await asyncio.to_thread(ensure_container_stack)
    server = start_moto_server(
        {
            "DOCKER_HOST": stack.docker_host,
            "MOTO_DOCKER_NETWORK_MODE": "host",
            "DOCKER_CONFIG": stack.docker_config,
        }
    )
    home = tempfile.mkdtemp(prefix="aioknot-bench-batch-")
    os.environ.update(FAKE_CREDENTIALS)
    os.environ["AWS_ENDPOINT_URL"] = server.url
    os.environ["AIOKNOT_HOME"] = home
    os.environ.pop("AWS_PROFILE", None)
    count_every_session()
    if COUNTS.trace:
        trace_the_watcher()
    import aioknot
    from aioknot._backends.aws import options as aws_options

    # The ECS agent sets AWS_CONTAINER_CREDENTIALS_* on AWS; moto has no agent, so the
    # stand-in endpoint goes through env=, which refuses the variable from users.
    aws_options.CREDENTIAL_VARIABLES = aws_options.CREDENTIAL_VARIABLES - {
        "AWS_CONTAINER_CREDENTIALS_FULL_URI"
    }
    measured: list[Measured] = []
    try:
        with job_role_endpoint() as credentials:
            options = knot_options(stack, REPOSITORY, credentials)
            async with aioknot.AsyncKnot(task, name=KNOT, **options) as knot:
                print(f"{inputs} inputs of 1-3 s on moto's Batch with real containers", flush=True)
                # A first map builds and pushes the image and starts the stack: not measured.
                warm = await knot.map(range(2))
                await warm.gather()
                for _ in range(rounds):
                    for mode in modes:
                        measured.append(await measure(knot, mode, inputs, server.url))
                        report(measured[-1])
    finally:
        stop_moto_server(server)
    checks = Checks()
    after = [m for m in measured if m.mode == "after"]
    before = [m for m in measured if m.mode == "before"]
    per_result = statistics.median(m.per_result for m in after) if after else math.inf
    if after and before:
        first_after = statistics.median(m.first_seconds for m in after)
        first_before = statistics.median(m.first_seconds for m in before)
        print(
            "\nmedian requests/result: before "
            f"{statistics.median(m.per_result for m in before):.2f}, after {per_result:.2f}; "
            f"time to first result: before {first_before:.1f} s, after {first_after:.1f} s "
            f"(ratio {first_after / first_before:.2f}; the containers' start varies run to "
            "run)"
        )
        lags = {
            mode: [m.after_first_stored for m in group if m.after_first_stored is not None]
            for mode, group in (("before", before), ("after", after))
        }
        if lags["before"] and lags["after"]:
            print(
                "median lag of the first result behind the first stored record: before "
                f"{statistics.median(lags['before']):+.1f} s, after "
                f"{statistics.median(lags['after']):+.1f} s"
            )
    checks.check(
        f"at most {MAX_REQUESTS_PER_RESULT} client requests per result on Batch "
        f"(measured {per_result:.2f})",
        per_result <= MAX_REQUESTS_PER_RESULT,
    )
    return checks.report()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--trace", action="store_true", help="print requests as they go")
    parser.add_argument(
        "--modes", default="before,after", help="which watchers, in turn (before,after)"
    )
    arguments = parser.parse_args()
    COUNTS.trace = arguments.trace
    modes = arguments.modes.split(",")
    sys.exit(asyncio.run(main(arguments.inputs, arguments.rounds, modes)))
