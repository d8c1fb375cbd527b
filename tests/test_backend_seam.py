"""The seams: a new backend is one module plus one registry line, stores come from one
registry (or are passed open), and the core imports no backend or store by name.

The backend here is real, not a mock: it runs the worker's own `Worker.run_chunk` on threads of
this process, against the knot's real store. It is what a minimal third backend looks like.
"""

from __future__ import annotations

import ast
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

import aioknot
from aioknot import _backends
from aioknot._backends.base import (
    Backend,
    BackendKind,
    BackendRun,
    RunSpec,
    Segment,
    TaskListener,
)
from aioknot._options import KnotOptions
from aioknot._stores.local import LocalStore
from aioknot._worker import Worker

# -- a third backend: the worker on threads of this process --------------------------------


class ThreadRun(BackendRun):
    backend_name = "threads"

    def __init__(self, spec: RunSpec, listener: TaskListener, backend: ThreadBackend) -> None:
        self.spec, self.listener, self.backend = spec, listener, backend
        self.running = 0
        self.last = False
        self.cancelled = False
        self.over = anyio.Event()

    @property
    def job_ids(self) -> list[str]:
        return []

    async def submit(self, segments: Sequence[Segment], *, last: bool) -> None:
        for segment in segments:
            self.running += 1
            self.backend.group.start_soon(self._run, segment)
        self.last = self.last or last
        self._check_over()

    async def _run(self, segment: Segment) -> None:
        try:
            if not self.cancelled:
                await anyio.to_thread.run_sync(self._run_chunk, segment)
        finally:
            self.running -= 1
            self._check_over()

    def _run_chunk(self, segment: Segment) -> None:
        self.backend.threads_used.add(threading.get_ident())
        Worker().run_chunk(
            store_url=self.spec.store_url,
            run=self.spec.run_prefix,
            function_key=self.spec.function_key,
            segment_first=segment.first,
            start=segment.first,
            stop=segment.stop,
            starmap=self.spec.starmap,
            environment=dict(self.spec.store_environment),
        )

    def _check_over(self) -> None:
        if self.cancelled or (self.last and self.running == 0):
            self.over.set()

    async def watch(self) -> None:
        await self.over.wait()

    async def cancel(self) -> None:
        self.cancelled = True
        self._check_over()


class ThreadBackend(Backend):
    name = "threads"

    def __init__(self) -> None:
        self.threads_used: set[int] = set()

    @property
    def group(self) -> Any:
        assert self._group is not None, "the knot starts its backend before any run"
        return self._group

    def open_run(self, spec: RunSpec, listener: TaskListener) -> ThreadRun:
        return ThreadRun(spec, listener, self)


def _parse(options: Mapping[str, object], core: KnotOptions) -> None:
    return None  # this backend takes no options of its own


KIND = BackendKind(
    name="threads",
    option_names=frozenset(),
    parse_options=_parse,
    create=lambda options: ThreadBackend(),
)


def square(x: int) -> int:
    return x * x


@pytest.fixture
def threads_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    # The one registry line a new backend needs (monkeypatched: the registry is the library's).
    monkeypatch.setitem(_backends.BACKENDS, "threads", f"{__name__}:KIND")


# -- tests ----------------------------------------------------------------------------------


async def test_a_registered_backend_runs_by_name(threads_registered: None, tmp_path: Path) -> None:
    async with aioknot.AsyncKnot(
        square, name="seam", backend="threads", directory=str(tmp_path)
    ) as knot:
        assert knot.backend == "threads"
        assert sorted([y async for y in knot.amap(range(50))]) == [x * x for x in range(50)]
        run = await knot.map(range(20))
        assert await run.gather() == [x * x for x in range(20)]
        assert (await run.status())["succeeded"] == 20


async def test_a_backend_object_runs_without_a_registry_line(tmp_path: Path) -> None:
    backend = ThreadBackend()
    async with aioknot.AsyncKnot(
        square, name="seam", backend=backend, directory=str(tmp_path)
    ) as knot:
        assert await (await knot.map([3, 4])).gather() == [9, 16]
    assert backend.threads_used and threading.get_ident() not in backend.threads_used


async def test_a_backend_object_serves_one_knot(tmp_path: Path) -> None:
    backend = ThreadBackend()
    aioknot.AsyncKnot(square, name="first", backend=backend, directory=str(tmp_path))
    with pytest.raises(aioknot.ConfigurationError, match="one backend object per knot"):
        aioknot.AsyncKnot(square, name="second", backend=backend, directory=str(tmp_path))


async def test_what_a_backend_lacks_is_said_plainly(tmp_path: Path) -> None:
    async with aioknot.AsyncKnot(
        square, name="seam", backend=ThreadBackend(), directory=str(tmp_path)
    ) as knot:
        run = await knot.map([1, 2])
        assert await run.gather() == [1, 4]
        with pytest.raises(aioknot.ConfigurationError, match="threads backend cannot re-attach"):
            await knot.attach(run.id)
        with pytest.raises(aioknot.ConfigurationError, match="threads backend cannot show"):
            await run.logs(0)
        with pytest.raises(aioknot.ConfigurationError, match="cannot delete an environment"):
            await knot.clobber(environment=True)
        # What it has (the store's part) still works.
        assert await knot.clobber() > 0


def test_an_unknown_backend_names_the_registered_ones(
    threads_registered: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(aioknot.ConfigurationError) as caught:
        aioknot.AsyncKnot(square, backend="kubernetes")
    assert "'local' or 'aws' or 'threads'" in str(caught.value)
    monkeypatch.setenv("AIOKNOT_BACKEND", "nomad")
    with pytest.raises(aioknot.ConfigurationError, match="AIOKNOT_BACKEND 'nomad'"):
        aioknot.AsyncKnot(square)


async def test_an_open_store_object_is_used_and_left_open(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "mine"))
    async with aioknot.AsyncKnot(square, name="seam", backend="local", store=store) as knot:
        assert await (await knot.map([5])).gather() == [25]
    # Still the user's: the knot did not close it, and the run's data is in it.
    results = list((tmp_path / "mine" / "knots" / "seam" / "runs").glob("*/results/*"))
    assert len(results) == 1
    assert await store.exists_many([str(results[0].relative_to(tmp_path / "mine"))]) == [True]
    await store.aclose()


async def test_a_store_location_is_a_url_or_a_path(tmp_path: Path) -> None:
    async with aioknot.AsyncKnot(
        square, name="seam", backend="local", store=f"file://{tmp_path}/by-url"
    ) as knot:
        assert await (await knot.map([6])).gather() == [36]
    assert list((tmp_path / "by-url" / "knots" / "seam").iterdir())
    with pytest.raises(aioknot.ConfigurationError, match="not a store aioknot knows"):
        aioknot.AsyncKnot(square, store="ftp://example.com/x")
    with pytest.raises(aioknot.ConfigurationError, match="pass only one of them"):
        aioknot.AsyncKnot(square, store=str(tmp_path), directory=str(tmp_path))
    with pytest.raises(aioknot.ConfigurationError, match="not a valid S3 bucket name"):
        aioknot.AsyncKnot(square, store="s3://Not_A_Bucket/x")
    with pytest.raises(aioknot.ConfigurationError, match="open store object"):
        aioknot.AsyncKnot(square, store=42)  # type: ignore[arg-type]


# -- the core imports no backend or store by name -----------------------------------------

PACKAGE = Path(aioknot.__file__).parent
# The core: every flat module but the worker (self-contained, tested below) and the error
# boundary (_errors turns the SDKs' errors into aioknot's, _retry tells their transient ones
# apart: they read those errors, and call no SDK).
BOUNDARY = {"_worker.py", "_errors.py", "_retry.py"}
CORE = [path for path in PACKAGE.glob("_*.py") if path.name not in BOUNDARY]
# What only a backend, a store implementation or the image step may import.
IMPLEMENTATIONS = (
    "_backends.local",
    "_backends.aws",
    "_stores.local",
    "_stores.s3",
    "_image",
    "aioboto3",
    "botocore",
    "aiodocker",
)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("path", CORE, ids=lambda path: path.name)
def test_the_core_imports_no_backend_by_name(path: Path) -> None:
    imported = {name.lstrip(".") for name in _imports(path)}
    offending = sorted(
        name
        for name in imported
        if any(name == part or name.startswith(part + ".") for part in IMPLEMENTATIONS)
    )
    assert not offending, f"{path.name} imports {offending}: go through the registries"


def test_the_worker_imports_nothing_of_aioknot() -> None:
    imported = _imports(PACKAGE / "_worker.py")
    assert not any(name.startswith((".", "aioknot")) for name in imported), imported
