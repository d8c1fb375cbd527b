"""Operating runs (issue 10): listing a knot's runs, a re-attached run's true status, progress,
and retention (amap runs removed when their iteration ends, old runs swept and collected).

Real knots on the local backend, real worker processes, a real store directory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import pytest
from helpers.waiting import wait_until_async

import aioknot
from aioknot import _retention
from aioknot._names import run_prefix
from aioknot._stores.local import LocalStore


def double(x: int) -> int:
    return 2 * x


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    if x >= 100:
        time.sleep(x / 100)  # the work under test: a task still running when cancelled
    return x


def nap(x: float) -> float:
    time.sleep(x)  # the work under test: a task that takes a while
    return x


def runs_directory(home: str, knot: str) -> Path:
    return Path(home) / "knots" / knot / "runs"


async def test_a_knots_runs_are_listed_newest_first_with_their_state(aioknot_home: str) -> None:
    async with aioknot.AsyncKnot(fail_on_three, name="listed", workers=2) as knot:
        done = await knot.map(range(5), return_exceptions=True)
        await done.gather()
        cancelled = await knot.map([1, 3000])
        await cancelled.cancel()
        summaries = await knot.runs()
    assert [s.id for s in summaries] == [cancelled.id, done.id]
    by_id = {s.id: s for s in summaries}
    finished = by_id[done.id]
    assert finished.state == "finished" and finished.backend == "local"
    assert finished.total == 5
    assert finished.counts == {"succeeded": 4, "failed": 1, "lost": 0}
    assert finished.finished is not None and finished.finished >= finished.created
    assert by_id[cancelled.id].state == "cancelled"
    assert by_id[cancelled.id].finished is not None
    # The JSON form carries the same.
    assert json.loads(json.dumps(finished.to_json()))["counts"]["failed"] == 1


async def test_an_attached_runs_status_counts_the_records_already_stored(
    aioknot_home: str,
) -> None:
    async with aioknot.AsyncKnot(double, name="counted") as knot:
        run = await knot.map(range(40))
        await run.gather()
    # Another knot object (as in another process or a later day): its first status is true.
    async with aioknot.AsyncKnot(double, name="counted") as again:
        attached = await again.attach(run.id)
        status = await attached.status()
        assert status["succeeded"] == 40 and status["pending"] == 0
        assert await attached.gather() == [2 * x for x in range(40)]
        # The operator knot (the CLI's) sees the same, with no function to run.
        listed = await again.runs()
    assert listed[0].counts == {"succeeded": 40, "failed": 0, "lost": 0}


async def test_an_attached_small_runs_status_counts_its_grouped_records(
    aioknot_home: str,
) -> None:
    # Tiny inputs finishing together share one record (results/<first>-<count>): a first look
    # by HEADs of single keys would miss them and count the run as pending.
    async with aioknot.AsyncKnot(double, name="grouped", workers=1) as knot:
        run = await knot.map(range(6))
        await run.gather()
    results = Path(aioknot_home) / run_prefix("grouped", run.id) / "results"
    assert any("-" in path.name for path in results.iterdir()), "some records are grouped"
    async with aioknot.AsyncKnot(double, name="grouped") as again:
        status = await (await again.attach(run.id)).status()
    assert (status["succeeded"], status["pending"]) == (6, 0)


async def test_an_operator_knot_looks_at_runs_and_runs_nothing(aioknot_home: str) -> None:
    async with aioknot.AsyncKnot(double, name="operated") as knot:
        run = await knot.map([1, 2])
        await run.gather()
    async with aioknot.AsyncKnot._operator("operated") as operator:
        assert [s.id for s in await operator.runs()] == [run.id]
        assert await (await operator.attach(run.id)).gather() == [2, 4]
        with pytest.raises(aioknot.KnotError, match="opened to look at its runs"):
            await operator.map([1])


async def test_amap_runs_remove_their_data_when_the_iteration_ends(aioknot_home: str) -> None:
    runs = runs_directory(aioknot_home, "passing")
    async with aioknot.AsyncKnot(double, name="passing") as knot:
        assert sorted([y async for y in knot.amap(range(30))]) == [2 * x for x in range(30)]
        await wait_until_async(
            lambda: not any(runs.iterdir()), timeout=30, what="the amap run's data removed"
        )
        # Broken out of early: removed too.
        async for _ in knot.amap(range(30)):
            break
        await wait_until_async(
            lambda: not any(runs.iterdir()), timeout=30, what="the broken amap's data removed"
        )
        kept = await knot.map([1])
        await kept.gather()
    assert [path.name for path in runs.iterdir()] == [kept.id]


def make_old_run(home: str, knot: str, days: float) -> str:
    """A run directory as an earlier run left it, created ``days`` ago (by its id)."""
    created = time.gmtime(time.time() - days * 24 * 3600)
    run_id = time.strftime("%Y%m%dT%H%M%S", created) + "-abcdef"
    results = Path(home) / run_prefix(knot, run_id) / "results"
    results.mkdir(parents=True)
    (results / "000000000").write_bytes(b"old")
    return run_id


async def test_opening_a_knot_sweeps_its_old_runs_once_a_day(aioknot_home: str) -> None:
    old = make_old_run(aioknot_home, "swept", days=8)
    recent = make_old_run(aioknot_home, "swept", days=6)
    other_knot = make_old_run(aioknot_home, "neighbour", days=30)
    runs = runs_directory(aioknot_home, "swept")
    async with aioknot.AsyncKnot(double, name="swept"):
        await wait_until_async(
            lambda: not (runs / old).exists(), timeout=30, what="the 8-day-old run swept"
        )
    assert (runs / recent).exists()  # within retention_days=7
    assert (runs_directory(aioknot_home, "neighbour") / other_knot).exists()  # not this knot's
    # Once a day: a second opening leaves an old run alone until the day is over.
    older = make_old_run(aioknot_home, "swept", days=9)
    async with aioknot.AsyncKnot(double, name="swept", retention_days=1) as knot:
        await (await knot.map([1])).gather()  # the knot's background tasks have run
    assert (runs / older).exists()


async def test_gc_collects_every_knots_runs_older_than_asked(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path))
    a = make_old_run(str(tmp_path), "a", days=3)
    b = make_old_run(str(tmp_path), "b", days=1)
    assert await _retention.knot_names(store) == ["a", "b"]
    removed = await _retention.collect_garbage(store, older_than=2 * 24 * 3600)
    assert removed == [f"a/{a}"]
    assert await _retention.run_ids(store, "b") == [b]
    assert await _retention.collect_garbage(store, older_than=0) == [f"b/{b}"]
    with pytest.raises(aioknot.ConfigurationError, match="older_than"):
        await _retention.collect_garbage(store, older_than=-1)


async def test_run_progress_reports_counts_until_the_run_is_done(aioknot_home: str) -> None:
    async with aioknot.AsyncKnot(nap, name="progressing", workers=2) as knot:
        run = await knot.map([0.05] * 12)
        seen = [counts async for counts in run.progress(interval=0.05)]
    finished = [c["succeeded"] for c in seen]
    assert finished == sorted(finished), "counts only grow"
    assert seen[-1]["succeeded"] == 12 and seen[-1]["pending"] == 0
    assert len(seen) >= 2, "it reported before the end, not only at it"


def test_the_blocking_face_shows_a_progress_bar(
    aioknot_home: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with aioknot.Knot(fail_on_three, name="barred") as knot:
        assert knot.map(range(6), progress=True, return_exceptions=True).result(timeout=60)[0] == 0
        bar = capsys.readouterr().err
        assert "6/6" in bar and "failed=1" in bar, bar
        results = list(knot.imap(range(4), progress=True, return_exceptions=True))
        assert sorted(y for y in results if isinstance(y, int)) == [0, 1, 2]
    bar = capsys.readouterr().err
    assert "4/4" in bar and "failed=1" in bar, bar


async def test_closing_waits_for_no_background_work(aioknot_home: str) -> None:
    # The background sweep and removals are the knot's tasks: closing waits for none of them
    # to finish on its own and leaves nothing running.
    async with aioknot.AsyncKnot(double, name="tidy") as knot:
        async for _ in knot.amap([1]):
            pass
    with anyio.fail_after(5):
        async with aioknot.AsyncKnot(double, name="tidy") as knot:
            await (await knot.map([1])).gather()


async def test_a_reader_that_finishes_a_run_keeps_its_owner_in_the_manifest(
    aioknot_home: str,
) -> None:
    async with aioknot.AsyncKnot(double, name="owned") as knot:
        run = await knot.map(range(3))
        await run.gather()
    manifest = Path(aioknot_home) / run_prefix("owned", run.id) / "manifest.json"
    record = json.loads(manifest.read_text())
    # As if another machine had submitted it (and is gone): the reader writes the finished
    # manifest again, but the run stays that machine's.
    record["owner"] = {"host": "elsewhere", "pid": 1}
    record["finished"], record["counts"] = None, {}
    manifest.write_text(json.dumps(record))
    async with aioknot.AsyncKnot(double, name="owned") as again:
        assert await (await again.attach(run.id)).gather() == [0, 2, 4]
    rewritten = json.loads(manifest.read_text())
    assert rewritten["owner"] == {"host": "elsewhere", "pid": 1}
    assert rewritten["finished"] is not None and rewritten["counts"]["succeeded"] == 3


async def test_a_local_run_is_cancelled_where_it_runs(aioknot_home: str) -> None:
    async with aioknot.AsyncKnot(fail_on_three, name="guarded", workers=1) as knot:
        running = await knot.map([1, 3000, 4])
        # Attached in the same process: cancelling it cancels the run itself.
        async with aioknot.AsyncKnot(fail_on_three, name="guarded") as other:
            await (await other.attach(running.id)).cancel()
        with pytest.raises(aioknot.TaskLost, match="cancelled"):
            await running.gather()


async def test_a_local_run_of_another_live_process_refuses_to_be_cancelled(
    aioknot_home: str,
) -> None:
    async with aioknot.AsyncKnot(double, name="theirs") as knot:
        run = await knot.map([1])
        await run.gather()
    manifest = Path(aioknot_home) / run_prefix("theirs", run.id) / "manifest.json"
    record = json.loads(manifest.read_text())
    # As if the parent of this test process (alive, on this host) had submitted it and were
    # still running it.
    import os
    import socket

    record.update(owner={"host": socket.gethostname(), "pid": os.getppid()}, finished=None)
    record["counts"] = {}
    manifest.write_text(json.dumps(record))
    async with aioknot.AsyncKnot._operator("theirs") as operator:
        attached = await operator.attach(run.id)
        with pytest.raises(aioknot.ConfigurationError, match=f"process {os.getppid()}"):
            await attached.cancel()
    assert json.loads(manifest.read_text())["cancelled"] is False  # nothing was changed


async def test_the_progress_callback_hears_the_worker_pools_events(aioknot_home: str) -> None:
    events: list[str] = []
    async with aioknot.AsyncKnot(
        die_once, name="eventful", workers=1, retries=2, progress=events.append
    ) as knot:
        marker = Path(aioknot_home) / "died-once"
        assert await (await knot.map([str(marker)])).gather() == ["second attempt"]
    assert any("starting 1 worker processes" in event for event in events), events
    assert any("running it again (attempt 2 of 2)" in event for event in events), events


def die_once(marker: str) -> str:
    import os
    import signal

    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)  # the worker dies: a retry runs the input again
    return "second attempt"


def shout(x: int) -> int:
    print(f"working on {x}")
    if x >= 100:
        time.sleep(x / 100)  # the work under test: still running when cancelled
    return x


async def test_a_cancelled_runs_logs_stay_readable(aioknot_home: str) -> None:
    async with aioknot.AsyncKnot(shout, name="loud", workers=1) as knot:
        run = await knot.map([1, 3000])
        await wait_until_async(
            lambda: (Path(aioknot_home) / run_prefix("loud", run.id) / "logs").exists(),
            timeout=30,
            what="input 0's log stored",
        )
        await run.cancel()
        attached = await knot.attach(run.id)
        assert await attached.logs(0) == ["working on 1"]
