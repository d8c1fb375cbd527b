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
from aws_e2e_functions import exit_on_three, hypotenuse, refuse_three
from helpers.aws import point_at
from helpers.waiting import wait_until_async
from infra.containers import ContainerStack, knot_options
from infra.containers import job_role_endpoint as infra_job_role_endpoint
from infra.moto import MotoServer, start_moto_server, stop_moto_server

import aioknot
from aioknot._backends.aws import options as aws_options_module
from aioknot._backends.aws import run as aws_run
from aioknot._backends.aws import stack as aws_stack
from aioknot._backends.aws.image import image_settings, image_spec
from aioknot._pickling import pickle_function

pytestmark = [pytest.mark.containers, pytest.mark.timeout(900)]


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
    options = knot_options(container_stack, "aioknot-e2e-exit", job_role_endpoint)
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
