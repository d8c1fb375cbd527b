"""Names: knot names, run ids and where a knot's and a run's objects live in a store.

The key layout (relative to the store's root) is:

    knots/<knot>/functions/<sha256>.pkl          the function, stored once per content hash
    knots/<knot>/runs/<run id>/manifest.json     what is needed to re-attach to the run
    knots/<knot>/runs/<run id>/inputs/...        input segments   (see _worker.py)
    knots/<knot>/runs/<run id>/results/...       one record per input (see _worker.py)

Everything a knot creates is under ``knots/<knot>/``, which is what ``clobber()`` removes and
what an AWS job role is allowed to touch.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Callable

from ._exceptions import ConfigurationError

# AWS rules for the names derived from a knot's (stack, job definition, ECR repository, IAM
# role) are the strictest common denominator: letters, digits and hyphens, starting with a
# letter; 48 characters leave room for the prefixes and suffixes we add.
KNOT_NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,47}$")
RUN_ID_PATTERN = re.compile(r"^[0-9]{8}T[0-9]{6}-[0-9a-f]{6}$")
MANIFEST_NAME = "manifest.json"


def validate_knot_name(name: object) -> str:
    if not isinstance(name, str) or not KNOT_NAME_PATTERN.fullmatch(name):
        raise ConfigurationError(
            f"knot name {name!r} is not allowed: use 1 to 48 letters, digits and hyphens, "
            "starting with a letter (AWS names the knot's stack, job definitions and images "
            "after it), e.g. name='pi-calc'"
        )
    return name


def default_knot_name(func: Callable[..., object]) -> str:
    """A valid knot name from the function's name: ``monte_pi_count`` -> ``monte-pi-count``."""
    raw = getattr(func, "__name__", "") or "knot"
    cleaned = re.sub(r"[^A-Za-z0-9]+", "-", raw).strip("-")
    if not cleaned or not cleaned[0].isalpha():
        cleaned = f"knot-{cleaned}".rstrip("-")
    return cleaned[:48].rstrip("-")


def new_run_id() -> str:
    """Sortable by creation time, unique enough for one knot: ``20261121T091500-3fa2c1``."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def validate_run_id(run_id: str) -> str:
    if not RUN_ID_PATTERN.fullmatch(run_id):
        raise ConfigurationError(
            f"{run_id!r} is not a run id; run ids look like '20261121T091500-3fa2c1' "
            "(see run.id or knot.jobs)"
        )
    return run_id


def run_id_created(run_id: str) -> float:
    """When the run of ``run_id`` was created (epoch seconds, to the second): its id says."""
    import calendar

    return float(calendar.timegm(time.strptime(run_id[:15], "%Y%m%dT%H%M%S")))


KNOTS_PREFIX = "knots"


def knot_prefix(knot: str) -> str:
    return f"{KNOTS_PREFIX}/{knot}"


def function_key(knot: str, digest: str) -> str:
    return f"{knot_prefix(knot)}/functions/{digest}.pkl"


def runs_prefix(knot: str) -> str:
    return f"{knot_prefix(knot)}/runs"


def run_prefix(knot: str, run_id: str) -> str:
    return f"{runs_prefix(knot)}/{run_id}"


def manifest_key(run: str) -> str:
    return f"{run}/{MANIFEST_NAME}"


def default_home() -> str:
    """Where the local store lives: ``AIOKNOT_HOME``, else the user's cache directory."""
    home = os.environ.get("AIOKNOT_HOME")
    if home:
        return os.path.abspath(os.path.expanduser(home))
    import platformdirs

    return str(platformdirs.user_cache_path("aioknot"))


# S3's bucket naming rules (the one check of a bucket name in the library).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")


def check_bucket_name(name: str, what: str) -> str:
    """``name`` if S3 would take it as a bucket name; else a ConfigurationError about ``what``."""
    broken = (
        not _BUCKET.fullmatch(name)
        or ".." in name
        or ".-" in name
        or "-." in name
        or _IPV4.fullmatch(name) is not None
        or name.startswith(("xn--", "sthree-", "amzn-s3-demo-"))
        or name.endswith(("-s3alias", "--ol-s3", ".mrap", "--x-s3"))
    )
    if broken:
        raise ConfigurationError(
            f"{what} is not a valid S3 bucket name: use 3 to 63 lower-case letters, digits, "
            "hyphens and dots, starting and ending with a letter or digit, e.g. "
            "bucket='my-knot-data' or bucket='s3://my-knot-data/some/prefix'"
        )
    return name


def parse_bucket(location: str) -> tuple[str, str]:
    """``"s3://bucket/some/prefix"`` or ``"bucket"`` -> ``("bucket", "some/prefix")``."""
    rest = location.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    check_bucket_name(bucket, f"bucket={location!r}")
    return bucket, prefix.strip("/")
