"""Local backend overhead against concurrent.futures.ProcessPoolExecutor, in the same run.

Every local speed target of issue 11, each as a ratio against a baseline measured in the same
run, with the same worker count (``os.cpu_count()``). Pool and knot samples alternate (and
which goes first alternates too), so that the machine's load drifts over both alike; every
figure is the median of ``--repeat`` samples (default 5). "Cold" means from a state where
nothing was started: a fresh pool or knot per sample (in this interpreter, so imports are
done), opened inside the timing, which ends when every result is in hand; "warm" is a second
map on the pool or knot that the cold sample opened.

1. Tiny tasks (``x * x``) at 1,000, 10,000 and 100,000 inputs, cold, against the pool's
   ``map`` with ``chunksize = ceil(n / (4 * workers))``. Target: within 2.0x each (aim: 1.5x
   at 10,000). Warm for information.
2. Time to first result of 1,000 tasks of 10 ms: ``async for`` over ``knot.amap(...)``
   against the pool's best way to a first result, ``pool.submit`` of every input and the first
   of ``as_completed`` (one input per task: any chunk holds the first result back for the
   whole chunk). Cold, from opening the pool or knot. Target: within 1.3x. Warm (pool or
   knot opened and its workers used once, outside the timing) for information.
3. Time to first error: 200 tasks of 10 ms of which input 50 raises. ``await run.gather()``
   (from ``knot.map``) raising the ``TaskError`` against ``amap`` raising it, cold. Target:
   gather within 1.5x of amap. Warm for information, and the pool's ``map`` (default
   chunksize as in 1) raising, for reference.
4. 1,000,000 tiny tasks, cold, each sample in a child process of its own (``--child``): the
   knot's cost per task against its cost per task at 100,000 inputs measured the same way in
   the same run (target: within 1.10x), and the client's peak RSS (target: under 150 MB; the
   pool's printed for reference). For information, the same per-task costs less the time of a
   1,000-task run (the fixed cost, which the whole-run ratio spreads thinner at 1,000,000).
   ``--no-million`` leaves this out.
5. 200 tasks sleeping 50 ms: the knot's time against the limit 200 * 0.05 s / workers.
   Target: within 1.05x, cold. Warm, and the pool's ratios to the same limit, for reference.

    python benchmarks/local_overhead.py [--repeat 5] [--quick] [--no-million]
        [--tiny 1000 10000 100000] [--sleepy 200]

Prints one line per measurement (figures, ratio, target, verdict) and a summary of the
targets; exits 1 if any target is missed. ``--quick`` is a fast check: 3 samples, no million,
no warm sleeps. The store is a temporary ``AIOKNOT_HOME``, removed at the end.

To measure another version of the library with this script (a "before" column), export it
(``git archive <commit> aioknot | tar -x -C /tmp/before``) and run the script from outside the
repository with ``PYTHONPATH=/tmp/before``; the first line says which copy was measured.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import gc
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import aioknot

T = TypeVar("T")

TINY_SIZES = (1_000, 10_000, 100_000)
TINY_TARGET = 2.0
TINY_AIM = {10_000: 1.5}
FIRST_RESULT_INPUTS = 1_000
FIRST_RESULT_SECONDS = 0.01
FIRST_RESULT_TARGET = 1.3
ERROR_INPUTS = 200
ERROR_AT = 50
ERROR_SECONDS = 0.01
ERROR_TARGET = 1.5
MILLION = 1_000_000
MILLION_REFERENCE = 100_000
MILLION_FIXED = 1_000  # a run this small is nearly all fixed cost (open, start, close)
PER_TASK_TARGET = 1.10
RSS_TARGET_MB = 150.0
SLEEP_SECONDS = 0.05
SLEEPY_TARGET = 1.05
CHILD_TIMEOUT = 900.0  # seconds: a half-made library change must not hang the benchmark


def tiny(x: int) -> int:
    return x * x


def sleepy(x: int) -> int:
    time.sleep(SLEEP_SECONDS)
    return x


def short(x: int) -> int:
    time.sleep(FIRST_RESULT_SECONDS)
    return x


def fails_at(x: int) -> int:
    time.sleep(ERROR_SECONDS)
    if x == ERROR_AT:
        raise ValueError(f"input {x} fails on purpose")
    return x


def chunksize(n: int, workers: int) -> int:
    """What ProcessPoolExecutor users pick: four chunks per worker."""
    return max(1, math.ceil(n / (4 * workers)))


def now() -> float:
    return time.perf_counter()


def settle() -> None:
    """The previous sample's garbage goes before the next sample starts, not during it."""
    gc.collect()


# -- samples: each returns seconds (cold, warm); warm is None when not asked for -------------


def pool_map(func: Callable[[int], int], n: int, workers: int, warm: bool) -> list[float]:
    expected = [func(i) for i in range(n)] if func is tiny else list(range(n))
    settle()
    started = now()
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        results = list(pool.map(func, range(n), chunksize=chunksize(n, workers)))
        times = [now() - started]
        assert results == expected, "the process pool returned wrong results"
        if warm:
            started = now()
            results = list(pool.map(func, range(n), chunksize=chunksize(n, workers)))
            times.append(now() - started)
            assert results == expected, "the process pool returned wrong results"
    return times


async def knot_map(func: Callable[[int], int], n: int, workers: int, warm: bool) -> list[float]:
    expected = [func(i) for i in range(n)] if func is tiny else list(range(n))
    settle()
    started = now()
    async with aioknot.AsyncKnot(func, backend="local", workers=workers) as knot:
        run = await knot.map(range(n))
        results = await run.gather()
        times = [now() - started]
        assert results == expected, "the knot returned wrong results"
        if warm:
            started = now()
            run = await knot.map(range(n))
            results = await run.gather()
            times.append(now() - started)
            assert results == expected, "the knot returned wrong results"
    return times


def pool_first_result(n: int, workers: int, warm: bool) -> float:
    settle()
    started = now()
    pool = concurrent.futures.ProcessPoolExecutor(workers)
    try:
        if warm:
            list(pool.map(short, range(2 * workers)))  # every worker started and used once
            started = now()
        futures = [pool.submit(short, i) for i in range(n)]
        next(concurrent.futures.as_completed(futures)).result()
        return now() - started
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


async def closing_first(results: AsyncIterator[T]) -> T:
    """The first item of an async generator, which is then closed (amap cancels its run)."""
    try:
        return await anext(results)
    finally:
        close = getattr(results, "aclose", None)
        if close is not None:
            await close()


async def knot_warm_up(knot: aioknot.AsyncKnot[int], workers: int, first: int = 0) -> None:
    """Every worker started and used once (and the function's timing known), untimed."""
    run = await knot.map(range(first, first + 2 * workers))
    await run.gather()


async def knot_first_result(n: int, workers: int, warm: bool) -> float:
    settle()
    started = now()
    async with aioknot.AsyncKnot(short, backend="local", workers=workers) as knot:
        if warm:
            await knot_warm_up(knot, workers)
            started = now()
        await closing_first(knot.amap(range(n)))
        return now() - started


def pool_time_to_error(n: int, workers: int, warm: bool) -> float:
    settle()
    started = now()
    pool = concurrent.futures.ProcessPoolExecutor(workers)
    try:
        if warm:
            list(pool.map(fails_at, range(ERROR_AT + 1, ERROR_AT + 1 + 2 * workers)))
            started = now()
        try:
            list(pool.map(fails_at, range(n), chunksize=chunksize(n, workers)))
        except ValueError:
            return now() - started
        raise AssertionError("the process pool's map did not raise")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


async def knot_time_to_error(n: int, workers: int, warm: bool, how: str) -> float:
    settle()
    started = now()
    async with aioknot.AsyncKnot(fails_at, backend="local", workers=workers) as knot:
        if warm:
            await knot_warm_up(knot, workers, first=ERROR_AT + 1)
            started = now()
        run: aioknot.Run[int] | None = None
        try:
            if how == "gather":
                run = await knot.map(range(n))
                await run.gather()
            else:
                async for _ in knot.amap(range(n)):
                    pass
        except aioknot.TaskError as error:
            elapsed = now() - started
            assert error.index == ERROR_AT, f"input {error.index} failed, not {ERROR_AT}"
            if run is not None:
                await run.cancel()  # the rest of the run keeps going otherwise
            return elapsed
        raise AssertionError(f"the knot's {how} did not raise")


# -- 4: one cold run in a child process of its own, for its peak RSS --------------------------


def peak_rss_kib() -> int:
    """This process's peak RSS since it started running this program, in KiB.

    ``ru_maxrss`` would be the natural measure, but Linux carries it over ``execve`` from the
    process that forked: a child of this (large) benchmark process started by ``subprocess``
    (vfork + exec) reports the parent's peak (measured: 420 MB for a 9 MB child of a 420 MB
    parent). ``VmHWM`` is the same high-water mark for this program's own memory only.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


async def child_knot(n: int, workers: int) -> float:
    started = now()
    async with aioknot.AsyncKnot(tiny, backend="local", workers=workers) as knot:
        run = await knot.map(range(n))
        results = await run.gather()
        elapsed = now() - started
    assert len(results) == n and all(r == i * i for i, r in enumerate(results))
    return elapsed


def child_pool(n: int, workers: int) -> float:
    started = now()
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        results = list(pool.map(tiny, range(n), chunksize=chunksize(n, workers)))
        elapsed = now() - started
    assert len(results) == n and all(r == i * i for i, r in enumerate(results))
    return elapsed


def run_child(kind: str, n: int, workers: int) -> int:
    """The body of ``--child``: one cold run; prints its seconds and peak RSS as JSON."""
    seconds = asyncio.run(child_knot(n, workers)) if kind == "knot" else child_pool(n, workers)
    print(json.dumps({"seconds": seconds, "peak_rss_kib": peak_rss_kib()}))
    return 0


@dataclass
class ChildSample:
    seconds: float
    peak_rss_mb: float


def in_child(kind: str, n: int, workers: int, home: str) -> ChildSample:
    """One cold run of ``n`` tiny tasks in a fresh interpreter (its own store directory)."""
    directory = tempfile.mkdtemp(prefix=f"child-{kind}-", dir=home)
    try:
        done = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--child", kind, str(n), str(workers)],
            env={**os.environ, "AIOKNOT_HOME": directory},
            stdout=subprocess.PIPE,
            text=True,
            timeout=CHILD_TIMEOUT,
            check=True,
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return ChildSample(figures["seconds"], figures["peak_rss_kib"] / 1024)


# -- reporting ---------------------------------------------------------------------------------


@dataclass
class Report:
    checks: list[tuple[str, bool]] = field(default_factory=list)

    def line(
        self,
        what: str,
        baseline: str,
        base: float,
        subject: str,
        value: float,
        *,
        target: float | None,
        unit: str = "ms",
        note: str = "",
    ) -> None:
        """One measurement: both figures, their ratio, the target (or 'info') and verdict."""
        ratio = value / base
        if target is None:
            verdict = "info"
        else:
            ok = ratio <= target
            verdict = f"target <= {target:.2f}x: {'ok' if ok else 'MISSED'}"
            self.checks.append((f"{what}: {ratio:.2f}x (target <= {target:.2f}x)", ok))
        scale = 1000.0 if unit == "ms" else 1.0
        print(
            f"{what:<44} {baseline} {base * scale:10,.1f} {unit}   {subject} "
            f"{value * scale:10,.1f} {unit}   ratio {ratio:5.2f}x   {verdict}{note}",
            flush=True,
        )

    def limit(self, what: str, value: float, limit: float, target: float | None) -> None:
        self.line(what, "limit", limit, "measured", value, target=target)

    def rss(self, what: str, megabytes: float, pool_megabytes: float) -> None:
        ok = megabytes < RSS_TARGET_MB
        self.checks.append((f"{what}: {megabytes:.1f} MB (target < {RSS_TARGET_MB:.0f} MB)", ok))
        print(
            f"{what:<44} aioknot {megabytes:8.1f} MB   process pool {pool_megabytes:8.1f} MB   "
            f"target < {RSS_TARGET_MB:.0f} MB: {'ok' if ok else 'MISSED'}",
            flush=True,
        )

    def summary(self) -> int:
        met = sum(ok for _, ok in self.checks)
        print(f"\nsummary: {met} of {len(self.checks)} targets met")
        for what, ok in self.checks:
            print(f"  [{'met' if ok else 'MISSED'}] {what}")
        return 0 if met == len(self.checks) else 1


def interleave(repeat: int, *takers: Callable[[], T]) -> list[list[T]]:
    """``repeat`` samples from each taker, taken in turn, the order reversed every other round.

    Returns one list of samples per taker, in the order the takers were given."""
    samples: list[list[T]] = [[] for _ in takers]
    order = list(range(len(takers)))
    for sample in range(repeat):
        for which in order if sample % 2 == 0 else reversed(order):
            samples[which].append(takers[which]())
    return samples


def run_async(make: Callable[[], Coroutine[Any, Any, T]]) -> Callable[[], T]:
    """A taker that runs a fresh coroutine on a fresh event loop per sample."""
    return lambda: asyncio.run(make())


def median(values: list[float]) -> float:
    return statistics.median(values)


# -- the measurements ------------------------------------------------------------------------


def measure_tiny(report: Report, sizes: list[int], repeat: int, workers: int) -> None:
    print("\n1. tiny tasks (x*x): process pool map, chunksize ceil(n / (4 * workers))")
    for n in sizes:
        pools, knots = interleave(
            repeat,
            partial(pool_map, tiny, n, workers, warm=True),
            run_async(partial(knot_map, tiny, n, workers, warm=True)),
        )
        for phase, at in (("cold", 0), ("warm", 1)):
            aim = TINY_AIM.get(n)
            report.line(
                f"tiny x*x {n:>9,} tasks, {phase}",
                "process pool",
                median([pool[at] for pool in pools]),
                "aioknot",
                median([knot[at] for knot in knots]),
                target=TINY_TARGET if phase == "cold" else None,
                note=f" (aim {aim}x)" if aim and phase == "cold" else "",
            )


def measure_first_result(report: Report, repeat: int, workers: int) -> None:
    n = FIRST_RESULT_INPUTS
    print(
        f"\n2. time to first result, {n:,} x {FIRST_RESULT_SECONDS * 1000:.0f} ms: knot "
        "'async for' over amap; process pool submit + as_completed"
    )
    for phase, warm in (("cold", False), ("warm", True)):
        pools, knots = interleave(
            repeat,
            partial(pool_first_result, n, workers, warm),
            run_async(partial(knot_first_result, n, workers, warm)),
        )
        report.line(
            f"first result of {n:,} x 10 ms, {phase}",
            "process pool",
            median(pools),
            "aioknot",
            median(knots),
            target=FIRST_RESULT_TARGET if phase == "cold" else None,
        )


def measure_time_to_error(report: Report, repeat: int, workers: int) -> None:
    n = ERROR_INPUTS
    print(
        f"\n3. time to first error, {n} x {ERROR_SECONDS * 1000:.0f} ms, input {ERROR_AT} "
        "raises: knot map + gather against amap; the process pool's map for reference"
    )
    for phase, warm in (("cold", False), ("warm", True)):
        amaps, gathers, pools = interleave(
            repeat,
            run_async(partial(knot_time_to_error, n, workers, warm, "amap")),
            run_async(partial(knot_time_to_error, n, workers, warm, "gather")),
            partial(pool_time_to_error, n, workers, warm),
        )
        report.line(
            f"error at input {ERROR_AT}: gather vs amap, {phase}",
            "amap",
            median(amaps),
            "gather",
            median(gathers),
            target=ERROR_TARGET if phase == "cold" else None,
        )
        report.line(
            f"error at input {ERROR_AT}: pool map vs amap, {phase}",
            "amap",
            median(amaps),
            "pool map",
            median(pools),
            target=None,
        )


def measure_million(report: Report, repeat: int, workers: int, home: str) -> None:
    print(
        f"\n4. {MILLION:,} tiny tasks, cold, one fresh interpreter per sample (timed from "
        f"opening the knot or pool), against {MILLION_REFERENCE:,} measured the same way"
    )
    knot_big, pool_big, knot_ref, pool_ref = interleave(
        repeat,
        partial(in_child, "knot", MILLION, workers, home),
        partial(in_child, "pool", MILLION, workers, home),
        partial(in_child, "knot", MILLION_REFERENCE, workers, home),
        partial(in_child, "pool", MILLION_REFERENCE, workers, home),
    )
    knot_fixed, pool_fixed = interleave(
        repeat,
        partial(in_child, "knot", MILLION_FIXED, workers, home),
        partial(in_child, "pool", MILLION_FIXED, workers, home),
    )

    def seconds(samples: list[ChildSample]) -> float:
        return median([s.seconds for s in samples])

    def peak(samples: list[ChildSample]) -> float:
        return median([s.peak_rss_mb for s in samples])

    for name, big, ref in (("process pool", pool_big, pool_ref), ("aioknot", knot_big, knot_ref)):
        report.line(
            f"{name} per task, {MILLION:,} vs {MILLION_REFERENCE:,}",
            f"{MILLION_REFERENCE:,}",
            seconds(ref) / MILLION_REFERENCE * 1e6,
            f"{MILLION:,}",
            seconds(big) / MILLION * 1e6,
            target=PER_TASK_TARGET if name == "aioknot" else None,
            unit="us",
        )
    # The target divides whole runs, so the fixed cost (opening, starting workers) weighs ten
    # times more per task at 100,000 than at 1,000,000 and hides a per-task slowdown at scale
    # (the garbage collector's, say): the same less a 1,000-task run's time shows it.
    for name, big, ref, fixed in (
        ("process pool", pool_big, pool_ref, pool_fixed),
        ("aioknot", knot_big, knot_ref, knot_fixed),
    ):
        report.line(
            f"{name} per task less a {MILLION_FIXED:,}-task run",
            f"{MILLION_REFERENCE:,}",
            (seconds(ref) - seconds(fixed)) / (MILLION_REFERENCE - MILLION_FIXED) * 1e6,
            f"{MILLION:,}",
            (seconds(big) - seconds(fixed)) / (MILLION - MILLION_FIXED) * 1e6,
            target=None,
            unit="us",
        )
    for n, pools, knots in (
        (MILLION_FIXED, pool_fixed, knot_fixed),
        (MILLION_REFERENCE, pool_ref, knot_ref),
        (MILLION, pool_big, knot_big),
    ):
        report.line(
            f"tiny x*x {n:>9,} tasks, cold, fresh process",
            "process pool",
            seconds(pools),
            "aioknot",
            seconds(knots),
            target=None,
        )
    print(
        f"{f'client peak RSS, {MILLION_REFERENCE:,} tasks':<44} aioknot "
        f"{peak(knot_ref):8.1f} MB   process pool {peak(pool_ref):8.1f} MB   info"
    )
    report.rss(f"client peak RSS, {MILLION:,} tasks", peak(knot_big), peak(pool_big))


def measure_sleepy(report: Report, n: int, repeat: int, workers: int, warm: bool) -> None:
    limit = n * SLEEP_SECONDS / workers
    print(
        f"\n5. {n} x {SLEEP_SECONDS * 1000:.0f} ms sleeps against the limit "
        f"{n} * {SLEEP_SECONDS} s / {workers} workers = {limit:.2f} s"
    )
    pools, knots = interleave(
        repeat,
        partial(pool_map, sleepy, n, workers, warm=warm),
        run_async(partial(knot_map, sleepy, n, workers, warm=warm)),
    )
    for phase, at in (("cold", 0), ("warm", 1)) if warm else (("cold", 0),):
        pool = median([p[at] for p in pools])
        knot = median([k[at] for k in knots])
        target = SLEEPY_TARGET if phase == "cold" else None
        report.limit(f"sleep 50 ms x {n}, aioknot, {phase}", knot, limit, target)
        report.limit(f"sleep 50 ms x {n}, process pool, {phase}", pool, limit, None)
        report.line(
            f"sleep 50 ms x {n}, {phase}", "process pool", pool, "aioknot", knot, target=None
        )


def main() -> int:
    if sys.argv[1:2] == ["--child"]:
        return run_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", type=int, nargs="+", default=list(TINY_SIZES), metavar="N")
    parser.add_argument("--sleepy", type=int, default=200, metavar="N")
    parser.add_argument("--repeat", type=int, default=None, help="samples (default 5; 3 quick)")
    parser.add_argument("--million", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--quick", action="store_true", help="3 samples, no million or warm sleep")
    args = parser.parse_args()
    repeat = args.repeat or (3 if args.quick else 5)
    million = args.million if args.million is not None else not args.quick
    workers = os.cpu_count() or 1
    home = tempfile.mkdtemp(prefix="aioknot-bench-")
    os.environ["AIOKNOT_HOME"] = home
    print(
        f"workers: {workers}   python {sys.version.split()[0]}   aioknot {aioknot.__version__}   "
        f"median of {repeat}   from {os.path.dirname(aioknot.__file__)}"
    )
    report = Report()
    try:
        measure_tiny(report, args.tiny, repeat, workers)
        measure_first_result(report, repeat, workers)
        measure_time_to_error(report, repeat, workers)
        if million:
            measure_million(report, repeat, workers, home)
        measure_sleepy(report, args.sleepy, repeat, workers, warm=not args.quick)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return report.summary()


if __name__ == "__main__":
    sys.exit(main())
