"""A pipeline of two local knots against the same two stages run one after the other.

Stage A takes 50 to 250 ms per input (a spread, as real inputs have); stage B 50 ms. Each knot
has its own ``--workers`` processes. Measured, best of ``--repeat``:

* in turn: ``gather`` stage A's run, then map stage B over its values (the baseline: what a
  user without pipelines writes);
* pipeline: ``async for`` over ``knot_b.amap(run_a)``, stage B's inputs starting as stage A's
  results come.

Figures: the time to the first result of stage B and to the last, and the ratio of each
against the baseline. Target: the first stage-B result comes in under half the baseline's
time (the baseline waits for all of stage A first).

    python benchmarks/pipeline.py [--inputs 80] [--workers 2] [--repeat 3]

Exits 1 if the target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time

import aioknot

TARGET = 0.5
B_SECONDS = 0.05


def stage_a(x: int) -> int:
    time.sleep(0.05 + 0.2 * ((x * 37) % 11) / 10)  # 50 to 250 ms, spread over the inputs
    return x


def stage_b(x: int) -> int:
    time.sleep(B_SECONDS)
    return x + 1


async def in_turn(a: aioknot.AsyncKnot[int], b: aioknot.AsyncKnot[int], n: int) -> list[float]:
    started = time.perf_counter()
    values = await (await a.map(range(n))).gather()
    first = None
    async for _ in b.amap(values):
        first = first or time.perf_counter() - started
    assert first is not None
    return [first, time.perf_counter() - started]


async def piped(a: aioknot.AsyncKnot[int], b: aioknot.AsyncKnot[int], n: int) -> list[float]:
    started = time.perf_counter()
    run_a = await a.map(range(n))
    first = None
    async for _ in b.amap(run_a):
        first = first or time.perf_counter() - started
    assert first is not None
    return [first, time.perf_counter() - started]


async def measure(inputs: int, workers: int, repeat: int) -> dict[str, list[float]]:
    best: dict[str, list[float]] = {}
    async with (
        aioknot.AsyncKnot(stage_a, name="stage-a", backend="local", workers=workers) as a,
        aioknot.AsyncKnot(stage_b, name="stage-b", backend="local", workers=workers) as b,
    ):
        await (await a.map(range(workers * 2))).gather()  # warm: the workers started
        await (await b.map(range(workers * 2))).gather()
        for _ in range(repeat):
            for name, way in (("in turn", in_turn), ("pipeline", piped)):
                figures = await way(a, b, inputs)
                kept = best.get(name, figures)
                best[name] = [min(x, y) for x, y in zip(kept, figures, strict=True)]
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=80)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("AIOKNOT_HOME", tempfile.mkdtemp(prefix="aioknot-bench-"))
    best = asyncio.run(measure(args.inputs, args.workers, args.repeat))
    (first_turn, last_turn), (first_piped, last_piped) = best["in turn"], best["pipeline"]
    print(f"{args.inputs} inputs, {args.workers} workers per knot, best of {args.repeat}")
    print(f"  in turn:  first stage-B result {first_turn:.2f} s, last {last_turn:.2f} s")
    print(f"  pipeline: first stage-B result {first_piped:.2f} s, last {last_piped:.2f} s")
    first_ratio, last_ratio = first_piped / first_turn, last_piped / last_turn
    print(f"  ratio (pipeline / in turn): first {first_ratio:.2f}x, last {last_ratio:.2f}x")
    met = first_ratio <= TARGET
    print(f"target: first result at most {TARGET}x the baseline's: {'met' if met else 'MISSED'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
