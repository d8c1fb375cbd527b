"""Task groups whose failure is an error, not an ``ExceptionGroup``.

anyio wraps whatever fails inside a task group in an ``ExceptionGroup``, even a single error
raised by the group's own body. No such group may cross the public API (the user catches
``aioknot.KnotError``), so every task group in the library is opened through `task_group`,
which raises the first real error as itself; the others are logged, not lost.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import anyio
import anyio.abc

if sys.version_info < (3, 11):  # pragma: no cover - anyio brings the backport there
    from exceptiongroup import BaseExceptionGroup

logger = logging.getLogger("aioknot")


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first leaf of ``group`` that is not a cancellation (else the first leaf)."""
    leaves: list[BaseException] = []

    def walk(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                walk(inner)
        else:
            leaves.append(error)

    walk(group)
    cancelled = anyio.get_cancelled_exc_class()
    real = [leaf for leaf in leaves if not isinstance(leaf, cancelled)]
    for other in real[1:]:
        logger.debug("a concurrent task also failed: %r", other)
    return (real or leaves)[0]


@contextlib.asynccontextmanager
async def task_group() -> AsyncIterator[anyio.abc.TaskGroup]:
    """``anyio.create_task_group()``, raising its first error as itself."""
    try:
        async with anyio.create_task_group() as group:
            yield group
    except BaseExceptionGroup as failure:
        error = first_error(failure)
        # Keep the error's own cause; the group itself is noise to the reader.
        raise error from error.__cause__


async def concurrently(*calls: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run the calls at once; the first failure cancels the rest and is raised as itself."""
    async with task_group() as group:
        for call in calls:
            group.start_soon(call)
