"""The paper's example: estimate pi by Monte Carlo, one function over many inputs.

Runs on this machine by default (``backend="local"``, worker processes). Set
``AIOKNOT_BACKEND=aws`` to run the same code on AWS Batch.

    python examples/monte_pi.py            # 200 tasks of 100,000 points each
    python examples/monte_pi.py 1000 1e6   # tasks, points per task
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import aioknot


def monte_pi_count(n: int) -> int:
    """How many of ``n`` random points in the unit square fall inside the quarter circle."""
    import random  # imported here: this runs on the worker

    rng = random.Random()
    inside = 0
    for _ in range(n):
        x, y = rng.random(), rng.random()
        inside += x * x + y * y <= 1.0
    return inside


async def estimate_pi(tasks: int, points: int) -> float:
    started = time.perf_counter()
    total = 0
    async with aioknot.AsyncKnot(monte_pi_count, name="pi-calc") as knot:
        async for count in knot.amap([points] * tasks):  # results as they complete
            total += count
        print(
            f"{tasks} tasks of {points:,} points on backend={knot.backend!r} "
            f"in {time.perf_counter() - started:.2f} s"
        )
    return 4.0 * total / (tasks * points)


def blocking_face(tasks: int, points: int) -> float:
    """The same with the blocking ``Knot`` and a ``concurrent.futures.Future``."""
    with aioknot.Knot(monte_pi_count, name="pi-calc") as knot:
        future = knot.map([points] * tasks)
        called = threading.Event()  # callbacks run on the knot's own thread
        future.add_done_callback(
            lambda f: (print(f"done-callback: {len(f.result())} counts"), called.set())
        )
        counts = future.result()
        called.wait(10)
        knot.view_jobs()
    return 4.0 * sum(counts) / (tasks * points)


def main() -> None:
    tasks = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    points = int(float(sys.argv[2])) if len(sys.argv) > 2 else 100_000
    pi = asyncio.run(estimate_pi(tasks, points))
    print(f"pi ~ {pi:.5f} (async amap)")
    pi = blocking_face(tasks, points)
    print(f"pi ~ {pi:.5f} (blocking Knot.map)")


if __name__ == "__main__":
    main()
