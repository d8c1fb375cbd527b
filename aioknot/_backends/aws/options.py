"""The options of ``backend="aws"``: one frozen `AwsOptions`, validated before any AWS call.

`aws_options(**options)` is the only way in: it checks names, types, ranges and combinations
(e.g. Fargate's vCPU/memory pairs) and raises `ConfigurationError` saying what was wrong and
what to do, so that a typo never costs a CloudFormation round trip or a stuck job.
Credentials, region and profile follow the standard AWS chain; endpoints come from
``AWS_ENDPOINT_URL[_<SERVICE>]``, which botocore reads by itself. ``env=`` never carries AWS
credentials (jobs get the knot's job role); API tokens go in ``secrets=`` as Secrets Manager
or SSM parameter ARNs, which Batch resolves when the container starts.
"""

from __future__ import annotations

import re
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Literal, cast

from ..._exceptions import ConfigurationError
from ..._names import check_bucket_name, parse_bucket, validate_knot_name

__all__ = [
    "COMPUTE_TYPES",
    "DEFAULT_COMPUTE_TYPE",
    "DEFAULT_ENVIRONMENT",
    "DEFAULT_GPUS",
    "DEFAULT_INSTANCE_TYPES",
    "DEFAULT_MAX_VCPUS",
    "DEFAULT_MEMORY",
    "DEFAULT_MIN_VCPUS",
    "DEFAULT_RETRIES",
    "DEFAULT_USE_DEFAULT_VPC",
    "DEFAULT_VCPUS",
    "OPTION_NAMES",
    "AwsOptions",
    "ComputeType",
    "aws_options",
    "default_bucket_name",
    "environment_stack_name",
    "validate_knot_name",
]

ComputeType = Literal["EC2", "SPOT", "FARGATE", "FARGATE_SPOT"]
COMPUTE_TYPES: tuple[ComputeType, ...] = ("EC2", "SPOT", "FARGATE", "FARGATE_SPOT")

DEFAULT_ENVIRONMENT = "default"
DEFAULT_VCPUS = 1
DEFAULT_MEMORY = 2048  # MiB; also a valid Fargate size for 1 vCPU, so the defaults fit both
DEFAULT_GPUS = 0
# Attempts per child on Batch: a Spot reclaim or a container that failed to start gets two
# more; a function's own exception is a result, never retried (see jobs.RETRY_RULES).
DEFAULT_RETRIES = 3
DEFAULT_COMPUTE_TYPE: ComputeType = "EC2"
DEFAULT_INSTANCE_TYPES: tuple[str, ...] = ("optimal",)
DEFAULT_MIN_VCPUS = 0  # scale to zero: an idle environment costs nothing
DEFAULT_MAX_VCPUS = 256
DEFAULT_USE_DEFAULT_VPC = True

ENVIRONMENT_STACK_PREFIX = "aioknot-"
# Our own tag keys; users may not set them, or clobber() could not tell what is ours.
RESERVED_TAG_PREFIX = "aioknot:"

# Batch's Fargate sizes: vCPUs -> allowed memory in MiB.
FARGATE_MEMORY: dict[float, range] = {
    0.25: range(512, 2048 + 1, 512),
    0.5: range(1024, 4096 + 1, 1024),
    1: range(2048, 8192 + 1, 1024),
    2: range(4096, 16384 + 1, 1024),
    4: range(8192, 30720 + 1, 1024),
    8: range(16384, 61440 + 1, 4096),
    16: range(32768, 122880 + 1, 8192),
}
# Credentials would end up readable in the job definition (and would override the job role);
# the container credential variables would point the SDK at another role's credentials.
CREDENTIAL_VARIABLES = frozenset(
    {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_CREDENTIAL_EXPIRATION",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_ROLE_SESSION_NAME",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_CONFIG_FILE",
    }
)
# aioknot's own cap on secrets= (Batch takes more): it keeps the execution role's policy,
# which names each ARN, well under IAM's size limit.
MAX_SECRETS = 100

_ENVIRONMENT = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,31}$")
_PROFILE = re.compile(r"^[\w.@+:/-]{1,64}$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$")
_JOB_QUEUE_ARN = re.compile(
    r"^arn:aws[a-z-]*:batch:[a-z0-9-]+:[0-9]{12}:job-queue/[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"
)
_POLICY_ARN = re.compile(r"^arn:aws[a-z-]*:iam::(aws|[0-9]{12}):policy/[\w+=,.@/-]{1,512}$")
_INSTANCE_TYPE = re.compile(r"^(optimal|[a-z][a-z0-9-]*(\.[a-z0-9]+)?)$")
_IMAGE_ID = re.compile(r"^ami-([0-9a-f]{8}|[0-9a-f]{17})$")
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# What secrets= may name: a Secrets Manager secret (optionally with a JSON key, version stage
# and version id after it, as Batch accepts) or an SSM parameter, by full ARN.
_SECRET_ARN = re.compile(
    r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[A-Za-z0-9/_+=.@-]+"
    r"(:[^:]*:[^:]*:[^:]*)?$"
)
_PARAMETER_ARN = re.compile(r"^arn:aws[a-z-]*:ssm:[a-z0-9-]+:[0-9]{12}:parameter/[A-Za-z0-9/_.-]+$")
_TAG_TEXT = re.compile(r"^[\w\s.:/=+\-@]*$")


@dataclass(frozen=True)
class AwsOptions:
    """Everything ``backend="aws"`` may be told, already validated. Build with `aws_options`."""

    profile: str | None = None
    region: str | None = None
    environment: str = DEFAULT_ENVIRONMENT
    bucket: str | None = None
    job_queue: str | None = None
    vcpus: float = DEFAULT_VCPUS
    memory: int = DEFAULT_MEMORY
    gpus: int = DEFAULT_GPUS
    timeout: int | None = None
    retries: int = DEFAULT_RETRIES
    env: Mapping[str, str] = field(default_factory=lambda: types.MappingProxyType({}), hash=False)
    # Variable name -> Secrets Manager secret or SSM parameter ARN, resolved by Batch at start.
    secrets: Mapping[str, str] = field(
        default_factory=lambda: types.MappingProxyType({}), hash=False
    )
    job_role_policies: tuple[str, ...] = ()
    compute_type: ComputeType = DEFAULT_COMPUTE_TYPE
    instance_types: tuple[str, ...] = DEFAULT_INSTANCE_TYPES
    min_vcpus: int = DEFAULT_MIN_VCPUS
    desired_vcpus: int | None = None
    max_vcpus: int = DEFAULT_MAX_VCPUS
    bid_percentage: int | None = None
    image_id: str | None = None
    ec2_key_pair: str | None = None
    volume_size: int | None = None
    use_default_vpc: bool = DEFAULT_USE_DEFAULT_VPC
    tags: Mapping[str, str] = field(default_factory=lambda: types.MappingProxyType({}), hash=False)

    @property
    def is_fargate(self) -> bool:
        return self.compute_type in ("FARGATE", "FARGATE_SPOT")

    @property
    def creates_environment(self) -> bool:
        """False when the user named an existing job queue: no environment stack then."""
        return self.job_queue is None

    @property
    def environment_stack_name(self) -> str:
        return environment_stack_name(self.environment)


OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(AwsOptions))
# Options that shape the compute environment; meaningless with an existing job queue.
ENVIRONMENT_OPTIONS = frozenset(
    {
        "environment",
        "instance_types",
        "min_vcpus",
        "desired_vcpus",
        "max_vcpus",
        "bid_percentage",
        "image_id",
        "ec2_key_pair",
        "volume_size",
        "use_default_vpc",
    }
)
# Options that only exist for EC2 instances; Fargate manages its own machines.
INSTANCE_OPTIONS = frozenset(
    {
        "instance_types",
        "min_vcpus",
        "desired_vcpus",
        "bid_percentage",
        "image_id",
        "ec2_key_pair",
        "volume_size",
    }
)


def environment_stack_name(environment: str) -> str:
    """The CloudFormation stack shared by every knot of one environment."""
    return f"{ENVIRONMENT_STACK_PREFIX}{environment}"


def default_bucket_name(account: str, region: str) -> str:
    """``aioknot-<account>-<region>``: one bucket per account and region, like cloudknot's."""
    return check_bucket_name(f"aioknot-{account}-{region}", "the default bucket")


def aws_options(**options: object) -> AwsOptions:
    """Validate ``options`` (the keyword arguments of a knot) into `AwsOptions`.

    Raises `ConfigurationError` for an unknown name (with a suggestion), a wrong type, a value
    out of range, or options that contradict each other.
    """
    _check_known(options)
    compute_type = _compute_type(options.get("compute_type", DEFAULT_COMPUTE_TYPE))
    fargate = compute_type in ("FARGATE", "FARGATE_SPOT")
    _check_combinations(options, compute_type)

    vcpus = _vcpus(options.get("vcpus", DEFAULT_VCPUS), fargate)
    memory = _int(options.get("memory", DEFAULT_MEMORY), "memory", minimum=4, unit="MiB")
    if fargate:
        _check_fargate_size(vcpus, memory)
    gpus = _int(options.get("gpus", DEFAULT_GPUS), "gpus", minimum=0)
    if gpus and "instance_types" not in options:
        raise ConfigurationError(
            f"gpus={gpus} needs GPU instances, which instance_types=['optimal'] never starts: "
            "pass instance_types, e.g. instance_types=['g4dn', 'p3']"
        )
    min_vcpus = _int(options.get("min_vcpus", DEFAULT_MIN_VCPUS), "min_vcpus", minimum=0)
    max_vcpus = _int(options.get("max_vcpus", DEFAULT_MAX_VCPUS), "max_vcpus", minimum=1)
    desired_vcpus = _optional_int(options.get("desired_vcpus"), "desired_vcpus", minimum=0)
    _check_vcpu_range(vcpus, min_vcpus, desired_vcpus, max_vcpus)
    image_id = _optional_str(
        options.get("image_id"), "image_id", _IMAGE_ID, "ami-0123456789abcdef0"
    )

    return AwsOptions(
        profile=_optional_str(options.get("profile"), "profile", _PROFILE, "my-profile"),
        region=_optional_str(options.get("region"), "region", _REGION, "us-east-1"),
        environment=_environment(options.get("environment", DEFAULT_ENVIRONMENT)),
        bucket=_bucket(options.get("bucket")),
        job_queue=_optional_str(
            options.get("job_queue"),
            "job_queue",
            _JOB_QUEUE_ARN,
            "arn:aws:batch:us-east-1:123456789012:job-queue/my-queue",
        ),
        vcpus=vcpus,
        memory=memory,
        gpus=gpus,
        timeout=_batch_timeout(options.get("timeout")),
        retries=_int(options.get("retries", DEFAULT_RETRIES), "retries", minimum=1, maximum=10),
        env=_env(options.get("env", {})),
        secrets=_secrets(options.get("secrets", {}), options.get("env", {})),
        job_role_policies=_policies(options.get("job_role_policies", ())),
        compute_type=compute_type,
        instance_types=_instance_types(options.get("instance_types", DEFAULT_INSTANCE_TYPES)),
        min_vcpus=min_vcpus,
        desired_vcpus=desired_vcpus,
        max_vcpus=max_vcpus,
        bid_percentage=_optional_int(
            options.get("bid_percentage"), "bid_percentage", minimum=1, maximum=100
        ),
        image_id=image_id,
        ec2_key_pair=_optional_str(
            options.get("ec2_key_pair"), "ec2_key_pair", re.compile(r"^[ -~]{1,255}$"), "my-key"
        ),
        volume_size=_optional_int(
            options.get("volume_size"),
            "volume_size",
            # The ECS-optimised AMIs Batch picks have a 30 GiB root snapshot.
            minimum=1 if image_id else 30,
            maximum=16384,
            unit="GiB",
        ),
        use_default_vpc=_bool(
            options.get("use_default_vpc", DEFAULT_USE_DEFAULT_VPC), "use_default_vpc"
        ),
        tags=_tags(options.get("tags", {})),
    )


# --- combinations -------------------------------------------------------------------------


def _check_known(options: Mapping[str, object]) -> None:
    for name in options:
        if name not in OPTION_NAMES:
            import difflib  # only for the hint: a knot that checks its options pays nothing

            close = difflib.get_close_matches(name, OPTION_NAMES, n=1)
            hint = (
                f"did you mean {close[0]!r}?"
                if close
                else f"known options: {', '.join(OPTION_NAMES)}"
            )
            raise ConfigurationError(f"unknown option {name!r} for backend='aws': {hint}")


def _check_combinations(options: Mapping[str, object], compute_type: ComputeType) -> None:
    if options.get("job_queue") is not None:
        ignored = sorted(ENVIRONMENT_OPTIONS & options.keys())
        if ignored:
            raise ConfigurationError(
                f"job_queue names an existing queue, so aioknot creates no compute environment "
                f"and {', '.join(ignored)} would have no effect: drop them, or drop job_queue"
            )
    if compute_type in ("FARGATE", "FARGATE_SPOT"):
        ignored = sorted(INSTANCE_OPTIONS & options.keys())
        if ignored:
            raise ConfigurationError(
                f"compute_type={compute_type!r} runs on Fargate, which has no instances to "
                f"choose, so {', '.join(ignored)} cannot apply: drop them, or use "
                "compute_type='EC2' or 'SPOT'"
            )
        if options.get("gpus"):
            raise ConfigurationError(
                "Fargate has no GPUs: use compute_type='EC2' or 'SPOT' with GPU instance_types"
            )
    if options.get("bid_percentage") is not None and compute_type != "SPOT":
        raise ConfigurationError(
            f"bid_percentage only applies to spot instances: pass compute_type='SPOT' "
            f"(it is {compute_type!r}) or drop bid_percentage"
        )


def _check_fargate_size(vcpus: float, memory: int) -> None:
    allowed = FARGATE_MEMORY[vcpus]
    if memory not in allowed:
        raise ConfigurationError(
            f"Fargate cannot give {vcpus:g} vCPU {memory} MiB: with vcpus={vcpus:g}, memory must "
            f"be {allowed.start} to {allowed.stop - 1} MiB in steps of {allowed.step}"
        )


def _check_vcpu_range(vcpus: float, minimum: int, desired: int | None, maximum: int) -> None:
    if minimum > maximum:
        raise ConfigurationError(f"min_vcpus={minimum} is more than max_vcpus={maximum}")
    if desired is not None and not minimum <= desired <= maximum:
        raise ConfigurationError(
            f"desired_vcpus={desired} must be between min_vcpus={minimum} and max_vcpus={maximum}"
        )
    if vcpus > maximum:
        # Batch would leave every job RUNNABLE forever rather than fail it.
        raise ConfigurationError(
            f"a job needs vcpus={vcpus:g} but the environment may only have max_vcpus={maximum}: "
            "raise max_vcpus or lower vcpus"
        )


# --- single values ------------------------------------------------------------------------


def _compute_type(value: object) -> ComputeType:
    if isinstance(value, str) and value.upper() in COMPUTE_TYPES:
        return cast(ComputeType, value.upper())
    raise ConfigurationError(
        f"compute_type={value!r} is not one of {', '.join(COMPUTE_TYPES)}, e.g. compute_type='SPOT'"
    )


def _vcpus(value: object, fargate: bool) -> float:
    if fargate:
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and value in FARGATE_MEMORY
        ):
            return int(value) if float(value).is_integer() else float(value)
        sizes = ", ".join(f"{size:g}" for size in FARGATE_MEMORY)
        raise ConfigurationError(f"vcpus={value!r} is not a Fargate size: use one of {sizes}")
    return _int(value, "vcpus", minimum=1)


def _int(
    value: object, name: str, *, minimum: int, maximum: int | None = None, unit: str = ""
) -> int:
    suffix = f" {unit}" if unit else ""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name} must be a whole number{suffix}, not {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bounds = (
            f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        )
        raise ConfigurationError(f"{name}={value} is out of range: it must be {bounds}{suffix}")
    return value


def _batch_timeout(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 60:
        short = isinstance(value, (int, float)) and value < 60
        problem = "too short for AWS Batch" if short else "not a time limit AWS Batch takes"
        raise ConfigurationError(
            f"timeout={value!r} is {problem}, whose limit is whole seconds, at least 60: pass "
            "timeout=60 or more for backend='aws' (locally any positive number of seconds "
            "works)"
        )
    return value


def _optional_int(
    value: object, name: str, *, minimum: int, maximum: int | None = None, unit: str = ""
) -> int | None:
    return None if value is None else _int(value, name, minimum=minimum, maximum=maximum, unit=unit)


def _bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False, not {value!r}")
    return value


def _optional_str(value: object, name: str, pattern: re.Pattern[str], example: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ConfigurationError(
            f"{name}={value!r} is not valid: expected something like {example!r}"
        )
    return value


def _environment(value: object) -> str:
    if not isinstance(value, str) or not _ENVIRONMENT.fullmatch(value):
        raise ConfigurationError(
            f"environment={value!r} is not allowed: use 1 to 32 letters, digits and hyphens, "
            "starting with a letter (it names the CloudFormation stack aioknot-<environment>)"
        )
    return value


def _bucket(value: object) -> str | None:
    """A bucket name, or ``s3://bucket/prefix`` as the knot's common ``bucket=`` takes it."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigurationError(f"bucket must be a bucket name (a string), not {value!r}")
    parse_bucket(value)
    return value


def _strings(value: object, name: str, example: str) -> tuple[str, ...]:
    # A lone string is iterable too; taking it letter by letter would be a silent mistake.
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigurationError(f"{name} must be a list of strings, e.g. {name}={example}")
    items = tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise ConfigurationError(f"{name} must be a list of strings, e.g. {name}={example}")
    return items


def _instance_types(value: object) -> tuple[str, ...]:
    types_ = _strings(value, "instance_types", "['c5.large', 'm5']")
    if not types_ or len(types_) > 20:
        raise ConfigurationError("instance_types must name 1 to 20 instance types or families")
    for item in types_:
        if not _INSTANCE_TYPE.fullmatch(item):
            raise ConfigurationError(
                f"instance type {item!r} is not valid: use 'optimal', a family such as 'c5' or "
                "a type such as 'c5.large'"
            )
    return types_


def _policies(value: object) -> tuple[str, ...]:
    arns = _strings(
        value, "job_role_policies", "['arn:aws:iam::aws:policy/AmazonDynamoDBReadOnlyAccess']"
    )
    if len(arns) > 20:
        raise ConfigurationError("job_role_policies: an IAM role takes at most 20 managed policies")
    for arn in arns:
        if not _POLICY_ARN.fullmatch(arn):
            raise ConfigurationError(
                f"job_role_policies: {arn!r} is not a managed policy ARN, e.g. "
                "'arn:aws:iam::aws:policy/AmazonDynamoDBReadOnlyAccess'"
            )
    return arns


def _string_mapping(value: object, name: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{name} must be a dict of strings to strings, not {value!r}")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise ConfigurationError(
                f"{name}: {key!r}: {item!r} is not a pair of strings; convert values with str()"
            )
    return dict(cast(Mapping[str, str], value))


def _env(value: object) -> Mapping[str, str]:
    variables = _string_mapping(value, "env")
    for key in variables:
        _check_variable_name(key, "env")
    return types.MappingProxyType(variables)


def _check_variable_name(key: str, option: str) -> None:
    if key.upper() in CREDENTIAL_VARIABLES:
        # The value is never echoed: it may be the very credential.
        raise ConfigurationError(
            f"{option} must not carry AWS credentials ({key}): jobs get AWS access from their "
            "job role (add managed policies with job_role_policies=); pass other API tokens "
            "with secrets={'NAME': '<Secrets Manager or SSM parameter ARN>'}, which Batch "
            "reads at start so the value is never stored in the job definition"
        )
    if not _VARIABLE.fullmatch(key) or key.startswith("AWS_BATCH"):
        raise ConfigurationError(
            f"{option}: {key!r} is not a usable variable name: use letters, digits and "
            "underscores, not starting with a digit or AWS_BATCH (reserved by Batch)"
        )


def _secrets(value: object, env: object) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            "secrets must be a dict of variable names to ARNs, e.g. secrets={'API_TOKEN': "
            "'arn:aws:secretsmanager:us-east-1:123456789012:secret:api-token-AbCdEf'}"
        )
    secrets: dict[str, str] = {}
    for key, arn in value.items():
        if not isinstance(key, str):
            raise ConfigurationError(f"secrets: the name {key!r} must be a string")
        _check_variable_name(key, "secrets")
        if not isinstance(arn, str) or not (
            _SECRET_ARN.fullmatch(arn) or _PARAMETER_ARN.fullmatch(arn)
        ):
            # Not echoed: a user who passed the secret itself instead of its ARN would see it.
            raise ConfigurationError(
                f"secrets: {key} must name a Secrets Manager secret or SSM parameter by ARN, "
                "e.g. 'arn:aws:secretsmanager:us-east-1:123456789012:secret:api-token-AbCdEf' "
                "or 'arn:aws:ssm:us-east-1:123456789012:parameter/api-token' (store the value "
                "there; it is not passed in secrets= itself)"
            )
        secrets[key] = arn
    if len(secrets) > MAX_SECRETS:
        raise ConfigurationError(f"secrets: {len(secrets)} are too many; use at most {MAX_SECRETS}")
    both = sorted(set(secrets) & set(env)) if isinstance(env, Mapping) else []
    if both:
        raise ConfigurationError(
            f"{', '.join(both)} is in both env= and secrets=: a variable takes one value"
        )
    return types.MappingProxyType(secrets)


def _tags(value: object) -> Mapping[str, str]:
    tags = _string_mapping(value, "tags")
    if len(tags) > 40:
        # AWS allows 50 per resource; aioknot adds its own.
        raise ConfigurationError(f"tags: {len(tags)} tags are too many; use at most 40")
    for key, item in tags.items():
        if key.lower().startswith(("aws:", RESERVED_TAG_PREFIX)):
            raise ConfigurationError(
                f"tags: the key {key!r} is reserved (aws: and {RESERVED_TAG_PREFIX} prefixes)"
            )
        if not 1 <= len(key) <= 128 or len(item) > 256:
            raise ConfigurationError(
                f"tags: {key!r} is too long: keys take 1 to 128 characters, values up to 256"
            )
        if not _TAG_TEXT.fullmatch(key) or not _TAG_TEXT.fullmatch(item):
            raise ConfigurationError(
                f"tags: {key!r}: {item!r} uses characters AWS refuses: use letters, digits, "
                "spaces and _ . : / = + - @"
            )
    return types.MappingProxyType(tags)
