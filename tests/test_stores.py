"""The two stores answer the same contract: a local directory, and S3 on a moto server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aioboto3
import pytest
from botocore.exceptions import ClientError

from aioknot import ConfigurationError
from aioknot._stores.base import Store
from aioknot._stores.local import LocalStore
from aioknot._stores.s3 import (
    S3Store,
    parse_bucket,
    partition_of,
    speaks_tls,
    tls_only_policy,
)


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


async def test_a_created_bucket_expires_run_data_and_drops_abandoned_uploads(aws: object) -> None:
    store = S3Store("s3://kept-bucket/knots", create_bucket=True, retention_days=7)
    await store.open()
    try:
        async with aioboto3.Session().client("s3") as s3:
            lifecycle = await s3.get_bucket_lifecycle_configuration(Bucket="kept-bucket")
            (rule,) = lifecycle["Rules"]
            assert rule["Status"] == "Enabled" and rule["Filter"]["Prefix"] == "knots/"
            assert rule["Expiration"]["Days"] == 7
            assert rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 1
            # moto speaks plain http here: a TLS-only policy would deny this very client, so
            # none is set (and the store still works).
            with pytest.raises(ClientError, match="NoSuchBucketPolicy"):
                await s3.get_bucket_policy(Bucket="kept-bucket")
        await store.put("x", b"1")
        assert await store.get("x") == b"1"
    finally:
        await store.aclose()


async def test_the_tls_only_policy_denies_plain_http_and_is_accepted_by_s3(aws: object) -> None:
    assert speaks_tls(None) and speaks_tls("https://s3.example.com")
    assert not speaks_tls("http://127.0.0.1:9000")
    policy = tls_only_policy("tls-bucket", partition_of("cn-north-1"))
    (statement,) = json.loads(policy)["Statement"]
    assert statement["Effect"] == "Deny" and statement["Principal"] == "*"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert statement["Resource"] == ["arn:aws-cn:s3:::tls-bucket", "arn:aws-cn:s3:::tls-bucket/*"]
    async with aioboto3.Session().client("s3") as s3:
        await s3.create_bucket(Bucket="tls-bucket")
        await s3.put_bucket_policy(Bucket="tls-bucket", Policy=policy)
        stored = await s3.get_bucket_policy(Bucket="tls-bucket")
        assert json.loads(stored["Policy"]) == json.loads(policy)


def test_retention_days_must_be_a_positive_number_of_days() -> None:
    with pytest.raises(ConfigurationError, match="retention_days=0"):
        S3Store("s3://b-1", retention_days=0)
    assert S3Store("s3://b-1", retention_days=None).retention_days is None


def test_workers_reach_the_store_as_the_client_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    store = S3Store(
        "s3://b-1/p",
        endpoint_url="http://127.0.0.1:9000",
        region="eu-west-3",
        profile="team",
        expected_owner="123456789012",
    )
    assert store.worker_environment() == {
        "AIOKNOT_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AIOKNOT_REGION": "eu-west-3",
        "AIOKNOT_PROFILE": "team",
        "AIOKNOT_EXPECTED_BUCKET_OWNER": "123456789012",
    }
    assert S3Store("s3://b-1").worker_environment() == {}


async def test_a_missing_profile_is_a_configuration_error(
    aws: object, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    with pytest.raises(ConfigurationError, match="'nobody' is not configured"):
        await S3Store("s3://b-1", profile="nobody").open()


async def test_a_local_store_runs_small_operations_inline_until_the_disk_proves_slow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small operations run on the event loop (no thread hop); large ones in a thread; and
    once an inline one takes longer than INLINE_SECONDS, every one goes to a thread."""
    import threading

    from aioknot._stores import local

    store = LocalStore(str(tmp_path / "store"))
    threads: list[str] = []
    real_write = store._files.write

    def write(key: str, data: bytes) -> None:
        threads.append(threading.current_thread().name)
        real_write(key, data)

    monkeypatch.setattr(store._files, "write", write)  # records where each write ran
    await store.put("small", b"x" * 10)
    await store.put("large", b"x" * (local.INLINE_BYTES + 1))
    assert threads[0] == threading.current_thread().name  # on the event loop
    assert threads[1] != threading.current_thread().name  # a worker thread
    assert store.inline and await store.get_many(["small", "large"]) == [
        b"x" * 10,
        b"x" * (local.INLINE_BYTES + 1),
    ]
    monkeypatch.setattr(local, "INLINE_SECONDS", 0.0)  # as if the disk took too long
    await store.put("slow", b"x")
    assert not store.inline
    await store.put("after", b"y")
    assert threads[-1] != threading.current_thread().name
    assert await store.get("after") == b"y"
