"""The one error boundary: what the libraries underneath raise becomes aioknot's errors.

Every rule that turns a failure of botocore (and the aiohttp under aiobotocore), aiodocker or
the operating system into a `KnotError` is written here, once:

    aws_error / aws_errors   botocore, for Batch, CloudFormation, ECR, STS, EC2, CloudWatch:
                             credentials, region, profile and refusals -> ConfigurationError;
                             anything else -> the caller's ``failure`` class (KnotError,
                             StackError, ImageBuildError)
    store_error              botocore and aiohttp, for the S3 store: refusals ->
                             ConfigurationError; an outage or anything else -> StoreError
    os_error                 OSError, for the local store: a full disk -> StoreError; a file in
                             the way, no permission, a read-only disk -> ConfigurationError
    docker_error             aiodocker, aiohttp and OSError, for the image builder ->
                             ImageBuildError (``engine_unreachable`` when no engine answers)

Each is given what was being done (``doing``, e.g. "submitting job x of run y") and, when the
caller knows them, the run id, the Batch job id and the input index: the message names them
(unless ``doing`` already does) and the error carries ``run_id`` and ``job_id``. The caller
raises the result ``from`` the original, which stays visible as ``__cause__``. Whether a
failure is worth another try is `aioknot._retry`'s business; this module only says what it
means to the user and what to do.

None of botocore, aiohttp or aiodocker is imported here: each is only looked up among the
modules already imported, as an error can only be botocore's if botocore was imported to
raise it. A local knot, whose store uses `os_error`, thus never pays for them (botocore alone
is ~50 ms), and aiodocker may stay uninstalled (it is optional: ``aioknot[images]``).
``AWS_ERRORS``, for the AWS modules' ``except`` clauses, imports botocore when first named.
"""

from __future__ import annotations

import contextlib
import errno
import re
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, TypeVar

from ._exceptions import ConfigurationError, ImageBuildError, KnotError, StoreError
from ._retry import is_transient
from ._worker import DISK_FULL

E = TypeVar("E", bound=KnotError)

if TYPE_CHECKING:
    from typing import TypeGuard

    from botocore.exceptions import BotoCoreError, ClientError
    from botocore.parsers import ResponseParserError

    # What botocore raises for a request that failed. An endpoint that answers a failure in
    # the wrong protocol (moto, for a resource it refuses) surfaces as ResponseParserError,
    # which is no BotoCoreError. At run time, made by ``__getattr__`` below when first named.
    AWS_ERRORS = (ClientError, BotoCoreError, ResponseParserError)
else:

    def __getattr__(name: str) -> object:
        if name == "AWS_ERRORS":  # named by the AWS modules, which import botocore anyway
            value = globals()["AWS_ERRORS"] = _botocore_errors(importing=True)
            return value
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _botocore_errors(*, importing: bool = False) -> tuple[type[Exception], ...]:
    """What botocore raises for a request that failed (`AWS_ERRORS`), as far as botocore is
    imported (none of it when it is not: then no error can be botocore's); all of it, imported
    if need be, when ``importing``."""
    found: tuple[type[Exception], ...] = ()
    if importing or "botocore.exceptions" in sys.modules:
        from botocore.exceptions import BotoCoreError, ClientError

        found += (ClientError, BotoCoreError)
    if importing or "botocore.parsers" in sys.modules:
        from botocore.parsers import ResponseParserError

        found += (ResponseParserError,)
    return found


def _is_client_error(error: BaseException) -> TypeGuard[ClientError]:
    """Whether ``error`` is a service's answer through botocore (it has ``.response``)."""
    if "botocore.exceptions" not in sys.modules:
        return False
    from botocore.exceptions import ClientError

    return isinstance(error, ClientError)


def _is_parser_error(error: BaseException) -> bool:
    """Whether ``error`` is botocore failing to read an endpoint's answer."""
    if "botocore.parsers" not in sys.modules:
        return False
    from botocore.parsers import ResponseParserError

    return isinstance(error, ResponseParserError)


# Codes that say "you may not": the request was understood and refused.
DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "AllAccessDisabled",
        "UnauthorizedOperation",
        "403",  # S3 answers HEAD requests with the bare status
    }
)
# Codes that say "who are you?": the credentials are wrong, expired or stale. (Expired and
# refreshing ones are retried first, as transient: once retries are over they are stale.)
CREDENTIAL_CODES = frozenset(
    {
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidAccessKeyId",
        "InvalidClientTokenId",
        "InvalidToken",
        "RequestExpired",
        "SignatureDoesNotMatch",
        "TokenRefreshRequired",
        "UnrecognizedClientException",
    }
)
MISSING_BUCKET_CODES = frozenset({"NoSuchBucket", "404"})

AWS_ADVICE = (
    "check the credentials, profile and region, and that they may use Batch, ECR, S3 and "
    "CloudWatch Logs"
)
NO_ENGINE_ADVICE = (
    "aioknot builds the worker image with a Docker engine: start Docker, set DOCKER_HOST "
    "to a reachable engine (e.g. unix:///var/run/docker.sock or tcp://host:2375), or pass "
    "image='<uri>' to use a prebuilt worker image"
)
STORE_DIRECTORY_ADVICE = "choose another directory= (or AIOKNOT_HOME)"


# --- what it was about ----------------------------------------------------------------------


def about(
    doing: str, *, run_id: str | None = None, job_id: str | None = None, index: int | None = None
) -> str:
    """``doing``, naming the run, Batch job and input it was about, unless it names them."""
    named = []
    if run_id is not None and run_id not in doing:
        named.append(f"run {run_id}")
    if job_id is not None and job_id not in doing:
        named.append(f"job {job_id}")
    if index is not None and not re.search(rf"\binputs? {index}\b", doing):
        named.append(f"input {index}")
    return f"{doing} ({', '.join(named)})" if named else doing


def _attach(error: E, run_id: str | None, job_id: str | None) -> E:
    if run_id is not None:
        error.run_id = run_id
    if job_id is not None:
        error.job_id = job_id
    return error


# --- botocore's answers ---------------------------------------------------------------------


def error_code(error: BaseException) -> str:
    """The service's error code (``NoSuchKey``, ``ThrottlingException``, ``404``), or ""."""
    if not _is_client_error(error):
        return ""
    return str(error.response.get("Error", {}).get("Code", ""))


def error_message(error: BaseException) -> str:
    """The service's own words for a ClientError, else the error's."""
    if _is_client_error(error):
        return str(error.response.get("Error", {}).get("Message", "")) or str(error)
    return str(error)


def http_status(error: BaseException) -> int | None:
    if not _is_client_error(error):
        return None
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


def error_summary(error: BaseException) -> str:
    """A short account of a botocore (or connection) error for a message: ``HTTP 503
    ServiceUnavailable: Please reduce your request rate.``, or the error's type and words."""
    if _is_client_error(error):
        status = http_status(error)
        head = f"HTTP {status} {error_code(error) or '?'}" if status else error_code(error)
        message = str(error.response.get("Error", {}).get("Message", ""))
        return f"{head}: {message}" if message else head
    if _is_parser_error(error):
        # The endpoint's own message, when the unparsable body holds one.
        found = re.search(r'"message": "([^"]*)"', str(error))
        if found:
            return found.group(1)
    return f"{type(error).__name__}: {error}"


def _setup_error(error: BaseException, doing: str) -> ConfigurationError | None:
    """The credentials, region or profile problems that no request can get past."""
    if "botocore.exceptions" not in sys.modules:
        return None  # not botocore's: then it is none of these
    from botocore.exceptions import NoCredentialsError, NoRegionError, ProfileNotFound

    if isinstance(error, NoCredentialsError):
        return ConfigurationError(
            f"no AWS credentials were found ({doing}): set AWS_PROFILE (or pass profile=), or "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or sign in (`aws sso login`), or "
            "run where an IAM role applies"
        )
    if isinstance(error, NoRegionError):
        return ConfigurationError(
            f"no AWS region is set ({doing}): pass region='us-east-1' (say), or set AWS_REGION"
        )
    if isinstance(error, ProfileNotFound):
        profile = error.kwargs.get("profile")
        return ConfigurationError(
            f"the AWS profile {profile!r} is not configured ({doing}): check the name, or run "
            "`aws configure --profile NAME` (or pass profile=None for the default chain)"
        )
    return None


def aws_error(
    error: BaseException,
    doing: str,
    failure: type[KnotError] = KnotError,
    *,
    advice: str | None = None,
    run_id: str | None = None,
    job_id: str | None = None,
    index: int | None = None,
) -> KnotError:
    """Our error for a botocore error raised while ``doing`` (e.g. "submitting job x").

    Credentials, region, profile and refusals are ``ConfigurationError`` (the user must change
    something before anything can work); anything else is ``failure``. ``advice`` says what
    to do instead of the general word on credentials (e.g. the permissions a call needs).
    An error of ours passes through untouched.
    """
    if isinstance(error, KnotError):
        return error
    doing = about(doing, run_id=run_id, job_id=job_id, index=index)
    translated: KnotError | None = _setup_error(error, doing)
    if translated is None:
        code = error_code(error)
        if code in DENIED_CODES or code in CREDENTIAL_CODES:
            translated = ConfigurationError(
                f"AWS refused {doing} ({code}: {error_message(error)}): {advice or AWS_ADVICE}"
            )
        else:
            summary = error_summary(error)
            if _is_client_error(error):
                summary = f"{code}: {error_message(error)}"
            tail = f". {_sentence(advice)}" if advice else ""
            translated = failure(f"{doing} failed: {summary}{tail}")
    return _attach(translated, run_id, job_id)


@contextlib.contextmanager
def aws_errors(
    doing: str,
    failure: type[KnotError] = KnotError,
    *,
    advice: str | None = None,
    run_id: str | None = None,
    job_id: str | None = None,
) -> Iterator[None]:
    """Translate the botocore errors raised inside the block (`aws_error`); ours pass."""
    try:
        yield
    except _botocore_errors() as error:  # evaluated only when the block raised
        raise aws_error(
            error, doing, failure, advice=advice, run_id=run_id, job_id=job_id
        ) from error


def store_error(
    error: BaseException,
    doing: str,
    *,
    bucket: str,
    url: str,
    endpoint: str | None = None,
    outage_seconds: float | None = None,
    run_id: str | None = None,
    index: int | None = None,
) -> KnotError:
    """Our error for a botocore or aiohttp error of the S3 store's, raised while ``doing``
    (``GET s3://bucket/key``, say) after the store's retries, which lasted ``outage_seconds``.

    ``endpoint`` is named in an outage's message (without any password in it).
    """
    if isinstance(error, KnotError):
        return error
    doing = about(doing, run_id=run_id, index=index)
    translated: KnotError | None = _setup_error(error, doing)
    code = error_code(error)
    if translated is not None:
        pass
    elif code in MISSING_BUCKET_CODES and doing.startswith("bucket"):
        translated = ConfigurationError(
            f"bucket {bucket!r} does not exist: create it, or pass another bucket="
        )
    elif code in DENIED_CODES:
        translated = ConfigurationError(
            f"S3 denied {doing} ({code}): check that your credentials (profile, role or keys) "
            f"may read, write, list and delete under {url}, that the bucket's policy allows "
            f"it, and that bucket {bucket!r} is yours"
        )
    elif code in CREDENTIAL_CODES:
        translated = ConfigurationError(
            f"S3 refused the credentials for {doing} ({code}): they are expired or wrong; "
            "refresh them (e.g. `aws sso login`) or check AWS_PROFILE / profile="
        )
    elif is_transient(error):
        at = f" at {redact(endpoint)}" if endpoint else ""
        lasted = f" for {outage_seconds:g} s" if outage_seconds is not None else ""
        translated = StoreError(
            f"S3{at} kept failing {doing}{lasted} (last: {error_summary(error)}): the store "
            "is unavailable; check the endpoint, your network and the service's health, then "
            "try again"
        )
    else:
        translated = StoreError(
            f"S3 refused {doing}: {error_summary(error)}; check the bucket and its settings "
            f"under {url}, or pass another bucket="
        )
    return _attach(translated, run_id, None)


# --- the operating system -------------------------------------------------------------------


def os_error(
    error: OSError,
    doing: str,
    *,
    root: str,
    run_id: str | None = None,
    index: int | None = None,
) -> KnotError:
    """Our error for an OSError of the local store in ``root``, raised while ``doing`` (e.g.
    "writing run/inputs/000000000"): says what was wrong and what to do."""
    doing = about(doing, run_id=run_id, index=index)
    where = error.filename or root
    translated: KnotError
    if error.errno in DISK_FULL:
        why = "no space left on device" if error.errno == errno.ENOSPC else "disk quota exceeded"
        translated = StoreError(
            f"{why} for the store in {root} ({doing}): free space on that disk, or point the "
            "store at a larger one (directory= or AIOKNOT_HOME)"
        )
    elif isinstance(error, (NotADirectoryError, FileExistsError)):
        translated = ConfigurationError(
            f"the store in {root} cannot be used ({doing}): {where} is a file where a "
            f"directory should be; move that file away, or {STORE_DIRECTORY_ADVICE}"
        )
    elif isinstance(error, IsADirectoryError):
        translated = ConfigurationError(
            f"the store in {root} cannot be used ({doing}): {where} is a directory where a "
            f"file should be; move it away, or {STORE_DIRECTORY_ADVICE}"
        )
    elif isinstance(error, PermissionError) or error.errno == errno.EROFS:
        translated = ConfigurationError(
            f"the store in {root} cannot be used ({doing}): {error.strerror} on {where}; make "
            f"it writable by this user, or {STORE_DIRECTORY_ADVICE}"
        )
    else:
        translated = StoreError(
            f"the store in {root} failed {doing}: {error}; check that directory, or "
            f"{STORE_DIRECTORY_ADVICE}"
        )
    return _attach(translated, run_id, None)


# --- the Docker engine and registries -------------------------------------------------------


# user:password@ in a URL (with or without its scheme), up to the host.
_URL_CREDENTIALS = re.compile(r"(^|[/\s'\"(])([^/@:\s'\"()]+):([^/@\s'\"]*)@")


def redact(text: str, *secrets: str | None) -> str:
    """``text`` without the passwords in it: any ``user:password@`` of a URL, and each of
    ``secrets`` (a registry password, a token) wherever it appears. Every message that may
    quote a registry URL, an engine's answer or a login goes through here."""
    text = _URL_CREDENTIALS.sub(lambda m: f"{m.group(1)}{m.group(2)}:***@", text)
    for secret in secrets:
        if secret and len(secret) >= 4:  # a one-letter "password" would blank the message
            text = text.replace(secret, "***")
    return text


def _docker_error(error: BaseException) -> bool:
    aiodocker = sys.modules.get("aiodocker")
    return aiodocker is not None and isinstance(error, aiodocker.DockerError)


def _cannot_connect(error: BaseException) -> bool:
    """Whether ``error`` says the engine never answered (rather than failed on the way)."""
    if _docker_error(error):
        return getattr(error, "status", None) == 900  # aiodocker's "cannot connect"
    if isinstance(error, (FileNotFoundError, ConnectionRefusedError)):
        return True
    if "aiohttp" not in sys.modules:
        return False  # then the error is not aiohttp's
    import aiohttp

    return isinstance(error, aiohttp.ClientConnectorError)


def engine_unreachable(engine: str, reason: object) -> ImageBuildError:
    """No Docker engine answers at ``engine`` (as the user configured it), for ``reason``."""
    return ImageBuildError(
        f"no Docker engine is reachable at {engine} ({reason or 'no socket found'}). "
        f"{NO_ENGINE_ADVICE}"
    )


def docker_error(
    error: BaseException,
    doing: str,
    *,
    engine: str,
    secrets: Iterable[str | None] = (),
    advice: str | None = None,
    details: str | None = None,
    tries: int = 1,
) -> KnotError:
    """Our error for an aiodocker, aiohttp or OSError raised while ``doing`` (e.g. "pushing
    x") with the engine at ``engine``: an `ImageBuildError` that says what to do.

    ``secrets`` (a registry password) never appear in the message; ``advice`` follows the
    reason; ``details`` (a build log's tail) follow on lines of their own; ``tries`` > 1 says
    that the failure was tried that many times in all before giving up.
    """
    if isinstance(error, KnotError):
        return error
    hidden = tuple(secrets)
    # aiodocker's own words (the engine's answer), else the error's type and words.
    words = redact(str(getattr(error, "message", "") or "") or repr(error), *hidden)
    if tries > 1:
        text = f"{doing} failed {tries} times; the last error: {words}"
    elif _cannot_connect(error):
        return engine_unreachable(engine, words)
    elif isinstance(error, TimeoutError):
        text = f"the Docker engine at {engine} did not answer in time ({doing})"
        advice = NO_ENGINE_ADVICE
    elif _docker_error(error):
        text = f"{doing} failed: {words}"
    else:  # aiohttp or the socket: the engine went away in the middle of it
        text = f"the Docker engine at {engine} dropped {doing}: {words}"
    if advice:
        text += f". {_sentence(advice)}"
    return ImageBuildError(f"{text}\n{details}" if details else text)


def registry_error(
    error: BaseException, registry_url: str, *, secrets: Iterable[str | None] = (), advice: str
) -> ImageBuildError:
    """Our error for an aiohttp or OSError raised while asking the registry at
    ``registry_url`` (its HTTP API, not through the engine)."""
    words = redact(str(error) or repr(error), *secrets)
    return ImageBuildError(f"the registry at {registry_url} is unreachable ({words}); {advice}")


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]
