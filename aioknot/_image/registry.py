"""Where worker images are pushed: `Registry`, and the ``registry=`` option parsed into one.

Kept apart from the builder (and its aiohttp, aiodocker and AWS SDK) because every knot
checks its image options, a local one too: parsing ``registry=`` must cost no more than the
standard library it uses.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .._errors import redact
from .._exceptions import ConfigurationError

REGISTRY_ENV = "AIOKNOT_REGISTRY"
REGISTRY_USERNAME_ENV = "AIOKNOT_REGISTRY_USERNAME"
REGISTRY_PASSWORD_ENV = "AIOKNOT_REGISTRY_PASSWORD"
DEFAULT_REPOSITORY = "aioknot"


@dataclass(frozen=True)
class Registry:
    """A repository in a registry to push worker images to, and how to log in to it.

    ``host`` is ``host[:port]`` (``123456789012.dkr.ecr.us-east-1.amazonaws.com``,
    ``127.0.0.1:5000``); ``scheme`` is the one its HTTP API answers on (``http`` only for
    registries the engine also reaches over plain HTTP, such as loopback ones). ``ecr`` says
    the existence check may use ECR's ``describe_images`` instead of the registry API.
    """

    host: str
    repository: str = DEFAULT_REPOSITORY
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    scheme: str = "https"
    ecr: bool = False

    @property
    def repository_uri(self) -> str:
        return f"{self.host}/{self.repository}"

    def image_uri(self, tag: str) -> str:
        return f"{self.repository_uri}:{tag}"

    def docker_auth(self) -> dict[str, str] | None:
        """The engine's X-Registry-Auth payload, or None for an anonymous registry."""
        if self.username is None:
            return None
        return {
            "username": self.username,
            "password": self.password or "",
            "serveraddress": self.host,
        }


def _is_loopback(hostname: str) -> bool:
    name = hostname.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def registry_from_option(
    value: str | None = None,
    *,
    username: str | None = None,
    password: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Registry | None:
    """The registry named by ``registry=`` or ``$AIOKNOT_REGISTRY``; None means ECR.

    The value is ``[http(s)://][user:password@]host[:port][/repository]``. Credentials come
    from the value, else the arguments, else ``$AIOKNOT_REGISTRY_USERNAME`` and
    ``$AIOKNOT_REGISTRY_PASSWORD``. Without a scheme, loopback hosts are spoken to over plain
    HTTP (as the Docker engine does) and every other host over HTTPS.
    """
    env = os.environ if environ is None else environ
    given = value if value is not None else env.get(REGISTRY_ENV)
    if given is None or not given.strip():
        return None
    text = given.strip()
    # What error messages quote: the option without any password in it.
    raw = redact(text, password, env.get(REGISTRY_PASSWORD_ENV))
    has_scheme = "://" in text
    parts = urlsplit(text if has_scheme else f"//{text}")
    if has_scheme and parts.scheme not in ("http", "https"):
        raise ConfigurationError(
            f"registry {raw!r}: the scheme must be http or https, e.g. 'registry.example.com/"
            f"{DEFAULT_REPOSITORY}' or 'http://127.0.0.1:5000/{DEFAULT_REPOSITORY}'"
        )
    host = parts.netloc.rpartition("@")[2]
    if not parts.hostname or not host:
        raise ConfigurationError(
            f"registry {raw!r} names no host; expected host[:port][/repository], e.g. "
            f"'registry.example.com/{DEFAULT_REPOSITORY}'"
        )
    repository = parts.path.strip("/") or DEFAULT_REPOSITORY
    if not re.fullmatch(
        r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*", repository
    ):
        raise ConfigurationError(
            f"registry {raw!r}: {repository!r} is not a valid repository name (lowercase "
            "letters, digits, separators . _ - and /)"
        )
    user = parts.username or username or env.get(REGISTRY_USERNAME_ENV)
    secret = parts.password or password or env.get(REGISTRY_PASSWORD_ENV)
    scheme = parts.scheme if has_scheme else ("http" if _is_loopback(parts.hostname) else "https")
    return Registry(
        host=host,
        repository=repository,
        username=user or None,
        password=secret,
        scheme=scheme,
    )
