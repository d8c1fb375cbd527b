"""The store registry: where a knot's bytes can live, one line per kind of location.

A knot's options name a location (``bucket=``/``store="s3://..."``, or ``directory=``/
``store="file:///..."``); `open_store` opens the store that serves it. A user may also pass an
open store object as ``store=`` (anything with the `Store` protocol's calls), which the knot
uses as it is and does not close.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .base import Store

if TYPE_CHECKING:
    from .._options import KnotOptions


async def _open_s3(options: KnotOptions, location: str) -> Store:
    from .s3 import S3Store

    return await S3Store(
        location,
        endpoint_url=options.endpoint_url,
        region=options.region,
        profile=options.profile,
    ).open()


async def _open_directory(options: KnotOptions, location: str) -> Store:
    from .local import LocalStore

    return LocalStore(location)


STORES: dict[str, Callable[[KnotOptions, str], Awaitable[Store]]] = {
    "s3": _open_s3,  # a bucket (and prefix) in S3, or any S3 endpoint
    "file": _open_directory,  # a directory on this machine
}


async def open_store(options: KnotOptions, default_directory: str) -> Store:
    """The store the options name: a bucket if given, else a directory (by default
    ``default_directory``)."""
    if options.bucket is not None:
        return await STORES["s3"](options, options.bucket)
    return await STORES["file"](options, options.directory or default_directory)
