"""aioknot: run your existing Python function over many inputs on AWS Batch, asynchronously.

``AsyncKnot`` is the async core (``await knot.map(xs)``, ``async for y in knot.amap(xs)``);
``Knot`` is the same, blocking, for scripts and notebooks. See ``aioknot.AsyncKnot``.
"""

# ``import aioknot`` imports only the errors and the version: the other public names are
# imported when first used (PEP 562), so that a script, a CLI or a worker that imports aioknot
# pays for anyio, cloudpickle and the rest only if it uses a knot. Type checkers and IDEs see
# the real imports below.

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
from ._version import __version__

# typing.TYPE_CHECKING without importing typing (~3 ms); mypy and ruff know the name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._estimate import Estimate, Resources
    from ._executor import Executor
    from ._knot import AsyncKnot
    from ._retention import RunSummary
    from ._run import Run
    from ._sync import Job, Knot

__all__ = [
    "AsyncKnot",
    "ConfigurationError",
    "Estimate",
    "Executor",
    "ImageBuildError",
    "Job",
    "Knot",
    "KnotError",
    "Resources",
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

# The public names imported on first use, and the module each lives in.
_LAZY = {
    "AsyncKnot": "_knot",
    "Estimate": "_estimate",
    "Executor": "_executor",
    "Job": "_sync",
    "Knot": "_sync",
    "Resources": "_estimate",
    "Run": "_run",
    "RunSummary": "_retention",
}


if not TYPE_CHECKING:  # hidden from type checkers, so that they still flag a misspelt name

    def __getattr__(name: str) -> object:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'aioknot' has no attribute {name!r}")
        import importlib

        value: object = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value  # later uses find it without coming here
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
