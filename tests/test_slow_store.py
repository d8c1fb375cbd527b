"""A slow S3 costs a run time, never requests (issue 11).

How a run's inputs are cut into chunks must not depend on how long the store takes to answer:
a chunk sized by the time of its S3 requests rather than its inputs' becomes one input when
requests are slow, and every input then costs a chunk's requests. Measured before that was
mended: 10,000 tiny inputs with 30 ms per request took 40,460 requests and 423 s.

Here every S3 request of the client and of the worker processes goes through the fault proxy,
which holds it 30 ms; its rules count the requests by what they were for. The run is stopped
as soon as it has spent its budget, so a regression fails in seconds rather than taking
minutes. benchmarks/s3_slow_store.py measures the issue's own sizes (10,000 and 50,000).
"""

from __future__ import annotations

import os

import anyio
import boto3
import pytest
from helpers.processes import wait_for_no_workers
from helpers.waiting import poll_async
from infra.fault_proxy import Fault, FaultProxy
from infra.moto import MotoServer

from aioknot import AsyncKnot

pytestmark = pytest.mark.usefixtures("aioknot_home")

INPUTS = 2_000
DELAY_SECONDS = 0.03
# The budget for 2,000 tiny inputs, on the line through the two targets (10,000
# inputs: 200 requests, 50,000: 400, i.e. 150 + inputs / 200). What a run needs:
#   * fixed: opening the knot (HEAD bucket; the sweep's LIST, GET and PUT of its marker), the
#     function (HEAD, PUT), 3 manifest PUTs, one function GET per worker process (2), and
#     the watcher's HEADs and LISTs while few results are outstanding (~20): ~30;
#   * per segment (2,000 inputs are 7: 16, 32, ... 512, then the rest): its PUT, and per chunk
#     two ranged GETs, a record PUT and the client's GET of it; a segment is one chunk, or up
#     to three where the run's tail is shared out over the workers: 1 + 3 x 4 = 13 at most.
# 30 + 7 x 13 = 121 at most; measured 72 (the same with no delay), 58 since the watcher LISTs
# first. With every chunk one input, as under the bug, each input costs 4 requests: over
# 8,000 (a chunk timed with its S3 requests, as the bug did, passed 160 within seconds).
BUDGET = 160


def square(x: int) -> int:
    return x * x


async def test_slow_s3_requests_do_not_multiply_the_requests_of_a_run(
    aws: MotoServer, fault_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3 = boto3.client("s3", endpoint_url=aws.url, region_name="us-east-1")
    try:
        s3.create_bucket(Bucket="slow-store")  # straight at moto: setup is not under test
    finally:
        s3.close()
    monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.url)  # the workers' endpoint too
    # One rule per kind of request, each holding it DELAY_SECONDS: the first that matches
    # delays the request and counts it (`Fault.injected`); the last takes everything else.
    rules = {
        what: fault_proxy.add(
            Fault(
                kind="delay",
                service="s3",
                operation=operation,
                key_contains=key,
                seconds=DELAY_SECONDS,
            )
        )
        for what, operation, key in (
            ("segment PUTs (client)", "PUT", "/inputs/"),
            ("segment GETs (workers, 2 per chunk)", "GET", "/inputs/"),
            ("record PUTs (workers)", "PUT", "/results/"),
            ("record GETs (client)", "GET", "/results/"),
            ("record HEADs (client)", "HEAD", "/results/"),
            ("LISTs (client)", "LIST", None),
            ("everything else", None, None),
        )
    }

    def spent() -> int:
        return sum(rule.injected for rule in rules.values())

    values: list[int] | None = None
    over_budget = False
    async with AsyncKnot(
        square, name="slow-store", backend="local", bucket="s3://slow-store/data"
    ) as knot:
        run = await knot.map(range(INPUTS))

        async def gather() -> None:
            nonlocal values
            values = await run.gather()
            group.cancel_scope.cancel()

        async with anyio.create_task_group() as group:
            group.start_soon(gather)
            # Stop as soon as the budget is spent: a regression costs ~4 requests per input,
            # which at 30 ms each would take minutes to finish.
            over_budget = await poll_async(lambda: spent() > BUDGET, timeout=60)
            group.cancel_scope.cancel()
        if values is None:
            await run.cancel()
    breakdown = ", ".join(f"{what}: {rule.injected}" for what, rule in rules.items())
    print(f"\n{INPUTS} inputs, {DELAY_SECONDS * 1000:g} ms per S3 request: {spent()} requests")
    print(f"  {breakdown}")
    assert values is not None, (
        f"the run had spent {spent()} S3 requests, over its budget of {BUDGET}, before it "
        f"finished ({breakdown})"
        if over_budget
        else f"the run did not finish within 60 s ({spent()} S3 requests: {breakdown})"
    )
    assert values == [x * x for x in range(INPUTS)]
    assert spent() <= BUDGET, f"{spent()} S3 requests, over the budget of {BUDGET} ({breakdown})"
    assert wait_for_no_workers(os.getpid()) == []  # the knot stopped its workers
