"""The whole AWS path on this machine: a real image build, a real registry, real containers.

moto's Batch (default mode) runs every array child as a container of the image aioknot built
and pushed to the local registry; inside, the real worker reads its inputs from moto's S3 and
writes its records there. Nothing is faked between ``AsyncKnot(func, backend="aws")`` and the
results except AWS itself.

How the worker gets credentials: on AWS the job role does it, through the ECS agent's
credentials endpoint, whose address Batch puts in ``AWS_CONTAINER_CREDENTIALS_RELATIVE_URI``.
moto's Batch has no such agent, so this test runs one: a loopback HTTP server answering the
endpoint's JSON with moto's test credentials, named by ``AWS_CONTAINER_CREDENTIALS_FULL_URI``
in the knot's ``env=``. That is the same botocore path a real job takes, and no credential
ever travels in an environment variable. The options refuse that variable from users (it would
point a job at another role's credentials); the test lifts the refusal for it alone, standing
in for the agent that sets it on AWS (`agent_variable_allowed`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aws_e2e_functions import exit_on_three, hypotenuse, plus_one, refuse_three
from helpers.aws import MotoClients, point_at
from helpers.waiting import wait_until_async
from infra.containers import ContainerStack, knot_options
from infra.containers import job_role_endpoint as infra_job_role_endpoint
from infra.moto import MotoServer, start_moto_server, stop_moto_server

import aioknot
from aioknot._backends.aws import options as aws_options_module
from aioknot._backends.aws import run as aws_run
from aioknot._backends.aws import stack as aws_stack
from aioknot._backends.aws.image import image_settings, image_spec
from aioknot._names import run_prefix
from aioknot._pickling import pickle_function

pytestmark = [pytest.mark.containers, pytest.mark.timeout(900)]

# The repository of the tests that do not test building: the functions in aws_e2e_functions
# share their imports, so they share an image, and only the first of these tests builds it.
SHARED_REPOSITORY = "aioknot-e2e-shared"


@pytest.fixture
def job_role_endpoint() -> Iterator[str]:
    """A stand-in for the ECS agent's credentials endpoint (the job role, on AWS)."""
    with infra_job_role_endpoint() as url:
        yield url


@pytest.fixture
def agent_variable_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ECS agent sets AWS_CONTAINER_CREDENTIALS_* on AWS; moto has no agent, so the test
    passes the stand-in endpoint through ``env=``, which refuses the variable from users."""
    allowed = aws_options_module.CREDENTIAL_VARIABLES - {"AWS_CONTAINER_CREDENTIALS_FULL_URI"}
    monkeypatch.setattr(aws_options_module, "CREDENTIAL_VARIABLES", allowed)


@pytest.fixture
def batch_moto(
    container_stack: ContainerStack, monkeypatch: pytest.MonkeyPatch
) -> Iterator[MotoServer]:
    server = start_moto_server(
        {
            "DOCKER_HOST": container_stack.docker_host,
            # Job containers share the host's network, so they reach moto on loopback.
            "MOTO_DOCKER_NETWORK_MODE": "host",
            # docker-py in moto pulls the job image with this login, as a Batch host would.
            "DOCKER_CONFIG": container_stack.docker_config,
        }
    )
    point_at(server.url, monkeypatch)
    # Polls between fast_polls' and the defaults': real containers take seconds, not minutes.
    monkeypatch.setattr(aws_run, "FIRST_POLL_SECONDS", 0.5)
    monkeypatch.setattr(aws_run, "MAX_POLL_SECONDS", 2.0)
    monkeypatch.setattr(aws_stack, "FIRST_POLL_INTERVAL", 0.05)
    try:
        yield server
    finally:
        stop_moto_server(server)


async def test_real_containers_end_to_end(
    batch_moto: MotoServer,
    container_stack: ContainerStack,
    job_role_endpoint: str,
    agent_variable_allowed: None,
) -> None:
    # A fresh repository: the first knot must build and push, whatever earlier runs left.
    repository = f"aioknot-e2e-{uuid.uuid4().hex[:8]}"
    options = knot_options(container_stack, repository, job_role_endpoint)

    first_log: list[str] = []
    pairs = [(3.0, 4.0), (5.0, 12.0), (8.0, 15.0), (7.0, 24.0)]
    async with aioknot.AsyncKnot(
        hypotenuse, name="e2e-hypot", progress=first_log.append, **options
    ) as knot:
        results = sorted([value async for value in knot.amap(pairs)])
        assert results == [5.0, 13.0, 17.0, 25.0]
        run = await knot.map([(6.0, 8.0)])  # one input: a plain job
        assert await run.gather() == [10.0]

        # The record is written before the container exits; its log is copied after, by moto,
        # on a thread of its own: it can only be looked for.
        async def logged() -> bool:
            return any("aioknot worker: inputs 0..0" in line for line in await run.logs(0))

        await wait_until_async(logged, timeout=30, interval=0.5, what="the worker's log line")
    assert any(line.startswith("building ") for line in first_log), first_log
    assert any(line.startswith("pushed ") for line in first_log), first_log

    # Another function with the same imports: the same image, nothing built or pushed.
    second_log: list[str] = []
    async with aioknot.AsyncKnot(
        refuse_three, name="e2e-refuse", progress=second_log.append, **options
    ) as knot:
        refused = await knot.map([1, 2, 3, 4])
        outcomes = await refused.gather(return_exceptions=True)
    assert outcomes[:2] == [1, 4] and outcomes[3] == 16
    error = outcomes[2]
    assert isinstance(error, aioknot.TaskError) and error.index == 2
    assert error.remote_type == "ValueError"
    assert "three is right out" in error.remote_message
    # The traceback is the container's: the worker's frame, then the function's (whose source
    # file is not in the image, so the line number stands without its text).
    assert "/opt/aioknot/aioknot_worker.py" in error.remote_traceback
    assert "in refuse_three" in error.remote_traceback
    assert not any(line.startswith(("building ", "pushed ")) for line in second_log), second_log
    assert any("already in the registry" in line for line in second_log), second_log

    # The blocking face, through a Future.
    with aioknot.Knot(refuse_three, name="e2e-refuse", **options) as sync_knot:
        assert sync_knot.map([5, 6]).result(timeout=300) == [25, 36]
        with pytest.raises(aioknot.TaskError, match="three is right out"):
            sync_knot.map([3]).result(timeout=300)


async def test_a_process_that_exits_is_lost_with_its_exit_code(
    batch_moto: MotoServer,
    container_stack: ContainerStack,
    job_role_endpoint: str,
    agent_variable_allowed: None,
) -> None:
    """An input whose process exits with code 3: Batch fails its child (a real container that
    really exited 3), and its TaskLost says so. moto's DescribeJobs has no exit code; its
    ListJobs summary does, from the container, and the watcher reads it there."""
    options = knot_options(container_stack, SHARED_REPOSITORY, job_role_endpoint)
    async with aioknot.AsyncKnot(exit_on_three, name="e2e-exit", **options) as knot:
        exiting = await knot.map([2, 3])
        exited = await exiting.gather(return_exceptions=True)
        assert exiting.backend_run is not None
        job_ids = list(exiting.backend_run.job_ids)
    assert exited[0] == 4
    lost = exited[1]
    assert isinstance(lost, aioknot.TaskLost) and lost.index == 1, exited
    assert lost.exit_code == 3, lost
    assert lost.job_id == f"{job_ids[0]}:1"
    assert lost.attempts is not None and lost.attempts >= 1
    assert lost.log is not None and "FAILED" in lost.reason


async def test_a_pipeline_completes_with_the_client_closed(
    batch_moto: MotoServer,
    container_stack: ContainerStack,
    job_role_endpoint: str,
    agent_variable_allowed: None,
) -> None:
    """``b.map(a_run)`` on Batch: B's jobs depend on A's (N_TO_N) and read A's records in the
    container, so the pipeline finishes with both knots closed, and B's run, re-attached,
    has every value, and A's error where A raised."""
    options = knot_options(container_stack, SHARED_REPOSITORY, job_role_endpoint)
    async with aioknot.AsyncKnot(refuse_three, name="e2e-squares", **options) as a:
        run_a = await a.map(range(6))
        # Opened after A's map returned: A's image is pushed, B (same imports) finds it there.
        b_log: list[str] = []
        async with aioknot.AsyncKnot(
            plus_one, name="e2e-plus-one", progress=b_log.append, **options
        ) as b:
            run_b = await b.map(run_a)
    assert any("already in the registry" in line for line in b_log), b_log
    # Both knots are closed: from here on only Batch runs the pipeline.
    a_jobs, b_jobs = list(run_a.backend_run.job_ids), list(run_b.backend_run.job_ids)
    assert run_b.upstream == f"e2e-squares/{run_a.id}"

    with MotoClients(batch_moto.url) as clients:
        batch = clients("batch")

        def describe(job_ids: list[str]) -> list[dict[str, Any]]:
            jobs: list[dict[str, Any]] = batch.describe_jobs(jobs=job_ids)["jobs"]
            assert len(jobs) == len(job_ids), (job_ids, jobs)
            return jobs

        def children(jobs: list[dict[str, Any]]) -> list[str]:
            return [
                f"{job['jobId']}:{i}" if "arrayProperties" in job else job["jobId"]
                for job in jobs
                for i in range(job.get("arrayProperties", {}).get("size", 1))
            ]

        # B's jobs, as Batch has them: one per A job, of its shape, after it, reading its run.
        upstream_jobs = describe(a_jobs)
        downstream_jobs = describe(b_jobs)
        assert len(downstream_jobs) == len(upstream_jobs)
        for upstream, downstream in zip(upstream_jobs, downstream_jobs, strict=True):
            size = upstream.get("arrayProperties", {}).get("size")
            assert downstream.get("arrayProperties", {}).get("size") == size
            edge = {"jobId": upstream["jobId"], **({"type": "N_TO_N"} if size else {})}
            assert downstream["dependsOn"] == [edge]
            above, below = (
                {e["name"]: e["value"] for e in job["container"]["environment"]}
                for job in (upstream, downstream)
            )
            assert below["AIOKNOT_UPSTREAM"] == run_prefix("e2e-squares", run_a.id)
            assert "AIOKNOT_UPSTREAM" not in above
            for name in ("AIOKNOT_SEGMENTS", "AIOKNOT_CHUNK"):
                assert below[name] == above[name], name
        # The knots closed before any of B's containers was done: what follows is Batch's.
        early = {job["status"] for job in describe(children(downstream_jobs))}
        assert early.isdisjoint({"SUCCEEDED", "FAILED"}), early

        def downstream_done() -> bool:
            # moto has no N_TO_N of its own: a child of B waits for A's *parent* to be
            # SUCCEEDED, which moto only works out from A's children when A is described.
            # Describing A stands in for that bookkeeping (Batch does it on AWS); aioknot
            # needs nothing of the sort there.
            describe(a_jobs)
            statuses = [job["status"] for job in describe(children(downstream_jobs))]
            return all(status in ("SUCCEEDED", "FAILED") for status in statuses)

        await wait_until_async(
            downstream_done,
            timeout=300,
            interval=0.5,
            what="B's jobs ending with no client open (moto's Batch running the pipeline)",
        )

        async with aioknot.AsyncKnot(plus_one, name="e2e-plus-one", **options) as b:
            attached = await b.attach(run_b.id)
            outcomes = await attached.gather(return_exceptions=True)
        assert attached.upstream == f"e2e-squares/{run_a.id}"
        assert [o for i, o in enumerate(outcomes) if i != 3] == [1, 2, 5, 17, 26], outcomes
        error = outcomes[3]
        assert isinstance(error, aioknot.TaskError) and error.index == 3, outcomes
        assert error.upstream == (f"e2e-squares/{run_a.id}", 3)
        assert error.remote_type == "ValueError"
        assert "three is right out" in error.remote_message
        # Nothing is left running: every job and child of both runs ended, and succeeded
        # (the input that raised is a record its child wrote before exiting 0).
        ended = describe(children(describe(a_jobs)) + children(describe(b_jobs)))
        assert {job["status"] for job in ended} == {"SUCCEEDED"}, ended


def test_an_added_import_makes_a_new_image_tag(tmp_path: Any, monkeypatch: Any) -> None:
    module = tmp_path / "with_six.py"
    module.write_text("import math\nimport six\n\ndef f(x):\n    return math.sqrt(x), six.PY3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from with_six import f  # type: ignore[import-not-found]

    settings = image_settings({})
    plain = image_spec(settings, hypotenuse, pickle_function(hypotenuse))
    other = image_spec(settings, refuse_three, pickle_function(refuse_three))
    more = image_spec(settings, f, pickle_function(f))
    assert plain is not None and other is not None and more is not None
    assert plain.tag == other.tag  # same imports, same image
    assert more.tag != plain.tag
    assert any(line.startswith("six==") for line in more.requirements)
