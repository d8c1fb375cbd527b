"""The AWS backend's image step: which worker image a knot runs, and whether it must be built.

The image options (`ImageSettings`, `image_settings`) are checked without any I/O in
`image_options`, which every knot imports (this module's imports are an AWS knot's cost).
`check_buildable` runs before the knot creates anything (its bucket first): an image that
must be built needs a Docker engine that answers. `plan_image` decides, with one registry or
ECR request, whether the content-tagged image exists (and checks the engine again when it
must be built). `produce_image` then builds and pushes (or does nothing) and returns the URI
a job definition names.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..._exceptions import ImageBuildError
from ..._image.builder import (
    build_and_push,
    check_engine,
    ecr_registry_login,
    image_digest,
    pinned_uri,
    untag_ecr_image,
)
from ..._image.dockerfile import ImageSpec, make_image_spec
from ..._image.registry import DEFAULT_REPOSITORY, Registry
from ..._image.requirements import image_requirements
from ..._pickling import PickledFunction

# Re-exported: callers (the backend, tests) take the options and the image step from here.
from .image_options import ImageSettings as ImageSettings
from .image_options import image_settings as image_settings

if TYPE_CHECKING:  # the published stubs (types-aiobotocore): no import at run time
    from types_aiobotocore_ecr.client import ECRClient

    # Opens (or returns) the backend's ECR client: only asked when ECR is the registry.
    OpenEcr = Callable[[], Awaitable[ECRClient]]


def image_spec(
    settings: ImageSettings, func: Callable[..., Any], function: PickledFunction
) -> ImageSpec | None:
    """What goes into the knot's image (offline: scans the function's imports); None for a
    prebuilt image."""
    if settings.image is not None:
        return None
    requirements = image_requirements(
        func,
        requirements=settings.requirements,
        extra_requirements=settings.extra_requirements,
        by_value_modules=function.modules_by_value,
    )
    return make_image_spec(
        requirements,
        base_image=settings.base_image,
        apt_packages=settings.apt_packages,
        dockerfile_lines=settings.dockerfile_lines,
    )


def ecr_host(account: str, region: str) -> str:
    suffix = ".amazonaws.com.cn" if region.startswith("cn-") else ".amazonaws.com"
    return f"{account}.dkr.ecr.{region}{suffix}"


@dataclass
class ImagePlan:
    spec: ImageSpec | None
    registry: Registry | None
    uri: str  # what a job definition names: repository@sha256:... when the digest is known
    build: bool  # whether build_and_push must run
    replace: bool = False  # rebuild=True over an existing tag in ECR (immutable tags)
    ecr_client: ECRClient | None = None


async def plan_image(
    settings: ImageSettings,
    spec: ImageSpec | None,
    *,
    ecr: OpenEcr,
    account: str,
    region: str,
    tags: Mapping[str, str],
) -> ImagePlan:
    """Where the image is and whether it must be built; checks the engine if it must.

    ``ecr`` opens (or returns) the backend's ECR client, only when ECR is the registry. A
    prebuilt ``image=`` is used as the user named it (a tag or a digest: their choice).
    """
    if spec is None:
        assert settings.image is not None
        return ImagePlan(None, None, settings.image, build=False)
    # Looked up before logging in: an existing image needs no login, and the login would
    # create the repository, which must wait until we know the engine answers.
    registry, ecr_client = await _registry(settings, ecr, account, region)
    # One request either way; the digest pins the job definition to exactly this image.
    digest = await image_digest(registry, spec.tag, ecr_client=ecr_client)
    if digest is not None and not settings.rebuild:
        return ImagePlan(spec, registry, pinned_uri(registry, spec.tag, digest), build=False)
    await check_engine(settings.docker_host)
    if ecr_client is not None:
        registry = await ecr_registry_login(ecr_client, DEFAULT_REPOSITORY, tags)
    return ImagePlan(
        spec,
        registry,
        registry.image_uri(spec.tag),
        build=True,
        replace=digest is not None and ecr_client is not None,
        ecr_client=ecr_client,
    )


async def check_buildable(
    settings: ImageSettings,
    spec: ImageSpec | None,
    *,
    ecr: OpenEcr,
    account: str,
    region: str,
) -> None:
    """Before anything is created: raise ImageBuildError if the image must be built and no
    Docker engine answers. The engine is asked first (one local request); only when it is
    down is the registry asked whether the image is there already (then none is needed)."""
    if spec is None:
        return  # a prebuilt image=
    try:
        await check_engine(settings.docker_host)
        return
    except ImageBuildError:
        if settings.rebuild:
            raise
        registry, ecr_client = await _registry(settings, ecr, account, region)
        if await image_digest(registry, spec.tag, ecr_client=ecr_client) is None:
            raise


async def _registry(
    settings: ImageSettings, ecr: OpenEcr, account: str, region: str
) -> tuple[Registry, ECRClient | None]:
    """Where the image lives: ``registry=``, or the account's ECR (with its client)."""
    if settings.registry is not None:
        return settings.registry, None
    registry = Registry(host=ecr_host(account, region), repository=DEFAULT_REPOSITORY, ecr=True)
    return registry, await ecr()


async def produce_image(
    plan: ImagePlan, settings: ImageSettings, progress: Callable[[str], None] | None
) -> str:
    """Build and push the planned image if it must be; the URI to run: by digest when the
    registry said it (a prebuilt ``image=`` stays as the user named it)."""
    if not plan.build:
        if progress is not None and plan.spec is not None:
            progress(f"image {plan.uri} is already in the registry; nothing to build")
        return plan.uri
    assert plan.spec is not None and plan.registry is not None
    if plan.replace and plan.ecr_client is not None:  # replace is only ever planned on ECR
        # ECR's tags are immutable: rebuild=True must free the content tag before pushing.
        # Definitions registered before name the old image by digest; their queued jobs fail
        # to pull it (the user asked for the rebuild).
        await untag_ecr_image(plan.ecr_client, plan.registry.repository, plan.spec.tag)
        if progress is not None:
            progress(
                f"rebuild=True: removed {plan.registry.image_uri(plan.spec.tag)} to replace it"
            )
    return await build_and_push(
        plan.spec,
        plan.registry,
        docker_host=settings.docker_host,
        nocache=settings.rebuild,
        progress=progress,
        by_digest=True,
    )
