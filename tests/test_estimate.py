"""``knot.estimate`` and ``resources="auto"``: figures measured by the real worker.

On the local backend the trial runs in real worker processes against a real store directory,
and each function's figure is known (a sleep, a busy loop, an allocation, a file written): the
estimate must land within 20% of it. On AWS, moto's Batch runs no container (simple mode), so
the worker file itself is run for each child of each job, with the job's own environment,
right before the job goes in (`running_workers`): it measures there as it would in a
container. The rules that turn figures into a suggestion and a price are checked on figures
made up for them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers.aws import BUCKET, IMAGE, Calls, MotoClients
from infra.moto import MotoServer

import aioknot
from aioknot import (
    AsyncKnot,
    ConfigurationError,
    Estimate,
    KnotError,
    Resources,
    TaskError,
    _estimate,
    _worker,
)
from aioknot._backends.base import Capacity
from aioknot._backends.local import LocalBackend
from aioknot._estimate import Measurement, make_estimate

MiB = 1024 * 1024


def close_to(measured: float, known: float, share: float = 0.2) -> bool:
    return abs(measured - known) <= share * known


# -- functions of known cost -----------------------------------------------------------------


def sleeps_half_a_second(x: int) -> int:
    time.sleep(0.5)
    return x


def busy_for(seconds: float) -> float:
    """CPU time, not wall time: the machine may be shared, the process's own clock is not."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    return seconds


def touches(megabytes: int) -> int:
    memory = bytearray(megabytes * MiB)
    for page in range(0, len(memory), 4096):
        memory[page] = 1
    return len(memory)


def writes(path: str) -> int:
    with open(path, "wb") as file:
        for _ in range(20):
            file.write(b"x" * MiB)
    return os.path.getsize(path)


def square_quickly(x: int) -> int:
    time.sleep(0.05)
    return x * x


def refuses_seven(x: int) -> int:
    if x == 7:
        raise ValueError(f"seven is not allowed (got {x})")
    return x


def local(func: Any, **options: Any) -> AsyncKnot[Any]:
    return AsyncKnot(func, backend="local", **options)


# -- the local backend -------------------------------------------------------------------------


@pytest.mark.usefixtures("aioknot_home")
async def test_wall_time_of_a_sleep_and_no_cpu() -> None:
    async with local(sleeps_half_a_second) as knot:
        estimate = await knot.estimate([1, 2], trials=2)
        runs = await knot.runs()
    assert isinstance(estimate, Estimate)
    assert len(estimate.measurements) == 4
    assert close_to(estimate.wall_seconds, 0.5), estimate
    assert close_to(estimate.max_wall_seconds, 0.5), estimate
    assert estimate.cpu_seconds < 0.05, estimate
    assert estimate.vcpus == 1
    assert estimate.backend == "local" and estimate.tasks_at_once == os.cpu_count()
    # n inputs in waves of the workers, each taking the median wall time.
    assert estimate.expected_duration(10) == pytest.approx(
        -(-10 // estimate.tasks_at_once) * estimate.wall_seconds
    )
    assert runs == []  # the trial's data is gone


@pytest.mark.usefixtures("aioknot_home")
async def test_cpu_time_of_a_busy_loop() -> None:
    async with local(busy_for) as knot:
        estimate = await knot.estimate([0.4], trials=3)
    assert close_to(estimate.cpu_seconds, 0.4), estimate
    assert close_to(estimate.max_cpu_seconds, 0.4), estimate
    assert estimate.wall_seconds >= estimate.cpu_seconds * 0.95
    assert estimate.vcpus == 1


@pytest.mark.usefixtures("aioknot_home")
async def test_peak_memory_of_an_allocation() -> None:
    async with local(touches) as knot:
        estimate = await knot.estimate([200], trials=2)
    assert close_to(estimate.max_peak_memory_bytes, 200 * MiB), estimate
    assert close_to(estimate.peak_memory_bytes, 200 * MiB), estimate
    # The worker's own footprint is measured apart (its private pages: a local worker forked
    # from this test runner does not count the runner's), and the suggestion holds both.
    assert 0 < estimate.worker_memory_bytes < 100 * MiB
    needed = (1.25 * estimate.max_peak_memory_bytes + estimate.worker_memory_bytes) / MiB
    needed = max(needed, 512)  # Batch's sizes start there
    assert needed <= estimate.memory < needed + 256
    assert estimate.memory % 256 == 0


@pytest.mark.usefixtures("aioknot_home")
async def test_bytes_written_to_a_file(tmp_path: Path) -> None:
    paths = [str(tmp_path / f"out-{i}") for i in range(2)]
    async with local(writes) as knot:
        estimate = await knot.estimate(paths, trials=1)
    assert estimate.bytes_written is not None and estimate.max_bytes_written is not None
    assert close_to(estimate.bytes_written, 20 * MiB), estimate
    assert close_to(estimate.max_bytes_written, 20 * MiB), estimate
    assert all(os.path.getsize(path) == 20 * MiB for path in paths)


@pytest.mark.usefixtures("aioknot_home")
async def test_starmap_kwargs_and_a_readable_summary() -> None:
    def scaled(a: int, b: int, *, scale: int) -> int:
        time.sleep(0.1)
        return (a + b) * scale

    async with local(scaled) as knot:
        estimate = await knot.estimate(
            [(1, 2), (3, 4)], trials=1, starmap=True, kwargs={"scale": 2}
        )
    text = str(estimate)
    assert "2 sample inputs x 1 trial" in text
    assert "suggested: vcpus=1, memory=512 MiB, instance family c7i" in text
    assert "1,000 inputs" in text and "on-demand" in text and "Spot" in text
    assert "as of" in text
    assert estimate.resources == Resources(1, 512, "c7i")


@pytest.mark.usefixtures("aioknot_home")
async def test_a_raising_sample_input_is_named_and_nothing_is_estimated() -> None:
    async with local(refuses_seven) as knot:
        with pytest.raises(KnotError, match=r"sample input 1 \(7\) raised ValueError: seven") as e:
            await knot.estimate([1, 7, 3])
        assert isinstance(e.value.__cause__, TaskError)
        assert "seven is not allowed" in e.value.__cause__.remote_traceback
        assert await knot.runs() == []  # the failed trial's data is gone too


@pytest.mark.parametrize(
    ("sample", "trials", "message"),
    [
        ([], 3, "sample_inputs is empty"),
        (5, 3, "sample_inputs must be an iterable"),
        ("abc", 3, "sample_inputs must be an iterable"),
        ([1], 0, "trials= is how many times"),
        ([1], True, "trials= is how many times"),
        ([1], "3", "trials= is how many times"),
        ([1], 21, "from 1 to 20"),
        (range(501), 2, "at most 1000"),
    ],
)
async def test_bad_sample_or_trials_fail_before_anything_runs(
    sample: Any, trials: Any, message: str, aioknot_home: str
) -> None:
    async with local(sleeps_half_a_second) as knot:
        with pytest.raises(ConfigurationError, match=message):
            await knot.estimate(sample, trials=trials)
        assert await knot.runs() == []
    assert not list(Path(aioknot_home).rglob("metrics"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"resources": "manual"}, "resources= takes 'auto'"),
        ({"resources": True}, "resources= takes 'auto'"),
        ({"resources": "auto", "vcpus": 2}, "drop vcpus="),
        ({"resources": "auto", "memory": 4096}, "drop memory="),
        ({"resources": "auto", "vcpus": 2, "memory": 4096}, "drop vcpus= and memory="),
    ],
)
def test_bad_resources_fail_at_construction(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        AsyncKnot(square_quickly, backend="local", **options)
    with pytest.raises(ConfigurationError, match=message):
        AsyncKnot(square_quickly, backend="aws", **options)


@pytest.fixture
def trials(monkeypatch: pytest.MonkeyPatch) -> list[list[Any]]:
    """The samples of every trial run from here on (through the real `measure`)."""
    samples: list[list[Any]] = []
    original = _estimate.measure

    async def measure(knot: Any, sample: list[Any], **kwargs: Any) -> Estimate:
        samples.append(list(sample))
        return await original(knot, sample, **kwargs)

    monkeypatch.setattr(_estimate, "measure", measure)
    return samples


async def test_auto_resources_from_the_first_inputs_of_the_first_map(
    caplog: pytest.LogCaptureFixture, trials: list[list[Any]], aioknot_home: str
) -> None:
    pulled: list[int] = []

    def inputs() -> Iterator[int]:
        for x in range(12):
            pulled.append(x)
            yield x

    caplog.set_level(logging.INFO, logger="aioknot")
    async with local(square_quickly, resources="auto") as knot:
        assert knot.resources is None
        original = _estimate.measure

        async def measure_after_pulling(*args: Any, **kwargs: Any) -> Estimate:
            assert len(pulled) == 3  # only the sample was pulled when the trial ran
            return await original(*args, **kwargs)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(_estimate, "measure", measure_after_pulling)
            run = await knot.map(inputs())
        assert trials == [[0, 1, 2]]
        assert await run.gather() == [x * x for x in range(12)]
        chosen = knot.resources
        assert chosen == Resources(1, 512, "c7i")
        assert run.resources == chosen
        assert "resources=(vcpus=1, memory=512 MiB" in repr(knot)
        assert "resources=(vcpus=1, memory=512 MiB" in repr(run)
        # The choice is the knot's: later maps (and amaps) use it without a trial.
        assert [y async for y in knot.amap(range(4), ordered=True)] == [0, 1, 4, 9]
        second = await knot.map([5, 6])
        assert second.resources == chosen
        assert await second.gather() == [25, 36]
    assert trials == [[0, 1, 2]]
    assert not list(Path(aioknot_home).rglob("metrics"))  # no trial run left behind
    chose = [r.getMessage() for r in caplog.records if "resources='auto' chose" in r.getMessage()]
    assert len(chose) == 1
    assert "vcpus=1, memory=512 MiB" in chose[0] and "first 3 inputs" in chose[0]


@pytest.mark.usefixtures("aioknot_home")
async def test_auto_resources_on_an_amap_of_an_async_iterable(trials: list[list[Any]]) -> None:
    async def inputs() -> AsyncIterator[int]:
        for x in range(5):
            yield x

    async with local(square_quickly, resources="auto") as knot:
        assert [y async for y in knot.amap(inputs(), ordered=True)] == [0, 1, 4, 9, 16]
        assert knot.resources == Resources(1, 512, "c7i")
    assert trials == [[0, 1, 2]]


@pytest.mark.usefixtures("aioknot_home")
async def test_auto_resources_with_fewer_inputs_than_the_sample(trials: list[list[Any]]) -> None:
    async with local(square_quickly, resources="auto") as knot:
        assert await (await knot.map([])).gather() == []
        assert trials == []  # nothing to measure: the next map will
        assert await (await knot.map([4])).gather() == [16]
    assert trials == [[4]]


@pytest.mark.usefixtures("aioknot_home")
async def test_auto_resources_keep_the_options_when_the_trial_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with local(refuses_seven, resources="auto") as knot:
        run = await knot.map([7, 1, 2, 3])
        outcomes = await run.gather(return_exceptions=True)
        assert knot.resources is None and run.resources is None
    assert isinstance(outcomes[0], TaskError) and outcomes[1:] == [1, 2, 3]
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("could not estimate" in r.getMessage() and "seven" in r.getMessage() for r in warned)


def test_the_blocking_face(aioknot_home: str) -> None:
    with aioknot.Knot(sleeps_half_a_second, backend="local", resources="auto") as knot:
        estimate = knot.estimate([1], trials=1)
        assert close_to(estimate.wall_seconds, 0.5)
        assert knot.resources is None  # estimate() alone chooses nothing
        assert knot.map([3, 4]).result() == [3, 4]
        assert knot.resources == Resources(1, 512, "c7i")
        assert "resources=(vcpus=1" in repr(knot)


# -- the rules, on figures made up for them ------------------------------------------------------


def measured(
    wall: float = 1.0, cpu: float = 1.0, peak: int = 100 * MiB, worker: int = 50 * MiB
) -> Measurement:
    return Measurement(
        input=0,
        trial=0,
        wall_seconds=wall,
        cpu_seconds=cpu,
        peak_memory_bytes=peak,
        worker_memory_bytes=worker,
        bytes_written=0,
        storage_bytes_written=0,
        host_cpus=8,
    )


def estimated(
    measurements: Sequence[Measurement],
    capacity: Capacity | None = None,
    fit: Any = None,
) -> Estimate:
    return make_estimate(
        measurements,
        knot="k",
        backend="local",
        capacity=capacity or Capacity(tasks=4),
        sample_size=len(measurements),
        trials=1,
        fit=fit or LocalBackend(workers=1).fit_resources,
    )


@pytest.mark.parametrize(
    ("cpu_share", "vcpus"), [(0.0, 1), (1.0, 1), (1.15, 1), (1.5, 2), (3.9, 4), (4.3, 5)]
)
def test_vcpus_from_cpu_per_wall_second(cpu_share: float, vcpus: int) -> None:
    assert estimated([measured(wall=2.0, cpu=2.0 * cpu_share)]).vcpus == vcpus


@pytest.mark.parametrize(
    ("peak_mib", "vcpus", "memory", "family", "instance"),
    [
        # The largest peak with a quarter more, plus the worker's 50 MiB, in 256 MiB steps.
        (100, 1, 512, "c7i", "c7i.large"),  # 175 MiB: the 512 MiB floor
        (1350, 1, 1792, "c7i", "c7i.large"),  # 1.75 GiB a vCPU: compute-optimised
        (1500, 1, 2048, "m7i", "m7i.large"),  # 2 GiB: more than a c7i has (less 8%)
        (2800, 1, 3584, "m7i", "m7i.large"),
        (2900, 1, 3840, "r7i", "r7i.large"),
        (6000, 1, 7680, "r7i", "r7i.large"),
        (2800, 2, 3584, "c7i", "c7i.large"),
        (40_000, 2, 50_176, "r7i", "r7i.2xlarge"),
        (600_000, 1, 750_080, "r7i", None),  # no instance in the table holds it
    ],
)
def test_memory_family_and_instance(
    peak_mib: int, vcpus: int, memory: int, family: str, instance: str | None
) -> None:
    estimate = estimated([measured(cpu=float(vcpus), peak=peak_mib * MiB)])
    assert (estimate.vcpus, estimate.memory) == (vcpus, memory)
    assert (estimate.instance_family, estimate.instance_type) == (family, instance)
    assert (estimate.expected_cost(10) is None) == (instance is None)


def test_medians_maxima_duration_and_cost() -> None:
    figures = [measured(wall=w, cpu=w) for w in (1.0, 2.0, 9.0)]
    estimate = estimated(figures, Capacity(tasks=1, max_vcpus=8, compute_type="EC2"))
    assert (estimate.wall_seconds, estimate.max_wall_seconds) == (2.0, 9.0)
    assert estimate.tasks_at_once == 8  # max_vcpus // vcpus
    assert estimate.expected_duration(16) == 2 * 2.0
    assert estimate.expected_duration(17) == 3 * 2.0
    # c7i.large at $0.08925/h, a task holding 1 of its 2 vCPUs, 2 s an input.
    assert estimate.expected_cost(3600) == pytest.approx(0.08925 / 2 * 2.0)
    assert estimate.expected_cost(3600, spot=True) == pytest.approx(0.08925 / 2 * 2.0 * 0.4)
    spot = estimated(figures, Capacity(tasks=1, max_vcpus=8, compute_type="SPOT"))
    assert spot.expected_cost(10) == spot.expected_cost(10, spot=True)
    with pytest.raises(ConfigurationError):
        estimate.expected_cost(-1)


def test_fargate_sizes_and_prices() -> None:
    knot = AsyncKnot(square_quickly, backend="aws", compute_type="FARGATE", image=IMAGE)
    backend = knot._backend
    fit = backend.fit_resources
    assert fit(0.0, 300) == (0.25, 512)
    assert fit(0.8, 3000) == (1, 3072)
    assert fit(1.0, 9000) == (2, 9216)  # 1 vCPU takes at most 8 GiB
    assert fit(3.0, 100) == (4, 8192)
    assert fit(40.0, 10**6) == (16, 122880)  # the largest there is
    estimate = estimated([measured(wall=30.0, cpu=0.0)], backend.capacity(), fit)
    assert (estimate.vcpus, estimate.instance_family, estimate.compute_type) == (
        0.25,
        None,
        "FARGATE",
    )
    # A task is billed at least a minute: 0.25 vCPU and 0.5 GB for 60 s.
    minute = (0.25 * 0.04048 + 0.5 * 0.004445) / 60
    assert estimate.expected_cost(100) == pytest.approx(100 * minute)
    assert estimate.expected_cost(100, spot=True) == pytest.approx(100 * minute * 0.3)


# -- AWS Batch (moto, simple mode), the worker file run for each child ---------------------------


@contextlib.contextmanager
def running_workers() -> Iterator[list[dict[str, str]]]:
    """Every job an `AwsRun` submits meanwhile is run first by the worker file itself, one
    process per child, with the job's environment (moto's simple mode runs nothing and says
    the job SUCCEEDED at once). Yields each job's environment."""
    from aioknot._backends.aws.jobs import JobShape
    from aioknot._backends.aws.run import AwsRun

    environments: list[dict[str, str]] = []
    original = AwsRun._submit_group

    async def submit_group(self: AwsRun, group: Sequence[Any]) -> None:
        shape = JobShape.of(group)
        job = {item["name"]: item["value"] for item in shape.environment(self._spec)}
        environments.append(job)
        for child in range(max(shape.size, 1)):
            await anyio.run_process(
                [sys.executable, _worker.__file__],
                env={**os.environ, **job, "AWS_BATCH_JOB_ID": f"played-job:{child}"},
                check=True,
            )
        await original(self, group)

    AwsRun._submit_group = submit_group  # type: ignore[method-assign]
    try:
        yield environments
    finally:
        AwsRun._submit_group = original  # type: ignore[method-assign]


def on_batch(func: Any, **options: Any) -> AsyncKnot[Any]:
    return AsyncKnot(func, backend="aws", name="estimates", image=IMAGE, **options)


def definition_resources(boto: MotoClients, arn: str) -> dict[str, str]:
    (definition,) = boto("batch").describe_job_definitions(jobDefinitions=[arn])["jobDefinitions"]
    requirements = definition["containerProperties"]["resourceRequirements"]
    return {item["type"]: item["value"] for item in requirements}


@pytest.mark.usefixtures("fast_polls")
async def test_estimate_on_batch_measures_in_the_worker(
    simple_batch: MotoServer, boto: MotoClients
) -> None:
    with running_workers() as jobs:
        async with on_batch(busy_for) as knot:
            estimate = await knot.estimate([0.3, 0.3], trials=1)
    assert [job.get("AIOKNOT_MEASURE") for job in jobs] == ["1"]
    assert close_to(estimate.cpu_seconds, 0.3), estimate
    assert estimate.backend == "aws" and estimate.compute_type == "EC2"
    assert estimate.vcpus == 1 and estimate.instance_family == "c7i"
    assert estimate.instance_type == "c7i.large"
    assert estimate.tasks_at_once == 256  # the default max_vcpus, one vCPU a task
    cost = estimate.expected_cost(10_000)
    assert cost is not None and cost > 0
    assert "on AWS Batch (EC2)" in str(estimate)
    # The trial run's data is gone; the function stays, content-addressed.
    keys = [
        item["Key"]
        for item in boto("s3").list_objects_v2(Bucket=BUCKET).get("Contents", [])
        if "/runs/" in item["Key"]
    ]
    assert keys == []


@pytest.mark.usefixtures("fast_polls")
async def test_auto_resources_on_batch_register_a_definition_for_the_rest(
    simple_batch: MotoServer, boto: MotoClients, calls: Calls, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aioknot")
    with running_workers() as jobs:
        async with on_batch(square_quickly, resources="auto") as knot:
            run = await knot.map(range(5))
            assert await run.gather() == [x * x for x in range(5)]
            assert knot.resources == run.resources == Resources(1, 512, "c7i")
    assert calls.count("batch", "RegisterJobDefinition") == 2
    trial, *rest = calls.submits
    assert [job.get("AIOKNOT_MEASURE") for job in jobs] == ["1"] + [None] * len(rest)
    assert definition_resources(boto, trial["jobDefinition"]) == {"VCPU": "1", "MEMORY": "2048"}
    assert {submit["jobDefinition"] for submit in rest} != {trial["jobDefinition"]}
    for submit in rest:
        assert definition_resources(boto, submit["jobDefinition"]) == {
            "VCPU": "1",
            "MEMORY": "512",
        }
    assert any(
        "resources='auto' chose vcpus=1, memory=512 MiB" in r.getMessage() for r in caplog.records
    )


def leaves_a_process_behind(pid_file: str) -> int:
    """Starts a process that outlives the call (as a cached multiprocessing pool does)."""
    pid = os.fork()
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    with open(pid_file, "a") as file:
        file.write(f"{pid}\n")
    return pid


@pytest.mark.usefixtures("aioknot_home")
async def test_a_process_left_running_by_the_function_does_not_hold_the_measure(
    tmp_path: Path,
) -> None:
    pid_file = str(tmp_path / "pid")
    try:
        with anyio.fail_after(30):  # it used to wait for the pipe to close: a minute here
            async with local(leaves_a_process_behind) as knot:
                estimate = await knot.estimate([pid_file], trials=1)
                assert estimate.wall_seconds < 10
                # The next measurement is not held back by the machine's lock either.
                again = await knot.estimate([pid_file], trials=1)
                assert again.wall_seconds < 10
    finally:
        pids = Path(pid_file).read_text().split() if Path(pid_file).exists() else []
        assert len(pids) == 2
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 9)
