"""A task of the knot's own on the running event loop, apart from whichever task opened it.

A notebook runs each cell in a task of its own, and anyio refuses to exit a task group (a
cancel scope) in another task than the one that entered it: a knot opened in one cell could
not be closed in the next. So a knot enters its task group in a host task started on the
event loop itself, and closing it, from any task, asks that task to finish and waits for it.
anyio has no such "detached" task, so this is the one place that speaks to the event loop
library directly.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

# asyncio keeps only weak references to its tasks: the hosts are held here until they end.
_RUNNING: set[Any] = set()


def spawn(host: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``host()`` as a task of the event loop; it must catch its own errors."""
    # Imported here, not with the module: a knot opened on asyncio finds it imported already,
    # and ``from aioknot import AsyncKnot`` does not pay for it (~15 ms).
    import asyncio

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio: anyio's other backend
        import trio

        trio.lowlevel.spawn_system_task(host, name="aioknot knot")
        return
    task = loop.create_task(host(), name="aioknot knot")
    _RUNNING.add(task)
    task.add_done_callback(_RUNNING.discard)
