"""A store in an S3 bucket, through aioboto3: AWS, a moto server or MinIO alike.

The endpoint comes from ``endpoint_url=`` or the standard ``AWS_ENDPOINT_URL[_S3]``
variables (botocore reads those itself); credentials from the standard chain.

Every request is retried while it fails transiently (throttling, 5xx, dropped connections,
credentials being refreshed): botocore makes a few quick attempts ("standard" mode, not
"adaptive", whose client-side rate limiter slowed a 15%-faulty run to ~6 results/s), and
`aioknot._retry.retry_transient` keeps going on top for up to ``STORE_OUTAGE_SECONDS``. A
store that still fails after that is down, not blinking: the error is raised, translated by
the one error boundary (`aioknot._errors.store_error`) into a ``StoreError`` or
``ConfigurationError`` that names the bucket and key and says what to do.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, cast
from urllib.parse import urlsplit

import aioboto3
import anyio
from botocore.config import Config
from botocore.exceptions import ClientError

from .._errors import AWS_ERRORS, error_code, store_error
from .._exceptions import ConfigurationError, KnotError, StoreError
from .._names import parse_bucket
from .._retry import retry_transient
from .._tasks import task_group

if TYPE_CHECKING:  # the published stubs (types-aiobotocore): no import at run time
    from types_aiobotocore_s3.client import S3Client
    from types_aiobotocore_s3.literals import BucketLocationConstraintType
    from types_aiobotocore_s3.type_defs import (
        CreateBucketRequestTypeDef,
        LifecycleRuleTypeDef,
        ListObjectsV2RequestTypeDef,
        ObjectIdentifierTypeDef,
    )

T = TypeVar("T")


class _Owner(TypedDict, total=False):
    """The expected-owner argument every request carries, when the owner is known."""

    ExpectedBucketOwner: str


# Enough parallel requests to hide S3's latency, few enough for moto and small machines.
DEFAULT_CONCURRENCY = 32
# How long a store may keep failing transiently before it counts as down and the run's watch
# ends with a StoreError. Long enough to ride out a throttling burst or a connection blip,
# short enough that a store that went away is reported within 30 s: the watcher may be
# between two polls (up to 5 s) when the outage starts, and the last attempt takes its time
# (measured: a permanent 500 reported after 26 s with a 20 s window, hence 15 s).
STORE_OUTAGE_SECONDS = 15.0
# botocore's own attempts per request, the first included: one quick retry of a single blip
# (it waits rand(0, 1) s); anything longer is ours to retry, on the clock above. Few, so that
# the outage window stays the bound: 15 s plus a second or so per request. (botocore's
# ``max_attempts`` counts retries, not attempts: ``total_max_attempts`` is the one meant.)
BOTOCORE_ATTEMPTS = 2
# A request that hangs is abandoned and retried like a failed one, rather than holding its
# slot for botocore's default 60 s (per connect / per read, not for the whole transfer).
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 20.0


def partition_of(region: str | None) -> str:
    """The ARN partition of ``region`` (bucket policies name the bucket by ARN)."""
    if region and region.startswith("cn-"):
        return "aws-cn"
    if region and region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def tls_only_policy(bucket: str, partition: str = "aws") -> str:
    """A bucket policy that refuses every request not made over TLS."""
    arn = f"arn:{partition}:s3:::{bucket}"
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "DenyInsecureTransport",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:*",
                    "Resource": [arn, f"{arn}/*"],
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                }
            ],
        }
    )


def speaks_tls(endpoint: str | None) -> bool:
    """Whether requests to ``endpoint`` (None: AWS's own, always https) travel over TLS.

    A TLS-only bucket policy is set only then: on a plain-http endpoint (a local moto or
    MinIO) it would deny this very client every request.
    """
    return endpoint is None or urlsplit(endpoint).scheme.lower() == "https"


def lifecycle_rules(prefix: str, retention_days: int | None) -> list[LifecycleRuleTypeDef]:
    """Expire run data after ``retention_days`` (if given); always drop abandoned uploads."""
    rule: LifecycleRuleTypeDef = {
        "ID": "aioknot-run-data",
        "Status": "Enabled",
        "Filter": {"Prefix": f"{prefix}/" if prefix else ""},
        # Multipart uploads a crashed client never finished cost storage and are invisible.
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
    }
    if retention_days is not None:
        rule["Expiration"] = {"Days": retention_days}
    return [rule]


class S3Store:
    def __init__(
        self,
        location: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        expected_owner: str | None = None,
        create_bucket: bool = False,
        tags: dict[str, str] | None = None,
        retention_days: int | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        outage_seconds: float = STORE_OUTAGE_SECONDS,
    ) -> None:
        self.bucket, self.prefix = parse_bucket(location)
        if retention_days is not None and retention_days < 1:
            raise ConfigurationError(
                f"retention_days={retention_days!r} must be a whole number of days, at least 1 "
                "(or None to keep run data until you delete it)"
            )
        self.endpoint_url = endpoint_url
        self.region = region
        self.profile = profile
        self.expected_owner = expected_owner
        self.create_bucket = create_bucket
        self.tags = dict(tags or {})
        self.retention_days = retention_days
        self.outage_seconds = outage_seconds
        self._limit = anyio.CapacityLimiter(concurrency)
        self._concurrency = concurrency
        self._stack = contextlib.AsyncExitStack()
        self._client: S3Client | None = None

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    @property
    def client(self) -> S3Client:
        """The aiobotocore S3 client (for event hooks in benchmarks and tests)."""
        if self._client is None:
            raise StoreError("the S3 store is not open: use it inside the knot's async with")
        return self._client

    def _endpoint(self) -> str | None:
        return (
            self.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )

    def worker_environment(self) -> dict[str, str]:
        # The worker must reach the store exactly as this client does: same endpoint, region
        # and profile (a profile names credentials; it is not one).
        env: dict[str, str] = {}
        endpoint = self._endpoint()
        if endpoint:
            env["AIOKNOT_ENDPOINT_URL"] = endpoint
        if self.region:
            env["AIOKNOT_REGION"] = self.region
        if self.profile:
            env["AIOKNOT_PROFILE"] = self.profile
        if self.expected_owner:
            env["AIOKNOT_EXPECTED_BUCKET_OWNER"] = self.expected_owner
        return env

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _owner(self) -> _Owner:
        return {"ExpectedBucketOwner": self.expected_owner} if self.expected_owner else {}

    def _translate(self, error: BaseException, what: str) -> KnotError:
        """The boundary (`aioknot._errors.store_error`), told this store's bucket and endpoint."""
        return store_error(
            error,
            what,
            bucket=self.bucket,
            url=self.url,
            endpoint=self._endpoint(),
            outage_seconds=self.outage_seconds,
        )

    async def _request(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """``await call()`` in a slot of the store's limiter, retried while it fails
        transiently for up to the outage window, its errors translated."""

        async def attempt() -> T:
            # A slot per attempt, not per retry loop: backing off must not starve the others.
            async with self._limit:
                return await call()

        try:
            return await retry_transient(attempt, give_up_after=self.outage_seconds)
        except KeyError:
            raise  # the "missing" signal of get
        except Exception as error:
            raise self._translate(error, what) from error

    async def open(self) -> S3Store:
        config = Config(
            max_pool_connections=self._concurrency,
            retries={"total_max_attempts": BOTOCORE_ATTEMPTS, "mode": "standard"},
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            read_timeout=READ_TIMEOUT_SECONDS,
        )
        # botocore reads AWS_DEFAULT_REGION, not AWS_REGION; the worker reads both, so do we.
        region = self.region
        if region is None and not os.environ.get("AWS_DEFAULT_REGION"):
            region = os.environ.get("AWS_REGION") or None
        try:
            session = aioboto3.Session(profile_name=self.profile, region_name=region)
            self._client = await self._stack.enter_async_context(
                session.client("s3", endpoint_url=self.endpoint_url, config=config)
            )
            await self._ensure_bucket()
        except BaseException as error:
            await self.aclose()
            if isinstance(error, AWS_ERRORS):
                raise self._translate(error, "bucket access") from error
            raise
        return self

    async def _ensure_bucket(self) -> None:
        async def head() -> bool:
            try:
                await self.client.head_bucket(Bucket=self.bucket, **self._owner())
                return True
            except ClientError as error:
                if error_code(error) in ("404", "NoSuchBucket") and self.create_bucket:
                    return False
                raise

        if not await self._request(f"bucket access to {self.bucket!r}", head):
            await self._create_bucket()

    async def _create_bucket(self) -> None:
        """Create the bucket private, encrypted, TLS-only (when the endpoint speaks TLS),
        tagged, and with a lifecycle rule for run data (the AWS backend's default bucket)."""
        client = self.client
        region = client.meta.region_name
        request: CreateBucketRequestTypeDef = {"Bucket": self.bucket}
        if region and region != "us-east-1":
            # Any region's name: the stubs list the regions they knew of.
            constraint = cast("BucketLocationConstraintType", region)
            request["CreateBucketConfiguration"] = {"LocationConstraint": constraint}
        owner = self._owner()

        async def create() -> None:
            try:
                await client.create_bucket(**request)
            except ClientError as error:
                # A retry after a lost answer, or another knot creating it at the same moment.
                if error_code(error) != "BucketAlreadyOwnedByYou":
                    raise

        calls: list[Callable[[], Awaitable[Any]]] = [
            create,
            functools.partial(
                self.client.put_public_access_block,
                Bucket=self.bucket,
                PublicAccessBlockConfiguration={
                    "BlockPublicAcls": True,
                    "IgnorePublicAcls": True,
                    "BlockPublicPolicy": True,
                    "RestrictPublicBuckets": True,
                },
                **owner,
            ),
            functools.partial(
                self.client.put_bucket_encryption,
                Bucket=self.bucket,
                ServerSideEncryptionConfiguration={
                    "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
                },
                **owner,
            ),
            functools.partial(
                self.client.put_bucket_lifecycle_configuration,
                Bucket=self.bucket,
                LifecycleConfiguration={"Rules": lifecycle_rules(self.prefix, self.retention_days)},
                **owner,
            ),
        ]
        if speaks_tls(self._endpoint()):
            calls.append(
                functools.partial(
                    self.client.put_bucket_policy,
                    Bucket=self.bucket,
                    Policy=tls_only_policy(self.bucket, partition_of(region)),
                    **owner,
                )
            )
        if self.tags:
            calls.append(
                functools.partial(
                    self.client.put_bucket_tagging,
                    Bucket=self.bucket,
                    Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in self.tags.items()]},
                    **owner,
                )
            )
        for call in calls:
            await self._request(f"creating bucket {self.bucket!r}", call)

    async def put(self, key: str, data: bytes) -> None:
        await self._request(
            f"PUT {self._where(key)}",
            functools.partial(
                self.client.put_object,
                Bucket=self.bucket,
                Key=self._key(key),
                Body=data,
                **self._owner(),
            ),
        )

    async def get(self, key: str) -> bytes:
        async def get() -> bytes:
            # Body read inside the retried call: a connection dropped mid-body is retried too.
            try:
                response = await self.client.get_object(
                    Bucket=self.bucket, Key=self._key(key), **self._owner()
                )
            except ClientError as error:
                if error_code(error) in ("NoSuchKey", "404"):
                    raise KeyError(key) from None
                raise
            async with response["Body"] as body:
                return bytes(await body.read())

        return await self._request(f"GET {self._where(key)}", get)

    async def _exists(self, key: str) -> bool:
        async def head() -> bool:
            try:
                await self.client.head_object(
                    Bucket=self.bucket, Key=self._key(key), **self._owner()
                )
                return True
            except ClientError as error:
                if error_code(error) in ("404", "NoSuchKey"):
                    return False
                raise

        return await self._request(f"HEAD {self._where(key)}", head)

    async def get_many(self, keys: Sequence[str]) -> list[bytes]:
        return await _gather(self.get, keys)

    async def exists_many(self, keys: Sequence[str]) -> list[bool]:
        return await _gather(self._exists, keys)

    async def list_keys(
        self, prefix: str, *, start_after: str | None = None, before: str | None = None
    ) -> list[str]:
        keys: list[str] = []
        strip = len(self._key(""))
        arguments: ListObjectsV2RequestTypeDef = {
            "Bucket": self.bucket,
            "Prefix": self._key(prefix),
        }
        if self.expected_owner:
            arguments["ExpectedBucketOwner"] = self.expected_owner
        if start_after is not None:
            arguments["StartAfter"] = self._key(start_after)
        while True:
            # Page by page, each page retried on its own: a fault on page 15 of a long
            # listing costs one request again, not the listing.
            page = await self._request(
                f"LIST {self._where(prefix)}",
                functools.partial(self.client.list_objects_v2, **arguments),
            )
            for item in page.get("Contents", ()):
                key = item["Key"][strip:]
                if before is not None and key >= before:
                    return keys  # S3 lists in key order: nothing later is wanted
                keys.append(key)
            if not page.get("IsTruncated"):
                return keys
            arguments["ContinuationToken"] = page["NextContinuationToken"]

    async def list_children(self, prefix: str) -> list[str]:
        prefix = prefix.rstrip("/") + "/"
        names: set[str] = set()
        arguments: ListObjectsV2RequestTypeDef = {
            "Bucket": self.bucket,
            "Prefix": self._key(prefix),
            "Delimiter": "/",
        }
        if self.expected_owner:
            arguments["ExpectedBucketOwner"] = self.expected_owner
        strip = len(self._key(prefix))
        while True:
            page = await self._request(
                f"LIST {self._where(prefix)}",
                functools.partial(self.client.list_objects_v2, **arguments),
            )
            names.update(
                item["Prefix"][strip:].rstrip("/") for item in page.get("CommonPrefixes", ())
            )
            names.update(item["Key"][strip:] for item in page.get("Contents", ()))
            if not page.get("IsTruncated"):
                return sorted(name for name in names if name)
            arguments["ContinuationToken"] = page["NextContinuationToken"]

    async def delete_prefix(self, prefix: str) -> int:
        keys = await self.list_keys(prefix)
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1,000 keys
            batch: list[ObjectIdentifierTypeDef] = [
                {"Key": self._key(key)} for key in keys[start : start + 1000]
            ]
            response = await self._request(
                f"DELETE {self._where(prefix)}",
                functools.partial(
                    self.client.delete_objects,
                    Bucket=self.bucket,
                    Delete={"Objects": batch, "Quiet": True},
                    **self._owner(),
                ),
            )
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise StoreError(
                    f"S3 did not delete {len(errors)} of the objects under "
                    f"{self._where(prefix)}, e.g. {first.get('Key')!r} "
                    f"({first.get('Code')}: {first.get('Message')}): check that you may "
                    "delete there (s3:DeleteObject) and try again"
                )
        return len(keys)

    async def aclose(self) -> None:
        self._client = None
        await self._stack.aclose()


async def _gather(call: Callable[[str], Awaitable[T]], keys: Sequence[str]) -> list[T]:
    """Run ``call(key)`` for every key concurrently (the store's limiter bounds it), in order;
    the first error is raised as itself, and cancels the others."""
    results: list[Any] = [None] * len(keys)

    async def one(position: int, key: str) -> None:
        results[position] = await call(key)

    async with task_group() as group:
        for position, key in enumerate(keys):
            group.start_soon(one, position, key)
    return results
