"""A new user's first errors on backend="aws" are true and come before anything exists."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.aws import MotoClients
from infra.moto import MotoServer

import aioknot
from aioknot import ConfigurationError, ImageBuildError


def square(x: int) -> int:
    return x * x


async def test_no_docker_engine_fails_before_any_resource(
    boto: MotoClients, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    socket = f"unix://{tmp_path}/no-engine.sock"
    monkeypatch.setenv("DOCKER_HOST", socket)
    with pytest.raises(ImageBuildError) as no_engine:
        async with aioknot.AsyncKnot(square, backend="aws") as knot:
            await knot.map([1, 2])
    # The address actually configured, and what to do.
    assert socket in str(no_engine.value)
    assert "image=" in str(no_engine.value)
    assert boto("s3").list_buckets()["Buckets"] == []
    assert boto("cloudformation").list_stacks()["StackSummaries"] == []
    assert boto("batch").describe_job_definitions()["jobDefinitions"] == []


async def test_aws_region_is_read_and_a_missing_region_says_where(
    aws: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aioknot._backends.aws.backend import _session
    from aioknot._options import parse_options

    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    _, region = _session(parse_options("aws", {}))
    assert region == "eu-west-1"  # botocore alone would find none
    monkeypatch.delenv("AWS_REGION")
    with pytest.raises(ConfigurationError) as missing:
        _session(parse_options("aws", {}))
    for where in ("region=", "AWS_REGION", "AWS_DEFAULT_REGION", "~/.aws/config"):
        assert where in str(missing.value)
