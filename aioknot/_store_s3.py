"""A store in an S3 bucket, through aioboto3: AWS, a moto server or MinIO alike.

The endpoint comes from ``endpoint_url=`` or the standard ``AWS_ENDPOINT_URL[_S3]``
variables (botocore reads those itself); credentials from the standard chain. botocore's
errors are translated here, at this one boundary, into ``StoreError`` and
``ConfigurationError`` that name the bucket and key.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Sequence
from typing import Any

import aioboto3
import anyio
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from ._exceptions import ConfigurationError, StoreError

BUCKET_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# Enough parallel requests to hide S3's latency, few enough for moto and small machines.
DEFAULT_CONCURRENCY = 32


def parse_bucket(location: str) -> tuple[str, str]:
    """``"s3://bucket/some/prefix"`` or ``"bucket"`` -> ``("bucket", "some/prefix")``."""
    rest = location[len("s3://") :] if location.startswith("s3://") else location
    bucket, _, prefix = rest.partition("/")
    if not BUCKET_PATTERN.fullmatch(bucket) or ".." in bucket:
        raise ConfigurationError(
            f"bucket {location!r} is not a valid S3 bucket: use 3 to 63 lowercase letters, "
            "digits, dots and hyphens, e.g. bucket='s3://my-bucket/aioknot' or bucket='my-bucket'"
        )
    return bucket, prefix.strip("/")


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


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
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self.bucket, self.prefix = parse_bucket(location)
        self.endpoint_url = endpoint_url
        self.region = region
        self.profile = profile
        self.expected_owner = expected_owner
        self.create_bucket = create_bucket
        self.tags = dict(tags or {})
        self._limit = anyio.CapacityLimiter(concurrency)
        self._concurrency = concurrency
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    @property
    def client(self) -> Any:
        """The aiobotocore S3 client (for event hooks in benchmarks and tests)."""
        if self._client is None:
            raise StoreError("the S3 store is not open: use it inside the knot's async with")
        return self._client

    def worker_environment(self) -> dict[str, str]:
        env: dict[str, str] = {}
        endpoint = (
            self.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        if endpoint:
            env["AIOKNOT_ENDPOINT_URL"] = endpoint
        if self.expected_owner:
            env["AIOKNOT_EXPECTED_BUCKET_OWNER"] = self.expected_owner
        return env

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _owner(self) -> dict[str, str]:
        return {"ExpectedBucketOwner": self.expected_owner} if self.expected_owner else {}

    def _translate(self, error: Exception, what: str) -> Exception:
        if isinstance(error, NoCredentialsError):
            return ConfigurationError(
                "no AWS credentials were found: set AWS_PROFILE (or pass profile=), or "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run where an IAM role applies"
            )
        if isinstance(error, ClientError):
            code = _error_code(error)
            if code in ("NoSuchBucket", "404") and what.startswith("bucket"):
                return ConfigurationError(
                    f"bucket {self.bucket!r} does not exist: create it, or pass another bucket="
                )
            if code in ("AccessDenied", "403", "AllAccessDisabled"):
                return ConfigurationError(
                    f"access to {what} in bucket {self.bucket!r} was denied ({code}): check "
                    "that your credentials may read and write it, and that you own it"
                )
            return StoreError(f"S3 refused {what} in bucket {self.bucket!r}: {error}")
        return StoreError(f"S3 request for {what} in bucket {self.bucket!r} failed: {error}")

    async def open(self) -> S3Store:
        session = aioboto3.Session(profile_name=self.profile, region_name=self.region)
        config = Config(
            max_pool_connections=self._concurrency,
            retries={"max_attempts": 8, "mode": "adaptive"},
        )
        try:
            self._client = await self._stack.enter_async_context(
                session.client("s3", endpoint_url=self.endpoint_url, config=config)
            )
            await self._ensure_bucket()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def _ensure_bucket(self) -> None:
        try:
            await self._client.head_bucket(Bucket=self.bucket, **self._owner())
            return
        except ClientError as error:
            if _error_code(error) not in ("404", "NoSuchBucket") or not self.create_bucket:
                raise self._translate(error, "bucket access") from error
        except (BotoCoreError, NoCredentialsError) as error:
            raise self._translate(error, "bucket access") from error
        await self._create_bucket()

    async def _create_bucket(self) -> None:
        """Create the bucket private, encrypted and tagged (the AWS backend's default bucket)."""
        region = self._client.meta.region_name
        extra: dict[str, Any] = {}
        if region and region != "us-east-1":
            extra["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            await self._client.create_bucket(Bucket=self.bucket, **extra)
            await self._client.put_public_access_block(
                Bucket=self.bucket,
                PublicAccessBlockConfiguration={
                    "BlockPublicAcls": True,
                    "IgnorePublicAcls": True,
                    "BlockPublicPolicy": True,
                    "RestrictPublicBuckets": True,
                },
                **self._owner(),
            )
            await self._client.put_bucket_encryption(
                Bucket=self.bucket,
                ServerSideEncryptionConfiguration={
                    "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
                },
                **self._owner(),
            )
            if self.tags:
                await self._client.put_bucket_tagging(
                    Bucket=self.bucket,
                    Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in self.tags.items()]},
                    **self._owner(),
                )
        except (ClientError, BotoCoreError) as error:
            raise self._translate(error, "bucket creation") from error

    async def put(self, key: str, data: bytes) -> None:
        async with self._limit:
            try:
                await self.client.put_object(
                    Bucket=self.bucket, Key=self._key(key), Body=data, **self._owner()
                )
            except (ClientError, BotoCoreError) as error:
                raise self._translate(error, f"PUT {key}") from error

    async def get(self, key: str) -> bytes:
        async with self._limit:
            try:
                response = await self.client.get_object(
                    Bucket=self.bucket, Key=self._key(key), **self._owner()
                )
                async with response["Body"] as body:
                    return bytes(await body.read())
            except ClientError as error:
                if _error_code(error) in ("NoSuchKey", "404"):
                    raise KeyError(key) from None
                raise self._translate(error, f"GET {key}") from error
            except BotoCoreError as error:
                raise self._translate(error, f"GET {key}") from error

    async def _exists(self, key: str) -> bool:
        async with self._limit:
            try:
                await self.client.head_object(
                    Bucket=self.bucket, Key=self._key(key), **self._owner()
                )
                return True
            except ClientError as error:
                if _error_code(error) in ("404", "NoSuchKey"):
                    return False
                raise self._translate(error, f"HEAD {key}") from error
            except BotoCoreError as error:
                raise self._translate(error, f"HEAD {key}") from error

    async def get_many(self, keys: Sequence[str]) -> list[bytes]:
        return await _gather(self.get, keys)

    async def exists_many(self, keys: Sequence[str]) -> list[bool]:
        return await _gather(self._exists, keys)

    async def list_keys(self, prefix: str, *, start_after: str | None = None) -> list[str]:
        keys: list[str] = []
        strip = len(self._key(""))
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._key(prefix)}
        if start_after is not None:
            arguments["StartAfter"] = self._key(start_after)
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(**arguments, **self._owner()):
                keys.extend(item["Key"][strip:] for item in page.get("Contents", ()))
        except (ClientError, BotoCoreError) as error:
            raise self._translate(error, f"LIST {prefix}") from error
        return keys

    async def delete_prefix(self, prefix: str) -> int:
        keys = await self.list_keys(prefix)
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1,000 keys
            batch = [{"Key": self._key(key)} for key in keys[start : start + 1000]]
            try:
                await self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}, **self._owner()
                )
            except (ClientError, BotoCoreError) as error:
                raise self._translate(error, f"DELETE {prefix}") from error
        return len(keys)

    async def aclose(self) -> None:
        self._client = None
        await self._stack.aclose()


async def _gather(call: Any, keys: Sequence[str]) -> list[Any]:
    """Run ``call(key)`` for every key concurrently (the store's limiter bounds it), in order."""
    results: list[Any] = [None] * len(keys)
    errors: list[Exception] = []

    async def one(position: int, key: str) -> None:
        try:
            results[position] = await call(key)
        except Exception as error:  # raised below as itself, not wrapped in an ExceptionGroup
            errors.append(error)

    async with anyio.create_task_group() as group:
        for position, key in enumerate(keys):
            group.start_soon(one, position, key)
    if errors:
        raise errors[0]
    return results
