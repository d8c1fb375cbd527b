"""aioknot: run your existing Python function over many inputs on AWS Batch, asynchronously.

``AsyncKnot`` is the async core (``await knot.map(xs)``, ``async for y in knot.amap(xs)``);
``Knot`` is the same, blocking, for scripts and notebooks. See ``aioknot.AsyncKnot``.
"""

from ._exceptions import (
    ConfigurationError,
    ImageBuildError,
    KnotError,
    SerializationError,
    StackError,
    StoreError,
    TaskError,
    TaskFailure,
    TaskLost,
    WatchTimeout,
)
from ._executor import Executor
from ._knot import AsyncKnot
from ._retention import RunSummary
from ._run import Run
from ._sync import Job, Knot
from ._version import __version__

__all__ = [
    "AsyncKnot",
    "ConfigurationError",
    "Executor",
    "ImageBuildError",
    "Job",
    "Knot",
    "KnotError",
    "Run",
    "RunSummary",
    "SerializationError",
    "StackError",
    "StoreError",
    "TaskError",
    "TaskFailure",
    "TaskLost",
    "WatchTimeout",
    "__version__",
]
