"""Import time and local-knot opening time, against the standard library's, in the same run.

Each sample is a fresh interpreter (``python -c ...``, as a user's script starts) reading
compiled bytecode (as from a wheel), and the commands compared take turns, so that a busy
machine slows them alike. Imports are timed on the clock (the target) and in CPU seconds
(user + system, the steadier figure when other processes share the cores):

* ``import aioknot`` against ``import concurrent.futures``. Target: within 1.6x (the heavy
  dependencies, cloudpickle, asyncio, botocore, are imported when first needed).
* ``from aioknot import AsyncKnot`` and ``import aioknot; aioknot.Knot``, against the same
  baseline: what a script that uses a knot pays before it opens one (reported, no target).
* ``python -c pass``: the interpreter's own start, in every figure above (for reference).
* opening and closing a local knot (``async with AsyncKnot(f, backend="local", workers=2)``,
  timed in the interpreter after ``import asyncio`` and ``from aioknot import AsyncKnot``;
  what the knot imports when it opens is inside the timing) against creating and shutting
  down a ``ProcessPoolExecutor(2)`` that runs one trivial task (after ``import
  concurrent.futures``: its process machinery is imported inside the timing, too). Also the
  knot running one trivial task (``amap`` over one input), the like of the pool's. Reported,
  with one target: the local knot imports none of the AWS SDK, aiohttp, aiodocker or the
  image code.

    python benchmarks/import_time.py [--repeat 15]

Prints the medians and the ratios; exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from _common import Checks

IMPORT_TARGET = 1.6

BASELINE = "import concurrent.futures"
STARTUP = "pass"
IMPORTS = {
    "import aioknot": "import aioknot",
    "from aioknot import AsyncKnot": "from aioknot import AsyncKnot",
    "aioknot.Knot": "import aioknot; aioknot.Knot",
}

# Modules a local knot has no use for: importing any of them is the cost this avoids.
NOT_FOR_A_LOCAL_KNOT = (
    "botocore",
    "boto3",
    "aiobotocore",
    "aioboto3",
    "aiohttp",
    "aiodocker",
    "aioknot._image.builder",
    "aioknot._image.requirements",
    "aioknot._backends.aws.image",
    "aioknot._backends.aws.backend",
)


def open_knot_code(task: bool) -> str:
    """What a fresh interpreter runs to open and close a local knot (running one task if
    ``task``): it prints the seconds that took and the heavy modules it imported."""
    return f"""
import asyncio, json, sys, time
from aioknot import AsyncKnot

def work(x):
    return x

async def main():
    started = time.perf_counter()
    async with AsyncKnot(work, backend="local", workers=2) as knot:
        if {task!r}:
            assert [y async for y in knot.amap([1])] == [1]
    return time.perf_counter() - started

seconds = asyncio.run(main())
heavy = [name for name in {NOT_FOR_A_LOCAL_KNOT!r} if name in sys.modules]
print(json.dumps({{"seconds": seconds, "heavy": heavy}}))
"""


# The same for a process pool: create it, run one trivial task, shut it down.
OPEN_POOL = """
import concurrent.futures, json, time

if __name__ == "__main__":
    started = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        pool.submit(abs, -1).result()
    print(json.dumps({"seconds": time.perf_counter() - started, "heavy": []}))
"""


def time_command(code: str) -> tuple[float, float]:
    """Seconds for a fresh interpreter to run ``code`` and exit: on the clock, and of CPU
    (user + system, steadier than the clock when other processes share the cores)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return elapsed, cpu


def run_script(code: str) -> tuple[float, list[str]]:
    """The seconds and the heavy modules a fresh interpreter running ``code`` printed."""
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    return float(printed["seconds"]), list(printed["heavy"])


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


def rounds(labels: list[str], repeat: int) -> list[list[str]]:
    """``repeat`` rounds of every label, each round starting one further along, so that no
    command always runs first (or always right after the same one)."""
    return [labels[i % len(labels) :] + labels[: i % len(labels)] for i in range(repeat)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=15, help="samples of each (median)")
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="aioknot-bench-")
    os.environ["AIOKNOT_HOME"] = home
    # Every interpreter reads compiled bytecode, as from an installed wheel: an editable
    # install under PYTHONDONTWRITEBYTECODE compiles aioknot's source at each import (~50 ms
    # here), which no user pays. The bytecode goes to a directory of the run's own.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = os.path.join(home, "pycache")
    checks = Checks()
    print(
        f"python {sys.version.split()[0]}   median of {args.repeat} fresh interpreters each "
        "(bytecode cached, as installed)"
    )
    try:
        imports(args.repeat, checks)
        opening(args.repeat, checks)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return checks.report()


def imports(repeat: int, checks: Checks) -> None:
    commands = {BASELINE: BASELINE, **IMPORTS, "python -c pass": STARTUP}
    for code in commands.values():  # warm the disk cache and the .pyc files
        time_command(code)
    clock: dict[str, list[float]] = {label: [] for label in commands}
    cpu: dict[str, list[float]] = {label: [] for label in commands}
    for order in rounds(list(commands), repeat):
        for label in order:
            elapsed, used = time_command(commands[label])
            clock[label].append(elapsed)
            cpu[label].append(used)
    baseline = statistics.median(clock[BASELINE])
    baseline_cpu = statistics.median(cpu[BASELINE])
    print(f"\n{'':<32} {'clock':>10} {'ratio':>7}   {'cpu':>10} {'ratio':>7}")
    for label in commands:
        median, median_cpu = statistics.median(clock[label]), statistics.median(cpu[label])
        print(
            f"{label:<32} {ms(median)} {median / baseline:6.2f}x   "
            f"{ms(median_cpu)} {median_cpu / baseline_cpu:6.2f}x"
        )
    median = statistics.median(clock["import aioknot"])
    checks.check(
        f"import aioknot {median / baseline:.2f}x import concurrent.futures (clock) "
        f"<= {IMPORT_TARGET}x",
        median <= IMPORT_TARGET * baseline,
    )


def opening(repeat: int, checks: Checks) -> None:
    pool = "ProcessPoolExecutor(2), 1 task"
    scripts = {
        pool: OPEN_POOL,
        "open + close a local AsyncKnot": open_knot_code(task=False),
        "the same, running 1 task": open_knot_code(task=True),
    }
    for code in scripts.values():  # warm the disk cache and the bytecode
        run_script(code)
    samples: dict[str, list[float]] = {label: [] for label in scripts}
    heavy: set[str] = set()
    for order in rounds(list(scripts), repeat):
        for label in order:
            seconds, imported = run_script(scripts[label])
            samples[label].append(seconds)
            heavy.update(imported)
    baseline = statistics.median(samples[pool])
    print(f"\n{pool:<32} {ms(baseline)}")
    for label in scripts:
        if label != pool:
            median = statistics.median(samples[label])
            print(f"{label:<32} {ms(median)}   ratio {median / baseline:5.2f}x")
    print(f"modules a local knot imported that it has no use for: {sorted(heavy) or 'none'}")
    checks.check(
        f"a local knot imports none of {', '.join(NOT_FOR_A_LOCAL_KNOT)}"
        + (f" (imported: {', '.join(sorted(heavy))})" if heavy else ""),
        not heavy,
    )


if __name__ == "__main__":
    sys.exit(main())
