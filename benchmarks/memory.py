"""Does the client's memory stay flat while a generator of many inputs streams through amap?

Feeds ``--inputs`` (default 100,000) inputs of ``--input-bytes`` (default 1 KiB, so that a
client holding on to inputs would show) from a generator through ``knot.amap`` on the
local backend, with the local store in a temporary ``AIOKNOT_HOME``, and consumes the results
as they complete. A thread samples this process's RSS (``VmRSS`` in /proc/self/status) every
10 ms; ``VmHWM`` (reset with /proc/self/clear_refs where allowed) catches peaks between samples.

Baseline, measured in the same run: this process's RSS just before the run (after imports),
and, as a reference, ``concurrent.futures.ProcessPoolExecutor.map`` over the same generator
(which submits every input up front) with the same number of worker processes.

Target (the script exits 1 when it is missed): the client's peak RSS grows by less than 200 MB.

    python benchmarks/memory.py [--inputs N] [--input-bytes B] [--workers W] [--chunksize C]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import gc
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Checks, RssSampler, proc_status_kib, reset_peak_rss  # noqa: E402

MAX_GROWTH_MB = 200.0


def square(x: bytes) -> int:
    """The square of the index an input starts with."""
    return int.from_bytes(x[:8], "little") ** 2


def generate(count: int, size: int) -> Iterator[bytes]:
    """The inputs, one at a time and each a new object: its index, padded to ``size`` bytes."""
    padding = max(size - 8, 0)
    for index in range(count):
        yield index.to_bytes(8, "little") + bytes(padding)


class Measured:
    """Wall time and RSS growth over a block: the baseline is the RSS as it starts."""

    def __init__(self) -> None:
        self.baseline_kib = 0
        self.peak_kib = 0
        self.hwm_kib = 0
        self.seconds = 0.0
        self.samples = 0
        self._sampler: RssSampler | None = None
        self._began = 0.0
        self._hwm_reset = False

    def __enter__(self) -> Measured:
        gc.collect()
        self._hwm_reset = reset_peak_rss()
        self.baseline_kib = proc_status_kib("VmRSS")
        self._sampler = RssSampler().__enter__()
        self._began = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.seconds = time.perf_counter() - self._began
        assert self._sampler is not None
        self._sampler.__exit__(*exc_info)
        self.samples = self._sampler.samples
        self.hwm_kib = proc_status_kib("VmHWM") if self._hwm_reset else 0
        self.peak_kib = max(self._sampler.peak_kib, self.hwm_kib)

    @property
    def growth_mb(self) -> float:
        return (self.peak_kib - self.baseline_kib) / 1024

    def report(self, title: str, count: int) -> None:
        hwm = f", VmHWM {self.hwm_kib / 1024:.1f} MB" if self.hwm_kib else ""
        print(f"{title}:")
        print(f"  wall time {self.seconds:.2f} s, {count / self.seconds:,.0f} results/s")
        print(
            f"  RSS before {self.baseline_kib / 1024:.1f} MB, peak {self.peak_kib / 1024:.1f} MB "
            f"(sampled max of {self.samples} samples{hwm}), growth {self.growth_mb:.1f} MB "
            f"({self.growth_mb * 1024 * 1024 / count:.0f} bytes per input)"
        )


async def run_aioknot(count: int, size: int, workers: int | None) -> tuple[int, int]:
    """Stream the generator through amap; returns (results, their sum)."""
    from aioknot import AsyncKnot

    received = 0
    total = 0
    async with AsyncKnot(square, name="bench-memory", backend="local", workers=workers) as knot:
        async for value in knot.amap(generate(count, size)):
            received += 1
            total += value
    return received, total


def run_pool(
    count: int, size: int, workers: int, chunksize: int, func: Callable[[bytes], int]
) -> tuple[int, int]:
    received = 0
    total = 0
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
        for value in pool.map(func, generate(count, size), chunksize=chunksize):
            received += 1
            total += value
    return received, total


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument(
        "--input-bytes",
        type=int,
        default=1024,
        help="size of each input (default 1,024: 100 MB through the client at 100,000)",
    )
    parser.add_argument("--workers", type=int, default=None, help="default: os.cpu_count()")
    parser.add_argument(
        "--chunksize", type=int, default=1, help="ProcessPoolExecutor.map's (default 1)"
    )
    arguments = parser.parse_args()
    count = arguments.inputs
    size = max(arguments.input_bytes, 8)
    workers = arguments.workers or os.cpu_count() or 1
    expected = sum(x * x for x in range(count))
    checks = Checks()

    import aioknot  # noqa: F401  (imports are not the run's memory)

    with tempfile.TemporaryDirectory(prefix="aioknot-bench-memory-") as home:
        os.environ["AIOKNOT_HOME"] = home
        print(
            f"aioknot client memory: {count:,} inputs of {size:,} bytes from a generator "
            f"({count * size / 1e6:,.0f} MB in all), {workers} worker processes"
        )
        with Measured() as knot_run:
            received, total = asyncio.run(run_aioknot(count, size, arguments.workers))
        if (received, total) != (count, expected):
            raise SystemExit(f"aioknot: {received} results summing to {total}, wrong")
        knot_run.report("aioknot amap (local backend, local store)", count)

    with Measured() as pool_run:
        received, total = run_pool(count, size, workers, arguments.chunksize, square)
    if (received, total) != (count, expected):
        raise SystemExit(f"ProcessPoolExecutor: {received} results summing to {total}, wrong")
    pool_run.report(f"reference: ProcessPoolExecutor.map (chunksize={arguments.chunksize})", count)

    print("ratios, aioknot / ProcessPoolExecutor:")
    print(
        f"  RSS growth {knot_run.growth_mb:.1f} / {pool_run.growth_mb:.1f} MB = "
        f"{knot_run.growth_mb / max(pool_run.growth_mb, 0.1):.2f}"
    )
    print(
        f"  wall time {knot_run.seconds:.2f} / {pool_run.seconds:.2f} s = "
        f"{knot_run.seconds / pool_run.seconds:.2f}"
    )
    checks.check(
        f"aioknot client peak RSS growth {knot_run.growth_mb:.1f} MB < {MAX_GROWTH_MB:.0f} MB "
        f"(baseline: RSS {knot_run.baseline_kib / 1024:.1f} MB before the run)",
        knot_run.growth_mb < MAX_GROWTH_MB,
    )
    return checks.report()


if __name__ == "__main__":
    sys.exit(main())
