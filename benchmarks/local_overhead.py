"""Local backend overhead against concurrent.futures.ProcessPoolExecutor, in the same run.

Two workloads, each timed cold (start the pool/knot, map, get every result) and warm (a second
map on the already-started pool/knot), with the same worker count:

* 10,000 tiny tasks (``x * x``): pure overhead. Target: within 3x of the process pool.
* 200 tasks of 50 ms sleep: scheduling. Target: within 1.15x (the floor is 200 x 50 ms / workers).

    python benchmarks/local_overhead.py [--tiny 10000] [--sleepy 200] [--repeat 3]

Prints the best of ``--repeat`` runs of each and the ratios; exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable

import aioknot

TINY_TARGET = 3.0
SLEEPY_TARGET = 1.15


def tiny(x: int) -> int:
    return x * x


def sleepy(x: int) -> int:
    time.sleep(0.05)
    return x


def pool_times(func: Callable[[int], int], n: int, workers: int) -> tuple[float, float]:
    chunksize = max(1, math.ceil(n / (workers * 4)))  # what ProcessPoolExecutor users pick
    started = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        expected = [func(i) if func is tiny else i for i in range(n)] if func is tiny else None
        results = list(pool.map(func, range(n), chunksize=chunksize))
        assert expected is None or results == expected
        cold = time.perf_counter() - started
        started = time.perf_counter()
        list(pool.map(func, range(n), chunksize=chunksize))
        warm = time.perf_counter() - started
    return cold, warm


async def knot_times(func: Callable[[int], int], n: int, workers: int) -> tuple[float, float]:
    expected = [func(i) if func is tiny else i for i in range(n)]
    started = time.perf_counter()
    async with aioknot.AsyncKnot(func, backend="local", workers=workers) as knot:
        run = await knot.map(range(n))
        assert await run.gather() == expected
        cold = time.perf_counter() - started
        started = time.perf_counter()
        run = await knot.map(range(n))
        assert await run.gather() == expected
        warm = time.perf_counter() - started
    return cold, warm


def best(samples: list[tuple[float, float]]) -> tuple[float, float]:
    return min(s[0] for s in samples), min(s[1] for s in samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", type=int, default=10_000)
    parser.add_argument("--sleepy", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    workers = os.cpu_count() or 1
    os.environ["AIOKNOT_HOME"] = tempfile.mkdtemp(prefix="aioknot-bench-")
    print(f"workers: {workers}   python {sys.version.split()[0]}")
    failed = False
    for label, func, n, target in (
        ("tiny x*x", tiny, args.tiny, TINY_TARGET),
        ("sleep 50 ms", sleepy, args.sleepy, SLEEPY_TARGET),
    ):
        pool = best([pool_times(func, n, workers) for _ in range(args.repeat)])
        knot = best([asyncio.run(knot_times(func, n, workers)) for _ in range(args.repeat)])
        for phase, p, k in (("cold", pool[0], knot[0]), ("warm", pool[1], knot[1])):
            ratio = k / p
            verdict = "ok" if ratio <= target else "MISSED"
            failed |= ratio > target
            print(
                f"{label:<12} {n:>6} tasks {phase}: process pool {p * 1000:8.1f} ms   "
                f"aioknot local {k * 1000:8.1f} ms   ratio {ratio:5.2f}x "
                f"(target <= {target}x: {verdict})"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
