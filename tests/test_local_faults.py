"""The local backend under real faults: a hung input, a full disk, a function's own child
processes, and S3 failing transiently behind the fault proxy. Nothing is mocked: real worker
processes, a real tmpfs, real SIGKILLs, a real moto server behind a real proxy."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from helpers.aws import make_bucket
from helpers.processes import alive, gone, wait_for_no_workers, written_pids
from helpers.tmpfs import tmpfs
from helpers.waiting import wait_until_async
from infra.fault_proxy import Fault, FaultProxy
from infra.moto import MotoServer

from aioknot import AsyncKnot, TaskLost

pytestmark = pytest.mark.usefixtures("aioknot_home")


async def read_pids(directory: Path, count: int) -> list[int]:
    """The pids the function wrote into ``directory``, once there are ``count`` of them."""
    return await wait_until_async(
        lambda: written_pids(directory, count), timeout=30, what=f"{count} pid files written"
    )


# -- a hung input holds back no other input ---------------------------------------------------


def hangs_on_one(x: tuple[int, int, str]) -> int:
    """Input ``hung`` waits (up to a minute) until the file ``release`` exists."""
    index, hung, release = x
    if index == hung:
        # The hang under test: the worker cannot be told of the test's release but by a file.
        deadline = time.monotonic() + 60
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.01)
    return index * 2


async def test_a_hung_input_holds_back_neither_finished_results_nor_its_chunk_mates(
    tmp_path: Path,
) -> None:
    release = str(tmp_path / "release")
    total, hung = 400, 150  # tiny tasks: the hung one sits mid-chunk, mates on both sides
    inputs = [(i, hung, release) for i in range(total)]
    async with AsyncKnot(hangs_on_one, backend="local", workers=2) as knot:
        run = await knot.map(inputs)
        seen: dict[int, int] = {}
        with anyio.fail_after(60):
            async for index, value in run.items():
                seen[index] = value
                if len(seen) == total - 1:
                    break
        # Every other input's result arrived while input 150 still hangs: those finished
        # before it in its chunk (written by the worker's flusher) and those queued behind it
        # (taken back and run by the other worker).
        assert hung not in seen and not os.path.exists(release)
        assert seen == {i: 2 * i for i in range(total) if i != hung}
        Path(release).touch()
        with anyio.fail_after(60):
            values = await run.gather()
        assert values == [2 * i for i in range(total)]
        assert (await run.status())["lost"] == 0


# -- a full disk is said plainly -------------------------------------------------------------

BIG = 300_000  # a result this size: three fill most of a 1 MiB tmpfs


def big_or_small(x: tuple[int, str]) -> bytes:
    index, pids = x
    with open(os.path.join(pids, f"{os.getpid()}.pid"), "w") as file:
        file.write(str(os.getpid()))
    if 2 <= index < 8:
        time.sleep(0.1)  # a slow input: its record is written on its own
        return bytes([index]) * BIG
    return bytes([index])


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs: writes beyond it fail with ENOSPC."""
    with tmpfs(tmp_path / "full-disk", "size=1m") as mount:
        yield mount


async def test_results_that_overflow_the_disk_are_task_lost_saying_no_space_left(
    full_disk: Path, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    total = 16
    inputs = [(i, str(pids)) for i in range(total)]
    async with AsyncKnot(
        big_or_small, backend="local", workers=1, directory=str(full_disk)
    ) as knot:
        run = await knot.map(inputs)
        with anyio.fail_after(60):
            values = await run.gather(return_exceptions=True)
    lost = [v for v in values if isinstance(v, TaskLost)]
    assert lost, "1 MiB cannot hold six results of 300 kB"
    for index, value in enumerate(values):
        if isinstance(value, TaskLost):
            assert value.index == index and 2 <= index < 8  # only the big results are lost
            assert "no space left on device" in value.reason
            assert str(full_disk) in value.reason  # names the store
        else:
            assert value == (bytes([index]) * BIG if 2 <= index < 8 else bytes([index]))
    # The run went on after the disk filled: the small results after it were all written.
    assert values[8:] == [bytes([i]) for i in range(8, total)]
    # One worker ran every input: no crash and respawn per lost input.
    assert len({int(p.read_text()) for p in pids.glob("*.pid")}) == 1
    # Nothing half-written is left on the full disk.
    assert not list(full_disk.rglob("*.tmp"))


# -- cancelling kills what the function started ------------------------------------------------


def starts_a_child(x: tuple[int, str, float]) -> int:
    """Start ``sleep 1000``, record its pid, then work for ``seconds``."""
    index, pids, seconds = x
    child = subprocess.Popen(["sleep", "1000"])
    with open(os.path.join(pids, f"{index}.tmp"), "w") as file:
        file.write(str(child.pid))
    os.replace(os.path.join(pids, f"{index}.tmp"), os.path.join(pids, f"{index}.pid"))
    time.sleep(seconds)  # the work itself: the input runs this long
    return index


async def test_run_cancel_kills_the_processes_the_function_started(tmp_path: Path) -> None:
    async with AsyncKnot(starts_a_child, backend="local", workers=2) as knot:
        run = await knot.map([(i, str(tmp_path), 30.0) for i in range(2)])
        children = await read_pids(tmp_path, 2)
        assert all(alive(pid) for pid in children)
        await run.cancel()
        assert await gone(children) == []
        values = await run.gather(return_exceptions=True)
        assert all(isinstance(v, TaskLost) for v in values)


async def test_leaving_amap_kills_the_children_of_the_inputs_it_abandons(tmp_path: Path) -> None:
    inputs = [(0, str(tmp_path), 0.0)] + [(i, str(tmp_path), 30.0) for i in range(1, 3)]
    async with AsyncKnot(starts_a_child, backend="local", workers=3) as knot:
        async for _ in knot.amap(inputs):
            # Input 0 returned (its child lives on); inputs 1-2 run: all three have children.
            children = await read_pids(tmp_path, 3)
            break
        abandoned = [int((tmp_path / f"{i}.pid").read_text()) for i in (1, 2)]
        # The inputs still running were cancelled with their whole process groups ...
        assert await gone(abandoned) == []
        assert set(abandoned) <= set(children)
    # ... and the child input 0 left behind dies when the knot closes.
    assert await gone(children) == []


async def test_closing_the_knot_kills_what_finished_functions_left_running(
    tmp_path: Path,
) -> None:
    async with AsyncKnot(starts_a_child, backend="local", workers=2) as knot:
        run = await knot.map([(i, str(tmp_path), 0.0) for i in range(4)])
        assert sorted(await run.gather()) == [0, 1, 2, 3]
        children = await read_pids(tmp_path, 4)
        assert all(alive(pid) for pid in children)  # the functions returned, they live on
    assert await gone(children) == []
    assert await anyio.to_thread.run_sync(wait_for_no_workers, os.getpid(), 5.0) == []


def starts_a_child_then_dies(x: tuple[int, str]) -> int:
    index, pids = x
    if index == 1:
        starts_a_child((index, pids, 0.0))
        os.kill(os.getpid(), signal.SIGKILL)  # the worker dies; its child must not live on
    return index


async def test_a_worker_that_dies_takes_the_processes_its_function_started_with_it(
    tmp_path: Path,
) -> None:
    async with AsyncKnot(starts_a_child_then_dies, backend="local", workers=2) as knot:
        run = await knot.map([(i, str(tmp_path)) for i in range(4)])
        values = await run.gather(return_exceptions=True)
        (child,) = await read_pids(tmp_path, 1)
        # Still inside the knot: the group was killed when its worker was found dead.
        assert await gone([child]) == []
    assert isinstance(values[1], TaskLost) and "SIGKILL" in values[1].reason
    assert [v for i, v in enumerate(values) if i != 1] == [0, 2, 3]


# -- the store's settings reach the workers; transient S3 faults lose nothing ----------------


def square(x: int) -> int:
    return x * x


async def test_endpoint_url_alone_reaches_the_workers(
    aws: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # only the option says where S3 is
    await make_bucket(aws.url, "endpoint-only")
    async with AsyncKnot(
        square, backend="local", bucket="s3://endpoint-only/work", endpoint_url=aws.url
    ) as knot:
        run = await knot.map(range(50))
        with anyio.fail_after(60):
            assert await run.gather() == [x * x for x in range(50)]


async def _timed_run(endpoint: str, bucket: str, count: int) -> tuple[float, list[object]]:
    async with AsyncKnot(
        square, backend="local", bucket=f"s3://{bucket}/work", endpoint_url=endpoint
    ) as knot:
        began = time.perf_counter()
        run = await knot.map(range(count))
        with anyio.fail_after(240):
            values = await run.gather(return_exceptions=True)
        return time.perf_counter() - began, values


@pytest.mark.timeout(300)  # two runs of 2,000 inputs, one of them under faults
async def test_fifteen_percent_of_s3_requests_failing_loses_nothing(
    aws: MotoServer, fault_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # the client and the workers go through the proxy
    await make_bucket(fault_proxy.url, "faulty")
    count = 2_000
    clean_seconds, clean = await _timed_run(fault_proxy.url, "faulty", count)
    assert clean == [x * x for x in range(count)]
    clean_requests = sum(fault_proxy.counts.values())
    fault_proxy.reset_counts()
    for kind in ("503", "500", "reset"):  # 5% each: 15% of every S3 request fails
        fault_proxy.add(Fault(kind=kind, service="s3", rate=0.05))
    faulty_seconds, faulty = await _timed_run(fault_proxy.url, "faulty", count)
    lost = [v for v in faulty if isinstance(v, BaseException)]
    assert lost == [] and faulty == [x * x for x in range(count)]
    assert sum(fault_proxy.faults.values()) > 0  # the faults did happen
    print(
        f"\n{count} inputs, local backend on S3 through the proxy: "
        f"fault-free {clean_seconds:.1f} s ({count / clean_seconds:.0f}/s, "
        f"{clean_requests} requests); 15% faults {faulty_seconds:.1f} s "
        f"({count / faulty_seconds:.0f}/s, {sum(fault_proxy.counts.values())} requests, "
        f"{sum(fault_proxy.faults.values())} faults)"
    )
