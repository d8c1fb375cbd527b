"""A store in a local directory: the default for ``backend="local"``.

File operations run in a worker thread so the event loop never blocks on the disk; batched
calls make one thread hop for many files, which is what keeps 10,000 tiny results cheap.

Every ``OSError`` of a store call is translated by the one error boundary
(`aioknot._errors.os_error`): a full disk is a ``StoreError`` that says "no space left on
device" and names the directory; a file where a directory should be, or a directory we may
not write, is a ``ConfigurationError``; a missing object stays ``KeyError`` (the "missing"
signal of ``get``/``get_many``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from typing import TypeVar

import anyio.to_thread

from .._errors import os_error
from .._worker import WorkerDirectory

T = TypeVar("T")


class LocalStore:
    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self._files = WorkerDirectory(self.root)  # the worker's writer: one atomic-write rule

    @property
    def url(self) -> str:
        return f"file://{self.root}"

    def worker_environment(self) -> dict[str, str]:
        return {}

    def _path(self, key: str) -> str:
        return os.path.join(self.root, key)

    async def _run(self, what: str, call: Callable[[], T]) -> T:
        try:
            return await anyio.to_thread.run_sync(call)
        except OSError as error:
            raise os_error(error, what, root=self.root) from error

    async def put(self, key: str, data: bytes) -> None:
        # WorkerDirectory.write removes its temporary file when the write fails (a full disk).
        await self._run(f"writing {key}", lambda: self._files.write(key, data))

    def _read(self, key: str) -> bytes:
        try:
            return self._files.read(key)
        except FileNotFoundError:
            raise KeyError(key) from None

    async def get(self, key: str) -> bytes:
        return await self._run(f"reading {key}", lambda: self._read(key))

    async def get_many(self, keys: Sequence[str]) -> list[bytes]:
        what = f"reading {len(keys)} objects" if len(keys) != 1 else f"reading {keys[0]}"
        return await self._run(what, lambda: [self._read(key) for key in keys])

    async def exists_many(self, keys: Sequence[str]) -> list[bool]:
        return await self._run(
            "looking for results", lambda: [os.path.exists(self._path(key)) for key in keys]
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
        return await self._run(f"listing {prefix}", lambda: self._list(prefix, start_after, before))

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
