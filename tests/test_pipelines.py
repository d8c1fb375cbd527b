"""Pipelines: a run (or an amap's results) of one knot as the inputs of another knot's map.

Locally with real worker processes and a real store directory; on AWS against a moto server in
simple Batch mode, where the children are played by the real worker (`batch_main`, in
threads, against moto S3) after the client has closed: simple mode runs no container. The
real-container run is in tests/test_aws_end_to_end.py.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from helpers.aws import IMAGE, Calls, MotoClients
from helpers.waiting import wait_until_async
from infra.moto import MotoServer

import aioknot
from aioknot import AsyncKnot, ConfigurationError, TaskError, TaskLost
from aioknot._backends.aws import jobs as aws_jobs
from aioknot._backends.aws.backend import AwsBackend
from aioknot._backends.aws.jobs import LOG_GROUP
from aioknot._worker import batch_main

pytestmark = pytest.mark.usefixtures("aioknot_home")


def square_unless_five(x: int) -> int:
    if x == 5:
        raise ValueError(f"five is not allowed (got {x})")
    return x * x


def plus_one(y: int) -> int:
    return y + 1


def wait_for_flag_on_zero(x: tuple[int, str]) -> int:
    """Input 0 holds on until the test creates the flag file; the others return at once."""
    index, flag = x
    if index == 0:
        import time

        while not os.path.exists(flag):
            time.sleep(0.01)
    return index


def marks(directory: str) -> Any:
    def mark_and_double(y: int) -> int:
        Path(directory, str(y)).touch()  # ran on this input
        return 2 * y

    return mark_and_double


def killed_on_two(x: int) -> int:
    if x == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


async def test_input_i_is_upstream_result_i_and_failures_are_not_run(tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    ran.mkdir()
    async with (
        AsyncKnot(square_unless_five, name="squares", backend="local") as a,
        AsyncKnot(marks(str(ran)), name="doubles", backend="local") as b,
    ):
        run_a = await a.map(range(40))
        run_b = await b.map(run_a)
        assert run_b.upstream == f"squares/{run_a.id}" and len(run_b) == 40
        outcomes = await run_b.gather(return_exceptions=True)
    failure = outcomes[5]
    assert isinstance(failure, TaskError)
    assert failure.upstream == (f"squares/{run_a.id}", 5)
    assert failure.remote_type == "ValueError" and "five is not allowed" in failure.remote_message
    assert f"input 5 was not run: its input, input 5 of run squares/{run_a.id}" in str(failure)
    assert "square_unless_five" in failure.remote_traceback  # the upstream's traceback
    assert [v for i, v in enumerate(outcomes) if i != 5] == [2 * x * x for x in range(40) if x != 5]
    # The downstream function ran on every input but the failed one.
    assert sorted(int(p.name) for p in ran.iterdir()) == sorted(x * x for x in range(40) if x != 5)


async def test_downstream_inputs_start_while_upstream_still_runs(tmp_path: Path) -> None:
    flag = str(tmp_path / "flag")
    async with (
        AsyncKnot(wait_for_flag_on_zero, name="held", backend="local") as a,
        AsyncKnot(plus_one, name="after", backend="local") as b,
    ):
        run_a = await a.map([(i, flag) for i in range(20)])
        seen = []
        async with aioknot_aclosing(b.amap(run_a)) as results:
            async for value in results:
                seen.append(value)
                if len(seen) == 19:
                    # Every downstream result but input 0's is in, and upstream input 0 is
                    # still held: each downstream input started as its upstream result came.
                    assert not run_a._has(0) and 1 not in seen
                    Path(flag).touch()
        assert sorted(seen) == [i + 1 for i in range(20)]


async def test_a_lost_upstream_input_is_lost_downstream_naming_it() -> None:
    async with (
        AsyncKnot(killed_on_two, name="killer", backend="local", retries=1) as a,
        AsyncKnot(plus_one, name="next", backend="local") as b,
    ):
        run_a = await a.map(range(4))
        outcomes = await (await b.map(run_a)).gather(return_exceptions=True)
    lost = outcomes[2]
    assert isinstance(lost, TaskLost) and lost.upstream == (f"killer/{run_a.id}", 2)
    assert "SIGKILL" in lost.reason and f"input 2 of run killer/{run_a.id}" in str(lost)
    assert [outcomes[i] for i in (0, 1, 3)] == [1, 2, 4]


async def test_an_amap_feeds_the_next_knot_by_index() -> None:
    async with (
        AsyncKnot(square_unless_five, name="squares", backend="local") as a,
        AsyncKnot(plus_one, name="plus", backend="local") as b,
    ):
        outcomes = await (await b.map(a.amap(range(8)))).gather(return_exceptions=True)
        assert [v for i, v in enumerate(outcomes) if i != 5] == [
            x * x + 1 for x in range(8) if x != 5
        ]
        assert isinstance(outcomes[5], TaskError) and outcomes[5].upstream is not None
        streamed = [value async for value in b.amap(a.amap(range(6)), return_exceptions=True)]
        assert sorted(v for v in streamed if isinstance(v, int)) == [1, 2, 5, 10, 17]
        started = a.amap(range(3))
        assert await started.__anext__() in (0, 1, 4)
        with pytest.raises(ConfigurationError, match="already being read"):
            await b.map(started)
        await started.aclose()


def pair_unless_three_or_four(x: int) -> Any:
    return {3: x, 4: {"a": x, "b": x}}.get(x, (x, 10 * x))


def add(a: int, b: int) -> int:
    return a + b


async def test_a_starmap_value_that_is_not_arguments_fails_that_input_alone() -> None:
    async with (
        AsyncKnot(pair_unless_three_or_four, name="pairs", backend="local") as a,
        AsyncKnot(add, name="sums", backend="local") as b,
    ):
        run_b = await b.map(await a.map(range(6)), starmap=True)
        outcomes = await run_b.gather(return_exceptions=True)
    # As where Batch workers read upstream records themselves: input 3's value (an int)
    # cannot be spread into arguments, and input 4's (a dict) would spread as its keys: only
    # those inputs say so.
    for index, kind in ((3, "int"), (4, "dict")):
        failure = outcomes[index]
        assert isinstance(failure, TaskError) and failure.remote_type == "TypeError"
        assert f"input {index} is an upstream value of type {kind}" in failure.remote_message
        assert failure.upstream is None
    assert [outcomes[i] for i in (0, 1, 2, 5)] == [11 * x for x in (0, 1, 2, 5)]


def aioknot_aclosing(iterator: Any) -> Any:
    import contextlib

    return contextlib.aclosing(iterator)


# --- on AWS Batch (moto, simple mode) -------------------------------------------------------


def aws_knot(func: Any, name: str) -> AsyncKnot[Any]:
    return aioknot.AsyncKnot(func, name=name, backend="aws", image=IMAGE)


def play_children(submit: dict[str, Any], job_id: str) -> None:
    """Run the real worker as each child of a submitted job would (simple mode runs none)."""
    environment = {
        item["name"]: item["value"] for item in submit["containerOverrides"]["environment"]
    }
    children = submit.get("arrayProperties", {}).get("size", 0)
    for child in range(max(children, 1)):
        child_environment = {**os.environ, **environment, "AWS_BATCH_JOB_ID": f"{job_id}:{child}"}
        assert batch_main(child_environment) == 0


@pytest.mark.usefixtures("fast_polls")
async def test_on_batch_downstream_children_follow_upstream_without_the_client(
    simple_batch: MotoServer, calls: Calls
) -> None:
    inputs = range(30)
    async with aws_knot(square_unless_five, "squares") as a, aws_knot(plus_one, "plus") as b:
        run_a = await a.map(inputs)
        run_b = await b.map(run_a)
        upstream_jobs = list(run_a.backend_run.job_ids)
        downstream_jobs = list(run_b.backend_run.job_ids)
    # The client is gone (both knots closed) before any record exists downstream.
    submits = calls.submits
    assert len(submits) == 2 * len(upstream_jobs) == 2 * len(downstream_jobs)
    for upstream, downstream, job in zip(
        submits[: len(upstream_jobs)], submits[len(upstream_jobs) :], upstream_jobs, strict=True
    ):
        assert downstream.get("arrayProperties") == upstream.get("arrayProperties")
        kind = {"type": "N_TO_N"} if "arrayProperties" in upstream else {}
        assert downstream["dependsOn"] == [{"jobId": job, **kind}]
        variables = {v["name"]: v["value"] for v in downstream["containerOverrides"]["environment"]}
        assert variables["AIOKNOT_UPSTREAM"].endswith(f"knots/squares/runs/{run_a.id}")
    # Batch runs the children, upstream's first (N_TO_N): played here by the real worker.
    for submit, job in zip(submits, upstream_jobs + downstream_jobs, strict=True):
        await anyio.to_thread.run_sync(play_children, submit, job)
    async with aws_knot(plus_one, "plus") as b:
        again = await b.attach(run_b.id)
        assert again.upstream == f"squares/{run_a.id}"
        outcomes = await again.gather(return_exceptions=True)
    assert [v for i, v in enumerate(outcomes) if i != 5] == [x * x + 1 for x in inputs if x != 5]
    failure = outcomes[5]
    assert isinstance(failure, TaskError) and failure.upstream == (f"squares/{run_a.id}", 5)
    assert failure.remote_type == "ValueError"


class LostChild:
    """What the test's Batch says (`UpstreamChildLost`): which upstream child died, which
    dependent child Batch failed unrun, the reruns submitted, and whether they may run."""

    def __init__(self, upstream_child: str, downstream_child: str) -> None:
        self.upstream_child, self.downstream_child = upstream_child, downstream_child
        # A plain job (one input) is its own "child": no array parent to summarize.
        parent, colon, index = downstream_child.rpartition(":")
        self.downstream_job, self.index = (parent, int(index)) if colon else ("", 0)
        self.reruns: list[tuple[str, dict[str, Any]]] = []
        self.released = False


class UpstreamChildLost:
    """moto's Batch client, but for one upstream child FAILED (its container lost, say to
    OOM) and the child that depends on it FAILED without running, as real Batch does: moto
    models neither (its dependent children wait for good; FACTS.md). A job submitted with no
    dependency on a pipeline run (the rerun) is held RUNNABLE until ``released``, so that the
    test plays its child first. Everything else is moto's own answer."""

    def __init__(self, lost: LostChild, client: Any) -> None:
        self._lost, self._client = lost, client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def submit_job(self, **request: Any) -> Any:
        response = await self._client.submit_job(**request)
        self._lost.reruns.append((response["jobId"], request))
        return response

    async def describe_jobs(self, jobs: list[str]) -> Any:
        lost = self._lost
        response = await self._client.describe_jobs(jobs=jobs)
        held = {job_id for job_id, _ in lost.reruns} if not lost.released else set()
        for job in response["jobs"]:
            if job["jobId"] == lost.upstream_child:  # it ran, and its container was killed
                job.update(status="FAILED", statusReason="Essential container in task exited")
                job["container"]["reason"] = "OutOfMemoryError: Container killed"
                job["attempts"] = [{"container": {"exitCode": 137}}]
            elif job["jobId"] == lost.downstream_child:
                job.update(status="FAILED", statusReason="Dependent Job failed", attempts=[])
                job.pop("startedAt", None)
            elif lost.downstream_job and job["jobId"] == lost.downstream_job:
                size = job["arrayProperties"]["size"]
                job["status"] = "FAILED"
                job["arrayProperties"]["statusSummary"] = {"SUCCEEDED": size - 1, "FAILED": 1}
            elif job["jobId"] in held:
                job["status"] = "RUNNABLE"
        return response

    async def list_jobs(self, **arguments: Any) -> Any:
        lost = self._lost
        response = await self._client.list_jobs(**arguments)
        if lost.downstream_job and arguments.get("arrayJobId") == lost.downstream_job:
            listed = [
                summary
                for summary in response["jobSummaryList"]
                if summary["jobId"] != lost.downstream_child
            ]
            if arguments.get("jobStatus") == "FAILED":
                listed = [
                    {
                        "jobId": lost.downstream_child,
                        "status": "FAILED",
                        "statusReason": "Dependent Job failed",
                        "arrayProperties": {"index": lost.index},
                    }
                ]
            response["jobSummaryList"] = listed
        return response


def lose_a_child(
    monkeypatch: pytest.MonkeyPatch, upstream_child: str, downstream_child: str
) -> LostChild:
    """From now on, each knot's Batch client answers as `UpstreamChildLost` does."""
    lost = LostChild(upstream_child, downstream_child)
    client = AwsBackend.client

    async def with_lost_child(self: AwsBackend, service: str) -> Any:
        real = await client(self, service)
        return UpstreamChildLost(lost, real) if service == "batch" else real

    monkeypatch.setattr(AwsBackend, "client", with_lost_child)
    return lost


def play(submit: dict[str, Any], job_id: str, **overrides: str) -> None:
    """Run the real worker as child ``job_id`` of a submitted job, its variables overridden."""
    environment = {
        **os.environ,
        **{item["name"]: item["value"] for item in submit["containerOverrides"]["environment"]},
        "AWS_BATCH_JOB_ID": job_id,
        **overrides,
    }
    assert batch_main(environment) == 0


@pytest.mark.usefixtures("fast_polls")
async def test_on_batch_inputs_failed_for_a_lost_upstream_child_run_again_and_say_so(
    simple_batch: MotoServer, calls: Calls, boto: MotoClients, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Four inputs a child (as past 40,000 inputs at Batch's 10,000 children): a child that
    # Batch fails without running holds inputs whose upstream values may still exist.
    monkeypatch.setattr(aws_jobs, "MAX_ARRAY_SIZE", 4)
    async with aws_knot(square_unless_five, "squares") as a, aws_knot(plus_one, "plus") as b:
        run_a = await a.map(range(16))
        run_b = await b.map(run_a)
        (upstream_job,) = run_a.backend_run.job_ids
        (downstream_job,) = run_b.backend_run.job_ids
    upstream_submit, downstream_submit = calls.submits
    assert downstream_submit["arrayProperties"] == {"size": 4}
    # Upstream child 1 (inputs 4 to 7) stored 4 and 5 (which raised), then its container was
    # lost; the other children ran whole, and so did their downstream children.
    for child in (0, 2, 3):
        await anyio.to_thread.run_sync(play, upstream_submit, f"{upstream_job}:{child}")
    # (Played as child 2 of chunks of 2: inputs 4 and 5 only.)
    await anyio.to_thread.run_sync(
        functools.partial(play, upstream_submit, f"{upstream_job}:2", AIOKNOT_CHUNK="2")
    )
    for child in (0, 2, 3):
        await anyio.to_thread.run_sync(play, downstream_submit, f"{downstream_job}:{child}")
    batch = lose_a_child(monkeypatch, f"{upstream_job}:1", f"{downstream_job}:1")
    async with aws_knot(plus_one, "plus") as b:
        again = await b.attach(run_b.id)  # a new client: it learns the jobs from Batch
        outcomes: list[Any] = []

        async def gather() -> None:
            outcomes.extend(await again.gather(return_exceptions=True))

        async with anyio.create_task_group() as group:
            group.start_soon(gather)
            await wait_until_async(lambda: batch.reruns, timeout=30, what="the rerun")
            ((rerun_job, rerun),) = batch.reruns
            # Another client re-attaching meanwhile (the manifest does not list the rerun
            # yet) finds the rerun by its name, and submits none of its own.
            async with aws_knot(plus_one, "plus") as other:
                late = await other.attach(run_b.id)
                await wait_until_async(
                    lambda: late.backend_run._jobs[0].failed_children == {1},
                    timeout=30,
                    what="the late client's look at the failed child",
                )
                assert rerun_job in late.backend_run.job_ids
            assert len(batch.reruns) == 1
            await anyio.to_thread.run_sync(play, rerun, rerun_job)
            batch.released = True
        # An input's log is its rerun's (the child Batch failed unrun has none); moto's jobs
        # write nothing to CloudWatch, so the line is put by hand.
        description = boto("batch").describe_jobs(jobs=[rerun_job])["jobs"][0]
        stream = description["container"]["logStreamName"]
        boto("logs").create_log_group(logGroupName=LOG_GROUP)
        boto("logs").create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
        event = {"timestamp": int(time.time() * 1000), "message": "rerun ran 4"}
        boto("logs").put_log_events(logGroupName=LOG_GROUP, logStreamName=stream, logEvents=[event])
        assert await again.logs(4) == ["rerun ran 4"]
    # The rerun: child 1's inputs, with no dependency, reading upstream's records.
    variables = {v["name"]: v["value"] for v in rerun["containerOverrides"]["environment"]}
    assert "dependsOn" not in rerun and "arrayProperties" not in rerun
    assert (variables["AIOKNOT_SEGMENTS"], variables["AIOKNOT_CHUNK"]) == ("4:4", "4")
    assert variables["AIOKNOT_UPSTREAM"].endswith(f"knots/squares/runs/{run_a.id}")
    # What Batch said of the upstream child, for the inputs it lost.
    said = (
        "its AWS Batch job failed: Essential container in task exited; "
        "OutOfMemoryError: Container killed"
    )
    assert variables["AIOKNOT_UPSTREAM_LOST"] == said
    upstream = f"squares/{run_a.id}"
    assert outcomes[4] == 17  # its upstream value was stored before the container was lost
    raised = outcomes[5]
    assert isinstance(raised, TaskError) and raised.upstream == (upstream, 5)
    assert raised.remote_type == "ValueError"
    for index in (6, 7):
        lost = outcomes[index]
        assert isinstance(lost, TaskLost) and lost.upstream == (upstream, index)
        assert f"input {index} of run {upstream}" in str(lost) and said in str(lost)
    assert [outcomes[i] for i in range(16) if i not in (4, 5, 6, 7)] == [
        x * x + 1 for x in range(16) if x not in (4, 5, 6, 7)
    ]


@pytest.mark.usefixtures("fast_polls")
async def test_on_batch_a_one_input_job_failed_unrun_runs_again_and_names_its_upstream(
    simple_batch: MotoServer, calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One input: plain jobs on both sides, the downstream one waiting for the whole upstream
    # job. The upstream container was lost before it stored anything.
    async with aws_knot(square_unless_five, "squares") as a, aws_knot(plus_one, "plus") as b:
        run_a = await a.map([3])
        run_b = await b.map(run_a)
        (upstream_job,) = run_a.backend_run.job_ids
        (downstream_job,) = run_b.backend_run.job_ids
    assert calls.submits[1]["dependsOn"] == [{"jobId": upstream_job}]
    batch = lose_a_child(monkeypatch, upstream_job, downstream_job)
    # The CLI's knot runs nothing: to it, the input is lost as Batch says, and nothing is
    # submitted.
    async with AsyncKnot._operator("plus", backend="aws") as operator:
        (looked,) = await (await operator.attach(run_b.id)).gather(return_exceptions=True)
    assert isinstance(looked, TaskLost) and "Dependent Job failed" in looked.reason
    assert batch.reruns == []
    async with aws_knot(plus_one, "plus") as b:
        again = await b.attach(run_b.id)
        async with anyio.create_task_group() as group:
            group.start_soon(functools.partial(again.gather, return_exceptions=True))
            await wait_until_async(lambda: batch.reruns, timeout=30, what="the rerun")
            ((rerun_job, rerun),) = batch.reruns
            await anyio.to_thread.run_sync(play, rerun, rerun_job)
            batch.released = True
        (lost,) = await again.gather(return_exceptions=True)
    assert "dependsOn" not in rerun and rerun["jobName"] == f"plus-{run_b.id}-r0"
    assert isinstance(lost, TaskLost) and lost.upstream == (f"squares/{run_a.id}", 0)
    assert "OutOfMemoryError: Container killed" in lost.reason


def always_fails(x: int) -> int:
    raise ValueError(f"no {x}")


@pytest.mark.usefixtures("fast_polls")
async def test_a_batch_pipeline_run_with_no_job_re_attaches_with_its_records(
    simple_batch: MotoServer, calls: Calls
) -> None:
    # Upstream runs locally, so its values come through the client; it fails every input,
    # so downstream the client writes every input's record and submits no job at all.
    async with (
        AsyncKnot(always_fails, name="failing", backend="local") as a,
        aws_knot(plus_one, "plus") as b,
    ):
        run_a = await a.map(range(3))
        run_b = await b.map(run_a)
        assert len(await run_b.gather(return_exceptions=True)) == 3
        assert run_b.backend_run.job_ids == [] and calls.submits == []
    async with aws_knot(plus_one, "plus") as b:
        again = await b.attach(run_b.id)
        outcomes = await again.gather(return_exceptions=True)
    assert [(type(o), o.upstream) for o in outcomes] == [
        (TaskError, (f"failing/{run_a.id}", i)) for i in range(3)
    ]


def test_a_job_of_the_blocking_face_is_refused_with_the_way_to_a_pipeline() -> None:
    with aioknot.Knot(square_unless_five, name="squares", backend="local") as a:
        job = a.map(range(3))
        with aioknot.Knot(plus_one, name="plus", backend="local") as b:
            with pytest.raises(ConfigurationError, match=r"give AsyncKnot.map the other's Run"):
                b.map(a.jobs[-1]).result()
        assert job.result() == [0, 1, 4]


def test_the_worker_reads_upstream_records_of_any_grouping(tmp_path: Path) -> None:
    """`read_upstream` on a directory store: values objects, grouped records with a failure,
    a record grouped across the start of the chunk, and an input with no record at all."""
    from aioknot._worker import (
        Failed,
        Unreadable,
        UpstreamFailed,
        WorkerDirectory,
        encode_error_record,
        encode_results,
        read_upstream,
        result_key,
    )

    store = WorkerDirectory(str(tmp_path))
    upstream = "knots/up/runs/20261121T000000-abcdef"
    store.write(result_key(upstream, 0, 12), encode_results(0, list(range(12))))  # 0..11
    failed = Failed(encode_error_record(ValueError("no thirteen")))
    store.write(result_key(upstream, 12, 3), encode_results(12, [12, failed, 14]))
    store.write(result_key(upstream, 16), encode_results(16, [16]))  # 15 has no record
    store.write(f"{upstream}/results/stray.tmp", b"half a record")

    inputs = read_upstream(store, upstream, 10, 17)
    assert inputs[:3] + [inputs[4]] + [inputs[6]] == [10, 11, 12, 14, 16]
    for position, index, lost in ((3, 13, False), (5, 15, True)):
        marker = inputs[position]
        assert isinstance(marker, Unreadable) and isinstance(marker.error, UpstreamFailed)
        assert (marker.error.run, marker.error.index) == ("up/20261121T000000-abcdef", index)
        assert (marker.error.info is None) == lost
    assert read_upstream(store, upstream, 0, 3) == [0, 1, 2]


async def test_an_input_not_run_has_no_log_lines() -> None:
    async with (
        AsyncKnot(square_unless_five, name="squares", backend="local") as a,
        AsyncKnot(plus_one, name="plus", backend="local") as b,
    ):
        run_b = await b.map(await a.map(range(6)))
        await run_b.gather(return_exceptions=True)
        assert await run_b.logs(5) == []  # the last input: no task ever ran it
        assert [line async for line in run_b.logs(5, follow=True)] == []
