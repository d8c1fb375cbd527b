"""Does a run on AWS Batch survive transient faults, and how fast does it report mass failure?

Two scenarios, ``AsyncKnot(f, backend="aws", image=<prebuilt>)`` against moto servers this
script starts in their own processes, every client request going through the fault-injecting
proxy of tests/infra/fault_proxy.py (which also counts them):

* ``faults``: ``--inputs`` (2,000) inputs, once without faults (the baseline) and then
  ``--runs`` (3) times with ~10% of every Batch and S3 request failing transiently (4%
  throttled, 3% answered 500, 3% connections reset). Figures: results lost (target 0), runs
  failed (target 0), requests per run against the fault-free run in the same invocation.
* ``all-fail``: ``--fail-inputs`` (20,000) inputs whose children all FAIL
  (``MOTO_SIMPLE_BATCH_FAIL_AFTER=0``). Figures: time until every input has its outcome
  (target: 2 minutes) and the requests it took (target: a few hundred, here at most 300).

moto runs Batch in *simple mode*: no container runs, a job is SUCCEEDED (or FAILED) the moment
it is submitted. In ``faults`` the script therefore plays the worker's part (tests/helpers/
played_worker.py, as the fault tests do): right before each SubmitJob it writes every child's
record with the worker's own encoder, straight to moto (not through the proxy: the workers' own
retries are not what this measures). So the figures are the client's: its submitter, its Batch
watcher and its store polling, under faults.

    python benchmarks/aws_faults.py [--inputs N] [--runs N] [--fail-inputs N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import FAKE_CREDENTIALS, Checks  # noqa: E402  (puts tests/ on the path)
from helpers.aws import IMAGE  # noqa: E402
from helpers.played_worker import PlayedWorker, playing, square  # noqa: E402
from infra.fault_proxy import Fault, FaultProxy  # noqa: E402
from infra.moto import start_moto_server, stop_moto_server  # noqa: E402

# ~10% of requests fail: each rule draws on its own, in this order.
FAULT_MIX = (("throttle", 0.04), ("500", 0.03), ("reset", 0.03))
SERVICES = ("batch", "s3")

MAX_ALL_FAIL_SECONDS = 120.0
MAX_ALL_FAIL_REQUESTS = 300


# -- figures --------------------------------------------------------------------------------


def requests_of(proxy: FaultProxy, service: str | None = None) -> int:
    return sum(n for (s, _), n in proxy.counts.items() if service is None or s == service)


def by_operation(proxy: FaultProxy, service: str) -> str:
    counts = Counter({op: n for (s, op), n in proxy.counts.items() if s == service})
    return ", ".join(f"{op} {n}" for op, n in sorted(counts.items())) or "none"


def faults_of(proxy: FaultProxy, service: str) -> int:
    return sum(n for (s, _, _), n in proxy.faults.items() if s == service)


async def one_run(
    knot: Any, proxy: FaultProxy, inputs: int, *, label: str
) -> tuple[int, bool, float, dict[str, int]]:
    """One map + gather; returns (inputs lost or wrong, run failed, seconds, requests)."""
    from aioknot import KnotError

    proxy.reset_counts()
    began = time.perf_counter()
    failed, lost = False, 0
    try:
        run = await knot.map(range(inputs))
        outcomes = await run.gather(return_exceptions=True)
        lost = sum(1 for i, o in enumerate(outcomes) if o != square(i))
        if lost:
            example = next(o for i, o in enumerate(outcomes) if o != square(i))
            print(f"  {label}: {lost} inputs without their result, e.g. {example!r}")
    except KnotError as error:
        failed, lost = True, inputs
        print(f"  {label}: the run FAILED: {type(error).__name__}: {error}")
    seconds = time.perf_counter() - began
    requests = {service: requests_of(proxy, service) for service in SERVICES}
    requests["all"] = requests_of(proxy)
    faults = {service: faults_of(proxy, service) for service in SERVICES}
    print(
        f"  {label}: {seconds:6.1f} s, {inputs / seconds:6.0f} results/s, requests: "
        f"batch {requests['batch']} ({faults['batch']} faulted: {by_operation(proxy, 'batch')}), "
        f"s3 {requests['s3']} ({faults['s3']} faulted), all {requests['all']}"
    )
    return lost, failed, seconds, requests


async def faults_scenario(arguments: argparse.Namespace, checks: Checks) -> None:
    from aioknot import AsyncKnot

    server = start_moto_server()
    try:
        server.configure({"batch": {"use_docker": False}})
        with FaultProxy(upstream=server.url) as proxy, playing(PlayedWorker(server.url)):
            os.environ["AWS_ENDPOINT_URL"] = proxy.url
            inputs = arguments.inputs
            print(
                f"\n=== faults: {inputs} inputs, fault-free, then ~10% of Batch and S3 faulted ==="
            )
            async with AsyncKnot(square, name="bench-faults", backend="aws", image=IMAGE) as knot:
                await one_run(knot, proxy, 2, label="warm-up (prepares the knot)")
                lost, failed, seconds, baseline = await one_run(
                    knot, proxy, inputs, label="fault-free"
                )
                checks.check(f"fault-free: {lost} results lost == 0", lost == 0 and not failed)
                for service in SERVICES:
                    for kind, rate in FAULT_MIX:
                        proxy.add(Fault(kind, service=service, rate=rate))
                total_lost = total_failed = 0
                extra: list[float] = []
                times: list[float] = []
                for number in range(arguments.runs):
                    lost, failed, took, requests = await one_run(
                        knot, proxy, inputs, label=f"faulted run {number + 1}"
                    )
                    total_lost += lost
                    total_failed += failed
                    extra.append(requests["all"] / baseline["all"])
                    times.append(took)
                proxy.clear()
            print(
                f"  faulted runs: {total_lost} results lost, {total_failed} runs failed of "
                f"{arguments.runs}; requests x{min(extra):.2f}..x{max(extra):.2f} the fault-free "
                f"run's ({baseline['all']}); time x{min(times) / seconds:.2f}.."
                f"x{max(times) / seconds:.2f} the fault-free run's ({seconds:.1f} s)"
            )
            checks.check(f"faulted runs: {total_lost} results lost == 0", total_lost == 0)
            checks.check(f"faulted runs: {total_failed} runs failed == 0", total_failed == 0)
    finally:
        stop_moto_server(server)


async def all_fail_scenario(arguments: argparse.Namespace, checks: Checks) -> None:
    from aioknot import AsyncKnot, TaskLost

    inputs = arguments.fail_inputs
    server = start_moto_server({"MOTO_SIMPLE_BATCH_FAIL_AFTER": "0"})
    try:
        server.configure({"batch": {"use_docker": False}})
        with FaultProxy(upstream=server.url) as proxy:  # no faults: it counts
            os.environ["AWS_ENDPOINT_URL"] = proxy.url
            print(f"\n=== all-fail: {inputs} inputs whose children all FAIL (no record) ===")
            async with AsyncKnot(square, name="bench-fail", backend="aws", image=IMAGE) as knot:
                await (await knot.map(range(2))).gather(return_exceptions=True)  # prepares
                proxy.reset_counts()
                began = time.perf_counter()
                run = await knot.map(range(inputs))
                submitted = time.perf_counter() - began
                first_seen: list[float] = []

                async def first_outcome() -> None:
                    async for _ in run.items(return_exceptions=True):
                        first_seen.append(time.perf_counter() - began)
                        return

                first = asyncio.ensure_future(first_outcome())
                outcomes = await run.gather(return_exceptions=True)
                took = time.perf_counter() - began
                await first
                jobs = len(run.backend_run.job_ids)  # type: ignore[union-attr]
            lost = [o for o in outcomes if isinstance(o, TaskLost)]
            with_job = sum(1 for o in lost if o.job_id)
            with_log = sum(1 for o in lost if o.log)
            batch, s3, total = (requests_of(proxy, s) for s in ("batch", "s3", None))
            print(
                f"  {jobs} array jobs; inputs stored and submitted in {submitted:.1f} s; first "
                f"outcome after {first_seen[0] if first_seen else float('nan'):.1f} s; every "
                f"outcome after {took:.1f} s ({took - submitted:.1f} s after map() returned)"
            )
            print(
                f"  {len(lost)} TaskLost, {with_job} with their job id, {with_log} with their "
                "log stream (the first children of each array are described for it)"
            )
            print(f"  requests: {total} in all (from map() on)")
            print(f"    batch {batch}: {by_operation(proxy, 'batch')}")
            print(f"    s3 {s3}: {by_operation(proxy, 's3')}")
            checks.check(
                f"all-fail: {len(lost)} of {inputs} inputs TaskLost with their job id",
                len(lost) == inputs == with_job,
            )
            checks.check(
                f"all-fail: every outcome after {took:.1f} s <= {MAX_ALL_FAIL_SECONDS:g} s",
                took <= MAX_ALL_FAIL_SECONDS,
            )
            checks.check(
                f"all-fail: {total} requests <= {MAX_ALL_FAIL_REQUESTS}",
                total <= MAX_ALL_FAIL_REQUESTS,
            )
    finally:
        stop_moto_server(server)


async def bench(arguments: argparse.Namespace) -> int:
    checks = Checks()
    print("aioknot on AWS Batch under faults: moto servers (own processes), Batch in simple mode")
    print("(no container runs; in 'faults' the script writes each child's record at submit)")
    if arguments.inputs:
        await faults_scenario(arguments, checks)
    if arguments.fail_inputs:
        await all_fail_scenario(arguments, checks)
    return checks.report()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--inputs", type=int, default=2_000, help="faults scenario (2,000)")
    parser.add_argument("--runs", type=int, default=3, help="faulted runs (3)")
    parser.add_argument(
        "--fail-inputs", type=int, default=20_000, help="all-fail scenario (20,000; 0 skips)"
    )
    arguments = parser.parse_args()
    os.environ.update(FAKE_CREDENTIALS)
    os.environ.pop("AWS_PROFILE", None)
    import logging

    logging.getLogger("aioknot").setLevel(logging.ERROR)
    return asyncio.run(bench(arguments))


if __name__ == "__main__":
    sys.exit(main())
