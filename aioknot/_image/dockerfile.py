"""The worker image as data: what goes in it, its Dockerfile, its build context and its tag.

Everything here is pure (no Docker, no network), so the sync and async faces share it and the
tag of an image can be known before anything is built. The tag is a content hash of everything
that goes into the image, so a new function with the same dependencies reuses the image and an
unchanged knot builds and pushes nothing.

Layers go from the least to the most often changed, so that the engine's cache keeps the slow
ones: the Python check and the user, apt packages, the user's extra lines, the pinned
requirements, and last the (small) worker file.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import io
import json
import logging
import re
import sys
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field

from .._exceptions import ConfigurationError

logger = logging.getLogger("aioknot")

# Bump when render_dockerfile changes what it produces: it changes every tag, so images built
# from an older template are not reused by mistake.
IMAGE_FORMAT = 1

WORKER_DIR = "/opt/aioknot"
WORKER_PATH = f"{WORKER_DIR}/aioknot_worker.py"
REQUIREMENTS_PATH = f"{WORKER_DIR}/requirements.txt"
ENTRYPOINT = ("python", WORKER_PATH)
WORKER_UID = 10001
WORKER_USER = "aioknot"

# apt package names (Debian policy), optionally with =version or :arch; nothing a shell
# would interpret, because they are written into a RUN line.
_APT_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]*(?::[a-z0-9-]+)?(?:=[A-Za-z0-9.+~:_-]+)?$")
# A Docker image reference: [registry[:port]/]name[:tag][@digest], no whitespace.
_IMAGE_REFERENCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")


def client_python_version() -> str:
    """``"3.11"``: the container's Python must have this minor version (cloudpickle)."""
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def default_base_image(python_version: str | None = None) -> str:
    return f"python:{python_version or client_python_version()}-slim"


def read_worker_source() -> bytes:
    """The bytes of ``aioknot/_worker.py`` as installed, which the image runs."""
    return importlib.resources.files("aioknot").joinpath("_worker.py").read_bytes()


@dataclass(frozen=True)
class ImageSpec:
    """Everything that decides what is in a worker image; equal specs make equal images.

    Build one with :func:`make_image_spec`, which validates and normalizes the options.
    """

    base_image: str
    python_version: str
    requirements: tuple[str, ...]
    apt_packages: tuple[str, ...] = ()
    dockerfile_lines: tuple[str, ...] = ()
    worker_source: bytes = field(default=b"", repr=False)

    @property
    def worker_version(self) -> str:
        return hashlib.sha256(self.worker_source).hexdigest()[:16]

    @property
    def tag(self) -> str:
        """The content tag: ``py3.11-<hash of everything that goes into the image>``."""
        identity = {
            "format": IMAGE_FORMAT,
            "base_image": self.base_image,
            "python": self.python_version,
            "requirements": list(self.requirements),
            "apt_packages": list(self.apt_packages),
            "dockerfile_lines": list(self.dockerfile_lines),
            "worker": hashlib.sha256(self.worker_source).hexdigest(),
        }
        canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return f"py{self.python_version}-{hashlib.sha256(canonical.encode()).hexdigest()[:32]}"

    def requirements_txt(self) -> str:
        return "".join(f"{line}\n" for line in self.requirements)

    def dockerfile(self) -> str:
        return render_dockerfile(self)

    def context(self) -> bytes:
        return build_context(self)


def make_image_spec(
    requirements: Iterable[str],
    *,
    base_image: str | None = None,
    apt_packages: Iterable[str] = (),
    dockerfile_lines: Iterable[str] = (),
    worker_source: bytes | None = None,
) -> ImageSpec:
    """Validate the image options and fill in the defaults (client's Python, installed worker).

    A ``base_image`` other than the default is allowed and logged as a warning: its Python
    must have the client's minor version, which the build checks in its first step.
    """
    python_version = client_python_version()
    default = default_base_image(python_version)
    if base_image is None:
        base_image = default
    elif not isinstance(base_image, str) or not _IMAGE_REFERENCE.match(base_image):
        raise ConfigurationError(
            f"base_image must be a Docker image reference such as {default!r}, got {base_image!r}"
        )
    elif base_image != default:
        logger.warning(
            "base_image %r is not the default %r: its `python` must be Python %s like this "
            "client (cloudpickle cannot load functions across minor versions); the build "
            "checks this first",
            base_image,
            default,
            python_version,
        )
    apt = _string_tuple(apt_packages, "apt_packages")
    bad = [name for name in apt if not _APT_PACKAGE.match(name)]
    if bad:
        raise ConfigurationError(
            f"apt_packages must be Debian package names (optionally name=version), got {bad!r}"
        )
    lines = _string_tuple(dockerfile_lines, "dockerfile_lines")
    reqs = _string_tuple(requirements, "requirements")
    bad = [line for line in reqs if "\n" in line or "\r" in line or not line.strip()]
    if bad:
        raise ConfigurationError(f"each requirement must be one non-empty line, got {bad!r}")
    return ImageSpec(
        base_image=base_image,
        python_version=python_version,
        requirements=tuple(dict.fromkeys(line.strip() for line in reqs)),
        # apt installs a set: order does not matter, so it must not change the tag.
        apt_packages=tuple(sorted(set(apt))),
        dockerfile_lines=lines,
        worker_source=read_worker_source() if worker_source is None else worker_source,
    )


def _string_tuple(values: Iterable[str], option: str) -> tuple[str, ...]:
    if isinstance(values, (str, bytes)):
        raise ConfigurationError(f"{option} must be a list of strings, not one string")
    result = tuple(values)
    if not all(isinstance(value, str) for value in result):
        raise ConfigurationError(f"{option} must be a list of strings, got {result!r}")
    return result


def render_dockerfile(spec: ImageSpec) -> str:
    python_check = (
        "import sys; v = '{}.{}'.format(*sys.version_info[:2]); "
        f"sys.exit(None if v == '{spec.python_version}' else 'aioknot: the base image runs "
        f"Python ' + v + ' but the client runs {spec.python_version}; cloudpickle needs the "
        "same minor version: pick a base image with that Python')"
    )
    lines = [
        "# Generated by aioknot: the worker image. Do not edit; change the knot's options.",
        f"FROM {spec.base_image}",
        f'LABEL org.aioknot.image-format="{IMAGE_FORMAT}" '
        f'org.aioknot.python="{spec.python_version}" '
        f'org.aioknot.worker-version="{spec.worker_version}"',
        "ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 "
        "PIP_DISABLE_PIP_VERSION_CHECK=1",
        # Fail in the first step, not at the first task, when the base image's Python differs.
        f'RUN python -c "{python_check}"',
        # Written by hand rather than with useradd/adduser, which slim and minimal images
        # may lack; the worker never needs root.
        f"RUN id -u {WORKER_USER} >/dev/null 2>&1 || {{ "
        f"echo '{WORKER_USER}:x:{WORKER_UID}:{WORKER_UID}::/home/{WORKER_USER}:/bin/sh' "
        f">> /etc/passwd && echo '{WORKER_USER}:x:{WORKER_UID}:' >> /etc/group; }} "
        f"&& mkdir -p /home/{WORKER_USER} {WORKER_DIR} "
        f"&& chown {WORKER_UID}:{WORKER_UID} /home/{WORKER_USER}",
    ]
    if spec.apt_packages:
        lines.append(
            "RUN apt-get update "
            "&& DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
            + " ".join(spec.apt_packages)
            + " && rm -rf /var/lib/apt/lists/*"
        )
    lines.extend(spec.dockerfile_lines)
    lines += [
        f"COPY requirements.txt {REQUIREMENTS_PATH}",
        # PIP_BREAK_SYSTEM_PACKAGES: base images whose system Python is marked
        # externally managed (PEP 668) would refuse; older pips ignore the setting.
        f"RUN PIP_BREAK_SYSTEM_PACKAGES=1 python -m pip install --no-cache-dir "
        f"-r {REQUIREMENTS_PATH}",
        f"COPY aioknot_worker.py {WORKER_PATH}",
        f"USER {WORKER_UID}:{WORKER_UID}",
        f"ENV HOME=/home/{WORKER_USER}",
        f"WORKDIR /home/{WORKER_USER}",
        f"ENTRYPOINT {json.dumps(list(ENTRYPOINT))}",
    ]
    return "\n".join(lines) + "\n"


def build_context(spec: ImageSpec) -> bytes:
    """The build context as an uncompressed tar, byte-for-byte the same for the same spec."""
    files = {
        "Dockerfile": render_dockerfile(spec).encode(),
        "requirements.txt": spec.requirements_txt().encode(),
        "aioknot_worker.py": spec.worker_source,
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0  # fixed, so the engine's cache and the bytes depend on content only
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
