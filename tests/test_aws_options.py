"""`aws_options`: every bad option is a ConfigurationError that says what to do, before AWS."""

from __future__ import annotations

import dataclasses

import pytest

from aioknot._backends.aws.options import (
    DEFAULT_INSTANCE_TYPES,
    DEFAULT_MAX_VCPUS,
    DEFAULT_MEMORY,
    AwsOptions,
    aws_options,
    default_bucket_name,
    environment_stack_name,
    validate_knot_name,
)
from aioknot._exceptions import ConfigurationError


def test_defaults_are_the_dataclass_defaults() -> None:
    options = aws_options()
    assert options == AwsOptions()
    assert options.compute_type == "EC2"
    assert options.vcpus == 1 and options.memory == DEFAULT_MEMORY and options.gpus == 0
    # Three attempts by default: a Spot reclaim or a container that failed to start is retried.
    assert options.retries == 3 and options.timeout is None
    assert options.secrets == {}
    assert options.instance_types == DEFAULT_INSTANCE_TYPES == ("optimal",)
    assert options.max_vcpus == DEFAULT_MAX_VCPUS and options.min_vcpus == 0
    assert options.use_default_vpc is True
    assert options.environment_stack_name == "aioknot-default"
    assert options.creates_environment and not options.is_fargate


def test_a_full_spot_configuration() -> None:
    options = aws_options(
        profile="research",
        region="eu-west-1",
        environment="lab-2",
        bucket="my-knot-data",
        vcpus=4,
        memory=8192,
        gpus=1,
        timeout=3600,
        retries=3,
        env={"OMP_NUM_THREADS": "4"},
        job_role_policies=["arn:aws:iam::aws:policy/AmazonDynamoDBReadOnlyAccess"],
        compute_type="spot",
        instance_types=["g4dn", "p3.2xlarge"],
        min_vcpus=0,
        desired_vcpus=4,
        max_vcpus=64,
        bid_percentage=60,
        image_id="ami-0123456789abcdef0",
        ec2_key_pair="my key",
        volume_size=100,
        use_default_vpc=False,
        tags={"team": "imaging", "cost-center": "42"},
    )
    assert options.compute_type == "SPOT"
    assert options.instance_types == ("g4dn", "p3.2xlarge")
    assert options.job_role_policies == ("arn:aws:iam::aws:policy/AmazonDynamoDBReadOnlyAccess",)
    assert dict(options.env) == {"OMP_NUM_THREADS": "4"}
    assert options.environment_stack_name == "aioknot-lab-2"


def test_bucket_may_carry_a_prefix() -> None:
    assert aws_options(bucket="s3://my-bucket/team/aioknot").bucket == "s3://my-bucket/team/aioknot"
    with pytest.raises(ConfigurationError, match="not a valid S3 bucket name"):
        aws_options(bucket="s3://My_Bucket/x")


def test_fargate_sizes() -> None:
    options = aws_options(compute_type="FARGATE_SPOT", vcpus=0.5, memory=3072)
    assert options.is_fargate and options.vcpus == 0.5
    assert aws_options(compute_type="FARGATE", vcpus=2.0, memory=4096).vcpus == 2


def test_options_are_frozen_hashable_and_do_not_alias_the_callers_dicts() -> None:
    env = {"A": "1"}
    options = aws_options(env=env, tags={"team": "x"})
    env["B"] = "2"
    assert dict(options.env) == {"A": "1"}
    with pytest.raises(TypeError):
        options.env["C"] = "3"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.vcpus = 2  # type: ignore[misc]
    assert hash(options) == hash(aws_options(env={"A": "1"}, tags={"team": "x"}))


def test_an_existing_job_queue() -> None:
    arn = "arn:aws:batch:us-east-1:123456789012:job-queue/shared-queue"
    options = aws_options(job_queue=arn, compute_type="FARGATE", vcpus=1, memory=2048)
    assert options.job_queue == arn and not options.creates_environment


SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:api-token-AbCdEf"
PARAMETER_ARN = "arn:aws:ssm:eu-west-1:123456789012:parameter/team/api-token"


def test_secrets_name_secrets_manager_secrets_and_ssm_parameters() -> None:
    options = aws_options(
        secrets={
            "API_TOKEN": SECRET_ARN,
            "JSON_KEY": f"{SECRET_ARN}:password::",
            "PARAM": PARAMETER_ARN,
        },
        env={"OTHER": "1"},
    )
    assert dict(options.secrets) == {
        "API_TOKEN": SECRET_ARN,
        "JSON_KEY": f"{SECRET_ARN}:password::",
        "PARAM": PARAMETER_ARN,
    }


def test_refusals_never_echo_the_value() -> None:
    for options in (
        {"env": {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-value"}},
        {"secrets": {"TOKEN": "wJalrXUtnFEMI-value"}},
    ):
        with pytest.raises(ConfigurationError) as caught:
            aws_options(**options)
        assert "wJalrXUtnFEMI" not in str(caught.value)


BAD_OPTIONS = [
    ({"vcpu": 2}, "did you mean 'vcpus'"),
    ({"memroy": 2}, "did you mean 'memory'"),
    ({"frobnicate": 1}, "known options:"),
    ({"vcpus": 0}, "vcpus=0 is out of range"),
    ({"vcpus": 1.5}, "vcpus must be a whole number"),
    ({"vcpus": True}, "vcpus must be a whole number"),
    ({"memory": "2GB"}, "memory must be a whole number"),
    ({"memory": 2}, "at least 4 MiB"),
    ({"gpus": -1}, "gpus=-1 is out of range"),
    ({"gpus": 1}, "instance_types"),
    ({"timeout": 30}, "at least 60"),
    ({"retries": 0}, "between 1 and 10"),
    ({"retries": 11}, "between 1 and 10"),
    ({"compute_type": "LAMBDA"}, "EC2, SPOT, FARGATE, FARGATE_SPOT"),
    ({"instance_types": "c5.large"}, "list of strings"),
    ({"instance_types": []}, "1 to 20"),
    ({"instance_types": ["c5.large!"]}, "is not valid"),
    ({"min_vcpus": 8, "max_vcpus": 4}, "more than max_vcpus"),
    ({"desired_vcpus": 500}, "between min_vcpus"),
    ({"vcpus": 8, "max_vcpus": 4}, "raise max_vcpus"),
    ({"bid_percentage": 50}, "compute_type='SPOT'"),
    ({"compute_type": "SPOT", "bid_percentage": 0}, "between 1 and 100"),
    ({"image_id": "ubuntu"}, "ami-"),
    ({"ec2_key_pair": ""}, "ec2_key_pair"),
    ({"volume_size": 8}, "between 30 and 16384 GiB"),
    ({"use_default_vpc": "yes"}, "True or False"),
    ({"tags": {"aws:owner": "x"}}, "reserved"),
    ({"tags": {"aioknot:knot": "x"}}, "reserved"),
    ({"tags": {"team": 1}}, "pair of strings"),
    ({"tags": {"k" * 129: "v"}}, "too long"),
    ({"tags": {"team": "a;b"}}, "characters AWS refuses"),
    ({"tags": ["team"]}, "dict of strings"),
    ({"env": {"AWS_SECRET_ACCESS_KEY": "x"}}, "must not carry AWS credentials"),
    ({"env": {"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/x"}}, "with secrets="),
    ({"env": {"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://x"}}, "must not carry AWS"),
    ({"env": {"AWS_CONTAINER_AUTHORIZATION_TOKEN": "x"}}, "must not carry AWS"),
    ({"env": {"AWS_WEB_IDENTITY_TOKEN_FILE": "/t"}}, "must not carry AWS"),
    ({"env": {"AWS_ROLE_ARN": "arn:aws:iam::1:role/x"}}, "must not carry AWS"),
    ({"env": {"AWS_SESSION_TOKEN": "x"}}, "must not carry AWS"),
    ({"env": {"AWS_SECURITY_TOKEN": "x"}}, "must not carry AWS"),
    ({"env": {"AWS_PROFILE": "x"}}, "must not carry AWS"),
    ({"secrets": {"TOKEN": "plain-value"}}, "by ARN"),
    ({"secrets": {"TOKEN": "arn:aws:s3:::bucket/key"}}, "by ARN"),
    ({"secrets": {"TOKEN": "arn:aws:secretsmanager:us-east-1:12345:secret:x"}}, "by ARN"),
    ({"secrets": {"AWS_SECRET_ACCESS_KEY": SECRET_ARN}}, "must not carry AWS"),
    ({"secrets": {"1X": SECRET_ARN}}, "not a usable variable name"),
    ({"secrets": ["TOKEN"]}, "dict of variable names to ARNs"),
    ({"secrets": {"T": SECRET_ARN}, "env": {"T": "x"}}, "in both env= and secrets="),
    ({"env": {"AWS_BATCH_JOB_ID": "x"}}, "AWS_BATCH"),
    ({"env": {"1X": "x"}}, "not a usable variable name"),
    ({"env": {"X": 1}}, "convert values with str()"),
    ({"job_role_policies": ["AmazonS3FullAccess"]}, "not a managed policy ARN"),
    ({"job_role_policies": "arn:aws:iam::aws:policy/X"}, "list of strings"),
    ({"region": "Mars-1"}, "us-east-1"),
    ({"profile": ""}, "profile"),
    ({"environment": "my_env"}, "letters, digits and hyphens"),
    ({"environment": "1env"}, "starting with a letter"),
    ({"bucket": "My_Bucket"}, "not a valid S3 bucket name"),
    ({"bucket": "192.168.0.1"}, "not a valid S3 bucket name"),
    ({"bucket": "ab"}, "not a valid S3 bucket name"),
    ({"bucket": "a..b"}, "not a valid S3 bucket name"),
    ({"job_queue": "my-queue"}, "job-queue/"),
    (
        {"job_queue": "arn:aws:batch:us-east-1:123456789012:job-queue/q", "max_vcpus": 8},
        "max_vcpus would have no effect",
    ),
    ({"compute_type": "FARGATE", "instance_types": ["c5"]}, "instance_types cannot apply"),
    ({"compute_type": "FARGATE", "gpus": 1}, "Fargate has no GPUs"),
    ({"compute_type": "FARGATE", "vcpus": 3}, "not a Fargate size"),
    ({"compute_type": "FARGATE", "vcpus": 1, "memory": 1024}, "2048 to 8192 MiB"),
]


@pytest.mark.parametrize(("options", "fragment"), BAD_OPTIONS, ids=[str(o) for o, _ in BAD_OPTIONS])
def test_bad_options_raise_configuration_error(options: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        aws_options(**options)
    assert fragment in str(caught.value)
    # Callers who only know about ValueError still catch it.
    assert isinstance(caught.value, ValueError)


def test_default_bucket_name() -> None:
    assert default_bucket_name("123456789012", "us-east-1") == "aioknot-123456789012-us-east-1"
    assert default_bucket_name("123456789012", "ap-southeast-2").endswith("ap-southeast-2")
    with pytest.raises(ConfigurationError):
        default_bucket_name("123456789012", "US_EAST")


def test_environment_stack_name() -> None:
    assert environment_stack_name("default") == "aioknot-default"


@pytest.mark.parametrize("name", ["pi-calc", "a", "Knot2", "k" * 48])
def test_valid_knot_names(name: str) -> None:
    assert validate_knot_name(name) == name


@pytest.mark.parametrize("name", ["", "2pi", "pi_calc", "pi calc", "k" * 49, "-pi", None])
def test_invalid_knot_names(name: object) -> None:
    with pytest.raises(ConfigurationError, match="letters, digits and hyphens"):
        validate_knot_name(name)
