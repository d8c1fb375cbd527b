"""Building and pushing the worker image: a real engine and registry, ECR against moto.

The ``containers`` tests use the private Docker engine and local registry of
tests/infra/containers.sh; the registry accepts exactly moto's ECR token, so the ECR login
from moto can push to it.
"""

from __future__ import annotations

import base64
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import aioboto3
import aiodocker
import pytest
from infra.containers import ContainerStack
from infra.fixtures import container_stack  # noqa: F401

from aioknot._backends.aws.image import ImageSettings, plan_image, produce_image
from aioknot._backends.aws.options import RESERVED_TAG_PREFIX
from aioknot._errors import redact
from aioknot._exceptions import ConfigurationError, ImageBuildError
from aioknot._image.builder import (
    OWN_TAG_PREFIX,
    Registry,
    build_and_push,
    check_engine,
    ecr_registry_login,
    image_digest,
    is_aioknots_repository,
    registry_from_option,
)
from aioknot._image.dockerfile import ImageSpec, make_image_spec
from aioknot._image.requirements import worker_requirements

# ------------------------------------------------------------------------------- options


def test_registry_option_forms() -> None:
    local = registry_from_option("127.0.0.1:5123/team/knots", username="u", password="p")
    assert local == Registry("127.0.0.1:5123", "team/knots", "u", "p", scheme="http")
    assert local.image_uri("t1") == "127.0.0.1:5123/team/knots:t1"
    assert "s3cret-value" not in repr(dataclasses.replace(local, password="s3cret-value"))

    remote = registry_from_option("https://bob:pw@registry.example.com")
    assert remote == Registry("registry.example.com", "aioknot", "bob", "pw", scheme="https")
    assert registry_from_option("registry.example.com/x").scheme == "https"  # type: ignore[union-attr]
    assert registry_from_option("localhost:5000").scheme == "http"  # type: ignore[union-attr]


def test_registry_option_from_the_environment() -> None:
    environ = {
        "AIOKNOT_REGISTRY": "registry.example.com:8443/ml",
        "AIOKNOT_REGISTRY_USERNAME": "robot",
        "AIOKNOT_REGISTRY_PASSWORD": "token",
    }
    found = registry_from_option(environ=environ)
    assert found == Registry("registry.example.com:8443", "ml", "robot", "token")
    assert registry_from_option(environ={}) is None  # None: the caller uses ECR


@pytest.mark.parametrize("value", ["ftp://host/repo", "/just/a/path", "host/Upper_Case"])
def test_bad_registry_options_are_refused(value: str) -> None:
    with pytest.raises(ConfigurationError, match="registry"):
        registry_from_option(value)


@pytest.mark.parametrize(
    "value",
    [
        "ftp://robot:hunter2-pw@registry.example.com/repo",
        "https://robot:hunter2-pw@/repo",
        "robot:hunter2-pw@registry.example.com/Bad_Repo",
    ],
)
def test_a_refused_registry_option_never_echoes_its_password(value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        registry_from_option(value)
    assert "hunter2-pw" not in str(caught.value)
    assert "robot:***@" in str(caught.value)  # still says which option it was


def test_redact_removes_url_passwords_and_named_secrets() -> None:
    text = "Get https://AWS:eyJwYXlsb2Fk@123.dkr.ecr/v2/: token eyJwYXlsb2Fk refused; host:5000/x"
    assert redact(text, "eyJwYXlsb2Fk") == (
        "Get https://AWS:***@123.dkr.ecr/v2/: token *** refused; host:5000/x"
    )


# ------------------------------------------------------------------------------- engine


async def test_check_engine_on_an_unreachable_socket_names_the_ways_out(tmp_path: Any) -> None:
    with pytest.raises(ImageBuildError) as caught:
        await check_engine(f"unix://{tmp_path}/no-docker.sock")
    message = str(caught.value)
    assert "no-docker.sock" in message
    assert "start Docker" in message and "DOCKER_HOST" in message and "image=" in message


async def test_build_and_push_without_an_engine_fails_before_building(tmp_path: Any) -> None:
    # A registry nobody answers on would fail first; an existing tag would need no engine.
    spec = make_image_spec(["cloudpickle==3.1.2"], worker_source=b"")
    with pytest.raises(ImageBuildError, match="DOCKER_HOST"):
        await build_and_push(
            spec, Registry("127.0.0.1:9", scheme="http"), docker_host=f"unix://{tmp_path}/x.sock"
        )


# ------------------------------------------------------------------------------- push retries


class _FakeImages:
    """Stands in for aiodocker's images API to script push failures (the retry logic only)."""

    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = failures
        self.pushes = 0
        self.builds = 0

    async def inspect(self, name: str) -> dict[str, Any]:
        return {"Id": "sha256:abc"}

    def build(self, **kwargs: Any) -> AsyncIterator[dict[str, Any]]:
        self.builds += 1

        async def chunks() -> AsyncIterator[dict[str, Any]]:
            yield {"stream": "Step 1/1 : FROM base"}
            yield {"aux": {"ID": "sha256:abc"}}

        return chunks()

    def push(self, name: str, **kwargs: Any) -> AsyncIterator[dict[str, Any]]:
        self.pushes += 1
        failure = self.failures.pop(0) if self.failures else None

        async def chunks() -> AsyncIterator[dict[str, Any]]:
            yield {"status": "Preparing", "id": "layer1"}
            if failure is not None:
                raise failure
            yield {"status": "Pushed", "id": "layer1"}
            yield {"aux": {"Tag": kwargs["tag"], "Digest": "sha256:def", "Size": 1}}

        return chunks()


class _FakeDocker:
    def __init__(self, images: _FakeImages) -> None:
        self.images = images
        self.docker_host = "unix:///fake.sock"

    async def version(self) -> dict[str, Any]:
        return {"ApiVersion": "1.41"}

    async def close(self) -> None:
        pass


@pytest.fixture
def fake_engine(monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(failures: list[BaseException]) -> _FakeImages:
        images = _FakeImages(failures)
        monkeypatch.setattr(aiodocker, "Docker", lambda url=None: _FakeDocker(images))
        return images

    return install


async def test_transient_push_errors_are_retried_with_backoff(fake_engine: Any) -> None:
    images = fake_engine(
        [
            aiodocker.DockerStreamError("Put https://r/v2/: net/http: TLS handshake timeout"),
            aiodocker.DockerStreamError("received unexpected HTTP status: 503 Service Unavailable"),
        ]
    )
    lines: list[str] = []
    spec = make_image_spec([], worker_source=b"")
    uri = await build_and_push(
        spec, Registry("r.example"), progress=lines.append, push_retry_delay=0.01
    )
    assert uri == f"r.example/aioknot:{spec.tag}"
    assert images.pushes == 3
    assert sum("retrying" in line for line in lines) == 2
    assert lines[-1] == f"pushed {uri} (sha256:def)"


async def test_a_refused_push_is_not_retried(fake_engine: Any) -> None:
    images = fake_engine([aiodocker.DockerStreamError("denied: requested access is denied")])
    with pytest.raises(ImageBuildError, match="denied"):
        await build_and_push(
            make_image_spec([], worker_source=b""), Registry("r.example"), push_retry_delay=0
        )
    assert images.pushes == 1


async def test_a_push_error_never_echoes_the_registry_password(fake_engine: Any) -> None:
    # An engine's answer may quote the login it was given; the message must not.
    fake_engine(
        [
            aiodocker.DockerStreamError(
                "unauthorized: login robot:t0k3n-secret rejected (t0k3n-secret)"
            )
        ]
    )
    registry = Registry("r.example", username="robot", password="t0k3n-secret")
    with pytest.raises(ImageBuildError) as caught:
        await build_and_push(make_image_spec([], worker_source=b""), registry, push_retry_delay=0)
    assert "t0k3n-secret" not in str(caught.value) and "unauthorized" in str(caught.value)


async def test_build_and_push_by_digest_names_the_pushed_digest(fake_engine: Any) -> None:
    fake_engine([])
    spec = make_image_spec([], worker_source=b"")
    uri = await build_and_push(spec, Registry("r.example"), by_digest=True)
    assert uri == "r.example/aioknot@sha256:def"  # the digest the registry answered


async def test_pushes_give_up_after_the_last_attempt(fake_engine: Any) -> None:
    images = fake_engine([aiodocker.DockerStreamError("i/o timeout")] * 5)
    with pytest.raises(ImageBuildError, match="failed 3 times"):
        await build_and_push(
            make_image_spec([], worker_source=b""),
            Registry("r.example"),
            push_attempts=3,
            push_retry_delay=0,
        )
    assert images.pushes == 3


# ------------------------------------------------------------------------------- ECR (moto)


MANIFEST = (
    '{"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",'
    ' "config": {}, "layers": []}'
)


@pytest.fixture
async def ecr(aws: Any) -> AsyncIterator[Any]:
    async with aioboto3.Session().client("ecr", endpoint_url=aws.url) as client:
        yield client


async def test_ecr_login_creates_the_repository_with_tags_once(ecr: Any) -> None:
    login = await ecr_registry_login(ecr, "aioknot-test", {"aioknot:knot": "pi-calc"})
    assert login.host == "123456789012.dkr.ecr.us-east-1.amazonaws.com"
    assert (login.username, login.password) == ("AWS", "123456789012-auth-token")
    assert login.repository_uri == f"{login.host}/aioknot-test"
    assert login.ecr and login.scheme == "https"
    described = await ecr.describe_repositories(repositoryNames=["aioknot-test"])
    arn = described["repositories"][0]["repositoryArn"]
    tags = (await ecr.list_tags_for_resource(resourceArn=arn))["tags"]
    assert tags == [{"Key": "aioknot:knot", "Value": "pi-calc"}]

    again = await ecr_registry_login(ecr, "aioknot-test", {"aioknot:knot": "other"})
    assert again == login
    (repository,) = (await ecr.describe_repositories())["repositories"]
    # A content tag names one image for good, and each pushed image is scanned.
    assert repository["imageTagMutability"] == "IMMUTABLE"
    assert repository["imageScanningConfiguration"] == {"scanOnPush": True}


async def test_an_older_aioknot_repository_is_hardened_a_users_is_not(ecr: Any) -> None:
    for name, tags in (
        ("aioknot-old", [{"Key": "aioknot:environment", "Value": "x"}]),
        ("mine", []),
    ):
        await ecr.create_repository(repositoryName=name, imageTagMutability="MUTABLE", tags=tags)
        await ecr_registry_login(ecr, name)
    described = {
        r["repositoryName"]: r for r in (await ecr.describe_repositories())["repositories"]
    }
    assert described["aioknot-old"]["imageTagMutability"] == "IMMUTABLE"
    assert described["aioknot-old"]["imageScanningConfiguration"] == {"scanOnPush": True}
    assert described["mine"]["imageTagMutability"] == "MUTABLE"  # its owner's choice


def test_one_rule_says_which_repositories_are_aioknots() -> None:
    # The builder's prefix is the AWS backend's reserved one (written twice so that the
    # builder need not import the backend); the cleanup asks the same function.
    assert OWN_TAG_PREFIX == RESERVED_TAG_PREFIX
    assert is_aioknots_repository(
        [{"Key": "team", "Value": "x"}, {"Key": "aioknot:knot", "Value": "k"}]
    )
    assert not is_aioknots_repository([{"Key": "team", "Value": "aioknot:x"}])
    assert not is_aioknots_repository([])


async def test_image_digest_from_describe_images(ecr: Any) -> None:
    login = await ecr_registry_login(ecr, "aioknot-test")
    assert await image_digest(login, "py3.11-abc", ecr_client=ecr) is None
    put = await ecr.put_image(
        repositoryName="aioknot-test", imageManifest=MANIFEST, imageTag="py3.11-abc"
    )
    digest = put["image"]["imageId"]["imageDigest"]
    assert digest.startswith("sha256:")
    assert await image_digest(login, "py3.11-abc", ecr_client=ecr) == digest
    missing_repository = dataclasses.replace(login, repository="nope")
    assert await image_digest(missing_repository, "py3.11-abc", ecr_client=ecr) is None


async def test_a_found_image_is_planned_by_digest_and_rebuild_frees_its_tag(
    ecr: Any, fake_engine: Any
) -> None:
    spec = make_image_spec(["cloudpickle==3.1.2"], worker_source=b"worker")
    login = await ecr_registry_login(ecr, "aioknot", {"aioknot:environment": "default"})
    put = await ecr.put_image(repositoryName="aioknot", imageManifest=MANIFEST, imageTag=spec.tag)
    digest = put["image"]["imageId"]["imageDigest"]

    async def client() -> Any:
        return ecr

    where = {"ecr": client, "account": "123456789012", "region": "us-east-1", "tags": {}}
    found = await plan_image(ImageSettings(), spec, **where)
    assert not found.build and found.uri == f"{login.repository_uri}@{digest}"
    assert await produce_image(found, ImageSettings(), None) == found.uri

    # rebuild=True: ECR's tags are immutable, so the old image's tag goes before the push.
    images = fake_engine([])
    rebuild = ImageSettings(rebuild=True)
    planned = await plan_image(rebuild, spec, **where)
    assert planned.build and planned.replace
    uri = await produce_image(planned, rebuild, None)
    assert uri == f"{login.repository_uri}@sha256:def"  # the fake engine's pushed digest
    assert images.builds == 1 and images.pushes == 1
    assert await image_digest(login, spec.tag, ecr_client=ecr) is None  # freed for the push


async def test_a_registry_head_gives_the_digest_header() -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    digest = "sha256:" + "a" * 64

    async def manifest(request: web.Request) -> web.Response:
        if request.match_info["tag"] != "present":
            return web.Response(status=404)
        return web.Response(status=200, headers={"Docker-Content-Digest": digest})

    app = web.Application()
    app.router.add_route("HEAD", "/v2/aioknot/manifests/{tag}", manifest)
    async with TestServer(app, host="127.0.0.1") as server:
        registry = registry_from_option(f"127.0.0.1:{server.port}")
        assert registry is not None
        assert await image_digest(registry, "present") == digest
        assert await image_digest(registry, "absent") is None


async def test_an_image_in_ecr_needs_no_engine(ecr: Any, tmp_path: Any) -> None:
    # The knot's path: the plan finds the content tag with one request and pins its digest;
    # producing it then contacts no engine (there is none at that socket).
    login = await ecr_registry_login(ecr, "aioknot")
    spec = make_image_spec(["cloudpickle==3.1.2"], worker_source=b"worker")
    put = await ecr.put_image(repositoryName="aioknot", imageManifest=MANIFEST, imageTag=spec.tag)
    digest = put["image"]["imageId"]["imageDigest"]

    async def client() -> Any:
        return ecr

    settings = ImageSettings(docker_host=f"unix://{tmp_path}/no-engine.sock")
    plan = await plan_image(
        settings, spec, ecr=client, account="123456789012", region="us-east-1", tags={}
    )
    assert not plan.build
    lines: list[str] = []
    uri = await produce_image(plan, settings, lines.append)
    assert uri == f"{login.repository_uri}@{digest}"
    assert lines == [f"image {uri} is already in the registry; nothing to build"]


# ------------------------------------------------------------------------------- real engine

containers = pytest.mark.containers


@pytest.fixture
def stack(container_stack: ContainerStack) -> ContainerStack:  # noqa: F811
    return container_stack


@pytest.fixture
def registry(stack: ContainerStack) -> Registry:
    found = registry_from_option(
        f"{stack.registry}/aioknot-test",
        username=stack.registry_user,
        password=stack.registry_password,
    )
    assert found is not None
    return found


class EngineCalls:
    """Counts the engine's build and push calls, passing them through to the real engine."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.builds = 0
        self.pushes = 0
        images = aiodocker.images.DockerImages
        real_build, real_push = images.build, images.push

        def build(this: Any, **kwargs: Any) -> Any:
            self.builds += 1
            return real_build(this, **kwargs)

        def push(this: Any, name: str, **kwargs: Any) -> Any:
            self.pushes += 1
            return real_push(this, name, **kwargs)

        monkeypatch.setattr(images, "build", build)
        monkeypatch.setattr(images, "push", push)


@pytest.fixture
def engine_calls(monkeypatch: pytest.MonkeyPatch) -> EngineCalls:
    return EngineCalls(monkeypatch)


async def _produce(spec: ImageSpec, settings: ImageSettings, lines: list[str] | None = None) -> str:
    """The knot's path: plan (one registry request), then build and push if the plan says."""

    async def no_ecr() -> Any:
        raise AssertionError("registry= is given: ECR is never asked")

    plan = await plan_image(
        settings, spec, ecr=no_ecr, account="123456789012", region="us-east-1", tags={}
    )
    return await produce_image(plan, settings, lines.append if lines is not None else None)


def _spec(stack: ContainerStack, *extra_lines: str) -> ImageSpec:
    # The installed worker: the image is what a knot would run.
    return make_image_spec(
        worker_requirements(), base_image=stack.base_image, dockerfile_lines=extra_lines
    )


async def _run_in_image(stack: ContainerStack, uri: str, code: str) -> str:
    async with aiodocker.Docker(url=stack.docker_host) as docker:
        container = await docker.containers.create(
            config={"Image": uri, "Entrypoint": ["python", "-c", code]}
        )
        try:
            await container.start()
            result = await container.wait(timeout=120)
            output = "".join(await container.log(stdout=True, stderr=True))
            assert result["StatusCode"] == 0, output
            return output
        finally:
            await container.delete(force=True)


async def _delete_from_registry(registry: Registry, tag: str) -> None:
    import aiohttp

    token = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
    headers = {
        "Authorization": f"Basic {token}",
        "Accept": "application/vnd.docker.distribution.manifest.v2+json",
    }
    base = f"{registry.scheme}://{registry.host}/v2/{registry.repository}/manifests"
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.head(f"{base}/{tag}") as response:
            assert response.status == 200
            digest = response.headers["Docker-Content-Digest"]
        async with session.delete(f"{base}/{digest}") as response:
            assert response.status == 202, await response.text()


@containers
@pytest.mark.timeout(900)
async def test_build_push_then_reuse(
    stack: ContainerStack, registry: Registry, engine_calls: EngineCalls
) -> None:
    spec = _spec(stack)
    tagged = registry.image_uri(spec.tag)
    lines: list[str] = []
    started = time.monotonic()
    # rebuild: whatever an earlier session left in the registry, this one builds and pushes.
    rebuild = ImageSettings(registry=registry, docker_host=stack.docker_host, rebuild=True)
    uri = await _produce(spec, rebuild, lines)
    elapsed = time.monotonic() - started
    print(f"\nbuilt and pushed {uri} in {elapsed:.1f} s")
    digest = await image_digest(registry, spec.tag)
    assert digest and uri == f"{stack.registry}/aioknot-test@{digest}"  # pinned by digest
    assert (engine_calls.builds, engine_calls.pushes) == (1, 1)
    assert any(line.startswith("Step ") for line in lines)
    assert lines[-1] == f"pushed {tagged} ({digest})"

    # The image runs the installed worker, as a non-root user, with the pinned packages.
    out = await _run_in_image(
        stack,
        tagged,
        "import os, sys, json, cloudpickle, boto3;"
        "print(json.dumps([os.getuid(), cloudpickle.__version__, boto3.__version__,"
        " sys.version_info[:2], open('/opt/aioknot/aioknot_worker.py', 'rb').read().hex()]))",
    )
    uid, cloudpickle_version, boto3_version, python, worker_hex = __import__("json").loads(
        out.strip().splitlines()[-1]
    )
    assert uid == 10001
    assert f"cloudpickle=={cloudpickle_version}" in spec.requirements
    assert f"boto3=={boto3_version}" in spec.requirements
    assert python == [int(part) for part in spec.python_version.split(".")]
    assert bytes.fromhex(worker_hex) == spec.worker_source
    async with aiodocker.Docker(url=stack.docker_host) as docker:
        config = (await docker.images.inspect(tagged))["Config"]
    assert config["Entrypoint"] == ["python", "/opt/aioknot/aioknot_worker.py"]

    # The same spec again: one registry request, nothing built or pushed.
    settings = ImageSettings(registry=registry, docker_host=stack.docker_host)
    lines.clear()
    started = time.monotonic()
    again = await _produce(spec, settings, lines)
    print(f"a found image took {time.monotonic() - started:.3f} s")
    assert again == uri
    assert (engine_calls.builds, engine_calls.pushes) == (1, 1)
    assert lines == [f"image {uri} is already in the registry; nothing to build"]

    # Built here but gone from the registry (a push that failed last time): pushed, not built.
    await _delete_from_registry(registry, spec.tag)
    assert await image_digest(registry, spec.tag) is None
    pushed = await _produce(spec, settings)
    assert pushed == f"{stack.registry}/aioknot-test@{await image_digest(registry, spec.tag)}"
    assert (engine_calls.builds, engine_calls.pushes) == (1, 2)

    # Another requirement is another image, which the registry does not have yet.
    changed = dataclasses.replace(spec, requirements=(*spec.requirements, "six==1.17.0"))
    assert changed.tag != spec.tag
    assert await image_digest(registry, changed.tag) is None


@containers
@pytest.mark.timeout(600)
async def test_a_failing_step_raises_with_the_step_and_the_log_tail(
    stack: ContainerStack, registry: Registry, engine_calls: EngineCalls
) -> None:
    spec = _spec(stack, "RUN echo aioknot-test-marker && exit 3")
    with pytest.raises(ImageBuildError) as caught:
        await _produce(spec, ImageSettings(registry=registry, docker_host=stack.docker_host))
    message = str(caught.value)
    assert "RUN echo aioknot-test-marker && exit 3" in message  # the failing step
    assert "aioknot-test-marker" in message.split("last lines of the build log")[1]
    assert "non-zero code: 3" in message
    assert engine_calls.pushes == 0
    assert await image_digest(registry, spec.tag) is None


@containers
@pytest.mark.timeout(600)
async def test_the_ecr_login_from_moto_pushes_to_a_real_registry(
    stack: ContainerStack, ecr: Any
) -> None:
    # moto's ECR has no registry protocol; the test registry accepts moto's token instead.
    login = await ecr_registry_login(ecr, "aioknot-ecr-test")
    target = dataclasses.replace(login, host=stack.registry, scheme="http", ecr=False)
    spec = _spec(stack, "ENV AIOKNOT_TEST_ECR=1")
    # build_and_push, not the plan: push even if an earlier session left the tag there.
    uri = await build_and_push(spec, target, docker_host=stack.docker_host)
    assert uri == f"{stack.registry}/aioknot-ecr-test:{spec.tag}"
    assert await image_digest(target, spec.tag)


@containers
async def test_check_engine_passes_on_the_real_engine(stack: ContainerStack) -> None:
    await check_engine(stack.docker_host)


@containers
async def test_wrong_registry_credentials_are_reported(
    stack: ContainerStack, registry: Registry
) -> None:
    wrong = dataclasses.replace(registry, password="wrong")
    with pytest.raises(ImageBuildError, match="refused"):
        await image_digest(wrong, "anything")


# ------------------------------------------------------------------------------- token auth


async def test_image_digest_follows_a_bearer_token_challenge() -> None:
    """Registries with token auth (Docker Hub, GHCR, Harbor) answer 401 with a realm first."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    seen: list[str] = []

    async def manifest(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") != "Bearer pull-token":
            realm = f"http://{request.host}/token"
            challenge = f'Bearer realm="{realm}",service="test-registry"'
            return web.Response(status=401, headers={"WWW-Authenticate": challenge})
        found = request.match_info["tag"] == "present"
        return web.Response(status=200 if found else 404)

    async def token(request: web.Request) -> web.Response:
        assert request.query["scope"] == "repository:team/knots:pull"
        assert request.query["service"] == "test-registry"
        if request.headers.get("Authorization") != "Basic cm9ib3Q6c2VjcmV0":  # robot:secret
            return web.Response(status=401)
        return web.json_response({"token": "pull-token"})

    app = web.Application()
    app.router.add_route("HEAD", "/v2/team/knots/manifests/{tag}", manifest)
    app.router.add_get("/token", token)
    async with TestServer(app, host="127.0.0.1") as server:
        registry = registry_from_option(
            f"127.0.0.1:{server.port}/team/knots", username="robot", password="secret"
        )
        assert registry is not None
        assert await image_digest(registry, "present") == ""  # there, but no digest said
        assert await image_digest(registry, "absent") is None
        with pytest.raises(ImageBuildError, match="token service refused"):
            await image_digest(dataclasses.replace(registry, password="wrong"), "present")
    assert seen.count("Bearer pull-token") == 2
