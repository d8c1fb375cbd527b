"""pytest fixtures for the real container stack (import them into tests/conftest.py)."""

from __future__ import annotations

import pytest

from infra.containers import ContainerStack, cannot_host_reason, ensure_container_stack


@pytest.fixture(scope="session")
def container_stack() -> ContainerStack:
    """The private Docker engine, base image and local registry, started once per session.

    Skips only when this machine cannot host the stack at all (not root, no way to install the
    packages); anything else that goes wrong fails the test loudly.
    """
    reason = cannot_host_reason()
    if reason is not None:
        pytest.skip(reason)
    return ensure_container_stack()
