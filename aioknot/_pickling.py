"""Turning the user's function and inputs into bytes, with errors that name what failed.

Functions go through cloudpickle: closures, lambdas and functions in ``__main__`` travel by
value, functions of installed packages by reference. A function from a local module of the
user's project that is not installed (so the worker could not import it) is shipped by value
by registering its module with cloudpickle while it is pickled.

cloudpickle (~5 ms) and importlib.metadata (~30 ms: email, zipfile, pathlib) are imported
when first needed, not with this module: most inputs pickle with the standard pickler, and
``import aioknot`` should not pay for either.
"""

from __future__ import annotations

import _thread
import functools
import hashlib
import io
import os
import pickle
import socket
import sys
import sysconfig
import threading
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from types import CodeType, ModuleType
from typing import Any

from ._exceptions import SerializationError


@dataclass(frozen=True)
class PickledFunction:
    data: bytes
    digest: str  # sha256 of data: the function is stored once per content
    modules_by_value: tuple[str, ...]  # local modules that travel inside the pickle


@cache
def _installed_top_level_names() -> frozenset[str]:
    import importlib.metadata

    return frozenset(importlib.metadata.packages_distributions())


def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[name] for name in ("stdlib", "platstdlib", "purelib", "platlib")}
    return tuple(os.path.realpath(root) + os.sep for root in roots)


def is_local_module(module: ModuleType) -> bool:
    """True for a module of the user's project that a worker could not import by name."""
    name = module.__name__
    if name == "__main__" or name in sys.builtin_module_names:
        return False
    top = name.partition(".")[0]
    path = getattr(module, "__file__", None)
    if top in sys.stdlib_module_names or not path:
        return False
    if os.path.realpath(path).startswith(_library_roots()):
        return False
    # Outside site-packages but installed (an editable install): the worker can import it.
    return top not in _installed_top_level_names()


def _names_used(code: CodeType) -> set[str]:
    """Global names a code object (and the functions nested in it) refers to."""
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, CodeType):
            names |= _names_used(constant)
    return names


def _local_modules_of(func: Callable[..., object]) -> list[ModuleType]:
    """The local top-level modules the function lives in or uses through its globals."""
    candidates: list[ModuleType] = []
    own = sys.modules.get(getattr(func, "__module__", "") or "")
    if own is not None:
        candidates.append(own)
    code = getattr(func, "__code__", None)
    namespace = getattr(func, "__globals__", {})
    # Only the modules the function names: a script's other imports are not shipped anyway.
    for name in _names_used(code) if isinstance(code, CodeType) else ():
        value = namespace.get(name)
        if isinstance(value, ModuleType):
            candidates.append(value)
    found: dict[str, ModuleType] = {}
    for module in candidates:
        if is_local_module(module):
            top = sys.modules.get(module.__name__.partition(".")[0], module)
            found.setdefault(top.__name__, top)
    return list(found.values())


def pickle_function(
    func: Callable[..., object], kwargs: Mapping[str, object] | None = None
) -> PickledFunction:
    """The function (with ``kwargs`` bound, when given: every call gets them) as bytes."""
    if not callable(func):
        raise SerializationError(
            f"the function to run must be callable, got {type(func).__name__}: "
            "pass the function itself, e.g. AsyncKnot(my_function)"
        )
    import cloudpickle

    local = _local_modules_of(func)
    registered = []
    try:
        for module in local:
            cloudpickle.register_pickle_by_value(module)
            registered.append(module)
        data = cloudpickle.dumps(functools.partial(func, **kwargs) if kwargs else func, protocol=5)
    except Exception as error:
        if kwargs:
            raise SerializationError(
                f"kwargs= cannot be pickled with the function: {error}. Pass data (numbers, "
                "strings, arrays, paths) rather than live objects such as open files or clients"
            ) from error
        raise SerializationError(
            f"the function {getattr(func, '__qualname__', func)!r} cannot be pickled: {error}. "
            "Move whatever it refers to that cannot be pickled (open files, locks, clients, "
            "sockets) inside the function, so that it is created on the worker."
        ) from error
    finally:
        for module in registered:
            cloudpickle.unregister_pickle_by_value(module)
    return PickledFunction(
        data=data,
        digest=hashlib.sha256(data).hexdigest(),
        modules_by_value=tuple(module.__name__ for module in local),
    )


# Objects that are alive in this process only. cloudpickle would ship a copy of some of them
# (an open file's contents, say), which is never what the user meant: refuse them instead.
_LIVE_OBJECTS: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (io.IOBase, "an open file"),
    (socket.socket, "a socket"),
    ((_thread.LockType, _thread.RLock, threading.Condition, threading.Semaphore), "a lock"),
    (threading.Thread, "a thread"),
    ((types.GeneratorType, types.AsyncGeneratorType, types.CoroutineType), "a generator"),
)


def live_object(value: object) -> str | None:
    """What ``value`` is, if it is a live object that cannot be sent to a worker."""
    for kinds, what in _LIVE_OBJECTS:
        if isinstance(value, kinds):
            return what
    return None


class _LiveObjectError(TypeError):
    pass


@cache
def _input_pickler() -> Any:
    """The pickler for inputs the standard one refuses (made on first use, as it needs
    cloudpickle): cloudpickle, refusing live objects at any depth of an input."""
    import cloudpickle

    class InputPickler(cloudpickle.CloudPickler):  # type: ignore[misc]
        def reducer_override(self, obj: object) -> Any:
            what = live_object(obj)
            if what is not None:
                raise _LiveObjectError(f"it holds {what} ({type(obj).__name__})")
            return super().reducer_override(obj)

    return InputPickler


def _dumps_input(value: object) -> bytes:
    try:
        return pickle.dumps(value, protocol=5)
    except Exception:
        buffer = io.BytesIO()
        _input_pickler()(buffer, protocol=5).dump(value)
        return buffer.getvalue()


def starmap_arguments(value: object, index: int) -> tuple[Any, ...]:
    """Input ``index`` of a starmap as the tuple of arguments it must be."""
    if isinstance(value, Mapping):
        raise SerializationError(
            f"input {index} is a {type(value).__name__}: with starmap=True every input is a "
            "tuple of positional arguments (a dict would be spread as its keys). Pass "
            "tuples, or keyword arguments shared by every call with kwargs=",
            index=index,
        )
    try:
        return tuple(value)  # type: ignore[arg-type]
    except TypeError:
        raise SerializationError(
            f"input {index} is a {type(value).__name__}, not a tuple of arguments: with "
            "starmap=True every input must be an iterable of the function's arguments",
            index=index,
        ) from None


def pickle_input(value: object, index: int, *, starmap: bool) -> bytes:
    if starmap:
        value = starmap_arguments(value, index)
    what = live_object(value)
    if what is not None:
        raise SerializationError(
            f"input {index} is {what} ({type(value).__name__}), which lives in this process "
            "only and cannot be sent to a worker: pass data instead (a path, the bytes, "
            "numbers, strings, arrays)",
            index=index,
        )
    try:
        return _dumps_input(value)
    except Exception as error:
        raise SerializationError(
            f"input {index} ({type(value).__name__}) cannot be pickled: {error}. "
            "Pass data (numbers, strings, arrays, paths) rather than live objects such as "
            "open files, locks, generators or clients",
            index=index,
        ) from error


def pickle_block(values: list[object], first: int) -> bytes:
    """Inputs ``first..`` as one pickle (a segment's block), for a block the standard pickler
    refused: each is checked as `pickle_input` does (the first that cannot be sent raises,
    naming its index), then the block is pickled as those are (cloudpickle, no live objects)."""
    for offset, value in enumerate(values):
        pickle_input(value, first + offset, starmap=False)
    return _dumps_input(values)
