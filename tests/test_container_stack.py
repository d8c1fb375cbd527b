"""The real container stack (tests/infra/containers.sh) does what the image and Batch tests need.

- the private engine has a ``python:X.Y-slim`` base image whose Python minor is ours;
- containers run and their output can be read;
- the local registry takes a push authenticated with moto's ECR token and lists the tag;
- moto's Batch (default mode) runs a job whose image lives only in that registry: docker-py in
  the moto server pulls it with the login from ``DOCKER_CONFIG``.
"""

from __future__ import annotations

import base64
import io
import json
import sys
import tarfile
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiodocker
import pytest
from aiodocker.exceptions import DockerError
from helpers.aws import MotoClients
from helpers.waiting import wait_until_async
from infra.containers import ContainerStack
from infra.moto import start_moto_server, stop_moto_server

# The first session on a fresh machine installs packages and runs debootstrap (~1 min).
pytestmark = [pytest.mark.containers, pytest.mark.timeout(600)]

MOTO_ECR_TOKEN = "QVdTOjEyMzQ1Njc4OTAxMi1hdXRoLXRva2Vu"  # base64("AWS:123456789012-auth-token")
CLIENT_MINOR = f"{sys.version_info[0]}.{sys.version_info[1]}"


@pytest.fixture
async def docker(container_stack: ContainerStack) -> AsyncIterator[aiodocker.Docker]:
    client = aiodocker.Docker(url=container_stack.docker_host)
    try:
        yield client
    finally:
        await client.close()


async def run_python(docker: aiodocker.Docker, image: str, code: str) -> tuple[int, str]:
    """Run ``python -c code`` in a fresh container; return (exit code, stdout)."""
    container = await docker.containers.run(config={"Image": image, "Cmd": ["python", "-c", code]})
    try:
        status = await container.wait(timeout=120)
        stdout = await container.log(stdout=True)
        return int(status["StatusCode"]), "".join(stdout)
    finally:
        await container.delete(force=True)


def registry_get(stack: ContainerStack, path: str, *, auth: bool = True) -> Any:
    request = urllib.request.Request(f"http://{stack.registry}{path}")
    if auth:
        login = f"{stack.registry_user}:{stack.registry_password}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(login).decode())
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


async def push(docker: aiodocker.Docker, source: str, ref: str, auth: dict[str, str]) -> None:
    """Tag ``source`` as ``ref`` (registry/name:tag) and push it; aiodocker raises on errors."""
    repo, _, tag = ref.rpartition(":")
    await docker.images.tag(source, repo, tag=tag)
    await docker.images.push(repo, tag=tag, auth=auth)


async def test_base_image_matches_client_python(
    docker: aiodocker.Docker, container_stack: ContainerStack
) -> None:
    assert container_stack.base_image == f"python:{CLIENT_MINOR}-slim"
    info = await docker.images.inspect(container_stack.base_image)
    env = dict(item.split("=", 1) for item in info["Config"]["Env"])
    assert env["PIP_CERT"] == "/etc/ssl/certs/ca-certificates.crt"

    code = (
        "import sys, os, shutil\n"
        "print(f'{sys.version_info[0]}.{sys.version_info[1]}')\n"
        "print(shutil.which('python'), shutil.which('pip'))\n"
        "print(any(os.path.exists(p + '/EXTERNALLY-MANAGED') for p in sys.path if p))\n"
    )
    status, out = await run_python(docker, container_stack.base_image, code)
    assert status == 0, out
    minor, paths, managed = out.splitlines()
    assert minor == CLIENT_MINOR
    assert paths == "/usr/local/bin/python /usr/local/bin/pip"
    assert managed == "False"


async def test_container_runs_and_output_is_read(
    docker: aiodocker.Docker, container_stack: ContainerStack
) -> None:
    status, out = await run_python(docker, container_stack.base_image, "print(6 * 7)")
    assert (status, out.strip()) == (0, "42")
    status, _ = await run_python(docker, container_stack.base_image, "raise SystemExit(3)")
    assert status == 3


async def test_build_from_base_image_pip_installs_from_pypi(
    docker: aiodocker.Docker, container_stack: ContainerStack
) -> None:
    """An image build on this engine reaches PyPI (NAT, DNS, the proxy's CA) with plain pip."""
    dockerfile = (
        f"FROM {container_stack.base_image}\n"
        "ENV PATH=/opt/extra/bin:$PATH\n"
        "RUN pip install --no-cache-dir six\n"
    ).encode()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    context.seek(0)
    tag = f"aioknot-build-smoke:{uuid.uuid4().hex[:12]}"
    await docker.images.build(fileobj=context, encoding="identity", tag=tag, forcerm=True)
    try:
        status, out = await run_python(docker, tag, "import six, os; print(os.environ['PATH'])")
        assert status == 0, out
        assert (
            out.strip()
            == "/opt/extra/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        )
    finally:
        await docker.images.delete(tag, force=True)


async def test_push_with_moto_ecr_token(
    docker: aiodocker.Docker, container_stack: ContainerStack
) -> None:
    user, _, password = base64.b64decode(MOTO_ECR_TOKEN).decode().partition(":")
    assert (user, password) == (container_stack.registry_user, container_stack.registry_password)

    with pytest.raises(urllib.error.HTTPError) as refused:
        registry_get(container_stack, "/v2/", auth=False)
    assert refused.value.code == 401
    refused.value.close()  # an HTTPError holds the response's socket until closed

    tag = uuid.uuid4().hex[:12]
    ref = f"{container_stack.registry}/aioknot-smoke:{tag}"
    bad = {**container_stack.registry_auth, "password": "wrong"}
    with pytest.raises(DockerError):
        await push(docker, container_stack.base_image, ref, bad)

    await push(docker, container_stack.base_image, ref, container_stack.registry_auth)
    tags = registry_get(container_stack, "/v2/aioknot-smoke/tags/list")
    assert tags["name"] == "aioknot-smoke"
    assert tag in tags["tags"]
    await docker.images.delete(ref)


def moto_batch_env(stack: ContainerStack, *, registry_login: bool) -> dict[str, str]:
    return {
        "DOCKER_HOST": stack.docker_host,
        # docker-py in the moto server pulls with the login in $DOCKER_CONFIG/config.json,
        # as a Batch host pulls from ECR with its instance role.
        "DOCKER_CONFIG": stack.docker_config if registry_login else "/nonexistent",
        # Job containers share the host network, so they can reach moto on loopback.
        "MOTO_DOCKER_NETWORK_MODE": "host",
    }


async def run_batch_job(server_url: str, image: str, command: list[str]) -> dict[str, Any]:
    """Create a compute environment, queue and job definition in moto, run one job to the end."""
    with MotoClients(server_url) as boto:
        return await _run_batch_job(boto("iam"), boto("batch"), image, command)


async def _run_batch_job(iam: Any, batch: Any, image: str, command: list[str]) -> dict[str, Any]:
    role = iam.create_role(
        RoleName="aioknot-batch-service",
        AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
    )["Role"]["Arn"]
    env = batch.create_compute_environment(
        computeEnvironmentName="aioknot-smoke", type="UNMANAGED", state="ENABLED", serviceRole=role
    )["computeEnvironmentArn"]
    queue = batch.create_job_queue(
        jobQueueName="aioknot-smoke",
        state="ENABLED",
        priority=1,
        computeEnvironmentOrder=[{"order": 1, "computeEnvironment": env}],
    )["jobQueueArn"]
    definition = batch.register_job_definition(
        jobDefinitionName="aioknot-smoke",
        type="container",
        containerProperties={
            "image": image,
            "command": command,
            "resourceRequirements": [
                {"type": "VCPU", "value": "1"},
                {"type": "MEMORY", "value": "512"},
            ],
        },
        retryStrategy={"attempts": 1},
    )["jobDefinitionArn"]
    job_id = batch.submit_job(jobName="smoke", jobQueue=queue, jobDefinition=definition)["jobId"]

    def ended() -> dict[str, Any] | None:
        job: dict[str, Any] = batch.describe_jobs(jobs=[job_id])["jobs"][0]
        return job if job["status"] in ("SUCCEEDED", "FAILED") else None

    # moto's Batch runs the container on a thread of its own: its end can only be polled (a
    # container takes seconds: twice a second is often enough).
    return await wait_until_async(
        ended, timeout=120, interval=0.5, what=f"job {job_id} SUCCEEDED or FAILED"
    )


async def image_only_in_registry(
    docker: aiodocker.Docker, stack: ContainerStack, auth: dict[str, str]
) -> str:
    """Push the base image under a new name, then untag it locally: only the registry has it."""
    image = f"{stack.registry}/aioknot-moto-smoke-{uuid.uuid4().hex[:8]}:v1"
    await push(docker, stack.base_image, image, auth)
    await docker.images.delete(image)
    return image


async def test_moto_batch_pulls_job_image_from_the_auth_registry(
    docker: aiodocker.Docker, container_stack: ContainerStack
) -> None:
    server = start_moto_server(moto_batch_env(container_stack, registry_login=True))
    boto = MotoClients(server.url)
    try:
        # Push the way the image builder will: with the token moto's ECR hands out.
        ecr = boto("ecr")
        token = ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]
        user, _, password = base64.b64decode(token).decode().partition(":")
        auth = {"username": user, "password": password, "serveraddress": container_stack.registry}
        image = await image_only_in_registry(docker, container_stack, auth)

        job = await run_batch_job(server.url, image, ["python", "-c", "print(42)"])
        assert job["status"] == "SUCCEEDED", job
        # The image is back in the engine: moto pulled it from the registry, with the login.
        await docker.images.inspect(image)
        await docker.images.delete(image)

        # moto copies the container's output to CloudWatch Logs when it exits.
        events = boto("logs").get_log_events(
            logGroupName="/aws/batch/job", logStreamName=job["container"]["logStreamName"]
        )["events"]
        assert [event["message"] for event in events] == ["42"]
    finally:
        boto.close()
        stop_moto_server(server)


async def test_moto_batch_without_registry_login_cannot_pull(
    docker: aiodocker.Docker, container_stack: ContainerStack
) -> None:
    """The registry demands auth for pulls too: the login in DOCKER_CONFIG is what made it work."""
    server = start_moto_server(moto_batch_env(container_stack, registry_login=False))
    try:
        image = await image_only_in_registry(docker, container_stack, container_stack.registry_auth)
        job = await run_batch_job(server.url, image, ["python", "-c", "print(42)"])
        # moto swallows the pull error: FAILED with no statusReason.
        assert job["status"] == "FAILED", job
        with pytest.raises(DockerError):
            await docker.images.inspect(image)
    finally:
        stop_moto_server(server)
