"""The real container stack for tests: a private Docker engine, a base image, a local registry.

``tests/infra/containers.sh`` does the work (installs packages, starts ``dockerd`` and
``docker-registry``, makes ``python:X.Y-slim`` with debootstrap) and is idempotent; this module
runs it once per process and parses the ``export NAME=value`` lines it prints.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .moto import FAKE_CREDENTIALS

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


# -- what a knot on moto's Batch with real containers needs -----------------------------------


class _JobRoleCredentials(http.server.BaseHTTPRequestHandler):
    """The ECS agent's credentials endpoint, as a container's job role reaches it on AWS."""

    def do_GET(self) -> None:  # noqa: N802 (the handler's API)
        body = json.dumps(
            {
                "AccessKeyId": FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                "SecretAccessKey": FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                "Token": FAKE_CREDENTIALS["AWS_SESSION_TOKEN"],
                "Expiration": "2099-01-01T00:00:00Z",
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def job_role_endpoint() -> Iterator[str]:
    """A stand-in for the ECS agent's credentials endpoint: its URL while it serves."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _JobRoleCredentials)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v2/credentials/job-role"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def knot_options(stack: ContainerStack, repository: str, credentials: str) -> dict[str, Any]:
    """An AWS knot's options for this stack: its registry and engine, the job role's endpoint."""
    user, password = stack.registry_user, stack.registry_password
    return {
        "backend": "aws",
        "registry": f"{user}:{password}@{stack.registry}/{repository}",
        "docker_host": stack.docker_host,
        "env": {"AWS_CONTAINER_CREDENTIALS_FULL_URI": credentials},
    }
