"""Finding the local backend's worker processes, to show that none outlives its run."""

from __future__ import annotations

import os
from pathlib import Path

from aioknot._worker import WORKER_NAME

from .waiting import poll, poll_async


def _stat(pid: int) -> tuple[str, int] | None:
    """A process's state and parent pid, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def worker_processes(parent: int | None = None) -> list[int]:
    """Pids of live local worker processes (``parent``'s, if given).

    A worker is named ``aioknot-worker`` (its /proc comm) and is a child of its client's
    zygote, itself a child of the client: ``parent`` is its parent's parent.
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as file:
                name = file.read().strip()
        except OSError:
            continue
        if name != WORKER_NAME:
            continue
        stat = _stat(int(entry))
        if stat is None or stat[0] == "Z":
            continue  # a zombie has exited; it only waits to be reaped
        zygote = _stat(stat[1])
        if parent is None or stat[1] == parent or (zygote is not None and zygote[1] == parent):
            found.append(int(entry))
    return found


def wait_for_no_workers(parent: int, timeout: float = 10.0) -> list[int]:
    """Wait until ``parent`` has no worker processes left; returns any that remain (so that
    the test's ``== []`` shows them)."""
    poll(lambda: not worker_processes(parent), timeout=timeout)
    return worker_processes(parent)


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie has exited; it only waits to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Wait until none of ``pids`` is alive (another process's end cannot be awaited); returns
    those still alive after ``timeout``."""
    poll(lambda: not any(alive(pid) for pid in pids), timeout=timeout)
    return [pid for pid in pids if alive(pid)]


async def gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """`wait_until_gone` for async tests: polls without blocking the event loop."""
    await poll_async(lambda: not any(alive(pid) for pid in pids), timeout=timeout)
    return [pid for pid in pids if alive(pid)]


def written_pids(directory: Path, count: int, pattern: str = "*.pid") -> list[int] | None:
    """The pids that processes wrote into the files ``pattern`` of ``directory`` once ``count``
    of them hold one, else None: a predicate for `wait_until` (a file another process writes
    can only be looked for)."""
    texts = [path.read_text() for path in directory.glob(pattern)]
    pids = [int(text) for text in texts if text]
    return pids if len(pids) >= count else None
