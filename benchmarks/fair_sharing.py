"""Fair sharing of a local knot's workers: a small run started right behind a large one.

On one warm knot (its worker processes started), with the same worker count throughout:

* the small run alone: 4 inputs of 100 ms (best of ``--repeat``);
* the large run alone: 10,000 inputs of 10 ms, its throughput in inputs per second;
* the large run, then the small run started the moment the large one is submitted: the
  small run's time (from its ``map`` to its last result) and the large run's throughput.

Target: the small run behind the large one takes at most 2x its time alone (runs are served
in turn: first come, first served, it would wait for the whole large run, ~50 s on 2 cores).

    python benchmarks/fair_sharing.py [--big 10000] [--repeat 3]

Prints the figures and the ratio against the small run alone, measured in the same run;
exits 1 if the target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time

import aioknot

TARGET = 2.0
BIG_SECONDS = 0.01
SMALL_SECONDS = 0.1
SMALL_INPUTS = 4


def work(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


async def timed_gather(knot: aioknot.AsyncKnot[float], inputs: list[float]) -> float:
    started = time.perf_counter()
    run = await knot.map(inputs)
    await run.gather()
    return time.perf_counter() - started


async def measure(big: int, repeat: int, workers: int) -> dict[str, float]:
    small_inputs = [SMALL_SECONDS] * SMALL_INPUTS
    big_inputs = [BIG_SECONDS] * big
    async with aioknot.AsyncKnot(work, backend="local", workers=workers) as knot:
        await timed_gather(knot, [0.0] * workers * 4)  # warm: every process started
        small_alone = min([await timed_gather(knot, small_inputs) for _ in range(repeat)])
        big_alone = await timed_gather(knot, big_inputs)

        started = time.perf_counter()
        big_run = await knot.map(big_inputs)
        small_behind = await timed_gather(knot, small_inputs)
        big_left = len(big_run) - (await big_run.status())["succeeded"]
        await big_run.gather()
        big_shared = time.perf_counter() - started
    return {
        "small_alone": small_alone,
        "small_behind": small_behind,
        "big_alone": big_alone,
        "big_shared": big_shared,
        "big_left": big_left,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--big", type=int, default=10_000, help="inputs of the large run")
    parser.add_argument("--repeat", type=int, default=3, help="runs of the small one alone")
    args = parser.parse_args()
    workers = os.cpu_count() or 1
    os.environ["AIOKNOT_HOME"] = tempfile.mkdtemp(prefix="aioknot-bench-")
    print(f"workers: {workers}   python {sys.version.split()[0]}")
    figures = asyncio.run(measure(args.big, args.repeat, workers))
    ratio = figures["small_behind"] / figures["small_alone"]
    verdict = "ok" if ratio <= TARGET else "MISSED"
    print(
        f"small run ({SMALL_INPUTS} x {SMALL_SECONDS * 1000:.0f} ms): alone "
        f"{figures['small_alone'] * 1000:7.1f} ms   behind a {args.big}-input run "
        f"{figures['small_behind'] * 1000:7.1f} ms   ratio {ratio:5.2f}x "
        f"(target <= {TARGET}x: {verdict}); the large run had {figures['big_left']:.0f} "
        "inputs to go when the small one finished"
    )
    alone = args.big / figures["big_alone"]
    shared = args.big / figures["big_shared"]
    print(
        f"large run ({args.big} x {BIG_SECONDS * 1000:.0f} ms): alone {alone:7.1f} inputs/s "
        f"({figures['big_alone']:.2f} s)   beside the small run {shared:7.1f} inputs/s "
        f"({figures['big_shared']:.2f} s)   ratio {shared / alone:5.2f}x "
        f"(at best {workers / BIG_SECONDS:.0f} inputs/s on {workers} workers)"
    )
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
