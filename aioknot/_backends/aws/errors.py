"""The one boundary where botocore's errors from Batch, ECR, STS and CloudWatch become ours.

Credential and permission failures become `ConfigurationError` (the user must change something
before anything can work); everything else becomes `KnotError` saying what was being done.
The original error stays attached as ``__cause__`` (``raise ... from``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError
from botocore.parsers import ResponseParserError

from ..._exceptions import ConfigurationError, KnotError

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
# What botocore raises for a request that failed: caught and translated at this boundary.
AWS_ERRORS = (ClientError, BotoCoreError, ResponseParserError)


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def error_message(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Message", "")) or str(error)


def error_summary(error: BaseException) -> str:
    """A short account of a botocore (or connection) error for a message: ``503
    ServiceUnavailable: Please reduce your request rate.``, or the error's own words."""
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        head = f"{status} {error_code(error)}" if status else error_code(error)
        return f"{head}: {error_message(error)}"
    return f"{type(error).__name__}: {error}"


def translate(error: Exception, doing: str, failure: type[KnotError] = KnotError) -> KnotError:
    """Our error for a botocore error raised while ``doing`` (e.g. "submitting job x").

    Credentials and region problems are ``ConfigurationError``; anything else is ``failure``
    (``StackError`` for CloudFormation, say).
    """
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
        return failure(f"{doing} failed: {code}: {error_message(error)}")
    if isinstance(error, ResponseParserError):
        found = re.search(r'"message": "([^"]*)"', str(error))
        if found:
            return failure(f"{doing} failed: {found.group(1)}")
    return failure(f"{doing} failed: {error}")


@contextlib.contextmanager
def aws_errors(doing: str, failure: type[KnotError] = KnotError) -> Iterator[None]:
    """Translate botocore errors raised inside the block; ours pass through untouched."""
    try:
        yield
    # An endpoint that answers a failure in the wrong protocol (moto, for a resource it
    # refuses) surfaces as ResponseParserError, which is no BotoCoreError.
    except AWS_ERRORS as error:
        raise translate(error, doing, failure) from error
