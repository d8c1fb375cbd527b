"""The real container stack for tests: a private Docker engine, a base image, a local registry.

``tests/infra/containers.sh`` does the work (installs packages, starts ``dockerd`` and
``docker-registry``, makes ``python:X.Y-slim`` with debootstrap) and is idempotent; this module
runs it once per process and parses the ``export NAME=value`` lines it prints.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).with_name("containers.sh")

# What tests/infra/containers.sh needs, and how it would get it.
_TOOLS = ("dockerd", "containerd", "runc", "docker-registry", "debootstrap", "htpasswd", "curl")


@dataclass(frozen=True)
class ContainerStack:
    docker_host: str
    """``unix:///.../docker.sock`` of the private engine: pass it as ``DOCKER_HOST`` or URL."""
    registry: str
    """``127.0.0.1:PORT`` of the local registry (plain HTTP, htpasswd auth)."""
    registry_user: str
    """``AWS``: the user in moto's ECR authorization token."""
    registry_password: str
    """``123456789012-auth-token``: the password in moto's ECR authorization token."""
    base_image: str
    """``python:X.Y-slim`` with X.Y this machine's Python, already in the engine."""
    docker_config: str
    """A ``DOCKER_CONFIG`` dir whose config.json holds the registry login (for docker-py)."""

    @property
    def registry_auth(self) -> dict[str, str]:
        """The ``X-Registry-Auth`` mapping for aiodocker's push/pull."""
        return {
            "username": self.registry_user,
            "password": self.registry_password,
            "serveraddress": self.registry,
        }


class ContainerStackError(RuntimeError):
    """tests/infra/containers.sh failed on a machine that should be able to host the stack."""


def cannot_host_reason() -> str | None:
    """Why this machine truly cannot host the stack (so tests needing it may skip), else None."""
    if not sys.platform.startswith("linux"):
        return f"the container stack needs Linux, this is {sys.platform}"
    if os.geteuid() != 0:
        return "the container stack needs root (it installs packages and starts dockerd)"
    if shutil.which("bash") is None:
        return "no bash to run tests/infra/containers.sh"
    if shutil.which("python3") is None:
        return "no python3 on PATH (the base image must match its minor version)"
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing and shutil.which("apt-get") is None:
        return f"missing {', '.join(missing)} and no apt-get to install them"
    return None


def parse_exports(text: str) -> dict[str, str]:
    """The ``export NAME=value`` lines of the script's stdout (values are shell-quoted)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, _, value = words[1].partition("=")
            values[name] = value
    return values


@functools.cache
def ensure_container_stack() -> ContainerStack:
    """Run tests/infra/containers.sh (once per process) and describe what it set up."""
    try:
        result = subprocess.run(
            ["bash", str(SCRIPT)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise ContainerStackError(f"{SCRIPT} timed out after {err.timeout} s") from err
    if result.returncode != 0:
        tail = "\n".join(result.stderr.splitlines()[-40:])
        raise ContainerStackError(f"{SCRIPT} failed with exit code {result.returncode}:\n{tail}")
    values = parse_exports(result.stdout)
    try:
        return ContainerStack(
            docker_host=values["DOCKER_HOST"],
            registry=values["AIOKNOT_TEST_REGISTRY"],
            registry_user=values["AIOKNOT_TEST_REGISTRY_USER"],
            registry_password=values["AIOKNOT_TEST_REGISTRY_PASSWORD"],
            base_image=values["AIOKNOT_TEST_BASE_IMAGE"],
            docker_config=values["AIOKNOT_TEST_DOCKER_CONFIG"],
        )
    except KeyError as err:
        raise ContainerStackError(
            f"{SCRIPT} did not print {err.args[0]}; stdout was:\n{result.stdout}"
        ) from None
