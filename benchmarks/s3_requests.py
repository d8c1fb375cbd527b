"""How many S3 requests does a run of many small inputs cost? (local backend, S3 store)

Two scenarios, each run with ``AsyncKnot(f, backend="local", bucket="s3://<bucket>/bench")``
against a moto server this script starts in its own process:

* ``instant``: ``--inputs`` (default 10,000) inputs of ``x + 1``. Workers group the records
  of tiny tasks, so results are few objects.
* ``3ms``: ``--slow-inputs`` (default 1,500) inputs that sleep ``--slow-ms`` (3) first. A task
  of 2 ms or more gets its own result object, so every result costs the client a GET and
  the discovery budget of the 1.2-requests-per-result target is what is left: 0.2.

Every request the server receives is recorded (see ``_common.CountingMotoServer``): the
client's (aiobotocore) and the worker processes' (boto3), told apart by User-Agent. The
client's requests are also counted with botocore ``before-send`` hooks on the store's client,
as a cross-check of the server's record.

Then a second knot re-attaches the finished run (``knot.attach(run_id)``) and gathers it:
without backend hints, that is the pure store-polling path (LIST sweeps and GETs).

Baseline, measured in the same run: this moto server's request rate for single small-object
requests from one aiobotocore client, and the naive protocol (one object per input and per
result: a PUT per input, a worker GET per input, a result PUT per input, and at least a HEAD
and a GET per result on the client) priced at that rate.

Targets (the script exits 1 when one is missed):
  * at most 100 PUTs store the inputs;
  * the workers spend at most 2 ranged GETs of input data per input;
  * the client spends at most 1.2 requests (HEAD + LIST + GET) per result to discover and fetch
    results, with backend hints and on the re-attached (store-polling) path alike.

    python benchmarks/s3_requests.py [--inputs N] [--slow-inputs N] [--slow-ms MS] [--workers W]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Checks, CountingMotoServer, Request  # noqa: E402

BUCKET = "aioknot-bench"
PREFIX = "bench"
KNOT = "bench-s3"
NAIVE_REQUESTS_PER_INPUT = 5  # input PUT, worker GET, result PUT, client HEAD, client GET

MAX_INPUT_PUTS = 100
MAX_RANGED_GETS_PER_INPUT = 2.0
MAX_CLIENT_REQUESTS_PER_RESULT = 1.2


def make_task(seconds: float) -> Callable[[int], int]:
    """The benchmark's function: ``x + 1``, after ``seconds`` of sleep (0: none)."""

    def task(x: int) -> int:
        if seconds:
            time.sleep(seconds)
        return x + 1

    return task


def kind(request: Request) -> str:
    """What a request was for: ``"<METHOD> <object kind>"``."""
    path = request.path
    if "list-type=2" in request.query:
        return "LIST results" if "results" in request.query else "LIST"
    if "/inputs/" in path:
        what = "input segment"
    elif "/results/" in path:
        what = "result"
    elif path.endswith("/manifest.json"):
        what = "manifest"
    elif "/functions/" in path:
        what = "function"
    elif path.strip("/") == BUCKET:
        what = "bucket"
    else:
        what = "other"
    ranged = " (ranged)" if request.range else ""
    return f"{request.method} {what}{ranged}"


def tally(requests: list[Request]) -> tuple[Counter[str], Counter[str]]:
    client: Counter[str] = Counter()
    workers: Counter[str] = Counter()
    for request in requests:
        (client if request.from_client else workers)[kind(request)] += 1
    return client, workers


def print_tally(title: str, counts: Counter[str], per: int) -> None:
    print(f"  {title}: {sum(counts.values())} requests")
    for name, count in sorted(counts.items()):
        print(f"    {name:<28} {count:>7}   {count / per:8.4f} per input")


def count_client_requests(client: Any) -> Counter[str]:
    """Count every request the aiobotocore client sends (retries included), by operation."""
    counts: Counter[str] = Counter()

    def before_send(event_name: str, **_: Any) -> None:
        counts[event_name.rsplit(".", 1)[-1]] += 1

    client.meta.events.register("before-send.s3.*", before_send)
    return counts


async def measure_request_rate(endpoint: str, requests: int = 400) -> float:
    """Small-object PUTs then HEADs per second from one aiobotocore client (32 at a time)."""
    import aioboto3
    from botocore.config import Config

    session = aioboto3.Session()
    config = Config(max_pool_connections=32)
    async with session.client("s3", endpoint_url=endpoint, config=config) as client:
        limit = asyncio.Semaphore(32)

        async def one(call: Callable[..., Any], key: str, **extra: Any) -> None:
            async with limit:
                await call(Bucket=BUCKET, Key=key, **extra)

        keys = [f"baseline/{i:06d}" for i in range(requests // 2)]
        began = time.perf_counter()
        await asyncio.gather(*(one(client.put_object, key, Body=b"x" * 64) for key in keys))
        await asyncio.gather(*(one(client.head_object, key) for key in keys))
        elapsed = time.perf_counter() - began
    return 2 * len(keys) / elapsed


async def scenario(
    server: CountingMotoServer,
    checks: Checks,
    *,
    label: str,
    inputs: int,
    task_seconds: float,
    workers: int | None,
    rate: float,
) -> None:
    """One run of ``inputs`` tasks, then its re-attachment; prints figures, adds checks."""
    from aioknot import AsyncKnot

    task = make_task(task_seconds)
    name = f"bench-s3-{label}"
    bucket = f"s3://{BUCKET}/{PREFIX}"
    server.reset()

    # -- the run: backend hints tell the client which result objects were written ----------
    began = time.perf_counter()
    async with AsyncKnot(task, name=name, backend="local", bucket=bucket, workers=workers) as knot:
        assert knot._store is not None
        hooked = count_client_requests(knot._store.client)  # type: ignore[attr-defined]
        run = await knot.map(range(inputs))
        stored = time.perf_counter() - began
        values = await run.gather()
        wall = time.perf_counter() - began
    if values != [x + 1 for x in range(inputs)]:
        raise SystemExit(f"{label}: wrong results from the run")
    requests = server.requests()
    client, worker = tally(requests)
    server.reset()

    # -- the same run re-attached from a second knot: the pure store-polling path ---------
    began = time.perf_counter()
    async with AsyncKnot(task, name=name, backend="local", bucket=bucket, workers=workers) as again:
        attached = await again.attach(run.id)
        values_again = await attached.gather()
        attach_wall = time.perf_counter() - began
    if values_again != values:
        raise SystemExit(f"{label}: wrong results from the re-attached run")
    attach_client, attach_worker = tally(server.requests())

    # -- figures -------------------------------------------------------------------------
    total = len(requests)
    input_puts = client["PUT input segment"]
    result_puts = worker["PUT result"]
    ranged_gets = worker["GET input segment (ranged)"]

    def per_result(counts: Counter[str]) -> tuple[int, str]:
        head, listing, get = (counts[k] for k in ("HEAD result", "LIST results", "GET result"))
        text = (
            f"{head / inputs:.4f} / {listing / inputs:.4f} / {get / inputs:.4f} "
            f"= {(head + listing + get) / inputs:.4f}"
        )
        return head + listing + get, text

    discover, discover_text = per_result(client)
    attach_discover, attach_text = per_result(attach_client)
    naive_requests = NAIVE_REQUESTS_PER_INPUT * inputs
    naive_seconds = naive_requests / rate
    what = f"sleeps {task_seconds * 1000:g} ms, then x + 1" if task_seconds else "x + 1"

    print(f"\n=== scenario {label}: {inputs} inputs, the function {what} ===")
    print(f"run {run.id}: inputs stored+submitted in {stored:.2f} s, all results in {wall:.2f} s")
    print(f"  results/s: {inputs / wall:,.0f}")
    print("requests the moto server received during the run:")
    print_tally("client (aiobotocore)", client, inputs)
    print_tally("workers (boto3)", worker, inputs)
    print(f"  total: {total} requests ({total / inputs:.4f} per input)")
    hooked_text = ", ".join(f"{op} {n}" for op, n in sorted(hooked.items()))
    print(
        f"client requests seen by before-send hooks: {sum(hooked.values())} ({hooked_text}); "
        f"the server saw {sum(client.values())} (+1: HeadBucket as the store opened)"
    )
    print("headline figures:")
    print(f"  PUTs of input segments:           {input_puts}")
    print(
        f"  PUTs of results (worker):         {result_puts} "
        f"({inputs / max(result_puts, 1):.1f} records per object)"
    )
    print(f"  worker ranged GETs per input:     {ranged_gets / inputs:.4f} ({ranged_gets} total)")
    print(f"  client HEAD/LIST/GET per result:  {discover_text}")
    print(f"  total requests:                   {total}")
    print(f"  wall time:                        {wall:.2f} s")
    print(f"re-attached from a second knot (store polling only), {attach_wall:.2f} s:")
    print_tally("client (aiobotocore)", attach_client, inputs)
    if attach_worker:
        print_tally("workers (boto3)", attach_worker, inputs)
    print(f"  client HEAD/LIST/GET per result:  {attach_text}")
    print(
        f"baseline: the naive protocol ({NAIVE_REQUESTS_PER_INPUT} requests per input) = "
        f"{naive_requests} requests, ~{naive_seconds:.1f} s at the measured {rate:,.0f} req/s"
    )
    print(
        f"  aioknot / naive: requests {total / naive_requests:.4f} "
        f"({naive_requests / total:.1f}x fewer), wall time {wall / naive_seconds:.3f}"
    )

    checks.check(
        f"{label}: PUTs storing the inputs {input_puts} <= {MAX_INPUT_PUTS}",
        input_puts <= MAX_INPUT_PUTS,
    )
    checks.check(
        f"{label}: worker ranged GETs per input {ranged_gets / inputs:.4f} "
        f"<= {MAX_RANGED_GETS_PER_INPUT}",
        ranged_gets / inputs <= MAX_RANGED_GETS_PER_INPUT,
    )
    checks.check(
        f"{label}: client requests per result, hinted run {discover / inputs:.4f} "
        f"<= {MAX_CLIENT_REQUESTS_PER_RESULT}",
        discover / inputs <= MAX_CLIENT_REQUESTS_PER_RESULT,
    )
    checks.check(
        f"{label}: client requests per result, re-attached (store polling) "
        f"{attach_discover / inputs:.4f} <= {MAX_CLIENT_REQUESTS_PER_RESULT}",
        attach_discover / inputs <= MAX_CLIENT_REQUESTS_PER_RESULT,
    )


async def bench(arguments: argparse.Namespace, server: CountingMotoServer) -> int:
    checks = Checks()
    rate = await measure_request_rate(server.url)
    print("aioknot S3 requests: local backend, S3 store on a moto server (own process)")
    print(
        f"baseline (measured now): this moto server answers {rate:,.0f} small-object "
        "requests/s (PUT, HEAD) from one aiobotocore client, 32 at a time"
    )
    await scenario(
        server,
        checks,
        label="instant",
        inputs=arguments.inputs,
        task_seconds=0.0,
        workers=arguments.workers,
        rate=rate,
    )
    if arguments.slow_inputs:
        await scenario(
            server,
            checks,
            label=f"{arguments.slow_ms:g}ms",
            inputs=arguments.slow_inputs,
            task_seconds=arguments.slow_ms / 1000,
            workers=arguments.workers,
            rate=rate,
        )
    return checks.report()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--inputs", type=int, default=10_000, help="instant tasks (10,000)")
    parser.add_argument(
        "--slow-inputs",
        type=int,
        default=1_500,
        help="tasks of --slow-ms each, one record per input (1,500; 0 skips them)",
    )
    parser.add_argument("--slow-ms", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=None, help="default: os.cpu_count()")
    arguments = parser.parse_args()

    with CountingMotoServer() as server:
        server.use_for_s3(BUCKET)
        return asyncio.run(bench(arguments, server))


if __name__ == "__main__":
    sys.exit(main())
