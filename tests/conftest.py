"""Shared fixtures: a real moto server (tests/infra/moto.py) with fake AWS credentials, a
fault-injecting proxy in front of it (tests/infra/fault_proxy.py), the container stack
(tests/infra/containers.sh), an empty AIOKNOT_HOME, and what the AWS tests share: boto3
clients on moto (`boto`), a count of aioknot's own calls (`calls`), moto's simple Batch mode
(`simple_batch`) and short poll intervals (`fast_polls`). Plain helpers are in tests/helpers/.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import aioboto3
import pytest
from helpers.aws import Calls, MotoClients, point_at
from infra.fault_proxy import FaultProxy
from infra.fixtures import container_stack  # noqa: F401  (the real Docker engine + registry)
from infra.moto import MotoServer, start_moto_server, stop_moto_server


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = start_moto_server()
    yield server
    stop_moto_server(server)


@pytest.fixture
def aws(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    """A freshly reset moto server, with this process's AWS settings pointing at it."""
    moto_server.reset()
    point_at(moto_server.url, monkeypatch)
    yield moto_server


@pytest.fixture
def aioknot_home(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> str:
    """An empty AIOKNOT_HOME for the local store, so tests never touch the user's cache."""
    home = os.path.join(str(tmp_path), "aioknot-home")
    monkeypatch.setenv("AIOKNOT_HOME", home)
    return home


@pytest.fixture
def fault_proxy(moto_server: MotoServer) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of the session's moto server (no faults until added)."""
    with FaultProxy(upstream=moto_server.url) as proxy:
        yield proxy


@pytest.fixture
def simple_batch(aws: MotoServer) -> Iterator[MotoServer]:
    """`aws` with moto's Batch in simple mode: a job ends (SUCCEEDED) the moment it is
    submitted, and no container runs."""
    aws.configure({"batch": {"use_docker": False}})
    try:
        yield aws
    finally:
        aws.configure({"batch": {"use_docker": True}})


@pytest.fixture(scope="session")
def failing_moto_server() -> Iterator[MotoServer]:
    """A second moto server, whose simple-mode Batch jobs FAIL the moment they are submitted
    (``MOTO_SIMPLE_BATCH_FAIL_AFTER=0`` is read by the server's process)."""
    server = start_moto_server({"MOTO_SIMPLE_BATCH_FAIL_AFTER": "0"})
    yield server
    stop_moto_server(server)


@pytest.fixture
def failing_batch(failing_moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """`simple_batch` on `failing_moto_server`: freshly reset, this process's AWS settings
    pointing at it, and every job FAILED at submit without running anything."""
    failing_moto_server.reset()
    failing_moto_server.configure({"batch": {"use_docker": False}})
    point_at(failing_moto_server.url, monkeypatch)
    return failing_moto_server


@pytest.fixture
def boto(aws: MotoServer) -> Iterator[MotoClients]:
    """boto3 clients on the test's moto server, by service (``boto("s3")``), closed after."""
    with MotoClients(aws.url) as clients:
        yield clients


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Calls:
    """Every AWS call aioknot makes from here on, counted through botocore's event hooks on
    each aioboto3 session it opens."""
    counter = Calls()
    original = aioboto3.Session

    class CountingSession(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.events.register("before-call", counter.record)
            self.events.register("provide-client-params.batch.SubmitJob", counter.submitted)

    monkeypatch.setattr(aioboto3, "Session", CountingSession)
    return counter


@pytest.fixture
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shorter pauses between the AWS backend's polls and retries (moto answers at once, and
    the tests' faults are short bursts): the same waits and the same paths, in less time."""
    # Imported here: a test of the local backend never needs the AWS backend to import.
    from aioknot._backends.aws import backend as aws_backend
    from aioknot._backends.aws import run as aws_run
    from aioknot._backends.aws import stack as aws_stack

    monkeypatch.setattr(aws_run, "FIRST_POLL_SECONDS", 0.05)
    monkeypatch.setattr(aws_run, "MAX_POLL_SECONDS", 0.5)
    monkeypatch.setattr(aws_run, "RETRY_FIRST_SECONDS", 0.05)
    monkeypatch.setattr(aws_run, "RETRY_LONGEST_SECONDS", 0.5)
    monkeypatch.setattr(aws_stack, "FIRST_POLL_INTERVAL", 0.01)
    monkeypatch.setattr(aws_stack, "MAX_POLL_INTERVAL", 0.05)
    monkeypatch.setattr(aws_backend, "CLEANUP_FIRST_POLL", 0.01)
    monkeypatch.setattr(aws_backend, "CLEANUP_LONGEST_POLL", 0.05)
