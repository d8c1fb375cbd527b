"""The AWS backend's image options (`ImageSettings`), checked without I/O.

Every knot checks them, a local one too (see `aioknot._options`), so this module imports no
more than the standard library and `aioknot._image.registry`: not the image builder, the
requirements scanner, aiohttp, aiodocker nor the AWS SDK, which `image` imports when an AWS
knot plans its image.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..._exceptions import ConfigurationError
from ..._image.registry import Registry, registry_from_option

_IMAGE_REFERENCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")


@dataclass(frozen=True)
class ImageSettings:
    image: str | None = None  # a prebuilt image: nothing is built
    base_image: str | None = None
    requirements: tuple[str, ...] | None = None
    extra_requirements: tuple[str, ...] = ()
    apt_packages: tuple[str, ...] = ()
    dockerfile_lines: tuple[str, ...] = ()
    rebuild: bool = False
    registry: Registry | None = None  # None: the account's ECR
    docker_host: str | None = None


def _strings(raw: Mapping[str, Any], name: str) -> tuple[str, ...] | None:
    value = raw.get(name)
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not all(isinstance(v, str) for v in value):
        raise ConfigurationError(f"{name} must be a list of strings, e.g. {name}=['...']")
    return tuple(value)


def image_settings(raw: Mapping[str, Any]) -> ImageSettings:
    """The image options among a knot's options, checked (no I/O)."""
    image = raw.get("image")
    if image is not None and (not isinstance(image, str) or not _IMAGE_REFERENCE.match(image)):
        raise ConfigurationError(
            f"image must be an image URI such as '123456789012.dkr.ecr.us-east-1.amazonaws.com/"
            f"aioknot:tag', got {image!r}"
        )
    rebuild = raw.get("rebuild", False)
    if not isinstance(rebuild, bool):
        raise ConfigurationError(f"rebuild must be True or False, got {rebuild!r}")
    registry = raw.get("registry")
    if registry is not None and not isinstance(registry, str):
        raise ConfigurationError(
            f"registry must be a string such as 'host:5000/repo', got {registry!r}"
        )
    docker_host = raw.get("docker_host")
    if docker_host is not None and not isinstance(docker_host, (str, os.PathLike)):
        raise ConfigurationError(f"docker_host must be a Docker URL string, got {docker_host!r}")
    building = {
        name
        for name in (
            "base_image",
            "requirements",
            "extra_requirements",
            "apt_packages",
            "dockerfile_lines",
        )
        if raw.get(name)
    }
    if image is not None and (building or rebuild):
        raise ConfigurationError(
            f"image= names a prebuilt image, so {', '.join(sorted(building) or ['rebuild'])} "
            "would have no effect: drop them, or drop image= to let aioknot build the image"
        )
    base_image = raw.get("base_image")
    if base_image is not None and not isinstance(base_image, str):
        raise ConfigurationError(f"base_image must be an image reference, got {base_image!r}")
    return ImageSettings(
        image=image,
        base_image=base_image,
        requirements=_strings(raw, "requirements"),
        extra_requirements=_strings(raw, "extra_requirements") or (),
        apt_packages=_strings(raw, "apt_packages") or (),
        dockerfile_lines=_strings(raw, "dockerfile_lines") or (),
        rebuild=rebuild,
        registry=registry_from_option(registry),
        docker_host=os.fspath(docker_host) if docker_host is not None else None,
    )
