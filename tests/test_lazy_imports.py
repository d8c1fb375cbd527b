"""``import aioknot`` and a local knot import only what they use (issue 11).

Each check runs in a fresh interpreter (this one has imported everything already) and looks
at ``sys.modules``: what a module imports is a fact, how long it takes is measured by
``benchmarks/import_time.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import aioknot
from aioknot import _executor, _knot, _retention, _run, _sync

# What ``import aioknot`` alone leaves out: the async machinery, pickling and every SDK.
NOT_ON_IMPORT = (
    "anyio",
    "asyncio",
    "cloudpickle",
    "concurrent.futures",
    "importlib.metadata",
    "aioknot._knot",
    "aioknot._sync",
    "botocore",
    "boto3",
    "aiobotocore",
    "aiohttp",
    "aiodocker",
)
# What a local knot has no use for: the AWS SDK, the Docker client and the image code.
NOT_FOR_A_LOCAL_KNOT = (
    "botocore",
    "boto3",
    "aiobotocore",
    "aiohttp",
    "aiodocker",
    "aioknot._image.builder",
    "aioknot._image.requirements",
    "aioknot._image.dockerfile",
    "aioknot._backends.aws.image",
    "aioknot._backends.aws.backend",
)


def imported_by(code: str, watched: tuple[str, ...], home: Path) -> list[str]:
    """Which of ``watched`` a fresh interpreter has imported after running ``code``."""
    script = f"{textwrap.dedent(code)}\nimport json, sys\n"
    script += f"print(json.dumps([m for m in {watched!r} if m in sys.modules]))\n"
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "AIOKNOT_HOME": str(home)},
    )
    assert done.returncode == 0, done.stderr
    found: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def test_import_aioknot_imports_no_async_machinery_pickler_or_sdk(tmp_path: Path) -> None:
    assert imported_by("import aioknot", NOT_ON_IMPORT, tmp_path) == []


def test_the_errors_are_there_without_importing_the_rest(tmp_path: Path) -> None:
    code = """
        import aioknot
        assert issubclass(aioknot.TaskError, aioknot.KnotError)
        assert isinstance(aioknot.__version__, str)
        try:
            aioknot.NotAName
        except AttributeError as error:
            assert "NotAName" in str(error)
        else:
            raise AssertionError("a misspelt name must raise AttributeError")
    """
    assert imported_by(code, NOT_ON_IMPORT, tmp_path) == []


def test_every_public_name_is_the_real_object() -> None:
    namespace: dict[str, object] = {}
    exec("from aioknot import *", namespace)
    assert sorted(name for name in namespace if name != "__builtins__") == aioknot.__all__
    real = {
        "AsyncKnot": _knot.AsyncKnot,
        "Executor": _executor.Executor,
        "Job": _sync.Job,
        "Knot": _sync.Knot,
        "Run": _run.Run,
        "RunSummary": _retention.RunSummary,
    }
    for name, value in real.items():
        assert namespace[name] is value
        assert getattr(aioknot, name) is value
    assert set(aioknot.__all__) <= set(dir(aioknot))


def test_a_public_name_imports_its_module_on_first_use(tmp_path: Path) -> None:
    code = """
        import aioknot, sys
        assert "aioknot._knot" not in sys.modules
        from aioknot import AsyncKnot
        from aioknot._knot import AsyncKnot as real
        assert AsyncKnot is real and "AsyncKnot" in vars(aioknot)
    """
    assert imported_by(code, ("botocore", "aiohttp", "aiodocker"), tmp_path) == []


@pytest.mark.parametrize("run", ["asyncio.run(main())", "anyio.run(main)"])
def test_opening_a_local_knot_imports_no_aws_or_image_code(tmp_path: Path, run: str) -> None:
    """The knot checks every backend's options (the AWS ones too) and runs a map."""
    code = f"""
        import {run.partition(".")[0]}
        import aioknot

        def double(x):
            return 2 * x

        async def main():
            async with aioknot.AsyncKnot(double, backend="local", workers=1) as knot:
                assert [y async for y in knot.amap([1, 2, 3])] == [2, 4, 6]

        {run}
    """
    assert imported_by(code, NOT_FOR_A_LOCAL_KNOT, tmp_path) == []


def test_checking_aws_image_options_imports_no_image_code(tmp_path: Path) -> None:
    code = """
        from aioknot._options import parse_options
        options = parse_options(
            "local",
            {
                "registry": "127.0.0.1:5000/team/knots",
                "requirements": ["numpy==2.0.0"],
                "apt_packages": ["curl"],
                "vcpus": 2,
            },
        )
        settings = options.backends["aws"]
        assert settings.image.registry.repository == "team/knots"
        assert settings.image.requirements == ("numpy==2.0.0",)
    """
    assert imported_by(code, NOT_FOR_A_LOCAL_KNOT, tmp_path) == []
