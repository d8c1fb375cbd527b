"""Shared fixtures: a real moto server (tests/infra/moto.py) with fake AWS credentials, a
fault-injecting proxy in front of it (tests/infra/fault_proxy.py), the
container stack (tests/infra/containers.sh), and an empty AIOKNOT_HOME."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from infra.fault_proxy import FaultProxy
from infra.fixtures import container_stack  # noqa: F401  (the real Docker engine + registry)
from infra.moto import FAKE_CREDENTIALS, MotoServer, start_moto_server, stop_moto_server


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = start_moto_server()
    yield server
    stop_moto_server(server)


@pytest.fixture
def aws(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    """A freshly reset moto server, with this process's AWS settings pointing at it."""
    moto_server.reset()
    for key, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.url)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
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
