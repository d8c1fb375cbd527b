"""The Store seam: where a knot's bytes live (a local directory or an S3 bucket).

A store is an async context manager; keys are ``/``-separated and relative to its root. Both
implementations answer the same small set of calls, batched where a batch saves round trips
(a thread hop per file, or a request per object).

Errors: a missing object is ``KeyError`` (from ``get``/``get_many`` only); everything else a
store cannot do is a ``StoreError`` (the store failed: S3 kept failing through its outage
window, a disk is full) or a ``ConfigurationError`` (it refused: access denied, a file where
a directory should be), raised as itself and saying what to do. Transient failures are the
store's own business: a store retries them before it gives up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class Store(Protocol):
    @property
    def url(self) -> str:
        """Where a worker finds this store: ``file:///dir`` or ``s3://bucket/prefix``."""
        ...

    def worker_environment(self) -> dict[str, str]:
        """Environment variables a worker needs to reach this store (never credentials)."""
        ...

    async def put(self, key: str, data: bytes) -> None: ...

    async def get(self, key: str) -> bytes:
        """The whole object; raises ``KeyError`` when there is none."""
        ...

    async def get_many(self, keys: Sequence[str]) -> list[bytes]:
        """The objects, in the order asked; raises ``KeyError`` for one that is missing."""
        ...

    async def exists_many(self, keys: Sequence[str]) -> list[bool]: ...

    async def list_keys(
        self, prefix: str, *, start_after: str | None = None, before: str | None = None
    ) -> list[str]:
        """Keys under ``prefix`` in lexicographic order, after ``start_after`` and before
        ``before`` if given (a bounded listing stops paging at ``before``)."""
        ...

    async def list_children(self, prefix: str) -> list[str]:
        """The names directly under ``prefix`` (as a directory lists them: ``a`` for the keys
        ``prefix/a/...`` and ``prefix/a``), sorted; one request per 1,000 names on S3."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``; returns how many were deleted."""
        ...

    async def aclose(self) -> None: ...
