"""A knot's options, parsed once into one frozen, typed `KnotOptions`.

Parsing is pure and happens in the knot's constructor, so that a bad option fails before any
process starts, any request is sent or any money is spent. The core options (where the data
lives, watching, reporting) are parsed here; each registered backend parses its own (the
local backend's ``workers``, the AWS backend's Batch and image options) into a frozen object
of its own, kept in `KnotOptions.backends`. Every registered backend's options are checked
whichever backend the knot uses, so that switching ``AIOKNOT_BACKEND`` between ``local`` and
``aws`` needs no change to the code.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, TypedDict, TypeVar

from ._exceptions import ConfigurationError
from ._names import parse_bucket
from ._stores.base import Store

if TYPE_CHECKING:
    from ._backends.base import Backend

# Options every backend understands (the store's, watching and reporting).
CORE_OPTIONS = (
    "store",
    "bucket",
    "endpoint_url",
    "profile",
    "region",
    "directory",
    "progress",
    "watch_timeout",
    "retention_days",
    "timeout",
    "retries",
    "resources",
)
# How long watching a run goes on without one successful look at the backend before it gives
# up (the jobs keep running; the run can be re-attached). Transient errors are retried until.
DEFAULT_WATCH_TIMEOUT = 15 * 60.0
# How long a run's data (inputs, results, manifest) is kept, unless AIOKNOT_RETENTION_DAYS.
DEFAULT_RETENTION_DAYS = 7

T = TypeVar("T")


class KnotOptionsDict(TypedDict, total=False):
    """Every option a knot takes, typed, so that a type checker flags a typo or a bad type
    (``**options: Unpack[KnotOptionsDict]``). A test keeps it equal to the options accepted."""

    # Where inputs and results live, and how long.
    store: str | Store
    bucket: str
    endpoint_url: str
    profile: str
    region: str
    directory: str | os.PathLike[str]
    retention_days: int
    # Watching and reporting.
    progress: Callable[[str], None]
    watch_timeout: float
    # Every backend: a task's time limit, and attempts when its worker dies.
    timeout: float
    retries: int
    # Every backend: each task's vcpus and memory from a trial run of the first map.
    resources: Literal["auto"]
    # The local backend.
    workers: int
    # AWS Batch.
    environment: str
    job_queue: str
    vcpus: float
    memory: int
    gpus: int
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
    backend: str  # the backend's name ("local", "aws", or a registered one's)
    bucket: str | None = None  # "s3://bucket/prefix" or "bucket": an S3 store
    endpoint_url: str | None = None
    profile: str | None = None
    region: str | None = None
    directory: str | None = None  # the local store's root (default: AIOKNOT_HOME / cache)
    # A store object the user opened and passed as store=: used as it is, never closed.
    store: Store | None = None
    progress: Callable[[str], None] | None = None
    watch_timeout: float = DEFAULT_WATCH_TIMEOUT  # seconds without one successful poll
    retention_days: int = DEFAULT_RETENTION_DAYS  # days a run's stored data is kept
    # Seconds a task may run before it is stopped and lost as "timeout" (None: no limit).
    timeout: float | None = None
    # Attempts per input when its worker dies (a signal, out of memory, a lost host); None:
    # the backend's default (Batch: 3; local: 1, as the worker's death may be the input's).
    # An input whose function raised is never run again: that is its result.
    retries: int | None = None
    # "auto": the first map's first inputs are measured (knot.estimate) and the tasks after
    # them get the suggested vcpus and memory; None: the options' (or the backend's defaults).
    resources: str | None = None
    # Each registered backend's own options, parsed by it: see `backend_options`.
    backends: Mapping[str, object] = field(default_factory=dict)

    def backend_options(self, backend: str, kind: type[T]) -> T:
        """The options ``backend`` parsed for itself, as the ``kind`` it parses them into."""
        parsed = self.backends.get(backend)
        if not isinstance(parsed, kind):
            raise TypeError(f"the {backend} backend's options are not a {kind.__name__}")
        return parsed


def parse_options(backend: str | Backend | None, options: Mapping[str, Any]) -> KnotOptions:
    """Check every option (core and every registered backend's) and parse them once."""
    from ._backends import backend_kinds, backend_name

    chosen = backend_name(backend)
    rest = dict(options)
    core = _core_options(chosen, rest)
    kinds = backend_kinds()
    known = set(CORE_OPTIONS).union(*(kind.option_names for kind in kinds))
    for name in rest:
        if name not in known:
            import difflib  # only for the hint: a knot that checks its options pays nothing

            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" Did you mean {close[0]}=?" if close else ""
            raise ConfigurationError(f"{name}= is not an option of a knot.{hint}")
    parsed = {
        kind.name: kind.parse_options(
            {name: value for name, value in rest.items() if name in kind.option_names}, core
        )
        for kind in kinds
    }
    return replace(core, backends=parsed)


def _core_options(backend: str, options: dict[str, Any]) -> KnotOptions:
    bucket = _optional_str(options, "bucket")
    directory = _optional_str(options, "directory")
    store_object = None
    store = options.pop("store", None)
    if store is not None:
        if bucket is not None or directory is not None:
            raise ConfigurationError(
                "store= names where the data lives, and so do bucket= and directory=: "
                "pass only one of them"
            )
        if isinstance(store, (str, os.PathLike)):
            bucket, directory = _store_location(os.fspath(store))
        elif isinstance(store, Store):
            store_object = store
        else:
            raise ConfigurationError(
                "store= must be 's3://bucket/prefix', a directory ('file:///path' or a path), "
                f"or an open store object; got {type(store).__name__}"
            )
    if bucket is not None:
        parse_bucket(bucket)
    progress = options.pop("progress", None)
    if progress is not None and not callable(progress):
        raise ConfigurationError("progress= must be a callable taking one message string")
    watch_timeout = options.pop("watch_timeout", DEFAULT_WATCH_TIMEOUT)
    if (
        not isinstance(watch_timeout, (int, float))
        or isinstance(watch_timeout, bool)
        or not watch_timeout > 0
    ):
        raise ConfigurationError(
            f"watch_timeout= must be a positive number of seconds, got {watch_timeout!r} "
            f"(the default is {DEFAULT_WATCH_TIMEOUT:g}: 15 minutes)"
        )
    return KnotOptions(
        backend=backend,
        bucket=bucket,
        endpoint_url=_optional_str(options, "endpoint_url"),
        profile=_optional_str(options, "profile"),
        region=_optional_str(options, "region"),
        directory=directory,
        store=store_object,
        progress=progress,
        watch_timeout=float(watch_timeout),
        retention_days=_retention_days(options.pop("retention_days", None)),
        timeout=_timeout(options.pop("timeout", None)),
        retries=_retries(options.pop("retries", None)),
        resources=_resources(options.pop("resources", None), options),
    )


def _timeout(value: object) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ConfigurationError(
            f"timeout= must be a positive number of seconds a task may run, got {value!r}"
        )
    return float(value)


def _resources(value: object, options: Mapping[str, Any]) -> str | None:
    if value is None:
        return None
    if value != "auto":
        raise ConfigurationError(
            f"resources= takes 'auto' (each task's vcpus and memory estimated from a trial "
            f"run of the first map's first inputs), or nothing; got {value!r}"
        )
    given = [name for name in ("vcpus", "memory") if name in options]
    if given:
        named = " and ".join(f"{name}=" for name in given)
        raise ConfigurationError(
            f"resources='auto' chooses vcpus= and memory= itself: drop {named}, or drop "
            "resources='auto'"
        )
    return "auto"


MAX_RETRIES = 10  # Batch's limit on attempts


def _retries(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_RETRIES:
        raise ConfigurationError(
            f"retries= is the number of attempts per input, a whole number from 1 to "
            f"{MAX_RETRIES}; got {value!r}"
        )
    return value


def _store_location(location: str) -> tuple[str | None, str | None]:
    """``store="s3://..."`` is ``bucket=``; ``store="file:///..."`` or a path is ``directory=``."""
    if location.startswith("s3://"):
        return location, None
    if location.startswith("file://"):
        return None, location.removeprefix("file://")
    if "://" in location:
        raise ConfigurationError(
            f"store={location!r} is not a store aioknot knows: use 's3://bucket/prefix' or a "
            "directory ('file:///path' or a path)"
        )
    return None, location


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
