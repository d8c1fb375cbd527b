"""A store in a local directory: the default for ``backend="local"``.

Small file operations (a manifest, a segment, a group of result records: tens of
microseconds on a local disk) run on the event loop itself: a hop to a worker thread and back
costs more than they do, and on a busy machine a waking thread can wait milliseconds for a
CPU. Large ones run in a worker thread, and so does every operation once one inline took
longer than `INLINE_SECONDS` (a slow or network disk): the event loop never waits on a disk
that has shown it is slow. Batched calls make one hop for many files.

Every ``OSError`` of a store call is translated by the one error boundary
(`aioknot._errors.os_error`): a full disk is a ``StoreError`` that says "no space left on
device" and names the directory; a file where a directory should be, or a directory we may
not write, is a ``ConfigurationError``; a missing object stays ``KeyError`` (the "missing"
signal of ``get``/``get_many``).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import anyio.lowlevel
import anyio.to_thread

from .._errors import os_error
from .._worker import WorkerDirectory

T = TypeVar("T")

# An operation is small enough to run on the event loop up to these sizes ...
INLINE_BYTES = 256 * 1024
INLINE_KEYS = 64
# ... as long as none has taken longer than this there: then every one goes to a thread.
INLINE_SECONDS = 0.005


class LocalStore:
    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self._files = WorkerDirectory(self.root)  # the worker's writer: one atomic-write rule
        self.inline = True  # small operations run on the event loop (until one is slow)

    @property
    def url(self) -> str:
        return f"file://{self.root}"

    def worker_environment(self) -> dict[str, str]:
        return {}

    def _path(self, key: str) -> str:
        return os.path.join(self.root, key)

    async def _run(self, what: str, call: Callable[[], T], *, small: bool = False) -> T:
        try:
            if not (small and self.inline):
                return await anyio.to_thread.run_sync(call)
            started = time.perf_counter()
            try:
                result = call()
            finally:
                if time.perf_counter() - started > INLINE_SECONDS:
                    self.inline = False  # this disk is slow: never again on the event loop
        except OSError as error:
            raise os_error(error, what, root=self.root) from error
        await anyio.lowlevel.checkpoint()  # a store call is a point to yield and be cancelled
        return result

    async def put(self, key: str, data: bytes) -> None:
        # WorkerDirectory.write removes its temporary file when the write fails (a full disk).
        await self._run(
            f"writing {key}", lambda: self._files.write(key, data), small=len(data) <= INLINE_BYTES
        )

    def _read(self, key: str) -> bytes:
        try:
            return self._files.read(key)
        except FileNotFoundError:
            raise KeyError(key) from None

    def _small_files(self, keys: Sequence[str]) -> bool:
        """Whether reading ``keys`` is small: few files, none of them large."""
        if len(keys) > INLINE_KEYS or not self.inline:
            return False
        started = time.perf_counter()
        try:
            small = all(os.stat(self._path(key)).st_size <= INLINE_BYTES for key in keys)
        except OSError:
            small = True  # missing (KeyError) or unreadable: said at once either way
        if time.perf_counter() - started > INLINE_SECONDS:
            self.inline = False
        return small and self.inline

    async def get(self, key: str) -> bytes:
        return await self._run(
            f"reading {key}", lambda: self._read(key), small=self._small_files([key])
        )

    async def get_many(self, keys: Sequence[str]) -> list[bytes]:
        what = f"reading {len(keys)} objects" if len(keys) != 1 else f"reading {keys[0]}"
        return await self._run(
            what, lambda: [self._read(key) for key in keys], small=self._small_files(keys)
        )

    async def exists_many(self, keys: Sequence[str]) -> list[bool]:
        return await self._run(
            "looking for results",
            lambda: [os.path.exists(self._path(key)) for key in keys],
            small=len(keys) <= INLINE_KEYS,
        )

    def _list(self, prefix: str, start_after: str | None, before: str | None) -> list[str]:
        # Keys are files; a prefix ending in "/" is a directory we can list in one call.
        directory, _, name_prefix = prefix.rpartition("/")
        try:
            names = os.listdir(self._path(directory))
        except FileNotFoundError:
            return []
        keys = sorted(
            f"{directory}/{name}" if directory else name
            for name in names
            if name.startswith(name_prefix) and not name.endswith(".tmp")
        )
        if start_after is not None:
            keys = [key for key in keys if key > start_after]
        if before is not None:
            keys = [key for key in keys if key < before]
        return keys

    async def list_keys(
        self, prefix: str, *, start_after: str | None = None, before: str | None = None
    ) -> list[str]:
        # A listing runs on the event loop too: a run's directory holds a few files per chunk
        # (grouped records), and one that has grown so large that listing it takes over
        # INLINE_SECONDS turns inline operations off like a slow disk does.
        return await self._run(
            f"listing {prefix}", lambda: self._list(prefix, start_after, before), small=True
        )

    def _children(self, prefix: str) -> list[str]:
        try:
            names = os.listdir(self._path(prefix.rstrip("/")))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(name for name in names if not name.endswith(".tmp"))

    async def list_children(self, prefix: str) -> list[str]:
        return await self._run(f"listing {prefix}", lambda: self._children(prefix))

    def _delete(self, prefix: str) -> int:
        path = self._path(prefix.rstrip("/"))
        if os.path.isdir(path):
            count = sum(len(files) for _, _, files in os.walk(path))
            shutil.rmtree(path, ignore_errors=True)
            return count
        if os.path.exists(path):
            os.remove(path)
            return 1
        return 0

    async def delete_prefix(self, prefix: str) -> int:
        return await self._run(f"deleting {prefix}", lambda: self._delete(prefix))

    async def aclose(self) -> None:
        return None
