"""``backend="aws"``: a knot's runs as AWS Batch array jobs, its data in S3.

The package, module by module:

- ``options``: the Batch options (`AwsOptions`), checked without I/O.
- ``image_options``: the image options (`ImageSettings`), checked without I/O.
- ``image``: which image a knot runs: planned, built and pushed.
- ``template``: the two CloudFormation templates (the shared environment, the knot's role).
- ``stack``: creating, updating, waiting for and deleting those stacks.
- ``jobs``: job definitions and the shape of array jobs.
- ``run``: one run's jobs: submitting, watching, status, cancel, logs.
- ``backend``: `AwsBackend`, which ties them together for a knot, and cleans up.
- ``errors``: botocore's errors told apart.

This module is what the registry names; it imports only the option checks (``options``,
``image_options``), so that a local knot checks its AWS options without importing the AWS
SDK, aiohttp, aiodocker or the image builder (`tests/test_lazy_imports.py` checks it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from ..base import BackendKind
from .image_options import ImageSettings, image_settings
from .options import OPTION_NAMES, AwsOptions, aws_options

if TYPE_CHECKING:
    from ..._options import KnotOptions
    from ..base import Backend

# Options the knot's core parses (and hands to aws_options), not this backend.
_CORE = frozenset({"bucket", "profile", "region", "timeout", "retries"})
BATCH_OPTIONS = frozenset(OPTION_NAMES) - _CORE
IMAGE_OPTIONS = frozenset(f.name for f in fields(ImageSettings))


@dataclass(frozen=True)
class AwsSettings:
    """A knot's AWS options, parsed once: Batch and the image."""

    batch: AwsOptions
    image: ImageSettings


def _parse_options(options: Mapping[str, object], core: KnotOptions) -> AwsSettings:
    shared: dict[str, object] = {"bucket": core.bucket, "profile": core.profile}
    shared["region"] = core.region
    if core.retries is not None:
        shared["retries"] = core.retries
    if core.timeout is not None and core.backend == "aws":
        # Batch's own rule (whole seconds, at least 60) binds only a knot that runs on Batch;
        # locally any positive number of seconds is a timeout.
        shared["timeout"] = core.timeout if not core.timeout.is_integer() else int(core.timeout)
    batch = aws_options(
        **{name: value for name, value in options.items() if name in BATCH_OPTIONS}, **shared
    )
    image = image_settings({n: v for n, v in options.items() if n in IMAGE_OPTIONS})
    return AwsSettings(batch=batch, image=image)


def _create(options: KnotOptions) -> Backend:
    from .backend import AwsBackend  # the AWS SDK is imported only by knots that use it

    return AwsBackend()


KIND = BackendKind(
    name="aws",
    option_names=BATCH_OPTIONS | IMAGE_OPTIONS,
    parse_options=_parse_options,
    create=_create,
)
