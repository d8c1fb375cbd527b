"""A knot's options: which backend, which store, and the backend's own settings.

Validation is pure and happens in the knot's constructor, so a bad option fails before any
process starts, any request is sent or any money is spent. Options for ``backend="aws"`` are
accepted (and checked) for a local knot too, so switching ``AIOKNOT_BACKEND`` between
``local`` and ``aws`` needs no change to the code.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

from ._exceptions import ConfigurationError

BACKENDS = ("local", "aws")
DEFAULT_BACKEND = "local"  # never spend money by accident: AWS is asked for by name

# Options every backend understands; the AWS backend's own are checked by _aws_options.
COMMON_OPTIONS = (
    "bucket",
    "endpoint_url",
    "profile",
    "region",
    "directory",
    "progress",
    "watch_timeout",
    "retention_days",
)
# How long watching a run goes on without one successful look at the backend before it gives
# up (the jobs keep running; the run can be re-attached). Transient errors are retried until.
DEFAULT_WATCH_TIMEOUT = 15 * 60.0
# How long a run's data (inputs, results, manifest) is kept, unless AIOKNOT_RETENTION_DAYS.
DEFAULT_RETENTION_DAYS = 7
LOCAL_OPTIONS = ("workers",)
# How the AWS backend gets its worker image (checked by the image builder).
IMAGE_OPTIONS = (
    "image",
    "base_image",
    "requirements",
    "extra_requirements",
    "apt_packages",
    "dockerfile_lines",
    "rebuild",
    "registry",
    "docker_host",
)


class KnotOptionsDict(TypedDict, total=False):
    """Every option a knot takes, typed, so that a type checker flags a typo or a bad type
    (``**options: Unpack[KnotOptionsDict]``). A test keeps it equal to the options accepted."""

    # Where inputs and results live, and how long.
    bucket: str
    endpoint_url: str
    profile: str
    region: str
    directory: str | os.PathLike[str]
    retention_days: int
    # Watching and reporting.
    progress: Callable[[str], None]
    watch_timeout: float
    # The local backend.
    workers: int
    # AWS Batch.
    environment: str
    job_queue: str
    vcpus: float
    memory: int
    gpus: int
    timeout: int
    retries: int
    env: Mapping[str, str]
    secrets: Mapping[str, str]
    job_role_policies: Sequence[str]
    compute_type: Literal["EC2", "SPOT", "FARGATE", "FARGATE_SPOT"]
    instance_types: Sequence[str]
    min_vcpus: int
    desired_vcpus: int
    max_vcpus: int
    bid_percentage: int
    image_id: str
    ec2_key_pair: str
    volume_size: int
    use_default_vpc: bool
    tags: Mapping[str, str]
    # The worker image on AWS.
    image: str
    base_image: str
    requirements: Sequence[str]
    extra_requirements: Sequence[str]
    apt_packages: Sequence[str]
    dockerfile_lines: Sequence[str]
    rebuild: bool
    registry: str
    docker_host: str


@dataclass(frozen=True)
class KnotOptions:
    backend: str
    bucket: str | None = None  # "s3://bucket/prefix" or "bucket": an S3 store
    endpoint_url: str | None = None
    profile: str | None = None
    region: str | None = None
    directory: str | None = None  # the local store's root (default: AIOKNOT_HOME / cache)
    workers: int | None = None  # local worker processes (default: os.cpu_count())
    progress: Callable[[str], None] | None = None
    watch_timeout: float = DEFAULT_WATCH_TIMEOUT  # seconds without one successful poll
    retention_days: int = DEFAULT_RETENTION_DAYS  # days a run's stored data is kept
    aws: Mapping[str, Any] = field(default_factory=dict)  # validated by the AWS backend


def resolve_backend(backend: str | None) -> str:
    chosen = backend if backend is not None else os.environ.get("AIOKNOT_BACKEND", DEFAULT_BACKEND)
    if chosen not in BACKENDS:
        source = "backend=" if backend is not None else "AIOKNOT_BACKEND"
        raise ConfigurationError(
            f"{source} {chosen!r} is not a backend: use 'local' (processes on this machine) "
            "or 'aws' (AWS Batch)"
        )
    return chosen


def _optional_str(options: dict[str, Any], name: str) -> str | None:
    value = options.pop(name, None)
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise ConfigurationError(f"option {name}= must be a string, got {type(value).__name__}")
    return os.fspath(value) if value is not None else None


def _retention_days(value: object) -> int:
    source = "retention_days="
    if value is None:
        text = os.environ.get("AIOKNOT_RETENTION_DAYS")
        if not text:
            return DEFAULT_RETENTION_DAYS
        source = "AIOKNOT_RETENTION_DAYS"
        try:
            value = int(text)
        except ValueError:
            value = text
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(
            f"{source} must be a whole number of days of at least 1, got {value!r} "
            f"(the default is {DEFAULT_RETENTION_DAYS})"
        )
    return value


def parse_options(backend: str | None, options: Mapping[str, Any]) -> KnotOptions:
    chosen = resolve_backend(backend)
    rest = dict(options)
    workers = rest.pop("workers", None)
    if workers is not None and (
        not isinstance(workers, int) or isinstance(workers, bool) or workers < 1
    ):
        raise ConfigurationError(
            f"workers= must be a positive whole number of processes, got {workers!r}"
        )
    progress = rest.pop("progress", None)
    if progress is not None and not callable(progress):
        raise ConfigurationError("progress= must be a callable taking one message string")
    watch_timeout = rest.pop("watch_timeout", DEFAULT_WATCH_TIMEOUT)
    if (
        not isinstance(watch_timeout, (int, float))
        or isinstance(watch_timeout, bool)
        or not watch_timeout > 0
    ):
        raise ConfigurationError(
            f"watch_timeout= must be a positive number of seconds, got {watch_timeout!r} "
            f"(the default is {DEFAULT_WATCH_TIMEOUT:g}: 15 minutes)"
        )
    retention_days = _retention_days(rest.pop("retention_days", None))
    parsed = KnotOptions(
        backend=chosen,
        bucket=_optional_str(rest, "bucket"),
        endpoint_url=_optional_str(rest, "endpoint_url"),
        profile=_optional_str(rest, "profile"),
        region=_optional_str(rest, "region"),
        directory=_optional_str(rest, "directory"),
        workers=workers,
        progress=progress,
        watch_timeout=float(watch_timeout),
        retention_days=retention_days,
    )
    from ._backends.aws.options import OPTION_NAMES, aws_options

    known = set(COMMON_OPTIONS) | set(LOCAL_OPTIONS) | set(IMAGE_OPTIONS) | set(OPTION_NAMES)
    for name in rest:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" Did you mean {close[0]}=?" if close else ""
            raise ConfigurationError(f"{name}= is not an option of a knot.{hint}")
    aws = dict(rest)
    # Check the AWS and image options now, whichever the backend, so that a typo never waits
    # for the cloud (and a local knot's options are valid when AIOKNOT_BACKEND=aws).
    aws_options(
        **{name: value for name, value in aws.items() if name in OPTION_NAMES},
        profile=parsed.profile,
        region=parsed.region,
    )
    from ._backends.aws.image import image_settings

    image_settings({name: value for name, value in aws.items() if name in IMAGE_OPTIONS})
    return KnotOptions(**{**parsed.__dict__, "aws": aws})
