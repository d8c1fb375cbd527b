"""How many S3 requests does a run cost when every S3 request is slow? (local backend, S3 store)

Issue 11: on the S3 store, chunk sizing once counted the worker's S3 requests as the
function's time, so with requests slower than ~17 ms every chunk became one input: 10,000
tiny inputs took 40,460 requests and 423 s. Each run here is
``AsyncKnot(square, backend="local", bucket="s3://<bucket>/slow")`` mapping ``x * x`` over
``--inputs`` inputs (10,000 and 50,000 by default), from opening the knot to every result in
hand, against a moto server in its own process (``_common.CountingMotoServer``) that holds
every request ``--delay-ms`` (30) before answering: the client and the worker processes alike
(the workers are pointed at the same endpoint), many requests held side by side.

The server records every request it receives, so the count is everything the run cost: the
client's (aiobotocore) and the workers' (boto3), told apart by User-Agent, by operation (PUT,
GET, LIST, HEAD, ...) and by what they were for (input segments, result records, the
manifest, the function, ...). Also shown: how many chunks the workers read each segment in
(two ranged GETs per chunk: its offsets, then its inputs), how many inputs each result record
held, and the client's GETs of records.

Baseline, measured in the same run: the same map with no delay (requests and seconds).

Targets (the script exits 1 when one is missed): 10,000 inputs in at most 200 requests in
all, 50,000 in at most 400 (other sizes: the line through those two, 150 + inputs / 200).

    python benchmarks/s3_slow_store.py [--inputs N [N ...]] [--delay-ms MS] [--workers W]
                                       [--give-up-after S]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from urllib.parse import parse_qs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Checks, CountingMotoServer, Request  # noqa: E402

BUCKET = "aioknot-bench"
PREFIX = "slow"
# The targets: requests in all for 10,000 and 50,000 inputs.
TARGETS = {10_000: 200, 50_000: 400}


def square(x: int) -> int:
    return x * x


def budget(inputs: int) -> int:
    """The request target for ``inputs``: the issue's, else the line through its two."""
    return TARGETS.get(inputs, 150 + inputs // 200)


def operation(request: Request) -> str:
    """The S3 operation as the fault proxy names it: LIST for a bucket listing, else the
    HTTP method."""
    parts = [part for part in request.path.split("/") if part]
    if request.method == "GET" and len(parts) <= 1 and "list-type" in request.query:
        return "LIST"
    return request.method


def purpose(request: Request) -> str:
    """What the request was for (the kind of object, or the prefix listed)."""
    path = request.path
    if operation(request) == "LIST":
        listed = parse_qs(request.query).get("prefix", [""])[0]
        for part in ("results", "logs", "inputs", "runs"):
            if f"/{part}/" in listed + "/":
                return f"{part} (listing)"
        return "listing"
    for marker, what in (
        ("/inputs/", "input segment"),
        ("/results/", "result record"),
        ("/logs/", "log"),
        ("/functions/", "function"),
    ):
        if marker in path:
            return what
    if path.endswith("/manifest.json"):
        return "manifest"
    if path.endswith("/swept.json"):
        return "sweep marker"
    if path.strip("/") == BUCKET:
        return "bucket"
    return "other"


@dataclass
class Measured:
    inputs: int
    delay: float
    seconds: float
    finished: bool
    requests: list[Request]

    @property
    def total(self) -> int:
        return len(self.requests)


async def one_run(
    server: CountingMotoServer,
    *,
    inputs: int,
    delay: float,
    workers: int | None,
    give_up_after: float,
) -> Measured:
    """Open a knot, map ``square`` over ``inputs`` inputs and gather them, every S3 request
    held ``delay`` seconds; counted from the knot's opening to its closing."""
    from aioknot import AsyncKnot

    name = f"slow-{inputs}-{int(delay * 1000)}ms"
    server.reset()
    server.set_delay(delay)
    finished = False
    began = time.perf_counter()
    try:
        async with AsyncKnot(
            square, name=name, backend="local", bucket=f"s3://{BUCKET}/{PREFIX}", workers=workers
        ) as knot:
            run = await knot.map(range(inputs))
            values: list[int] | None = None
            try:
                values = await asyncio.wait_for(run.gather(), timeout=give_up_after)
            except TimeoutError:
                await run.cancel()
            if values is not None:
                if values != [x * x for x in range(inputs)]:
                    raise SystemExit(f"{name}: wrong results")
                finished = True
        seconds = time.perf_counter() - began
    finally:
        server.set_delay(0.0)
    return Measured(inputs, delay, seconds, finished, server.requests())


def print_breakdown(measured: Measured) -> None:
    """Requests by side, operation and purpose; chunks per segment; inputs per record."""
    table: Counter[tuple[str, str, str]] = Counter()
    for request in measured.requests:
        side = "client" if request.from_client else "workers"
        table[(side, operation(request), purpose(request))] += 1
    for side in ("client", "workers"):
        rows = {key: count for key, count in table.items() if key[0] == side}
        print(f"    {side}: {sum(rows.values())} requests")
        for (_, op, what), count in sorted(rows.items(), key=lambda row: (row[0][1], row[0][2])):
            print(f"      {op:<6} {what:<22} {count:>7}")
    by_operation = Counter(operation(request) for request in measured.requests)
    print("    by operation: " + ", ".join(f"{op} {n}" for op, n in sorted(by_operation.items())))

    # Chunks per segment: each chunk reads its segment with two ranged GETs.
    segment_puts = sum(
        1
        for r in measured.requests
        if r.from_client and r.method == "PUT" and purpose(r) == "input segment"
    )
    reads: defaultdict[str, int] = defaultdict(int)
    for request in measured.requests:
        if not request.from_client and request.method == "GET" and "/inputs/" in request.path:
            reads[request.path] += 1
    chunks = sum(reads.values()) / 2
    split = sum(1 for count in reads.values() if count > 2)
    most = max(reads.values(), default=0) // 2
    print(
        f"    segments stored: {segment_puts}; read in {chunks:g} chunks "
        f"({chunks / max(len(reads), 1):.2f} per segment read; {split} segments read by more "
        f"than one chunk, at most {most} chunks for one segment)"
    )
    records = [
        r
        for r in measured.requests
        if not r.from_client and r.method == "PUT" and purpose(r) == "result record"
    ]
    gets = sum(
        1
        for r in measured.requests
        if r.from_client and r.method == "GET" and purpose(r) == "result record"
    )
    per_record = measured.inputs / max(len(records), 1)
    print(
        f"    result records written: {len(records)} ({per_record:.1f} inputs each); "
        f"fetched by the client: {gets} GETs"
    )


async def bench(arguments: argparse.Namespace, server: CountingMotoServer) -> int:
    checks = Checks()
    delay = arguments.delay_ms / 1000
    print("aioknot on a slow S3: local backend, S3 store on a moto server (own process)")
    print(
        f"every S3 request held {arguments.delay_ms:g} ms; workers: "
        f"{arguments.workers or os.cpu_count()}; counted from opening the knot to its closing"
    )
    for inputs in arguments.inputs:
        baseline = await one_run(
            server, inputs=inputs, delay=0.0, workers=arguments.workers, give_up_after=600
        )
        slow = await one_run(
            server,
            inputs=inputs,
            delay=delay,
            workers=arguments.workers,
            give_up_after=arguments.give_up_after,
        )
        target = budget(inputs)
        print(f"\n=== {inputs:,} inputs of x * x ===")
        for label, measured in (("no delay (baseline)", baseline), (f"{delay * 1000:g} ms", slow)):
            state = "" if measured.finished else " (GAVE UP: not finished, counts so far)"
            print(
                f"  {label}: {measured.total} requests in {measured.seconds:.2f} s "
                f"({measured.total / inputs:.4f} per input){state}"
            )
            print_breakdown(measured)
        print(
            f"  {delay * 1000:g} ms vs target: {slow.total} / {target} requests = "
            f"{slow.total / target:.2f}"
        )
        print(
            f"  {delay * 1000:g} ms vs no delay: requests {slow.total / baseline.total:.2f}x, "
            f"seconds {slow.seconds / baseline.seconds:.2f}x"
        )
        checks.check(
            f"{inputs:,} inputs, {delay * 1000:g} ms per request: {slow.total} requests "
            f"<= {target}" + ("" if slow.finished else " (and the run did not finish)"),
            slow.finished and slow.total <= target,
        )
    return checks.report()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--inputs", type=int, nargs="+", default=[10_000, 50_000], help="(10,000 50,000)"
    )
    parser.add_argument("--delay-ms", type=float, default=30.0, help="per S3 request (30)")
    parser.add_argument("--workers", type=int, default=None, help="default: os.cpu_count()")
    parser.add_argument(
        "--give-up-after",
        type=float,
        default=900.0,
        help="seconds a slow run may take before it is cancelled and counted as missed (900)",
    )
    arguments = parser.parse_args()

    with CountingMotoServer() as server:
        server.use_for_s3(BUCKET)
        return asyncio.run(bench(arguments, server))


if __name__ == "__main__":
    sys.exit(main())
