"""The backend registry: which backends a knot can run on, one line each.

Each line names a `BackendKind` as ``"module:attribute"``; the module is imported when a knot
checks its options (every registered backend checks its own, whichever runs), so it must be
light: the backend's heavy imports happen in ``create``. A new backend is a package of its
own plus one line here.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

from .._exceptions import ConfigurationError

if TYPE_CHECKING:
    from .base import Backend, BackendKind

BACKENDS: dict[str, str] = {
    "local": "aioknot._backends.local:KIND",  # processes on this machine
    "aws": "aioknot._backends.aws:KIND",  # AWS Batch array jobs
}
DEFAULT_BACKEND = "local"  # never spend money by accident: AWS is asked for by name


def backend_kind(name: str) -> BackendKind:
    module, _, attribute = BACKENDS[name].partition(":")
    kind: BackendKind = getattr(importlib.import_module(module), attribute)
    return kind


def backend_kinds() -> list[BackendKind]:
    return [backend_kind(name) for name in BACKENDS]


def backend_name(backend: str | Backend | None) -> str:
    """The name of the backend asked for: ``backend=`` (a name or a backend object), else
    ``AIOKNOT_BACKEND``, else local."""
    from .base import Backend

    if isinstance(backend, Backend):
        return backend.name
    chosen = backend if backend is not None else os.environ.get("AIOKNOT_BACKEND", DEFAULT_BACKEND)
    if chosen not in BACKENDS:
        source = "backend=" if backend is not None else "AIOKNOT_BACKEND"
        known = " or ".join(repr(name) for name in BACKENDS)
        raise ConfigurationError(
            f"{source} {chosen!r} is not a backend: use {known} ('local' runs processes on "
            "this machine, 'aws' runs AWS Batch jobs), or pass a backend object"
        )
    return chosen


def make_backend(backend: str | Backend | None, options: KnotOptions) -> Backend:
    """The backend object for a knot: the one given, or a new one of the registered kind."""
    from .base import Backend

    if isinstance(backend, Backend):
        return backend
    return backend_kind(options.backend).create(options)


if TYPE_CHECKING:
    from .._options import KnotOptions
