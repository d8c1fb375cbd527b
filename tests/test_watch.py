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
from helpers.waiting import wait_until_async
from infra.fault_proxy import Fault, FaultProxy
from infra.moto import MotoServer

from aioknot import ConfigurationError, StoreError
from aioknot import _watch as watch_module
from aioknot._stores.s3 import S3Store
from aioknot._watch import HEAD_POLL_MAX, Outcome, ResultWatcher, as_outcomes
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
    watcher = ResultWatcher(store, "run", "r", lambda items: got.extend(as_outcomes(items)))
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
    watcher, got = submitted(store, HEAD_POLL_MAX)
    for i in range(HEAD_POLL_MAX):
        await store.put(result_key("run", i), encode_value_record(i * 10))
    calls.clear()
    with anyio.fail_after(10):
        await watcher.run(NeverOver())  # type: ignore[arg-type]
    assert sorted((o.index, o.value) for o in got) == [(i, i * 10) for i in range(HEAD_POLL_MAX)]
    assert calls["HeadObject"] == HEAD_POLL_MAX and calls["GetObject"] == HEAD_POLL_MAX
    assert calls["ListObjectsV2"] == 0


async def test_more_than_a_few_outstanding_are_found_by_one_list(
    counted_store: tuple[S3Store, collections.Counter[str]],
) -> None:
    store, calls = counted_store
    watcher, got = submitted(store, HEAD_POLL_MAX + 1)
    for i in range(HEAD_POLL_MAX + 1):
        await store.put(result_key("run", i), encode_value_record(i))
    calls.clear()
    with anyio.fail_after(10):
        await watcher.run(NeverOver())  # type: ignore[arg-type]
    assert sorted(o.value for o in got) == list(range(HEAD_POLL_MAX + 1))
    assert calls == {"ListObjectsV2": 1, "GetObject": HEAD_POLL_MAX + 1}


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


# --- what a backend that knows its tasks' states tells the watcher ----------------------------


async def test_queued_inputs_are_never_looked_for_and_ended_tasks_are_looked_for_at_once(
    counted_store: tuple[S3Store, collections.Counter[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Slow own looks once results flow: what finds the records below is the look `ended` wakes.
    monkeypatch.setattr(watch_module, "TRACKED_DELAYS", (60.0, 60.0))
    store, calls = counted_store
    watcher, got = submitted(store, 50)
    watcher.queued(0, 20)
    watcher.queued(20, 30)  # the next segment: one stretch with the first
    calls.clear()
    async with anyio.create_task_group() as group:
        group.start_soon(watcher.run, NeverOver())
        # Every task is queued: the watcher says it looked (nothing can be there), and a
        # second of its HEAD/LIST backoff (a dozen looks, untracked) makes no request.
        with anyio.fail_after(5):
            await watcher.looked.wait()
        with anyio.move_on_after(1.0):
            await anyio.sleep_forever()
        assert sum(calls.values()) == 0
        for i in range(50):
            await store.put(result_key("run", i), encode_value_record(i))
        calls.clear()
        watcher.ended(0, 50)  # Batch: the job's SUCCEEDED count rose
        await wait_until_async(lambda: len(got) == 50, timeout=10, what="the ended tasks' records")
        group.cancel_scope.cancel()
    assert sorted(o.value for o in got) == list(range(50))
    assert calls == {"ListObjectsV2": 1, "GetObject": 50}


async def test_started_tasks_are_looked_for_and_the_last_few_by_head(
    counted_store: tuple[S3Store, collections.Counter[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch_module, "TRACKED_DELAYS", (0.05, 0.2))
    store, calls = counted_store
    watcher, got = submitted(store, 20)
    watcher.queued(0, 20)
    calls.clear()
    async with anyio.create_task_group() as group:
        group.start_soon(watcher.run, NeverOver())
        with anyio.fail_after(5):
            await watcher.looked.wait()
        for i in (16, 17):
            await store.put(result_key("run", i), encode_value_record(i))
        # Inputs 16..19 are the only ones whose tasks may run: 4, so HEADs of those 4 only.
        watcher.started(16, 4)
        await wait_until_async(lambda: len(got) == 2, timeout=10, what="two records")
        assert calls["ListObjectsV2"] == 0 and calls["GetObject"] == 2
        heads = calls["HeadObject"]
        assert heads >= 4 and heads % 4 == 0  # every look HEADs the 4 started inputs only
        group.cancel_scope.cancel()
