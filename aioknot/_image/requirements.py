"""What the worker image must pip-install for a function: its imports, pinned to this machine.

Requirements are found, never guessed: pipreqs' import scanner reads the function's source (and
the source of whatever cloudpickle ships by value with it), each import name is resolved
offline to the distribution installed here (``importlib.metadata.packages_distributions()``)
and pinned to the installed version. No package index is ever contacted, so an import that is
not installed here cannot be pinned: it is reported by name with what to do.

Imports come from two places, because cloudpickle ships code in two ways:

* import statements in the source of what travels by value (the function, by-value helpers and
  classes it refers to, whole by-value modules it refers to), read by pipreqs; when the source
  cannot be read (a lambda typed into a REPL, ``exec``-made code) the same statements are read
  from the bytecode instead (``IMPORT_NAME``);
* the globals and closure cells the code refers to (``co_names``, as cloudpickle itself picks
  them): ``import numpy as np`` at the top of a script never appears in the function's source,
  but ``np`` is a global of the function, and ``from scipy import stats`` gives a global whose
  ``__module__`` names ``scipy``. Objects that travel by reference name the module the worker
  must import.
"""

from __future__ import annotations

import ast
import dis
import importlib.metadata
import importlib.util
import inspect
import json
import logging
import os
import re
import sys
import tempfile
import textwrap
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import CodeType, FunctionType, MethodType, ModuleType

import cloudpickle

from .._exceptions import ConfigurationError

logger = logging.getLogger("aioknot")

# The worker itself (aioknot/_worker.py) imports exactly these besides the standard library.
WORKER_DISTRIBUTIONS = ("boto3", "cloudpickle")

# A requirement line's project name (PEP 508); anything else (pip options, URLs) is kept as is.
_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)")
_IGNORED_TOP_LEVEL = frozenset({"__main__", "__future__", "builtins"})


@dataclass(frozen=True)
class ImportUse:
    """One top-level import name the function needs, and where it was seen (for messages)."""

    name: str
    where: str
    # "statement" came from an import statement (a missing module is an error); "reference"
    # from an object's ``__module__`` (a name nothing can import is a quirk and is skipped).
    kind: str = "statement"


def normalize_name(name: str) -> str:
    """PEP 503 normalization: ``PyYAML``, ``pyyaml`` and ``py_yaml`` are one project."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(line: str) -> str | None:
    """The normalized project name of a requirement line, or None for ``-r``/URL-only lines."""
    if line.lstrip().startswith("-"):
        return None
    match = _REQUIREMENT_NAME.match(line)
    return normalize_name(match.group(1)) if match else None


def _is_stdlib(top_level: str) -> bool:
    return (
        top_level in sys.stdlib_module_names
        or top_level in sys.builtin_module_names
        or top_level in _IGNORED_TOP_LEVEL
    )


def _top(module_name: str) -> str:
    return module_name.partition(".")[0]


# ------------------------------------------------------------------------------- scanning


class _Scanner:
    """Walks what cloudpickle would ship with a function and collects the imports it needs."""

    def __init__(self, by_value: frozenset[str]) -> None:
        self.by_value = by_value
        self.uses: dict[str, ImportUse] = {}
        self._seen: set[int] = set()

    def add(self, module_name: str, where: str, kind: str) -> None:
        top = _top(module_name)
        if not top or _is_stdlib(top) or self.is_by_value_module_name(module_name):
            return
        known = self.uses.get(top)
        # A statement outranks a reference: its "missing" is an error, not a quirk.
        if known is None or (known.kind == "reference" and kind == "statement"):
            self.uses[top] = ImportUse(top, where, kind)

    def is_by_value_module_name(self, module_name: str) -> bool:
        parts = module_name.split(".")
        return any(".".join(parts[:i]) in self.by_value for i in range(1, len(parts) + 1))

    def travels_by_value(self, obj: object) -> bool:
        """Mirror of cloudpickle's choice for functions and classes (by value vs by name)."""
        module_name = getattr(obj, "__module__", None)
        qualname = getattr(obj, "__qualname__", "")
        if not isinstance(module_name, str) or module_name == "__main__":
            return True
        if "<locals>" in qualname or "<lambda>" in qualname:
            return True
        if self.is_by_value_module_name(module_name):
            return True
        # cloudpickle pickles by value what the worker could not look up by name.
        return module_name not in sys.modules

    # -- entry points

    def scan_function(self, func: FunctionType) -> None:
        if id(func) in self._seen:
            return
        self._seen.add(id(func))
        where = f"function {func.__qualname__}"
        if not self._scan_source_of(func, where):
            self._scan_bytecode(func.__code__, where)
        self._scan_code_references(func.__code__, func.__globals__, where)
        for cell in func.__closure__ or ():
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell: a variable assigned after the function was made
                continue
            self.scan_reference(value, f"{where} (closure)")
        for default in (*(func.__defaults__ or ()), *(func.__kwdefaults__ or {}).values()):
            self.scan_reference(default, f"{where} (default argument)")

    def scan_class(self, cls: type) -> None:
        if id(cls) in self._seen:
            return
        self._seen.add(id(cls))
        where = f"class {cls.__qualname__}"
        self._scan_source_of(cls, where)
        # The class travels by value, its bases and metaclass by reference (or by value too).
        for base in (*cls.__bases__, type(cls)):
            self.scan_reference(base, f"{where} (base class)")
        for attribute in vars(cls).values():
            for member in _functions_in(attribute):
                self.scan_function(member)

    def scan_module(self, module: ModuleType) -> None:
        """A module object that travels by value travels whole: all its imports are needed."""
        if id(module) in self._seen:
            return
        self._seen.add(id(module))
        where = f"module {module.__name__}"
        path = getattr(module, "__file__", None)
        if path and os.path.basename(path) == "__init__.py":
            # A package: scan its directory; pipreqs drops imports of its own submodules.
            self._add_names(_pipreqs_scan_directory(os.path.dirname(path)), where)
            return
        try:
            source = inspect.getsource(module)
        except (OSError, TypeError):
            source = None
        if source is not None and _parses(source):
            self._add_names(_pipreqs_scan_source(source, _relative_imports(source)), where)
            return
        # No readable source: what the module's namespace refers to is what travels.
        for value in list(vars(module).values()):
            self.scan_reference(value, where)

    def scan_reference(self, obj: object, where: str) -> None:
        if isinstance(obj, ModuleType):
            if self.is_by_value_module_name(obj.__name__):
                self.scan_module(obj)
            else:
                self.add(obj.__name__, where, "statement")
            return
        if isinstance(obj, MethodType):
            obj = obj.__func__
        if isinstance(obj, FunctionType):
            if self.travels_by_value(obj):
                self.scan_function(obj)
            else:
                self.add(obj.__module__, where, "reference")
            return
        if isinstance(obj, type):
            if self.travels_by_value(obj):
                self.scan_class(obj)
            else:
                self.add(obj.__module__, where, "reference")
            return
        # An instance of a class that travels by value (a callable object defined in a
        # script): the class goes with it, methods and all.
        if self.travels_by_value(type(obj)):
            self.scan_class(type(obj))
            return
        # Builtin functions, ufuncs and instances: the module of the object or of its type.
        module_name = getattr(obj, "__module__", None)
        if not isinstance(module_name, str):
            module_name = type(obj).__module__
        self.add(module_name, where, "reference")

    # -- helpers

    def _add_names(self, names: Iterable[str], where: str) -> None:
        for name in names:
            self.add(name, where, "statement")

    def _scan_source_of(self, obj: object, where: str) -> bool:
        """pipreqs on the object's own source; False when the source cannot be read."""
        try:
            source = textwrap.dedent(inspect.getsource(obj))  # type: ignore[arg-type]
        except (OSError, TypeError):
            return False
        if not _parses(source):
            # A lambda's source is the whole line it sits on, which may not parse alone.
            return False
        self._add_names(_pipreqs_scan_source(source, _relative_imports(source)), where)
        return True

    def _scan_bytecode(self, code: CodeType, where: str) -> None:
        for nested in _code_objects(code):
            instructions = list(dis.get_instructions(nested))
            for index, instruction in enumerate(instructions):
                if instruction.opname != "IMPORT_NAME":
                    continue
                # The relative-import level is pushed two instructions before IMPORT_NAME.
                level = instructions[index - 2].argval if index >= 2 else 0
                if isinstance(level, int) and level > 0:
                    continue
                self.add(str(instruction.argval), f"{where} (bytecode)", "statement")

    def _scan_code_references(
        self, code: CodeType, globals_: Mapping[str, object], where: str
    ) -> None:
        # cloudpickle ships exactly the globals named in co_names of the code and nested code.
        names = {name for nested in _code_objects(code) for name in nested.co_names}
        for name in sorted(names):
            if name in globals_:
                self.scan_reference(globals_[name], f"{where} (global {name})")


def _code_objects(code: CodeType) -> Iterator[CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, CodeType):
            yield from _code_objects(const)


def _functions_in(attribute: object) -> Iterator[FunctionType]:
    if isinstance(attribute, (staticmethod, classmethod)):
        attribute = attribute.__func__
    if isinstance(attribute, property):
        candidates: Iterable[object] = (attribute.fget, attribute.fset, attribute.fdel)
    else:
        candidates = (attribute,)
    for candidate in candidates:
        if isinstance(candidate, FunctionType):
            yield candidate


def _parses(source: str) -> bool:
    try:
        ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    return True


def _relative_imports(source: str) -> set[str]:
    """Module names of ``from .x import y``: pipreqs reports them as if they were top-level."""
    names: set[str] = set()
    absolute: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            (names if node.level else absolute).add(_top(node.module))
        elif isinstance(node, ast.Import):
            absolute.update(_top(alias.name) for alias in node.names)
    return names - absolute


def _pipreqs() -> Callable[[str], list[str]]:
    try:
        from pipreqs.pipreqs import get_all_imports
    except ImportError as error:
        raise ConfigurationError(
            "building a worker image needs pipreqs to find the function's imports: "
            "pip install 'aioknot[images]' (or pass requirements=[...] to skip the scan, "
            "or image='<uri>' to use a prebuilt image)"
        ) from error

    def scan(directory: str) -> list[str]:
        # pipreqs logs through the root logger's module-level functions, which call
        # logging.basicConfig() when the root has no handler: that would install a stderr
        # handler in the user's process. A NullHandler for the duration prevents it.
        root = logging.getLogger()
        guard = logging.NullHandler()
        root.addHandler(guard)
        try:
            return list(get_all_imports(directory))
        finally:
            root.removeHandler(guard)

    return scan


def _pipreqs_scan_source(source: str, relative: Collection[str] = ()) -> set[str]:
    # pipreqs works on directories: give the source a directory of its own. The file name
    # is one no import will use, because pipreqs drops imports named like a file it scanned.
    with tempfile.TemporaryDirectory(prefix="aioknot-scan-") as directory:
        Path(directory, "aioknot_scanned_source.py").write_text(source, encoding="utf-8")
        found = _pipreqs_scan_directory(directory)
    return found.difference(relative)


def _pipreqs_scan_directory(directory: str) -> set[str]:
    return {name for name in _pipreqs()(directory) if name}


def scan_imports(
    func: Callable[..., object], *, by_value_modules: Iterable[str | ModuleType] = ()
) -> dict[str, ImportUse]:
    """Top-level names of the non-stdlib modules the worker must import to run ``func``.

    ``by_value_modules`` names the local modules whose code travels inside the pickle
    (``PickledFunction.modules_by_value``); cloudpickle's own by-value registry is added.
    Their imports are scanned; they themselves need no installation.
    """
    names = {m if isinstance(m, str) else m.__name__ for m in by_value_modules}
    names.update(cloudpickle.list_registry_pickle_by_value())
    scanner = _Scanner(frozenset(names))
    target: object = func
    if isinstance(target, MethodType):
        scanner.scan_reference(target.__self__, "the bound method's object")
        target = target.__func__
    if isinstance(target, FunctionType):
        if scanner.travels_by_value(target):
            scanner.scan_function(target)
        else:
            scanner.add(target.__module__, f"function {target.__qualname__}", "statement")
    else:
        # functools.partial, a callable instance, a builtin: what the worker must import to
        # unpickle it, and whatever the underlying function needs.
        inner = getattr(target, "func", None)
        if isinstance(inner, FunctionType):
            scanner.scan_reference(inner, "the partial's function")
        scanner.scan_reference(target, "the function")
    return dict(sorted(scanner.uses.items()))


# ------------------------------------------------------------------------------- resolving


@dataclass(frozen=True)
class _Problem:
    use: ImportUse
    what: str


def _pin(distribution_name: str) -> str:
    """``Name==version`` for an installed distribution; a direct URL when it came from one."""
    distribution = importlib.metadata.distribution(distribution_name)
    name = distribution.metadata["Name"] or distribution_name
    direct_url_text = distribution.read_text("direct_url.json")
    if direct_url_text:
        try:
            direct_url = json.loads(direct_url_text)
        except ValueError:
            direct_url = {}
        url = str(direct_url.get("url", ""))
        vcs = direct_url.get("vcs_info")
        if isinstance(vcs, dict) and vcs.get("commit_id"):
            return f"{name} @ {vcs.get('vcs', 'git')}+{url}@{vcs['commit_id']}"
        if url.startswith(("http://", "https://")) and "archive_info" in direct_url:
            return f"{name} @ {url}"
        if url.startswith("file:") or "dir_info" in direct_url:
            raise _LocalDistribution(name, url)
    return f"{name}=={distribution.version}"


class _LocalDistribution(Exception):
    def __init__(self, name: str, url: str) -> None:
        super().__init__(name, url)
        self.name = name
        self.url = url


def pin_imports(uses: Mapping[str, ImportUse], *, provided: Iterable[str] = ()) -> tuple[str, ...]:
    """Pin each import to its installed distribution (offline); raise for what can't be.

    ``provided`` holds normalized project names the caller already names (extra
    requirements): an import by the same name that is not installed here is not an error.
    """
    distributions = importlib.metadata.packages_distributions()
    provided_names = set(provided)
    pins: dict[str, str] = {}
    problems: list[_Problem] = []
    for name, use in uses.items():
        owners = distributions.get(name)
        if not owners:
            if normalize_name(name) in provided_names:
                continue
            problem = _unresolved(use)
            if problem is not None:
                problems.append(problem)
            continue
        # A namespace package (google, azure) maps to several distributions: the scanner only
        # sees the top-level name, so all of them are pinned; over-installing is harmless.
        for owner in dict.fromkeys(owners):
            if normalize_name(owner) in pins:
                continue
            try:
                pins[normalize_name(owner)] = _pin(owner)
            except _LocalDistribution as local:
                problems.append(
                    _Problem(
                        use,
                        f"is installed from a local path ({local.url or 'editable install'}) as "
                        f"{local.name!r}, which a package index cannot provide: ship the code "
                        "by value (cloudpickle.register_pickle_by_value), or name an "
                        "installable source with requirements=[...]",
                    )
                )
            except importlib.metadata.PackageNotFoundError:
                continue
    if problems:
        raise ConfigurationError(_problems_message(problems))
    return tuple(pins[key] for key in sorted(pins))


def _unresolved(use: ImportUse) -> _Problem | None:
    try:
        spec = importlib.util.find_spec(use.name)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        if use.kind == "reference":
            # An object claiming a module nothing can import (generated classes): not ours.
            logger.debug("ignoring %r (%s): no such module here", use.name, use.where)
            return None
        return _Problem(
            use,
            "is not installed here, and aioknot pins every requirement to the version "
            "installed here without asking a package index: install it in this environment "
            f"(pip install ...), or name it with extra_requirements=['{use.name}==<version>']",
        )
    origin = spec.origin if spec.origin not in (None, "built-in", "frozen") else None
    location = f" ({origin})" if origin else ""
    return _Problem(
        use,
        f"is a local module{location}, not an installed distribution, and the worker "
        "cannot import it: ship it with the function "
        f"(cloudpickle.register_pickle_by_value({use.name})), make it installable "
        "(pip install -e .), or pass requirements=[...]",
    )


def _problems_message(problems: Sequence[_Problem]) -> str:
    lines = ["the worker image cannot be given everything the function imports:"]
    lines += [f"  - {p.use.name!r} (seen in {p.use.where}) {p.what}" for p in problems]
    lines.append(
        "requirements=[...] replaces the scan altogether; image='<uri>' uses a prebuilt image."
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------------- the list


def worker_requirements() -> tuple[str, ...]:
    """The worker's own needs, pinned like everything else: cloudpickle must match exactly."""
    pins = []
    for name in WORKER_DISTRIBUTIONS:
        try:
            pins.append(_pin(name))
        except importlib.metadata.PackageNotFoundError as error:
            raise ConfigurationError(
                f"{name} is not installed here; the worker image needs the version installed "
                f"here: pip install {name}"
            ) from error
        except _LocalDistribution as local:
            raise ConfigurationError(
                f"{name} is installed from a local path ({local.url}); the worker image needs "
                "a version a package index can provide"
            ) from None
    return tuple(pins)


def merge_requirements(*groups: Iterable[str]) -> tuple[str, ...]:
    """Later groups override earlier ones per project name; sorted, so the image tag is stable.

    Lines without a project name (pip options, bare URLs) are kept verbatim, first.
    """
    by_name: dict[str, str] = {}
    unnamed: dict[str, None] = {}
    for group in groups:
        for raw in group:
            line = raw.strip()
            if not line:
                continue
            if "\n" in line or "\r" in line:
                raise ConfigurationError(f"a requirement must be one line, got {raw!r}")
            name = requirement_name(line)
            if name is None:
                unnamed[line] = None
            else:
                by_name[name] = line
    return (*unnamed, *(by_name[key] for key in sorted(by_name)))


def image_requirements(
    func: Callable[..., object],
    *,
    requirements: Sequence[str] | None = None,
    extra_requirements: Sequence[str] = (),
    by_value_modules: Iterable[str | ModuleType] = (),
) -> tuple[str, ...]:
    """The requirements.txt lines of the worker image for ``func``.

    ``requirements`` replaces the scan; ``extra_requirements`` adds to it (and wins over a
    scanned pin of the same project). The worker's own cloudpickle and boto3 are always
    there, pinned to the versions installed here, unless the user named them.
    """
    if isinstance(requirements, str) or isinstance(extra_requirements, str):
        raise ConfigurationError(
            "requirements and extra_requirements are lists of requirement lines, "
            "e.g. ['numpy==2.1.3'], not one string"
        )
    extra = list(extra_requirements)
    if requirements is None:
        provided = {n for n in map(requirement_name, extra) if n is not None}
        scanned: Sequence[str] = pin_imports(
            scan_imports(func, by_value_modules=by_value_modules), provided=provided
        )
    else:
        scanned = list(requirements)
    worker = worker_requirements()
    result = merge_requirements(worker, scanned, extra)
    for line in set(result) - set(worker):
        if requirement_name(line) == "cloudpickle":
            logger.warning(
                "the image's cloudpickle requirement is %r but %s is installed here; pickles "
                "may not load in the worker unless the versions match",
                line,
                next(pin for pin in worker if requirement_name(pin) == "cloudpickle"),
            )
    return result
