"""The one boundary where botocore's errors from Batch, ECR, STS and CloudWatch become ours.

Credential and permission failures become `ConfigurationError` (the user must change something
before anything can work); everything else becomes `KnotError` saying what was being done.
The original error stays attached as ``__cause__`` (``raise ... from``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

from ._exceptions import ConfigurationError, KnotError

CREDENTIAL_ERRORS = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "UnrecognizedClientException",
    }
)
# Batch answers too many requests with these; they are worth waiting out.
THROTTLING_ERRORS = frozenset(
    {"TooManyRequestsException", "ThrottlingException", "Throttling", "RequestLimitExceeded"}
)


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def error_message(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Message", "")) or str(error)


def is_throttling(error: BaseException) -> bool:
    return isinstance(error, ClientError) and error_code(error) in THROTTLING_ERRORS


def translate(error: Exception, doing: str) -> KnotError:
    """Our error for a botocore error raised while ``doing`` (e.g. "submitting job x")."""
    if isinstance(error, NoCredentialsError):
        return ConfigurationError(
            f"no AWS credentials while {doing}: configure them the standard way (environment, "
            "~/.aws/credentials, SSO) or pass profile='...'"
        )
    if isinstance(error, NoRegionError):
        return ConfigurationError(
            f"no AWS region while {doing}: set AWS_REGION or pass region='us-east-1' (say)"
        )
    if isinstance(error, ClientError):
        code = error_code(error)
        if code in CREDENTIAL_ERRORS:
            return ConfigurationError(
                f"AWS refused {doing} ({code}: {error_message(error)}): check the credentials, "
                "profile and region, and that they may use Batch, ECR, S3 and CloudWatch Logs"
            )
        return KnotError(f"{doing} failed: {code}: {error_message(error)}")
    return KnotError(f"{doing} failed: {error}")


@contextlib.contextmanager
def aws_errors(doing: str) -> Iterator[None]:
    """Translate botocore errors raised inside the block; ours pass through untouched."""
    try:
        yield
    except (ClientError, BotoCoreError) as error:
        raise translate(error, doing) from error
