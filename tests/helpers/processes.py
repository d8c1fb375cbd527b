"""Finding the local backend's worker processes, to show that none outlives its run."""

from __future__ import annotations

import os
from pathlib import Path

from .waiting import poll, poll_async


def worker_processes(parent: int | None = None) -> list[int]:
    """Pids of live ``_worker.py --serve`` processes (children of ``parent`` if given)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as file:
                argv = file.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, ppid = fields[0], int(fields[1])
        if state == "Z":
            continue  # a zombie has exited; it only waits to be reaped
        if any(arg.endswith(b"_worker.py") for arg in argv) and b"--serve" in argv:
            if parent is None or ppid == parent:
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
