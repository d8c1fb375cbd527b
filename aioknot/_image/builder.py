"""Building the worker image with a Docker engine and pushing it to a registry (ECR or any).

The knot's path through here is `aioknot._backends.aws.image`: ``image_digest`` asks the
registry (one request) whether the content-tagged image (:class:`~aioknot._image.dockerfile.
ImageSpec`) is there already, so that an unchanged knot builds and pushes nothing and
contacts no engine; ``build_and_push`` builds and pushes it when it is not. ``check_engine``
lets a caller fail early, before any AWS resource exists, when an image will have to be built
and there is no engine. aiodocker, aiohttp and botocore errors are translated by the one
error boundary (`aioknot._errors`) into ``ImageBuildError`` (``ConfigurationError`` for AWS
credentials and refusals). Where images go (`Registry`, the ``registry=`` option) is in
`aioknot._image.registry`, which every knot's option check imports without this module.

Cancellation: every call here is a coroutine; cancelling it closes the engine and registry
connections it opened (``async with``). An engine that is mid-build keeps building the
(content-tagged, so harmless) image; nothing is pushed after the cancellation.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import io
import logging
import math
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio

from .._errors import (
    aws_errors,
    docker_error,
    engine_unreachable,
    error_code,
    redact,
    registry_error,
)
from .._exceptions import ConfigurationError, ImageBuildError
from .._retry import is_transient as _is_transient
from .._retry import retry_transient
from .dockerfile import ImageSpec, build_context
from .registry import (
    REGISTRY_ENV,
    REGISTRY_PASSWORD_ENV,
    REGISTRY_USERNAME_ENV,
    Registry,
)
from .registry import registry_from_option as registry_from_option  # where callers look

if TYPE_CHECKING:  # the published stubs (types-aiobotocore): no import at run time
    from types_aiobotocore_ecr.client import ECRClient
    from types_aiobotocore_ecr.type_defs import RepositoryTypeDef, TagTypeDef

logger = logging.getLogger("aioknot")

Progress = Callable[[str], None]

# AWS Batch's default compute environments run x86-64 instances.
DEFAULT_PLATFORM = "linux/amd64"
PUSH_ATTEMPTS = 4
PUSH_RETRY_DELAY = 1.0  # seconds before the first retry; doubled each time
ENGINE_TIMEOUT = 10.0  # seconds for the engine to answer /version

_MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)
_LOG_TAIL_LINES = 40


# ------------------------------------------------------------------------------- the engine


def _aiodocker() -> Any:
    try:
        import aiodocker
    except ImportError as error:
        raise ConfigurationError(
            "building a worker image needs aiodocker: pip install 'aioknot[images]', "
            "or pass image='<uri>' to use a prebuilt worker image"
        ) from error
    return aiodocker


@contextlib.asynccontextmanager
async def _engine(docker_host: str | None) -> AsyncIterator[Any]:
    """An aiodocker client that is closed on every way out, including cancellation."""
    aiodocker = _aiodocker()
    where = docker_host or os.environ.get("DOCKER_HOST") or "the default socket"
    try:
        docker = aiodocker.Docker(url=docker_host)
    except (AssertionError, ValueError, OSError, aiodocker.DockerError) as error:
        # aiodocker asserts when no DOCKER_HOST is set and no default socket exists.
        raise engine_unreachable(where, error) from error
    try:
        yield docker
    finally:
        await docker.close()


async def check_engine(docker_host: str | None = None) -> None:
    """Raise ImageBuildError (naming the ways out) unless a Docker engine answers within
    ``ENGINE_TIMEOUT`` seconds.

    ``docker_host`` is a Docker URL (``unix:///path``, ``tcp://host:port``); None means
    ``$DOCKER_HOST``, the current Docker context, or the default socket. Cheap (one
    ``/version`` request), so a caller can run it before creating any cloud resource.
    """
    async with _engine(docker_host) as docker:
        await _check_engine_client(docker, docker_host)


def engine_address(docker_host: str | None) -> str:
    """The engine address in force, as the user configured it (aiodocker itself calls every
    unix socket "unix://localhost", which names nothing the user can check)."""
    if docker_host:
        return docker_host
    if os.environ.get("DOCKER_HOST"):
        return f"{os.environ['DOCKER_HOST']} (from DOCKER_HOST)"
    return "unix:///var/run/docker.sock (the default; DOCKER_HOST is not set)"


async def _check_engine_client(docker: Any, docker_host: str | None) -> None:
    import aiohttp

    aiodocker = _aiodocker()
    try:
        with anyio.fail_after(ENGINE_TIMEOUT):
            await docker.version()
    except (aiodocker.DockerError, aiohttp.ClientError, OSError) as error:  # TimeoutError too
        raise docker_error(
            error,
            f"asking for its version, for up to {ENGINE_TIMEOUT:g} s",
            engine=engine_address(docker_host),
        ) from error


# ------------------------------------------------------------------------------- the registry


async def image_digest(
    registry: Registry, tag: str, *, ecr_client: ECRClient | None = None
) -> str | None:
    """The digest (``sha256:...``) of ``repository:tag``, ``""`` if the registry has the tag
    but did not say its digest, None if it has no such tag. One request, nothing pulled.

    With ``ecr_client`` (an aioboto3 ECR client) and an ECR registry this is
    ``describe_images``; otherwise ``HEAD /v2/<repository>/manifests/<tag>``.
    """
    if registry.ecr and ecr_client is not None:
        return await _ecr_image_digest(ecr_client, registry.repository, tag)
    return await _registry_manifest_digest(registry, tag)


def pinned_uri(registry: Registry, tag: str, digest: str | None) -> str:
    """``repository@sha256:...`` when the digest is known (what a job definition names, so
    it runs exactly this image), else ``repository:tag``."""
    return f"{registry.repository_uri}@{digest}" if digest else registry.image_uri(tag)


async def _ecr_image_digest(ecr_client: ECRClient, repository: str, tag: str) -> str | None:
    from botocore.exceptions import ClientError

    with aws_errors(
        f"looking in ECR repository {repository!r} for tag {tag!r}",
        ImageBuildError,
        advice="the credentials need ecr:DescribeImages",
    ):
        try:
            described = await ecr_client.describe_images(
                repositoryName=repository, imageIds=[{"imageTag": tag}]
            )
        except ClientError as error:
            if error_code(error) in ("ImageNotFoundException", "RepositoryNotFoundException"):
                return None
            raise
    details = described.get("imageDetails") or [{}]
    return str(details[0].get("imageDigest") or "")


async def _registry_manifest_digest(registry: Registry, tag: str) -> str | None:
    import aiohttp

    url = f"{registry.scheme}://{registry.host}/v2/{registry.repository}/manifests/{tag}"
    # Built by hand: aiohttp.BasicAuth is deprecated in recent aiohttp, and its successor
    # is missing from older ones.
    basic = (
        "Basic "
        + base64.b64encode(f"{registry.username}:{registry.password or ''}".encode()).decode()
        if registry.username is not None
        else None
    )
    headers = {"Accept": _MANIFEST_TYPES}
    authorized = {**headers, "Authorization": basic} if basic else headers
    timeout = aiohttp.ClientTimeout(total=30)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.head(url, headers=authorized) as response:
                status = response.status
                challenge = response.headers.get("WWW-Authenticate", "")
                digest = response.headers.get("Docker-Content-Digest", "")
            if status == 401 and challenge.lower().startswith("bearer"):
                # Token auth (Docker Hub, GHCR, Harbor): trade the credentials for a pull token.
                token = await _bearer_token(session, challenge, registry, basic)
                bearer = {**headers, "Authorization": f"Bearer {token}"}
                async with session.head(url, headers=bearer) as response:
                    status = response.status
                    digest = response.headers.get("Docker-Content-Digest", "")
    except (aiohttp.ClientError, OSError) as error:  # TimeoutError is an OSError
        raise registry_error(
            error,
            f"{registry.scheme}://{registry.host}",
            secrets=(registry.password,),
            advice=f"check registry= / ${REGISTRY_ENV}",
        ) from error
    if status == 200:
        return digest if digest.startswith("sha256:") else ""
    if status == 404:
        return None
    if status in (401, 403):
        raise ImageBuildError(
            f"the registry {registry.host} refused {'the' if basic else 'anonymous'} "
            f"credentials (HTTP {status}) looking for {registry.repository}:{tag}: set the "
            f"user and password in registry= or ${REGISTRY_USERNAME_ENV} / "
            f"${REGISTRY_PASSWORD_ENV}"
        )
    raise ImageBuildError(
        f"the registry {registry.host} answered HTTP {status} to HEAD {url}; expected 200 or 404"
    )


async def _bearer_token(session: Any, challenge: str, registry: Registry, basic: str | None) -> str:
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    realm = params.pop("realm", None)
    if not realm:
        raise ImageBuildError(f"the registry {registry.host} sent a token challenge without realm")
    params.setdefault("scope", f"repository:{registry.repository}:pull")
    auth = {"Authorization": basic} if basic else {}
    async with session.get(realm, params=params, headers=auth) as response:
        if response.status != 200:
            raise ImageBuildError(
                f"the registry {registry.host}'s token service refused the credentials "
                f"(HTTP {response.status})"
            )
        body = await response.json(content_type=None)
    token = body.get("token") or body.get("access_token")
    if not isinstance(token, str):
        raise ImageBuildError(f"the registry {registry.host}'s token service sent no token")
    return token


async def ecr_registry_login(
    ecr_client: ECRClient, repository: str, tags: Mapping[str, str] | None = None
) -> Registry:
    """The ECR repository to push to (created, with ``tags``, when missing) and a login.

    ``ecr_client`` is an open aioboto3 ECR client; the password is the short-lived token from
    ``get_authorization_token`` (valid 12 hours). Returns a :class:`Registry` whose ``host``,
    ``username``, ``password`` and ``repository_uri`` are what ``docker push`` needs.
    """
    from botocore.exceptions import ClientError

    with aws_errors(
        f"preparing ECR repository {repository!r}",
        ImageBuildError,
        advice="the credentials need ecr:DescribeRepositories, ecr:CreateRepository, "
        "ecr:ListTagsForResource, ecr:PutImageTagMutability, "
        "ecr:PutImageScanningConfiguration, ecr:GetAuthorizationToken and the push permissions",
    ):
        try:
            described = await ecr_client.describe_repositories(repositoryNames=[repository])
            found = described["repositories"][0]
            uri = found["repositoryUri"]
            await _harden_ecr_repository(ecr_client, found)
        except ClientError as error:
            if error_code(error) != "RepositoryNotFoundException":
                raise
            uri = await _create_ecr_repository(ecr_client, repository, tags or {})
        token = await ecr_client.get_authorization_token()
    data = token["authorizationData"][0]
    username, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    host = str(uri).partition("/")[0] or urlsplit(data["proxyEndpoint"]).netloc
    return Registry(
        host=host,
        repository=repository,
        username=username,
        password=password,
        scheme="https",
        ecr=True,
    )


async def _harden_ecr_repository(ecr_client: ECRClient, repository: RepositoryTypeDef) -> None:
    """Make a repository that an older aioknot created (mutable tags, no scans) like a new one;
    a repository aioknot did not create (no ``aioknot:`` tag) is left as its owner made it."""
    immutable = repository.get("imageTagMutability") == "IMMUTABLE"
    scanned = bool(repository.get("imageScanningConfiguration", {}).get("scanOnPush"))
    if immutable and scanned:
        return
    listed = await ecr_client.list_tags_for_resource(resourceArn=repository["repositoryArn"])
    if not is_aioknots_repository(listed.get("tags", [])):
        return
    name = repository["repositoryName"]
    if not immutable:
        await ecr_client.put_image_tag_mutability(
            repositoryName=name, imageTagMutability="IMMUTABLE"
        )
    if not scanned:
        await ecr_client.put_image_scanning_configuration(
            repositoryName=name, imageScanningConfiguration={"scanOnPush": True}
        )
    logger.info("ECR repository %s now has immutable tags and scans on push", name)


# aioknot's own tag keys start with this (RESERVED_TAG_PREFIX of the AWS backend's options,
# which the image builder does not import: that would import the backend into the builder).
OWN_TAG_PREFIX = "aioknot:"


def is_aioknots_repository(tags: Iterable[TagTypeDef]) -> bool:
    """Whether an ECR repository's tags (ListTagsForResource) say that aioknot created it:
    only such a repository is hardened, or deleted when it is left empty."""
    return any(str(tag.get("Key", "")).startswith(OWN_TAG_PREFIX) for tag in tags)


async def untag_ecr_image(ecr_client: ECRClient, repository: str, tag: str) -> None:
    """Delete ``repository:tag`` from ECR (so that an immutable tag can be pushed again)."""
    with aws_errors(
        f"removing {repository}:{tag} from ECR to rebuild it (its tags are immutable)",
        ImageBuildError,
        advice="the credentials need ecr:BatchDeleteImage; or drop rebuild=True to use the "
        "image that is there",
    ):
        await ecr_client.batch_delete_image(repositoryName=repository, imageIds=[{"imageTag": tag}])


async def _create_ecr_repository(
    ecr_client: ECRClient, repository: str, tags: Mapping[str, str]
) -> str:
    from botocore.exceptions import ClientError

    try:
        created = await ecr_client.create_repository(
            repositoryName=repository,
            # A tag names one image for good (it is a hash of the image's content), and every
            # pushed image is scanned for known vulnerabilities.
            imageTagMutability="IMMUTABLE",
            imageScanningConfiguration={"scanOnPush": True},
            tags=[{"Key": key, "Value": value} for key, value in tags.items()],
        )
        logger.info("created ECR repository %s", repository)
        return str(created["repository"]["repositoryUri"])
    except ClientError as error:
        # Another knot created it between our describe and create: use theirs.
        if error_code(error) != "RepositoryAlreadyExistsException":
            raise
    described = await ecr_client.describe_repositories(repositoryNames=[repository])
    return str(described["repositories"][0]["repositoryUri"])


# ------------------------------------------------------------------------------- build + push


class _Log:
    """Sends build and push lines to the progress callback and the logger; keeps a tail."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.tail: collections.deque[str] = collections.deque(maxlen=_LOG_TAIL_LINES)
        self.step: str | None = None

    def __call__(self, line: str) -> None:
        line = line.rstrip()
        if not line:
            return
        self.tail.append(line)
        if line.startswith("Step ") and " : " in line:
            self.step = line
        logger.debug("%s", line)
        if self.progress is not None:
            self.progress(line)

    def tail_text(self) -> str:
        return "\n".join(f"    {line}" for line in self.tail)


async def build_and_push(
    spec: ImageSpec,
    registry: Registry,
    *,
    docker_host: str | None = None,
    nocache: bool = False,
    progress: Progress | None = None,
    platform: str = DEFAULT_PLATFORM,
    push_attempts: int = PUSH_ATTEMPTS,
    push_retry_delay: float = PUSH_RETRY_DELAY,
    by_digest: bool = False,
) -> str:
    """Build the image for ``spec``, tag it with its content tag and push it; return its URI
    (``repository@sha256:...``, the digest the registry answered, with ``by_digest``).

    A local image with that tag (from a build whose push failed) is pushed without
    rebuilding, unless ``nocache``.
    """
    uri = registry.image_uri(spec.tag)
    log = _Log(progress)
    where = engine_address(docker_host)
    async with _engine(docker_host) as docker:
        started = time.monotonic()
        if nocache or not await _has_local_image(docker, uri, where):
            await _check_engine_client(docker, docker_host)
            log(f"building {uri} from {spec.base_image} for {platform}")
            await _build(docker, spec, uri, log, where, nocache=nocache, platform=platform)
            built = time.monotonic()
            logger.info("built %s in %.1f s", uri, built - started)
        else:
            built = started
            log(f"{uri} was built before; pushing it")
        digest = await _push_with_retries(
            docker,
            registry,
            spec.tag,
            log,
            where,
            attempts=push_attempts,
            delay=push_retry_delay,
        )
        logger.info("pushed %s in %.1f s", uri, time.monotonic() - built)
    return pinned_uri(registry, spec.tag, digest) if by_digest else uri


async def _has_local_image(docker: Any, uri: str, where: str) -> bool:
    aiodocker = _aiodocker()
    try:
        await docker.images.inspect(uri)
    except aiodocker.DockerError as error:
        if error.status == 404:
            return False
        raise docker_error(error, f"inspecting {uri}", engine=where) from error
    return True


async def _build(
    docker: Any, spec: ImageSpec, uri: str, log: _Log, where: str, *, nocache: bool, platform: str
) -> None:
    import aiohttp

    aiodocker = _aiodocker()
    image_id: str | None = None
    messages = docker.images.build(
        fileobj=io.BytesIO(build_context(spec)),
        encoding="application/x-tar",
        tag=uri,
        platform=platform,
        nocache=nocache,
        rm=True,
        forcerm=True,
        stream=True,
    )
    try:
        async with contextlib.aclosing(messages):
            async for message in messages:
                for line in str(message.get("stream", "")).splitlines():
                    log(line)
                if message.get("status"):
                    log(str(message["status"]))
                aux = message.get("aux")
                if isinstance(aux, dict) and aux.get("ID"):
                    image_id = str(aux["ID"])
    except (aiodocker.DockerError, aiohttp.ClientError, OSError) as error:
        step = f" at {log.step}" if log.step else ""
        raise docker_error(
            error,
            f"building the worker image {uri}{step}",
            engine=where,
            details=f"last lines of the build log:\n{log.tail_text()}",
        ) from error
    if image_id is None and not any(line.startswith("Successfully built") for line in log.tail):
        # aiodocker ends the stream quietly when the connection drops mid-build.
        raise ImageBuildError(
            f"the build of {uri} ended without an image; last lines of the build log:\n"
            f"{log.tail_text()}"
        )


class _PushCutShort(ConnectionError):
    """aiodocker ended a push's stream without the registry's digest: the connection dropped
    (a ConnectionError, so that it counts as transient)."""


async def _push_with_retries(
    docker: Any,
    registry: Registry,
    tag: str,
    log: _Log,
    where: str,
    *,
    attempts: int,
    delay: float,
) -> str:
    """Push, retrying transient failures (`aioknot._retry.is_transient`: the engine's 5xx and
    its words for a network or registry hiccup, dropped connections); returns the digest the
    registry answered."""
    import aiohttp

    aiodocker = _aiodocker()
    uri = registry.image_uri(tag)
    attempts = max(1, attempts)

    def retrying(error: Exception) -> None:
        words = redact(str(getattr(error, "message", "") or "") or repr(error), registry.password)
        log(f"push of {uri} failed ({words}); retrying")

    try:
        # Jittered pauses keep several knots from retrying against the registry in step.
        return await retry_transient(
            lambda: _push_once(docker, registry, tag, log),
            attempts=attempts,
            first=delay,
            longest=math.inf,
            on_retry=retrying,
        )
    except (aiodocker.DockerError, aiohttp.ClientError, OSError) as error:
        refused = not isinstance(error, _PushCutShort) and not _is_transient(error)
        raise docker_error(
            error,
            f"pushing {uri}",
            engine=where,
            secrets=(registry.password,),
            # The engine's answer may quote the registry URL or the login it was given.
            advice=f"for a registry other than ECR, check the credentials in registry= / "
            f"${REGISTRY_USERNAME_ENV} / ${REGISTRY_PASSWORD_ENV}"
            if refused
            else None,
            tries=1 if refused else attempts,
        ) from error


async def _push_once(docker: Any, registry: Registry, tag: str, log: _Log) -> str:
    """One push; raises what aiodocker raises (translated by the caller)."""
    uri = registry.image_uri(tag)
    digest: str | None = None
    messages = docker.images.push(
        registry.repository_uri, tag=tag, auth=registry.docker_auth(), stream=True
    )
    async with contextlib.aclosing(messages):
        async for message in messages:
            status = str(message.get("status", ""))
            # Per-layer byte counters would flood the callback: only state changes go out.
            if status and not message.get("progressDetail"):
                layer = message.get("id")
                log(f"{layer}: {status}" if layer else status)
            aux = message.get("aux")
            if isinstance(aux, dict) and aux.get("Digest"):
                digest = str(aux["Digest"])
    if digest is None:
        # aiodocker ends the stream quietly when the connection drops mid-push.
        raise _PushCutShort("the push ended without the registry's digest")
    log(f"pushed {uri} ({digest})")
    return digest
