"""Stores under real faults: a fault-injecting proxy in front of the moto server, a real full
disk (tmpfs), a read-only file system, and damaged records.

What each test checks is what the user gets (every value, or a clear KnotError naming the
store) and that nothing was lost or left running; request counts come from the proxy, which
sees every request of the client and of the worker processes alike.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import boto3
import pytest
from helpers.processes import wait_for_no_workers
from helpers.tmpfs import tmpfs
from infra.fault_proxy import Fault, FaultProxy
from infra.moto import FAKE_CREDENTIALS, MotoServer

from aioknot import AsyncKnot, ConfigurationError, StoreError, TaskError, TaskLost
from aioknot._stores import s3 as store_s3
from aioknot._stores.local import LocalStore
from aioknot._stores.s3 import S3Store
from aioknot._watch import Outcome, ResultWatcher, as_outcomes
from aioknot._worker import (
    RECORD_MAGIC,
    RECORD_VALUE,
    encode_error_record,
    encode_group,
    encode_results,
    encode_value_record,
    result_key,
)

pytestmark = pytest.mark.usefixtures("aioknot_home")

RUN = "knots/k/runs/r"


def slow_square(x: int) -> int:
    time.sleep(0.1)
    return x * x


def paced_square(x: int) -> int:
    time.sleep(0.03)  # slow enough that every result is written (and fetched) on its own
    return x * x


def blob(size: int) -> bytes:
    return os.urandom(size)  # incompressible: it really takes its size on the disk


class NeverOver:
    """A backend run that never reports an end: only the store and ``lost`` finish inputs."""

    job_ids: list[str] = []

    async def watch(self) -> None:
        await anyio.sleep_forever()


def make_bucket(moto: MotoServer, name: str) -> None:
    """Create a bucket straight at moto, past the proxy (setup is not under test)."""
    s3 = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1")
    try:
        s3.create_bucket(Bucket=name)
    finally:
        s3.close()  # an unclosed client's socket warns at a later GC, failing another test


def fault_rate_each(total: float, kinds: int) -> float:
    """The rate per rule that makes ``kinds`` independent rules fail ``total`` of requests
    (the proxy applies the first rule that fires)."""
    return float(1 - (1 - total) ** (1 / kinds))


@pytest.fixture
def proxied(
    aws: MotoServer, fault_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FaultProxy]:
    """The proxy, with this process (and the workers it starts) pointed at it."""
    # Workers read AWS_ENDPOINT_URL too, until endpoint_url= reaches them on its own.
    monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.url)
    yield fault_proxy
    fault_proxy.clear()


@pytest.fixture
async def proxied_store(proxied: FaultProxy, aws: MotoServer) -> AsyncIterator[S3Store]:
    make_bucket(aws, "faulty")
    store = await S3Store("s3://faulty/data", endpoint_url=proxied.url).open()
    try:
        yield store
    finally:
        await store.aclose()


# -- the S3 store on its own ----------------------------------------------------------------


async def test_transient_bursts_are_retried_and_cost_only_the_retries(
    proxied: FaultProxy, proxied_store: S3Store
) -> None:
    store = proxied_store
    for kind in ("503", "500", "reset", "throttle"):
        proxied.add(Fault(kind=kind, service="s3", times=3))
    await store.put("a", b"one")
    assert await store.get("a") == b"one"
    assert await store.exists_many(["a", "b"]) == [True, False]
    assert await store.list_keys("") == ["a"]
    assert sum(proxied.faults.values()) == 12  # every fault was met, and none surfaced


async def test_a_permanent_500_is_a_store_error_naming_bucket_and_key(
    proxied: FaultProxy, proxied_store: S3Store
) -> None:
    store = proxied_store
    store.outage_seconds = 2.0  # the default window (15 s) is exercised through a knot below
    proxied.add(Fault(kind="500", service="s3"))
    started = anyio.current_time()
    with pytest.raises(StoreError) as caught:
        await store.get("results/000000007")
    elapsed = anyio.current_time() - started
    message = str(caught.value)
    assert "s3://faulty/data/results/000000007" in message
    assert "kept failing" in message and "InternalError" in message
    assert FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in message.replace("faulty", "")
    # Retried for the whole window, then given up (not retried forever).
    assert elapsed >= 2.0 - 0.5
    assert proxied.faults[("s3", "GET", "500")] >= 3


async def test_access_denied_is_a_configuration_error_at_once(
    proxied: FaultProxy, proxied_store: S3Store
) -> None:
    store = proxied_store
    proxied.add(Fault(kind="403", service="s3"))
    with pytest.raises(ConfigurationError) as caught:
        await store.put("inputs/000000000", b"x")
    message = str(caught.value)
    assert "s3://faulty/data/inputs/000000000" in message and "AccessDenied" in message
    assert "credentials" in message  # says what to check
    # Not retried: one request (botocore does not retry a 403 either).
    assert proxied.faults[("s3", "PUT", "403")] == 1


async def test_a_hung_request_is_abandoned_and_retried(
    proxied: FaultProxy, aws: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_bucket(aws, "faulty")
    # The real read timeout is 20 s; 1 s keeps the test short, the mechanism is the same.
    monkeypatch.setattr(store_s3, "READ_TIMEOUT_SECONDS", 1.0)
    store = await S3Store("s3://faulty/data", endpoint_url=proxied.url).open()
    try:
        await store.put("k", b"v")
        proxied.add(Fault(kind="delay", service="s3", operation="GET", seconds=30.0, times=1))
        with anyio.fail_after(15):  # well before the hung answer would have come
            assert await store.get("k") == b"v"
        assert proxied.faults[("s3", "GET", "delay")] == 1
    finally:
        await store.aclose()


# -- every stored record counts ---------------------------------------------------------------


async def test_thousands_of_lost_inputs_are_settled_with_a_handful_of_lists(
    proxied: FaultProxy, proxied_store: S3Store
) -> None:
    """3,000 inputs reported lost at once (a Batch array whose children all failed): inputs
    whose grouped or single records exist get their values; the rest are TaskLost; the
    store is asked a few LISTs, not a HEAD per input."""
    store = proxied_store
    total = 3000
    # Children that wrote groups of 100 (inputs 0-999), then failed; a few single records.
    for first in range(0, 1000, 100):
        records = [i * 10 for i in range(first, first + 100)]
        await store.put(result_key(RUN, first, 100), encode_results(first, records))
    for i in range(2000, 2010):
        await store.put(result_key(RUN, i), encode_value_record(i * 10))
    got: list[Outcome] = []
    watcher = ResultWatcher(store, RUN, "r", lambda items: got.extend(as_outcomes(items)))
    watcher.submitted(total)
    watcher.submission_over()
    for i in range(total):
        watcher.lost(i, "Essential container in task exited", exit_code=1, job_id=f"j:{i}")
    proxied.reset_counts()
    with anyio.fail_after(60):
        await watcher.run(NeverOver())  # type: ignore[arg-type]
    by_index = {o.index: o for o in got}
    assert sorted(by_index) == list(range(total))
    stored = set(range(1000)) | set(range(2000, 2010))
    for i in range(total):
        if i in stored:
            assert by_index[i].error is None and by_index[i].value == i * 10, i
        else:
            error = by_index[i].error
            assert isinstance(error, TaskLost) and error.exit_code == 1, i
            assert error.job_id == f"j:{i}"
    counts = proxied.counts
    assert counts[("s3", "HEAD")] == 0
    assert 1 <= counts[("s3", "LIST")] <= 4
    assert counts[("s3", "GET")] == 20  # one per record object
    print(f"\n{total} lost inputs settled with {dict(counts)}")


async def test_a_lost_input_in_a_group_written_before_the_child_failed_is_a_value(
    tmp_path: Path,
) -> None:
    """The backend reports a loss after the child's grouped record was written: the record
    wins, on the local store as on S3."""
    store = LocalStore(str(tmp_path / "store"))
    await store.put(result_key(RUN, 5, 3), encode_results(5, ["a", "b", "c"]))
    got: list[Outcome] = []
    watcher = ResultWatcher(store, RUN, "r", lambda items: got.extend(as_outcomes(items)))
    watcher.submitted(10)
    watcher.submission_over()
    for i in range(10):
        watcher.lost(i, "killed")
    with anyio.fail_after(30):
        await watcher.run(NeverOver())  # type: ignore[arg-type]
    by_index = {o.index: o for o in got}
    assert [by_index[i].value for i in (5, 6, 7)] == ["a", "b", "c"]
    assert all(isinstance(by_index[i].error, TaskLost) for i in (0, 1, 2, 3, 4, 8, 9))


# -- a damaged record fails its own inputs only -----------------------------------------------


async def test_a_corrupt_record_fails_only_its_own_inputs(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "store"))
    group = encode_group([encode_value_record(i) for i in range(10)])
    await store.put(result_key(RUN, 0, 10), group[: len(group) - 7])  # truncated
    await store.put(result_key(RUN, 10, 10), encode_results(10, list(range(10, 20))))
    await store.put(result_key(RUN, 20), b"not a record at all")
    values = encode_results(21, list(range(21, 25)))
    await store.put(result_key(RUN, 21, 4), values[:-3])  # a truncated values object
    await store.put(result_key(RUN, 25), encode_value_record(25))
    # A group whose header claims more records than the key says.
    await store.put(
        result_key(RUN, 26, 2), encode_group([encode_value_record(i) for i in (1, 2, 3)])
    )
    await store.put(result_key(RUN, 28), encode_error_record(ValueError("boom")))
    # An intact value whose class this machine cannot import: a TaskError saying so.
    await store.put(result_key(RUN, 29), RECORD_MAGIC + RECORD_VALUE + b"cno_such_module\nThing\n.")
    # An error record whose header is valid JSON but not what a worker writes.
    await store.put(result_key(RUN, 30), RECORD_MAGIC + b"E" + struct.pack("<I", 2) + b"[]")
    got: list[Outcome] = []
    watcher = ResultWatcher(store, RUN, "r", lambda items: got.extend(as_outcomes(items)))
    watcher.submitted(31)
    watcher.submission_over()
    with anyio.fail_after(30):
        await watcher.run(NeverOver())  # type: ignore[arg-type]
    by_index = {o.index: o for o in got}
    assert sorted(by_index) == list(range(31))
    corrupt = {
        **{i: result_key(RUN, 0, 10) for i in range(10)},
        20: result_key(RUN, 20),
        **{i: result_key(RUN, 21, 4) for i in range(21, 25)},
        26: result_key(RUN, 26, 2),
        27: result_key(RUN, 26, 2),
        30: result_key(RUN, 30),
    }
    for i, key in corrupt.items():
        error = by_index[i].error
        assert isinstance(error, TaskLost), i
        assert "corrupt" in error.reason and f"{store.url}/{key}" in error.reason, error.reason
    assert [by_index[i].value for i in [*range(10, 20), 25]] == [*range(10, 20), 25]
    failed = by_index[28].error
    assert isinstance(failed, TaskError) and failed.remote_type == "ValueError"
    alien = by_index[29].error
    assert isinstance(alien, TaskError) and alien.remote_type == "ModuleNotFoundError"
    assert "could not be unpickled on this machine" in str(alien)


def test_a_truncated_group_header_is_corrupt_not_a_crash() -> None:
    from aioknot._watch import CorruptRecord, checked_records

    group = encode_group([b"x" * 10, b"y" * 10])
    with pytest.raises(CorruptRecord, match="bytes where its table says"):
        checked_records(group[:-1], 2)
    with pytest.raises(CorruptRecord, match="cut short"):
        checked_records(group[:10], 2)
    assert checked_records(group, 2) == [b"x" * 10, b"y" * 10]
    assert struct.unpack_from("<I", group, 4) == (2,)


# -- a knot on a faulty S3 store: real worker processes ---------------------------------------


# Generous: each faulted worker request still waits on botocore's own backoff (~0.5 s), so
# this run takes ~4x its fault-free time on a quiet machine (see the report of issue 7).
@pytest.mark.timeout(300)
async def test_a_knot_on_an_s3_store_with_15_percent_faults_loses_nothing(
    proxied: FaultProxy, aws: MotoServer
) -> None:
    make_bucket(aws, "flaky")
    each = fault_rate_each(0.15, 3)
    for kind in ("503", "500", "reset"):
        proxied.add(Fault(kind=kind, service="s3", rate=each))
    inputs = list(range(200))
    async with AsyncKnot(
        paced_square,
        name="flaky",
        backend="local",
        bucket="s3://flaky/k",
        endpoint_url=proxied.url,
    ) as knot:
        with anyio.fail_after(240):
            run = await knot.map(inputs)
            values = await run.gather()
        parent = os.getpid()
    assert values == [x * x for x in inputs]
    faults = sum(proxied.faults.values())
    requests = sum(n for (service, _), n in proxied.counts.items() if service == "s3")
    # Faults met both sides: the workers' result PUTs and the client's reads.
    assert proxied.faults[("s3", "PUT", "503")] + proxied.faults[("s3", "PUT", "500")] > 0
    assert sum(n for (_, op, _), n in proxied.faults.items() if op in ("GET", "HEAD", "LIST")) > 0
    assert 0.05 < faults / requests < 0.3, (faults, requests)
    assert wait_for_no_workers(parent) == []
    print(f"\n15% faults: {requests} S3 requests ({faults} faulted) for {len(inputs)} results")


async def _results_until_store_failure(
    proxied: FaultProxy, fault: Fault, name: str
) -> tuple[BaseException, float, float, int]:
    """Run slow inputs; after the first results arrive add ``fault``; return the error the
    iterator raised, seconds from the fault to the error and to the knot being closed, and
    how many results came before."""
    seen = 0
    failed_at = closed_at = 0.0
    error: BaseException | None = None
    fault_added = 0.0
    knot = AsyncKnot(
        slow_square, name=name, backend="local", bucket="s3://flaky/k", endpoint_url=proxied.url
    )
    async with knot:
        try:
            with anyio.fail_after(90):
                async for _ in knot.amap(range(200)):
                    seen += 1
                    if seen == 3:
                        fault_added = time.monotonic()
                        proxied.add(fault)
        except Exception as raised:
            error = raised
            failed_at = time.monotonic()
    closed_at = time.monotonic()
    assert error is not None, "the iterator ended without an error"
    return error, failed_at - fault_added, closed_at - failed_at, seen


async def test_a_permanent_500_mid_run_ends_the_iterator_with_a_store_error(
    proxied: FaultProxy, aws: MotoServer
) -> None:
    make_bucket(aws, "flaky")
    parent = os.getpid()
    error, to_error, to_close, seen = await _results_until_store_failure(
        proxied, Fault(kind="500", service="s3"), "down"
    )
    assert isinstance(error, StoreError), repr(error)
    assert "s3://flaky/k/" in str(error) and "kept failing" in str(error)
    assert to_error < 30, f"the outage was reported after {to_error:.1f} s"
    assert to_close < 5, f"closing the knot took {to_close:.1f} s"
    proxied.clear()
    assert wait_for_no_workers(parent, timeout=30) == []
    print(f"\npermanent 500: StoreError after {to_error:.1f} s, closed {to_close:.1f} s later")


async def test_access_denied_mid_run_ends_the_iterator_with_a_configuration_error(
    proxied: FaultProxy, aws: MotoServer
) -> None:
    make_bucket(aws, "flaky")
    parent = os.getpid()
    error, to_error, to_close, seen = await _results_until_store_failure(
        proxied, Fault(kind="403", service="s3"), "denied"
    )
    assert isinstance(error, ConfigurationError), repr(error)
    assert "s3://flaky/k/" in str(error) and "AccessDenied" in str(error)
    proxied.clear()
    assert wait_for_no_workers(parent, timeout=30) == []
    print(f"\n403: ConfigurationError after {to_error:.1f} s, closed {to_close:.1f} s later")


# -- a local store on a real full disk, and a read-only one ----------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB file system."""
    with tmpfs(tmp_path / "small-disk", "size=1m") as mount:
        yield mount


@pytest.fixture
def read_only_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "read-only", "size=1m,ro") as mount:
        yield mount


async def test_a_full_disk_under_the_local_store_is_a_store_error_from_map(
    small_disk: Path,
) -> None:
    directory = small_disk / "store"
    parent = os.getpid()
    async with AsyncKnot(len, name="full", backend="local", directory=str(directory)) as knot:
        with pytest.raises(StoreError) as caught, anyio.fail_after(60):
            await knot.map([blob(200_000) for _ in range(10)])  # 2 MB of inputs on 1 MB
    message = str(caught.value)
    assert "no space left on device" in message and str(directory) in message
    assert wait_for_no_workers(parent) == []
    leftovers = [p for p in directory.rglob("*.tmp")]
    assert leftovers == []  # a failed write does not keep the space it took


async def test_a_full_disk_is_a_store_error_from_put(small_disk: Path) -> None:
    store = LocalStore(str(small_disk / "store"))
    with pytest.raises(StoreError, match="no space left on device") as caught:
        await store.put("big", blob(2_000_000))
    assert "writing big" in str(caught.value)
    assert list((small_disk / "store").iterdir()) == []


async def test_a_read_only_disk_and_a_file_in_the_way_are_configuration_errors(
    tmp_path: Path, read_only_disk: Path
) -> None:
    with pytest.raises(ConfigurationError, match="Read-only file system") as caught:
        await LocalStore(str(read_only_disk / "store")).put("k", b"v")
    assert "choose another directory=" in str(caught.value)
    (tmp_path / "a-file").write_bytes(b"")
    in_the_way = LocalStore(str(tmp_path / "a-file" / "store"))
    with pytest.raises(ConfigurationError, match="is a file where a directory should be"):
        await in_the_way.put("k", b"v")
    with pytest.raises(ConfigurationError, match="is a file where a directory should be"):
        await in_the_way.get("k")
    with pytest.raises(KeyError):  # a missing object is still KeyError, not an error
        await LocalStore(str(tmp_path / "empty")).get("k")
