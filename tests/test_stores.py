"""The two stores answer the same contract: a local directory, and S3 on a moto server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aioboto3
import pytest

from aioknot import ConfigurationError
from aioknot._store import Store
from aioknot._store_local import LocalStore
from aioknot._store_s3 import S3Store, parse_bucket


@pytest.fixture(params=["local", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "local":
        yield LocalStore(str(tmp_path / "store"))
        return
    request.getfixturevalue("aws")
    s3 = await S3Store("s3://contract-bucket/some/prefix", create_bucket=True).open()
    try:
        yield s3
    finally:
        await s3.aclose()


async def test_put_get_exists_list_delete(store: Store) -> None:
    await store.put("a/results/000000001", b"one")
    await store.put("a/results/000000002-3", b"group")
    await store.put("a/inputs/000000000", b"segment")
    assert await store.get("a/results/000000001") == b"one"
    assert await store.get_many(["a/results/000000002-3", "a/results/000000001"]) == [
        b"group",
        b"one",
    ]
    assert await store.exists_many(["a/results/000000001", "a/results/missing"]) == [True, False]
    assert await store.list_keys("a/results/") == ["a/results/000000001", "a/results/000000002-3"]
    assert await store.list_keys("a/results/", start_after="a/results/000000001") == [
        "a/results/000000002-3"
    ]
    with pytest.raises(KeyError):
        await store.get("a/results/missing")
    assert await store.delete_prefix("a/") == 3
    assert await store.list_keys("a/results/") == []


async def test_s3_keys_live_under_the_prefix_and_the_bucket_is_private(aws: object) -> None:
    store = await S3Store("s3://private-bucket/deep/prefix", create_bucket=True).open()
    try:
        await store.put("x", b"1")
        assert store.url == "s3://private-bucket/deep/prefix"
        async with aioboto3.Session().client("s3") as s3:
            listed = await s3.list_objects_v2(Bucket="private-bucket")
            assert [o["Key"] for o in listed["Contents"]] == ["deep/prefix/x"]
            block = await s3.get_public_access_block(Bucket="private-bucket")
            assert all(block["PublicAccessBlockConfiguration"].values())
            encryption = await s3.get_bucket_encryption(Bucket="private-bucket")
            rules = encryption["ServerSideEncryptionConfiguration"]["Rules"]
            assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    finally:
        await store.aclose()


async def test_a_missing_bucket_is_a_configuration_error(aws: object) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        await S3Store("s3://no-such-bucket").open()


def test_bucket_names_are_checked_before_any_request() -> None:
    assert parse_bucket("s3://b-1/x/y/") == ("b-1", "x/y")
    assert parse_bucket("plain.bucket") == ("plain.bucket", "")
    with pytest.raises(ConfigurationError, match="not a valid S3 bucket"):
        parse_bucket("s3://Bad_Bucket")
