"""Waiting for something to happen, in tests: an event where there is one, else this.

Some things cannot be awaited: another process's end, a file another process writes, a count
kept on the fault proxy's thread, a log that turns up in CloudWatch. For those a test polls,
always with a deadline, and says what did not happen when the deadline passes; a bare
``sleep`` that hopes the thing has happened by then is never used instead.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

T = TypeVar("T")

POLL_SECONDS = 0.05  # often enough not to slow a test, rarely enough not to load the machine


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = POLL_SECONDS,
) -> T:
    """Call ``predicate`` until it returns something true, and return that.

    Raises ``AssertionError`` saying ``what`` did not happen within ``timeout`` seconds: the
    bound is only there so that a test fails instead of hanging, so it is generous.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: did not happen within {timeout:g} s")
        time.sleep(interval)


async def wait_until_async(
    predicate: Callable[[], T | Awaitable[T]],
    *,
    # A deadline of its own rather than anyio.fail_after: failing says what did not happen.
    timeout: float,  # noqa: ASYNC109
    what: str,
    interval: float = POLL_SECONDS,
) -> T:
    """`wait_until` for async tests: polls without blocking the event loop, and takes a
    predicate that is a plain function or a coroutine function."""
    deadline = anyio.current_time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if anyio.current_time() >= deadline:
            raise AssertionError(f"{what}: did not happen within {timeout:g} s")
        await anyio.sleep(interval)


def poll(
    predicate: Callable[[], object], *, timeout: float, interval: float = POLL_SECONDS
) -> bool:
    """Whether ``predicate`` became true within ``timeout`` (for helpers that report what is
    left rather than fail, so that the test's own assertion shows it)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


async def poll_async(
    predicate: Callable[[], object],
    *,
    timeout: float,  # noqa: ASYNC109  (the caller reports what is left; see `poll`)
    interval: float = POLL_SECONDS,
) -> bool:
    """`poll` for async tests."""
    deadline = anyio.current_time() + timeout
    while not predicate():
        if anyio.current_time() >= deadline:
            return False
        await anyio.sleep(interval)
    return True
