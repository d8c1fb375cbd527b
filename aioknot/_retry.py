"""Transient failures, told apart from real ones, and retried on the caller's clock.

botocore retries a few times on its own; that covers a blip, not a throttling burst, a
minute of 503s or a credential being refreshed. Every store and control-plane call a run
depends on goes through `retry_transient`, which keeps retrying *transient* failures
(throttling, 5xx, connection errors, expired or refreshing credentials) with jittered backoff
until the caller's outage window (or number of attempts) is spent, then raises the last error
as it is, for the one error boundary (`aioknot._errors`) to translate. Anything else is raised
at once: retrying a wrong bucket name or a refused permission only delays the message the user
needs. `backoff_delays` is the one sequence of growing pauses, for retries (jittered) and for
polls that slow down while nothing happens (plain).

The worker has a retry loop of its own (`aioknot._worker.retry_transient`): it is synchronous
and must stay self-contained, but it shares the codes below.
"""

from __future__ import annotations

import builtins
import math
import random
import re
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import anyio

from . import _worker

T = TypeVar("T")

# The error codes that say "wait" and "not now" (rather than "no"), and the statuses: written
# once, in the worker (which must stay self-contained), for the client and the workers alike.
THROTTLING_CODES = _worker.THROTTLING_CODES
TRANSIENT_CODES = _worker.TRANSIENT_CODES
TRANSIENT_STATUS = _worker.TRANSIENT_STATUS
# What a Docker engine says when the network or a registry hiccuped (a push, most often).
# Authentication and authorization failures are not among them: retrying cannot fix those.
TRANSIENT_ENGINE_MESSAGE = re.compile(
    r"timeout|timed out|reset by peer|connection refused|broken pipe|\bEOF\b|"
    r"\b50[0234]\b|\b429\b|too ?many ?requests|temporar|unavailable|unexpected end",
    re.IGNORECASE,
)


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` (botocore, aiodocker, aiohttp or OS level) may well not happen next
    time."""
    # Imported here: the worker-free parts of the library need not pay for botocore.
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        CredentialRetrievalError,
        HTTPClientError,
        IncompleteReadError,
        ResponseStreamingError,
    )

    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return str(details.get("Code", "")) in TRANSIENT_CODES or status in TRANSIENT_STATUS
    if isinstance(
        error,
        (
            ConnectionError,  # botocore's: endpoint unreachable, closed, read/connect timeouts
            HTTPClientError,
            IncompleteReadError,
            ResponseStreamingError,
            CredentialRetrievalError,
        ),
    ):
        return True
    # aiodocker is optional: an error can only be its own if it was imported to raise it.
    aiodocker = sys.modules.get("aiodocker")
    if aiodocker is not None and isinstance(error, aiodocker.DockerError):
        # 900 is aiodocker's "cannot connect"; a stream error (status 0) says it in words.
        status = int(getattr(error, "status", 0) or 0)
        message = str(getattr(error, "message", "") or "")
        return status >= 500 or bool(TRANSIENT_ENGINE_MESSAGE.search(message))
    import aiohttp  # aiobotocore's dependency, so always there

    if isinstance(error, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)):
        return True
    # The builtin (reset, refused, aborted), not botocore's of the same name.
    return isinstance(error, (builtins.ConnectionError, TimeoutError))


def is_throttling(error: BaseException) -> bool:
    """Whether ``error`` is AWS refusing a request for now (so it was not carried out)."""
    from botocore.exceptions import ClientError

    return (
        isinstance(error, ClientError)
        and str(error.response.get("Error", {}).get("Code", "")) in THROTTLING_CODES
    )


def backoff_delays(
    first: float = 0.2, longest: float = 5.0, factor: float = 2.0, *, jitter: bool = True
) -> Iterator[float]:
    """Pauses that grow by ``factor`` up to ``longest``; with ``jitter`` (for retries) each is
    drawn from 50-100% of its size, so that many clients (or many children) that failed
    together do not retry together. Without it (a poll that slows down while nothing
    happens), the pauses are exactly ``first``, ``first * factor``, ... ``longest``."""
    delay = first
    while True:
        yield random.uniform(delay / 2, delay) if jitter else delay
        delay = min(delay * factor, longest)


async def retry_transient(
    call: Callable[[], Awaitable[T]],
    *,
    give_up_after: float = math.inf,
    attempts: int | None = None,
    first: float = 0.2,
    longest: float = 5.0,
    transient: Callable[[Exception], bool] = is_transient,
    on_retry: Callable[[Exception], None] | None = None,
) -> T:
    """``await call()``, retried while it fails ``transient``-ly, for at most
    ``give_up_after`` seconds since its first failure and at most ``attempts`` calls in all
    (if given); then the last error is raised as it is. ``on_retry`` hears of each failure
    that will be retried."""
    failing_since: float | None = None
    for attempt, delay in enumerate(backoff_delays(first, longest), start=1):
        try:
            return await call()
        except Exception as error:
            if not transient(error):
                raise
            now = anyio.current_time()
            if failing_since is None:
                failing_since = now
            if now - failing_since + delay > give_up_after:
                raise
            if attempts is not None and attempt >= attempts:
                raise
            if on_retry is not None:
                on_retry(error)
        await anyio.sleep(delay)
    raise AssertionError("unreachable: backoff_delays never ends")
