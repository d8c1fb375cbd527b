"""``knot.estimate(sample)`` and ``resources="auto"``: a function's needs, from a trial run.

A trial is an ordinary run of the knot's backend in measuring mode (the worker's
``AIOKNOT_MEASURE``, travelling with the store's settings as every worker setting does): the
worker runs each input in a child forked for it alone and stores its figures next to the
results (`aioknot._worker.Measurer`), so that the same code measures on this machine and in a
Batch container. The trial's data is removed once its figures are read.

`Estimate` holds the figures (per input, median and maximum), the resources suggested for
them, and the arithmetic of the duration and cost of ``n`` inputs (`aioknot._prices`: a
dated snapshot of AWS's list prices). The rules, in one place:

* vCPUs: the CPU time a task used per second of its wall time (its threads and the processes
  it waited for included), less a slack of `CPU_SLACK` (a single-threaded task that also runs
  a garbage collector or a little I/O thread is still one vCPU), rounded up to a size the
  backend gives (at least 1 on EC2 and locally; Fargate's sizes start at 0.25).
* memory: the largest peak a task reached above the worker's own footprint, with
  `MEMORY_HEADROOM` (the sample is a few inputs, the run many), plus that footprint (the
  interpreter, the function and its modules, the worker), rounded up to a size the backend
  accepts (a multiple of 256 MiB, at least 512; a Fargate size on Fargate).
* instance family (Batch on EC2): by memory per vCPU, the leanest of compute-optimised
  (2 GiB per vCPU), general-purpose (4) and memory-optimised (8) that holds the task.
* duration of ``n`` inputs: ``ceil(n / tasks at once) * median wall time`` (tasks at once:
  the local workers; on Batch, ``max_vcpus // vcpus``). Queueing, instances starting and
  images being pulled come on top, on Batch.
* cost of ``n`` inputs: each input's median wall time, priced at the task's share of the
  instance it runs on (EC2: the larger of its vCPU and memory shares) or at Fargate's
  per-vCPU and per-GB rates (at least one minute per task); Spot at a typical discount.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import anyio

from ._backends.base import Capacity
from ._exceptions import ConfigurationError, KnotError, TaskError, TaskFailure
from ._names import function_key, new_run_id
from ._prices import (
    FAMILY_GIB_PER_VCPU,
    FAMILY_KINDS,
    FARGATE_GB_HOUR,
    FARGATE_MINIMUM_SECONDS,
    FARGATE_VCPU_HOUR,
    INSTANCE_RESERVED_SHARE,
    INSTANCE_TYPES,
    PRICE_REGION,
    PRICES_AS_OF,
    SPOT_DISCOUNT,
    InstanceType,
)
from ._run import Inputs, Run
from ._worker import MEASURE_VARIABLE, metrics_key

if TYPE_CHECKING:
    from ._knot import AsyncKnot

logger = logging.getLogger("aioknot")

MiB = 1024 * 1024
DEFAULT_TRIALS = 3
MAX_TRIALS = 20
# An estimate measures a few inputs (each in a process of its own), not a run's worth.
MAX_MEASURED_INPUTS = 1_000
# resources="auto": the first map's first inputs measured, once each.
AUTO_SAMPLE_INPUTS = 3
AUTO_TRIALS = 1
CPU_SLACK = 0.2
MEMORY_HEADROOM = 1.25
# What `__str__` prices.
SHOWN_INPUTS = 1_000
# Waiting for a finished trial run's manifest before its data is removed.
TRIAL_SETTLE_SECONDS = 10.0


@dataclass(frozen=True)
class Resources:
    """What each task of a knot is given: ``vcpus``, ``memory`` (MiB), and on Batch (EC2)
    the ``instance_family`` that fits them best (advice: the compute environment's
    ``instance_types`` decide). ``knot.resources`` and ``run.resources`` hold the ones that
    ``resources="auto"`` chose; locally they are recorded, not enforced."""

    vcpus: float
    memory: int
    instance_family: str | None = None

    def __str__(self) -> str:
        family = f", instance family {self.instance_family}" if self.instance_family else ""
        return f"vcpus={self.vcpus:g}, memory={self.memory} MiB{family}"


@dataclass(frozen=True)
class Measurement:
    """One measured task: sample input ``input`` in trial ``trial`` (both from 0)."""

    input: int
    trial: int
    wall_seconds: float
    cpu_seconds: float
    peak_memory_bytes: int  # above the worker's own footprint when the task started
    worker_memory_bytes: int  # the worker's own footprint (its private resident pages)
    bytes_written: int | None  # every write call's bytes (files, pipes, output); None: unknown
    storage_bytes_written: int | None  # bytes sent toward storage (Linux write_bytes)
    host_cpus: int | None  # the CPUs the measuring process could use

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any], input: int, trial: int) -> Measurement:
        def optional_int(name: str) -> int | None:
            value = metrics.get(name)
            return int(value) if isinstance(value, (int, float)) else None

        return cls(
            input=input,
            trial=trial,
            wall_seconds=float(metrics["wall_seconds"]),
            cpu_seconds=float(metrics["cpu_seconds"]),
            peak_memory_bytes=optional_int("peak_memory_bytes") or 0,
            worker_memory_bytes=optional_int("worker_memory_bytes") or 0,
            bytes_written=optional_int("bytes_written"),
            storage_bytes_written=optional_int("storage_bytes_written"),
            host_cpus=optional_int("cpus"),
        )


@dataclass(frozen=True)
class Estimate:
    """What a knot's function needs per input, measured on a trial run, and what follows.

    Figures are per input: the median (``wall_seconds``, ...) and the maximum (``max_...``)
    over every measured task (``measurements``: each sample input, ``trials`` times). The
    suggestion (``vcpus``, ``memory`` in MiB, ``instance_family`` on Batch) fits the sizes
    the knot's backend accepts. `expected_duration` and `expected_cost` price ``n`` inputs
    with it (``prices_as_of``, ``price_region``: the price table's date and region).
    """

    knot: str
    backend: str
    sample_size: int
    trials: int
    wall_seconds: float
    max_wall_seconds: float
    cpu_seconds: float
    max_cpu_seconds: float
    peak_memory_bytes: int
    max_peak_memory_bytes: int
    bytes_written: int | None
    max_bytes_written: int | None
    worker_memory_bytes: int
    vcpus: float
    memory: int
    instance_family: str | None
    instance_type: str | None  # the smallest type of the family that holds one task
    compute_type: str  # whose prices apply: "EC2", "SPOT", "FARGATE" or "FARGATE_SPOT"
    tasks_at_once: int  # with the suggested resources (local: the workers)
    measurements: tuple[Measurement, ...] = field(repr=False)
    price_region: str = PRICE_REGION
    prices_as_of: str = PRICES_AS_OF

    @property
    def resources(self) -> Resources:
        """The suggestion, as ``knot.resources`` holds it once ``resources="auto"`` used it."""
        return Resources(self.vcpus, self.memory, self.instance_family)

    @property
    def cpu_share(self) -> float:
        """CPU time per second of wall time (median): ~1 for a busy single thread."""
        return _cpu_share(self.measurements)

    def expected_duration(self, n: int) -> float:
        """Seconds for ``n`` inputs with the suggested resources: ``ceil(n / tasks at once)``
        times the median wall time. Batch queueing, instance start-up and image pulls (tens
        of seconds to minutes) are not included."""
        _check_count(n)
        return math.ceil(n / self.tasks_at_once) * self.wall_seconds

    def expected_cost(self, n: int, *, spot: bool | None = None) -> float | None:
        """US dollars for ``n`` inputs on AWS Batch with the suggested resources, from the
        price table (`aioknot._prices`: list prices of ``price_region`` as of
        ``prices_as_of``). ``spot`` defaults to the knot's compute type (on-demand EC2 for
        a local knot, i.e. what the run would cost on Batch); Spot is priced at a typical
        discount. None when no instance in the table holds one task."""
        _check_count(n)
        fargate = self.compute_type.startswith("FARGATE")
        if spot is None:
            spot = self.compute_type in ("SPOT", "FARGATE_SPOT")
        memory_gib = self.memory / 1024
        if fargate:
            hourly = self.vcpus * FARGATE_VCPU_HOUR + memory_gib * FARGATE_GB_HOUR
            seconds = max(self.wall_seconds, FARGATE_MINIMUM_SECONDS)
            discount = SPOT_DISCOUNT["FARGATE"] if spot else 0.0
        else:
            instance = _instance_type(self.instance_type)
            if instance is None:
                return None
            hourly = instance.hourly * _instance_share(instance, self.vcpus, self.memory)
            seconds = self.wall_seconds
            discount = SPOT_DISCOUNT["EC2"] if spot else 0.0
        return n * hourly * seconds / 3600 * (1 - discount)

    def __str__(self) -> str:
        n = SHOWN_INPUTS
        written = (
            f", wrote {_bytes(self.bytes_written)} / {_bytes(self.max_bytes_written)}"
            if self.bytes_written is not None and self.max_bytes_written is not None
            else ""
        )
        lines = [
            f"Estimate for knot {self.knot!r} ({self.backend}): {self.sample_size} sample "
            f"input{'s' if self.sample_size != 1 else ''} x {self.trials} "
            f"trial{'s' if self.trials != 1 else ''}",
            f"  per input (median / max): wall {_seconds(self.wall_seconds)} / "
            f"{_seconds(self.max_wall_seconds)}, CPU {_seconds(self.cpu_seconds)} / "
            f"{_seconds(self.max_cpu_seconds)}, peak memory "
            f"{_bytes(self.peak_memory_bytes)} / {_bytes(self.max_peak_memory_bytes)}"
            f"{written}",
            f"  worker's own memory: {_bytes(self.worker_memory_bytes)}",
            f"  suggested: {self.resources}"
            + (f" ({FAMILY_KINDS[self.instance_family]})" if self.instance_family else ""),
            f"  {n:,} inputs: ~{_seconds(self.expected_duration(n))} with "
            f"{self.tasks_at_once} task{'s' if self.tasks_at_once != 1 else ''} at once",
        ]
        on_demand = self.expected_cost(n, spot=False)
        spot = self.expected_cost(n, spot=True)
        if on_demand is not None and spot is not None:
            where = "Fargate" if self.compute_type.startswith("FARGATE") else "EC2"
            lines.append(
                f"  on AWS Batch ({where}): ~${on_demand:.4g} on-demand, ~${spot:.4g} Spot "
                f"({self.price_region} list prices as of {self.prices_as_of})"
            )
        return "\n".join(lines)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """IPython and Jupyter show an estimate as its few readable lines."""
        printer.text(str(self))


# -- the rules ------------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[middle])
    return (ordered[middle - 1] + ordered[middle]) / 2


def _cpu_share(measurements: Sequence[Measurement]) -> float:
    return median(
        m.cpu_seconds / m.wall_seconds if m.wall_seconds > 0 else 0.0 for m in measurements
    )


def needed_vcpus(measurements: Sequence[Measurement]) -> float:
    """The vCPUs the tasks kept busy, less `CPU_SLACK` (before rounding to a size)."""
    return max(0.0, _cpu_share(measurements) - CPU_SLACK)


def needed_memory(measurements: Sequence[Measurement]) -> int:
    """MiB a task needs: its largest peak with `MEMORY_HEADROOM`, plus the worker's own."""
    peak = max(m.peak_memory_bytes for m in measurements)
    worker = median(m.worker_memory_bytes for m in measurements)
    return math.ceil((peak * MEMORY_HEADROOM + worker) / MiB)


def instance_family(vcpus: float, memory: int) -> str:
    """The leanest family (memory per vCPU) that holds a task of ``vcpus`` and ``memory``."""
    per_vcpu = memory / 1024 / max(vcpus, 1.0)
    for family, gib in FAMILY_GIB_PER_VCPU.items():
        if per_vcpu <= gib * (1 - INSTANCE_RESERVED_SHARE):
            return family
    return list(FAMILY_GIB_PER_VCPU)[-1]


def smallest_instance(family: str, vcpus: float, memory: int) -> InstanceType | None:
    for instance in INSTANCE_TYPES:
        usable = instance.memory_gib * 1024 * (1 - INSTANCE_RESERVED_SHARE)
        if instance.family == family and instance.vcpus >= vcpus and usable >= memory:
            return instance
    return None


def _instance_type(name: str | None) -> InstanceType | None:
    return next((i for i in INSTANCE_TYPES if i.name == name), None)


def _instance_share(instance: InstanceType, vcpus: float, memory: int) -> float:
    usable_mib = instance.memory_gib * 1024 * (1 - INSTANCE_RESERVED_SHARE)
    return max(vcpus / instance.vcpus, memory / usable_mib)


def make_estimate(
    measurements: Sequence[Measurement],
    *,
    knot: str,
    backend: str,
    capacity: Capacity,
    sample_size: int,
    trials: int,
    fit: Callable[[float, int], tuple[float, int]],
) -> Estimate:
    """The figures, the suggestion (``fit``: the backend's `Backend.fit_resources`) and what
    the estimate needs to price it."""
    vcpus, memory = fit(needed_vcpus(measurements), needed_memory(measurements))
    compute_type = capacity.compute_type or "EC2"
    family = instance = None
    if not compute_type.startswith("FARGATE"):
        family = instance_family(vcpus, memory)
        fitting = smallest_instance(family, vcpus, memory)
        instance = fitting.name if fitting is not None else None
    if capacity.max_vcpus is not None:
        tasks = max(1, int(capacity.max_vcpus // vcpus))
    else:
        tasks = capacity.tasks

    written = [m.bytes_written for m in measurements if m.bytes_written is not None]
    return Estimate(
        knot=knot,
        backend=backend,
        sample_size=sample_size,
        trials=trials,
        wall_seconds=median(m.wall_seconds for m in measurements),
        max_wall_seconds=max(m.wall_seconds for m in measurements),
        cpu_seconds=median(m.cpu_seconds for m in measurements),
        max_cpu_seconds=max(m.cpu_seconds for m in measurements),
        peak_memory_bytes=int(median(m.peak_memory_bytes for m in measurements)),
        max_peak_memory_bytes=max(m.peak_memory_bytes for m in measurements),
        bytes_written=int(median(written)) if written else None,
        max_bytes_written=max(written) if written else None,
        worker_memory_bytes=int(median(m.worker_memory_bytes for m in measurements)),
        vcpus=vcpus,
        memory=memory,
        instance_family=family,
        instance_type=instance,
        compute_type=compute_type,
        tasks_at_once=tasks,
        measurements=tuple(measurements),
    )


# -- checking what the user gave ------------------------------------------------------------


def check_trials(trials: object) -> int:
    if isinstance(trials, bool) or not isinstance(trials, int) or not 1 <= trials <= MAX_TRIALS:
        raise ConfigurationError(
            f"trials= is how many times each sample input is run, a whole number from 1 to "
            f"{MAX_TRIALS}; got {trials!r}"
        )
    return trials


async def sample_list(sample_inputs: object, trials: int) -> list[Any]:
    """The sample as a list, refused (before anything runs) if it is not a few inputs."""
    if isinstance(sample_inputs, (str, bytes)) or not isinstance(
        sample_inputs, (Iterable, AsyncIterable)
    ):
        raise ConfigurationError(
            "sample_inputs must be an iterable of a few typical inputs, e.g. "
            f"knot.estimate([10**6, 10**7]); got {type(sample_inputs).__name__}"
        )
    if isinstance(sample_inputs, AsyncIterable):
        sample = [item async for item in sample_inputs]
    else:
        sample = list(sample_inputs)
    if not sample:
        raise ConfigurationError(
            "sample_inputs is empty: an estimate runs the function on a few typical inputs, "
            "e.g. knot.estimate(inputs[:3])"
        )
    if len(sample) * trials > MAX_MEASURED_INPUTS:
        raise ConfigurationError(
            f"{len(sample)} sample inputs x trials={trials} is {len(sample) * trials} "
            f"measured tasks: an estimate takes at most {MAX_MEASURED_INPUTS}; a few typical "
            "inputs are enough (the largest among them sets the memory)"
        )
    return sample


def _check_count(n: object) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigurationError(f"n is a number of inputs, a whole number >= 0; got {n!r}")


# -- running a trial ------------------------------------------------------------------------


async def estimate(
    knot: AsyncKnot[Any],
    sample_inputs: Inputs,
    *,
    trials: int = DEFAULT_TRIALS,
    starmap: bool = False,
    kwargs: Any = None,
) -> Estimate:
    """``knot.estimate``: every sample input run ``trials`` times in measuring mode."""
    trials = check_trials(trials)
    knot._check_open()
    knot._check_runs_functions()
    function = knot._function_with(kwargs)
    sample = await sample_list(sample_inputs, trials)
    key = function_key(knot.name, function.digest)
    knot._functions[key] = function
    return await measure(knot, sample, trials=trials, starmap=starmap, function=key)


async def measure(
    knot: AsyncKnot[Any], sample: list[Any], *, trials: int, starmap: bool, function: str
) -> Estimate:
    """Run ``sample`` (each input ``trials`` times, in rounds) as a measured run of the
    knot's backend, read every task's figures, remove the run's data, and estimate."""
    store, backend, group = knot._check_open()
    spec = knot._run_spec(store, new_run_id(), function, starmap=starmap)
    spec = replace(spec, store_environment=(*spec.store_environment, (MEASURE_VARIABLE, "1")))
    run: Run[Any] = Run.start(spec, store, backend, retain=False, return_exceptions=True)
    knot._runs.add(run)
    group.start_soon(run._watch)
    count = len(sample) * trials
    try:
        await knot._store_function(store, function)
        await run._send(sample * trials, ready=knot._wait_prepared)
        outcomes = await run.gather(return_exceptions=True)
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, TaskFailure):
                raise _trial_failed(knot.name, sample, index, outcome) from outcome
        keys = [metrics_key(spec.run_prefix, index) for index in range(count)]
        try:
            data = await store.get_many(keys)
        except KeyError as missing:
            raise KnotError(
                f"the trial run {run.id} of knot {knot.name!r} stored no figures ({missing}): "
                "its worker does not measure. A prebuilt image= must carry this aioknot "
                "version's worker; rebuild it"
            ) from None
    finally:
        with anyio.CancelScope(shield=True):
            await _remove_trial(knot.name, run)
    measurements = [
        Measurement.from_metrics(
            json.loads(item), input=index % len(sample), trial=index // len(sample)
        )
        for index, item in enumerate(data)
    ]
    return make_estimate(
        measurements,
        knot=knot.name,
        backend=knot.backend,
        capacity=backend.capacity(),
        sample_size=len(sample),
        trials=trials,
        fit=backend.fit_resources,
    )


def _trial_failed(knot: str, sample: list[Any], index: int, failure: TaskFailure) -> KnotError:
    position = index % len(sample)
    shown = repr(sample[position])
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    if isinstance(failure, TaskError):
        what = f"raised {failure.remote_type}: {failure.remote_message}"
    else:
        what = f"was lost: {failure}"
    return KnotError(
        f"estimating knot {knot!r}: sample input {position} ({shown}) {what}. An estimate "
        "is made from tasks that succeed: fix the function or choose other sample inputs"
    )


async def _remove_trial(knot: str, run: Run[Any]) -> None:
    """Stop what is left of a trial run and remove its data (best effort: what stays, the
    retention sweep removes)."""
    try:
        await run.cancel()
        with anyio.move_on_after(TRIAL_SETTLE_SECONDS):
            await run._watched.wait()
        await run._remove_data()
    except Exception as error:
        logger.info("%s: removing the data of trial run %s failed: %s", knot, run.id, error)


# -- resources="auto" -----------------------------------------------------------------------


async def peek(inputs: Inputs, count: int) -> tuple[list[Any], Inputs]:
    """The first ``count`` inputs, and inputs that give them again and then the rest, still
    lazily. A list, tuple or range is only sliced (and passed on as it is: its length is
    known, which packs it faster)."""
    if isinstance(inputs, (list, tuple, range)):
        return list(inputs[:count]), inputs
    if isinstance(inputs, AsyncIterable):
        iterator = aiter(inputs)
        head: list[Any] = []
        for _ in range(count):
            try:
                head.append(await anext(iterator))
            except StopAsyncIteration:
                break

        async def again() -> Any:
            for item in head:
                yield item
            async for item in iterator:
                yield item

        return head, again()
    sync_iterator = iter(inputs)
    head = list(itertools.islice(sync_iterator, count))
    return head, itertools.chain(head, sync_iterator)


class AutoResources:
    """``resources="auto"``: the knot's first map with inputs is first estimated on its first
    few inputs; every task submitted afterwards (that map's, and later maps') gets the
    suggestion. Those inputs run twice: measured, then in the run."""

    def __init__(self) -> None:
        self.chosen: Resources | None = None
        self.estimate: Estimate | None = None
        self._tried = False
        self._lock = anyio.Lock()

    async def before_submit(self, knot: AsyncKnot[Any], run: Run[Any], inputs: Inputs) -> Inputs:
        """``inputs`` as they are to be sent (peeked ones put back), once the resources are
        chosen; a trial that fails leaves the configured resources, and says why."""
        async with self._lock:
            if not self._tried:
                head, inputs = await peek(inputs, AUTO_SAMPLE_INPUTS)
                if head:
                    self._tried = True
                    await self._choose(knot, run, head)
        if self.chosen is not None:
            run.resources = self.chosen
        return inputs

    async def _choose(self, knot: AsyncKnot[Any], run: Run[Any], head: list[Any]) -> None:
        try:
            estimate = await measure(
                knot,
                head,
                trials=AUTO_TRIALS,
                starmap=run._spec.starmap,
                function=run.function_key,
            )
        except KnotError as error:
            logger.warning(
                "%s: resources='auto' could not estimate from the first %d inputs, so tasks "
                "keep the configured resources: %s",
                knot.name,
                len(head),
                error,
            )
            return
        _, backend, _ = knot._check_open()
        await backend.use_resources(estimate.vcpus, estimate.memory)
        self.estimate, self.chosen = estimate, estimate.resources
        enforced = "" if backend.capacity().enforced else " (recorded only: not enforced here)"
        knot._progress(
            f"resources='auto' chose {estimate.resources}{enforced}, from the first "
            f"{len(head)} inputs: wall {_seconds(estimate.wall_seconds)}, CPU "
            f"{_seconds(estimate.cpu_seconds)}, peak memory "
            f"{_bytes(estimate.max_peak_memory_bytes)} per input"
        )


# -- text -----------------------------------------------------------------------------------


def _seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _bytes(count: int | None) -> str:
    if count is None:
        return "?"
    if count < 1024:
        return f"{count} B"
    if count < 1024 * 1024:
        return f"{count / 1024:.1f} KiB"
    if count < 1024**3:
        return f"{count / MiB:.1f} MiB"
    return f"{count / 1024**3:.2f} GiB"
