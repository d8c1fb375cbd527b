"""The watcher on an S3 store: HEAD polling when few are outstanding, LIST sweeps when many.

These drive the ResultWatcher directly with records written by hand, and count every S3
request the client makes (botocore's before-call hook), so the discovery strategy is what
is measured, not the timing.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from infra.fault_proxy import Fault, FaultProxy
from infra.moto import MotoServer

from aioknot import ConfigurationError, StoreError
from aioknot._stores.s3 import S3Store
from aioknot._watch import Outcome, ResultWatcher
from aioknot._worker import encode_group, encode_value_record, result_key


class NeverOver:
    """A backend run that never reports an end: only the store can finish the run."""

    job_ids: list[str] = []

    async def watch(self) -> None:
        await anyio.sleep_forever()


class OverAt:
    def __init__(self) -> None:
        self.over = anyio.Event()
        self.job_ids: list[str] = []

    async def watch(self) -> None:
        await self.over.wait()


def submitted(store: S3Store, count: int) -> tuple[ResultWatcher, list[Outcome]]:
    """A watcher of run "run" whose ``count`` inputs are all submitted, and the outcomes it
    hands out."""
    got: list[Outcome] = []
    watcher = ResultWatcher(store, "run", "r", got.extend)
    watcher.submitted(count)
    watcher.submission_over()
    return watcher, got


@pytest.fixture
async def counted_store(aws: object) -> AsyncIterator[tuple[S3Store, collections.Counter[str]]]:
    store = await S3Store("s3://watched", create_bucket=True).open()
    calls: collections.Counter[str] = collections.Counter()

    def count(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    store.client.meta.events.register("before-call.s3", count)
    try:
        yield store, calls
    finally:
        await store.aclose()


async def test_few_outstanding_are_found_by_head_polling(
    counted_store: tuple[S3Store, collections.Counter[str]],
) -> None:
    store, calls = counted_store
    watcher, got = submitted(store, 5)
    for i in range(5):
        await store.put(result_key("run", i), encode_value_record(i * 10))
    calls.clear()
    with anyio.fail_after(10):
        await watcher.run(NeverOver())  # type: ignore[arg-type]
    assert sorted((o.index, o.value) for o in got) == [(i, i * 10) for i in range(5)]
    assert calls["HeadObject"] == 5 and calls["GetObject"] == 5
    assert calls["ListObjectsV2"] == 0


async def test_many_outstanding_are_found_by_list_sweeps_including_groups(
    counted_store: tuple[S3Store, collections.Counter[str]],
) -> None:
    store, calls = counted_store
    watcher, got = submitted(store, 300)
    # 100 single records and two groups of 100: 102 objects for 300 results.
    for i in range(100):
        await store.put(result_key("run", i), encode_value_record(i))
    for first in (100, 200):
        records = [encode_value_record(i) for i in range(first, first + 100)]
        await store.put(result_key("run", first, 100), encode_group(records))
    calls.clear()
    with anyio.fail_after(10):
        await watcher.run(NeverOver())  # type: ignore[arg-type]
    assert sorted(o.value for o in got) == list(range(300))
    assert calls["HeadObject"] == 0
    assert calls["ListObjectsV2"] == 1
    assert calls["GetObject"] == 102
    assert sum(calls.values()) / 300 < 1.2


async def test_polling_backs_off_while_nothing_turns_up(
    counted_store: tuple[S3Store, collections.Counter[str]],
) -> None:
    store, calls = counted_store
    watcher, _ = submitted(store, 1)
    calls.clear()
    with anyio.move_on_after(3.0):
        await watcher.run(NeverOver())  # type: ignore[arg-type]
    # Without backoff 3 s of 50 ms polls would be 60 requests; with it, about a dozen.
    assert 3 <= sum(calls.values()) <= 16


async def test_a_task_the_backend_says_is_over_without_a_record_is_lost(
    counted_store: tuple[S3Store, collections.Counter[str]],
) -> None:
    store, _ = counted_store
    watcher, got = submitted(store, 3)
    await store.put(result_key("run", 1), encode_value_record("there"))
    backend = OverAt()
    backend.over.set()
    watcher.lost(2, "Essential container in task exited", log="stream/2", exit_code=137)
    with anyio.fail_after(10):
        await watcher.run(backend)  # type: ignore[arg-type]
    by_index = {o.index: o for o in got}
    assert by_index[1].value == "there" and by_index[1].error is None
    assert "wrote no result" in str(by_index[0].error)
    lost = by_index[2].error
    assert lost is not None and "Essential container" in str(lost)
    assert getattr(lost, "exit_code", None) == 137 and getattr(lost, "log", None) == "stream/2"


@pytest.mark.parametrize(
    ("kind", "expected"), [("403", ConfigurationError), ("500", StoreError)], ids=["403", "500"]
)
async def test_a_failing_store_ends_the_watch_with_its_own_error(
    aws: MotoServer, fault_proxy: FaultProxy, kind: str, expected: type[Exception]
) -> None:
    """Raised as itself, never inside an ExceptionGroup, once the store's window is spent."""
    store = await S3Store("s3://watched", endpoint_url=fault_proxy.url, create_bucket=True).open()
    store.outage_seconds = 1.0  # the default window is exercised in test_store_faults.py
    try:
        watcher, _ = submitted(store, 100)  # many outstanding: LIST sweeps
        fault_proxy.add(Fault(kind=kind, service="s3"))
        with pytest.raises(expected) as caught, anyio.fail_after(30):
            await watcher.run(NeverOver())  # type: ignore[arg-type]
        assert type(caught.value) is expected
        assert "s3://watched/run/results/" in str(caught.value)
    finally:
        fault_proxy.clear()
        await store.aclose()
