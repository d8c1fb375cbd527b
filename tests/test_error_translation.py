"""The one error boundary (aioknot._errors): every rule, with real exception objects.

botocore's ClientError is built with the response dicts botocore parses (and, where moto can
answer one, taken from a real request); OSErrors come from real file operations (a tmpfs for
the full and the read-only disk); aiodocker's and aiohttp's from real connections to sockets
nobody listens on. Only what no machine here can produce on demand (an expired token, a disk
quota) is constructed, and says so.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aioboto3
import aiodocker
import aiohttp
import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    ProfileNotFound,
)
from botocore.parsers import ResponseParserError
from helpers.tmpfs import tmpfs

from aioknot import (
    ConfigurationError,
    ImageBuildError,
    KnotError,
    StackError,
    StoreError,
)
from aioknot._errors import (
    about,
    aws_error,
    aws_errors,
    docker_error,
    engine_unreachable,
    error_code,
    error_summary,
    http_status,
    os_error,
    redact,
    registry_error,
    store_error,
)
from aioknot._retry import is_transient

RUN = "20261121T091500-3fa2c1"
JOB = "6a0b1c2d-aaaa-bbbb-cccc-0123456789ab"


def client_error(code: str, message: str = "", status: int = 400, operation: str = "Op") -> Any:
    """A ClientError as botocore raises it: the parsed response and the operation's name."""
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status, "RequestId": "r-1"},
    }
    return ClientError(response, operation)


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released): connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- what it was about ----------------------------------------------------------------------


def test_the_run_job_and_input_are_named_once() -> None:
    assert about("listing", run_id=RUN, job_id=JOB, index=7) == (
        f"listing (run {RUN}, job {JOB}, input 7)"
    )
    # Words that already name them are not repeated.
    assert about(f"describing the jobs of run {RUN}", run_id=RUN) == (
        f"describing the jobs of run {RUN}"
    )
    assert about("reading input 0", index=0) == "reading input 0"
    assert about("reading") == "reading"


def test_the_run_and_job_are_attributes_of_the_error() -> None:
    error = aws_error(client_error("ClientException", "bad"), "submitting", run_id=RUN, job_id=JOB)
    assert (error.run_id, error.job_id) == (RUN, JOB)
    assert f"run {RUN}" in str(error) and f"job {JOB}" in str(error)
    assert KnotError("plain").run_id is None  # nothing said: nothing set


# --- botocore's answers ---------------------------------------------------------------------


def test_codes_statuses_and_summaries_of_a_client_error() -> None:
    error = client_error("ServiceUnavailable", "Please reduce your request rate.", 503)
    assert error_code(error) == "ServiceUnavailable" and http_status(error) == 503
    assert error_summary(error) == "HTTP 503 ServiceUnavailable: Please reduce your request rate."
    assert error_summary(client_error("404", status=404)) == "HTTP 404 404"
    refused = EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    assert error_code(refused) == "" and http_status(refused) is None
    assert error_summary(refused).startswith("EndpointConnectionError: Could not connect")


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (NoCredentialsError(), "no AWS credentials were found (opening the session)"),
        (NoRegionError(), "no AWS region is set (opening the session)"),
        (ProfileNotFound(profile="nobody"), "the AWS profile 'nobody' is not configured"),
    ],
)
def test_credentials_region_and_profile_are_configuration_errors(
    error: Exception, words: str
) -> None:
    for translated in (
        aws_error(error, "opening the session", StackError),
        store_error(error, "opening the session", bucket="b-1", url="s3://b-1"),
    ):
        assert type(translated) is ConfigurationError
        assert words in str(translated)


@pytest.mark.parametrize(
    "code", ["AccessDeniedException", "AccessDenied", "UnauthorizedOperation", "ExpiredToken"]
)
def test_refusals_and_stale_credentials_from_aws_are_configuration_errors(code: str) -> None:
    error = client_error(code, "User: arn:aws:iam::1:user/x is not authorized", 403)
    translated = aws_error(error, "registering job definition aioknot-x", StackError)
    assert type(translated) is ConfigurationError
    assert str(translated).startswith(f"AWS refused registering job definition aioknot-x ({code}")
    assert "check the credentials, profile and region" in str(translated)
    # A caller that knows which permissions the call needs says so instead.
    advised = aws_error(error, "preparing ECR repository 'aioknot'", advice="need ecr:X")
    assert str(advised).endswith(": need ecr:X")


def test_any_other_aws_failure_is_the_callers_failure_class() -> None:
    error = client_error("ValidationError", "Template format error", 400, "CreateStack")
    translated = aws_error(error, "creating stack aioknot-x", StackError)
    assert type(translated) is StackError
    assert str(translated) == (
        "creating stack aioknot-x failed: ValidationError: Template format error"
    )
    advised = aws_error(error, "looking in ECR", ImageBuildError, advice="the credentials need y")
    assert type(advised) is ImageBuildError
    assert str(advised).endswith("Template format error. The credentials need y")
    down = aws_error(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), "listing")
    assert type(down) is KnotError and "Could not connect to the endpoint URL" in str(down)


def test_an_unparsable_answer_gives_the_endpoints_own_message() -> None:
    # What botocore raises when an endpoint answers a failure in the wrong protocol (moto).
    error = ResponseParserError('Unable to parse response: {"message": "no such queue"}')
    translated = aws_error(error, "describing queue q")
    assert str(translated) == "describing queue q failed: no such queue"


def test_our_errors_pass_the_boundary_untouched() -> None:
    ours = StackError("already ours")
    assert aws_error(ours, "x") is ours
    assert store_error(ours, "x", bucket="b-1", url="s3://b-1") is ours
    assert docker_error(ours, "x", engine="e") is ours


def test_aws_errors_translates_inside_the_block_and_lets_the_rest_through() -> None:
    error = client_error("ClientException", "nope")
    with pytest.raises(StackError, match=r"deleting stack s \(run .*\) failed") as caught:
        with aws_errors("deleting stack s", StackError, run_id=RUN):
            raise error
    assert caught.value.__cause__ is error and caught.value.run_id == RUN
    with pytest.raises(ValueError, match="a bug"):  # not botocore's: not ours to translate
        with aws_errors("deleting stack s"):
            raise ValueError("a bug")


# --- the S3 store ---------------------------------------------------------------------------


@pytest.fixture
async def real_s3_errors(aws: Any) -> dict[str, ClientError]:
    """What moto's S3 answers for a missing bucket and key: HEAD says 404, GET NoSuchBucket."""
    errors: dict[str, ClientError] = {}
    async with aioboto3.Session().client("s3", endpoint_url=aws.url) as s3:
        for name, call in (
            ("head", s3.head_bucket(Bucket="no-such-bucket")),
            ("get", s3.get_object(Bucket="no-such-bucket", Key="k")),
        ):
            try:
                await call
            except ClientError as error:
                errors[name] = error
    return errors


async def test_a_missing_bucket_is_a_configuration_error_only_when_opening_it(
    real_s3_errors: dict[str, ClientError],
) -> None:
    head, get = real_s3_errors["head"], real_s3_errors["get"]
    assert (error_code(head), error_code(get)) == ("404", "NoSuchBucket")
    for error in (head, get):
        opening = store_error(error, "bucket access to 'no-such-bucket'", bucket="b", url="s3://b")
        assert type(opening) is ConfigurationError
        assert "bucket 'b' does not exist: create it, or pass another bucket=" in str(opening)
    reading = store_error(get, "GET s3://b/k", bucket="b", url="s3://b", run_id=RUN, index=3)
    assert type(reading) is StoreError
    assert str(reading).startswith(f"S3 refused GET s3://b/k (run {RUN}, input 3): HTTP 404")
    assert reading.run_id == RUN


@pytest.mark.parametrize("code", ["AccessDenied", "403", "AllAccessDisabled"])
def test_s3_denials_name_what_to_check(code: str) -> None:
    error = client_error(code, "Access Denied", 403, "PutObject")
    translated = store_error(error, "PUT s3://b/k/x", bucket="b", url="s3://b/k")
    assert type(translated) is ConfigurationError
    assert f"S3 denied PUT s3://b/k/x ({code})" in str(translated)
    assert "under s3://b/k" in str(translated) and "bucket 'b' is yours" in str(translated)


def test_stale_credentials_for_s3_say_how_to_refresh_them() -> None:
    # Constructed: no machine here hands out a token that expires on demand.
    error = client_error("ExpiredToken", "The provided token has expired.", 400)
    translated = store_error(error, "GET s3://b/k", bucket="b", url="s3://b")
    assert type(translated) is ConfigurationError
    assert "S3 refused the credentials for GET s3://b/k (ExpiredToken)" in str(translated)
    assert "aws sso login" in str(translated)


@pytest.mark.parametrize(
    "error",
    [
        client_error("SlowDown", "Please reduce your request rate.", 503),
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        aiohttp.ServerDisconnectedError(),
    ],
)
def test_an_s3_outage_is_a_store_error_that_says_how_long(error: Exception) -> None:
    translated = store_error(
        error,
        "HEAD s3://b/results/000000007",
        bucket="b",
        url="s3://b",
        endpoint="https://user:hunter22@minio.example:9000",
        outage_seconds=15,
    )
    assert type(translated) is StoreError
    message = str(translated)
    assert message.startswith("S3 at https://user:***@minio.example:9000 kept failing HEAD")
    assert "for 15 s (last: " in message and "the store is unavailable" in message
    assert "hunter22" not in message


def test_any_other_s3_failure_is_a_store_error_naming_the_bucket() -> None:
    error = client_error("InvalidArgument", "Invalid range", 400, "GetObject")
    translated = store_error(error, "GET s3://b/k", bucket="b", url="s3://b/p")
    assert type(translated) is StoreError
    assert str(translated) == (
        "S3 refused GET s3://b/k: HTTP 400 InvalidArgument: Invalid range; check the bucket "
        "and its settings under s3://b/p, or pass another bucket="
    )


def test_redact_hides_url_passwords_and_named_secrets() -> None:
    assert redact("https://user:secret@minio.example:9000/x") == (
        "https://user:***@minio.example:9000/x"
    )
    assert redact("http://127.0.0.1:9000") == "http://127.0.0.1:9000"
    assert redact("token abcd-1234 refused", "abcd-1234", None, "x") == "token *** refused"


# --- the local store ------------------------------------------------------------------------


def os_failure(operation: Any) -> OSError:
    try:
        operation()
    except OSError as error:
        return error
    raise AssertionError("the operation did not fail")


def test_a_file_where_a_directory_should_be(tmp_path: Path) -> None:
    in_the_way = tmp_path / "a-file"
    in_the_way.write_bytes(b"")
    root = str(in_the_way / "store")
    for error in (
        os_failure(lambda: open(in_the_way / "store" / "k", "wb")),  # NotADirectoryError
        os_failure(lambda: os.mkdir(in_the_way)),  # FileExistsError
    ):
        translated = os_error(error, "writing k", root=root, run_id=RUN)
        assert type(translated) is ConfigurationError
        message = str(translated)
        assert f"the store in {root} cannot be used (writing k (run {RUN}))" in message
        assert "is a file where a directory should be" in message
        assert "choose another directory= (or AIOKNOT_HOME)" in message


def test_a_directory_where_a_file_should_be(tmp_path: Path) -> None:
    error = os_failure(lambda: open(tmp_path, "rb"))
    assert isinstance(error, IsADirectoryError)
    translated = os_error(error, "reading k", root=str(tmp_path))
    assert type(translated) is ConfigurationError
    assert "is a directory where a file should be" in str(translated)


@contextlib.contextmanager
def as_nobody() -> Iterator[None]:
    """This process without root's privileges for the block (root may write anything): the
    effective user only, which root takes back at the end."""
    if os.geteuid() != 0:
        yield  # already unprivileged
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


def test_no_permission_is_a_configuration_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    tmp_path.chmod(0o755)  # nobody may reach it, not write in it
    with as_nobody():
        error = os_failure(lambda: open(locked / "k", "wb"))
    assert isinstance(error, PermissionError)
    translated = os_error(error, "writing k", root=str(locked))
    assert type(translated) is ConfigurationError
    assert "Permission denied on" in str(translated) and "make it writable" in str(translated)


def test_a_full_disk_and_a_read_only_one(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "size=64k") as small:
        full = os_failure(lambda: (small / "big").write_bytes(b"x" * 200_000))
    assert full.errno == errno.ENOSPC
    translated = os_error(full, "writing big", root=str(small), index=4)
    assert type(translated) is StoreError
    assert str(translated).startswith(
        f"no space left on device for the store in {small} (writing big (input 4))"
    )
    # Constructed: a quota needs a quota-enabled file system.
    quota = os_error(OSError(errno.EDQUOT, "Disk quota exceeded"), "writing big", root="/s")
    assert type(quota) is StoreError and str(quota).startswith("disk quota exceeded")

    with tmpfs(tmp_path / "read-only", "size=64k,ro") as read_only:
        error = os_failure(lambda: (read_only / "k").write_bytes(b"v"))
    translated = os_error(error, "writing k", root=str(read_only))
    assert type(translated) is ConfigurationError
    assert "Read-only file system" in str(translated)


def test_any_other_os_error_is_a_store_error(tmp_path: Path) -> None:
    error = os_failure(lambda: open(tmp_path / ("x" * 300), "wb"))
    assert error.errno == errno.ENAMETOOLONG
    translated = os_error(error, "writing k", root=str(tmp_path))
    assert type(translated) is StoreError
    assert f"the store in {tmp_path} failed writing k: " in str(translated)


# --- the Docker engine and registries -------------------------------------------------------


async def test_an_engine_nobody_answers_on_says_how_to_get_one(tmp_path: Path) -> None:
    socket_path = f"unix://{tmp_path}/no-docker.sock"
    async with aiodocker.Docker(url=socket_path) as docker:
        with pytest.raises(aiodocker.DockerError) as caught:
            await docker.version()
    assert caught.value.status == 900  # aiodocker's "cannot connect"
    translated = docker_error(caught.value, "asking for its version", engine=socket_path)
    assert type(translated) is ImageBuildError
    message = str(translated)
    assert message.startswith(f"no Docker engine is reachable at {socket_path} (")
    assert "start Docker" in message and "DOCKER_HOST" in message and "image=" in message
    assert str(engine_unreachable("tcp://h:2375", "")).startswith(
        "no Docker engine is reachable at tcp://h:2375 (no socket found)"
    )


async def test_a_refused_connection_is_an_unreachable_engine_or_registry() -> None:
    port = closed_port()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            await session.get(f"http://127.0.0.1:{port}/version")
    error = caught.value
    engine = docker_error(error, "asking for its version", engine=f"tcp://127.0.0.1:{port}")
    assert str(engine).startswith(f"no Docker engine is reachable at tcp://127.0.0.1:{port}")
    registry = registry_error(
        error, f"http://127.0.0.1:{port}", secrets=("pw-1234",), advice="check registry="
    )
    assert type(registry) is ImageBuildError
    assert str(registry).startswith(f"the registry at http://127.0.0.1:{port} is unreachable (")
    assert str(registry).endswith("; check registry=")


def test_an_engines_refusal_names_what_was_done_and_hides_the_password() -> None:
    error = aiodocker.DockerStreamError("unauthorized: login robot:pw-1234 rejected (pw-1234)")
    translated = docker_error(
        error,
        "pushing r/aioknot:t",
        engine="unix:///d.sock",
        secrets=("pw-1234",),
        advice="check the credentials in registry=",
    )
    assert type(translated) is ImageBuildError
    assert str(translated) == (
        "pushing r/aioknot:t failed: unauthorized: login robot:*** rejected (***). "
        "Check the credentials in registry="
    )


def test_a_failed_build_carries_its_log() -> None:
    error = aiodocker.DockerError(
        500, "The command '/bin/sh -c exit 3' returned a non-zero code: 3"
    )
    translated = docker_error(
        error,
        "building the worker image r:t at Step 3/9 : RUN exit 3",
        engine="unix:///d.sock",
        details="last lines of the build log:\n    Step 3/9 : RUN exit 3",
    )
    first, _, rest = str(translated).partition("\n")
    assert first == (
        "building the worker image r:t at Step 3/9 : RUN exit 3 failed: The command "
        "'/bin/sh -c exit 3' returned a non-zero code: 3"
    )
    assert rest == "last lines of the build log:\n    Step 3/9 : RUN exit 3"


def test_retried_dropped_and_silent_engines() -> None:
    retried = docker_error(
        aiodocker.DockerStreamError("i/o timeout"), "pushing r:t", engine="e", tries=4
    )
    assert str(retried) == "pushing r:t failed 4 times; the last error: i/o timeout"
    dropped = docker_error(aiohttp.ServerDisconnectedError(), "building r:t", engine="e")
    assert str(dropped).startswith("the Docker engine at e dropped building r:t: ")
    silent = docker_error(TimeoutError(), "asking for its version", engine="e")
    assert str(silent).startswith(
        "the Docker engine at e did not answer in time (asking for its version). Aioknot builds"
    )


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (aiodocker.DockerStreamError("Put https://r/v2/: net/http: TLS handshake timeout"), True),
        (aiodocker.DockerStreamError("received unexpected HTTP status: 503"), True),
        (aiodocker.DockerError(500, "server error"), True),
        (aiodocker.DockerError(900, "Cannot connect to Docker Engine"), True),
        (aiodocker.DockerStreamError("denied: requested access to the resource is denied"), False),
        (aiodocker.DockerError(404, "no such image"), False),
    ],
)
def test_which_engine_failures_are_worth_another_try(error: Exception, transient: bool) -> None:
    assert is_transient(error) is transient
