"""A pipeline of two knots: random walks simulated by one, summarised by the other.

``await summaries.map(walks_run)`` makes input ``i`` of the second knot the result ``i`` of the
first, and runs it as soon as that result exists: summaries arrive while walks still run. A
walk that fails (seed 13 here, on purpose) is not summarised: its summary is a ``TaskError``
that names the walk it stands for.

Runs on this machine by default (``backend="local"``). With ``AIOKNOT_BACKEND=aws`` the same
code runs on AWS Batch, where the walks' values never pass through this process: each
summary's array child depends on its walk's child (``dependsOn`` N_TO_N), so the program may
exit once ``map`` returns, and ``await knot.attach(run_id)`` reads the summaries later.

    python examples/pipeline.py        # 40 walks of 20,000 steps
    python examples/pipeline.py 200    # walks
"""

from __future__ import annotations

import asyncio
import sys
import time

import aioknot


def random_walk(seed: int) -> list[int]:
    """The positions of a 20,000-step random walk on the integers."""
    import random  # imported here: this runs on the worker

    if seed == 13:
        raise ValueError("seed 13 is unlucky")  # a failure, to show what happens downstream
    rng = random.Random(seed)
    position, positions = 0, []
    for _ in range(20_000):
        position += rng.choice((-1, 1))
        positions.append(position)
    return positions


def summarise(positions: list[int]) -> dict[str, float]:
    """How far the walk went, and how far it ended up."""
    return {"farthest": max(abs(p) for p in positions), "final": abs(positions[-1])}


async def main(walks: int) -> None:
    started = time.perf_counter()
    async with (
        aioknot.AsyncKnot(random_walk, name="walks") as walker,
        aioknot.AsyncKnot(summarise, name="summaries") as summariser,
    ):
        walks_run = await walker.map(range(walks))
        summaries = await summariser.map(walks_run)  # input i: walk i's positions
        print(f"pipeline {summaries.upstream} -> summaries/{summaries.id}")
        farthest = []
        async for index, summary in summaries.items(return_exceptions=True):
            if isinstance(summary, aioknot.TaskFailure):
                print(f"walk {index}: not summarised: {str(summary).splitlines()[0]}")
                continue
            farthest.append(summary["farthest"])
        elapsed = time.perf_counter() - started
    print(
        f"{len(farthest)} of {walks} walks summarised on backend={walker.backend!r} in "
        f"{elapsed:.2f} s; mean farthest distance {sum(farthest) / len(farthest):.1f} "
        "(about 1.25 x sqrt(20,000) = 177 expected)"
    )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 40))
