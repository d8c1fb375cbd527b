"""Function shipping: closures, lambdas, __main__, local modules by value, installed by ref."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import cloudpickle
import pytest

from aioknot import AsyncKnot, SerializationError
from aioknot._pickling import is_local_module, pickle_function, pickle_input

pytestmark = pytest.mark.usefixtures("aioknot_home")


def test_closures_and_lambdas_travel_by_value() -> None:
    offset = 10

    def closure(x: int) -> int:
        return x + offset

    for func in (closure, lambda x: x * 3):
        shipped = pickle_function(func)
        assert cloudpickle.loads(shipped.data)(2) == func(2)
        assert len(shipped.digest) == 64


def test_the_digest_is_the_content() -> None:
    def f(x: int) -> int:
        return x

    assert pickle_function(f).digest == pickle_function(f).digest
    assert pickle_function(f).digest != pickle_function(lambda x: x + 1).digest


def test_installed_functions_travel_by_reference() -> None:
    import json

    shipped = pickle_function(json.dumps)
    assert len(shipped.data) < 100 and b"json" in shipped.data
    assert shipped.modules_by_value == ()


def test_an_unpicklable_function_fails_before_anything() -> None:
    lock = threading.Lock()

    def uses_lock(x: int) -> int:
        with lock:
            return x

    with pytest.raises(SerializationError, match="cannot be pickled") as caught:
        AsyncKnot(uses_lock, backend="local")
    assert caught.value.index is None
    with pytest.raises(SerializationError, match="callable"):
        AsyncKnot(42, backend="local")  # type: ignore[arg-type]


def test_an_input_that_is_not_a_tuple_under_starmap_is_named() -> None:
    with pytest.raises(SerializationError, match="input 5 is a int") as caught:
        pickle_input(3, 5, starmap=True)
    assert caught.value.index == 5


def _run_script(tmp_path: Path, main: str, **files: str) -> str:
    for name, text in files.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    (tmp_path / "main.py").write_text(textwrap.dedent(main))
    result = subprocess.run(
        [sys.executable, "main.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_function_in_main_runs_on_the_workers(tmp_path: Path) -> None:
    out = _run_script(
        tmp_path,
        """
        import aioknot
        def cube(x):
            return x ** 3
        if __name__ == "__main__":
            with aioknot.Knot(cube, backend="local") as knot:
                print(knot.map(range(5)).result(timeout=60))
        """,
    )
    assert out == "[0, 1, 8, 27, 64]"


def test_a_local_module_that_is_not_installed_travels_by_value(tmp_path: Path) -> None:
    """The worker runs elsewhere (cwd is not its path): it could not import ``mylib``."""
    out = _run_script(
        tmp_path,
        """
        import os, sys, tempfile
        import aioknot, mylib
        from aioknot._pickling import pickle_function
        if __name__ == "__main__":
            assert pickle_function(mylib.scaled).modules_by_value == ("mylib",)
            os.chdir(tempfile.mkdtemp())  # workers start here, where mylib is not
            sys.path[0] = os.getcwd()
            with aioknot.Knot(mylib.scaled, backend="local") as knot:
                print(knot.map(range(4)).result(timeout=60))
        """,
        **{
            "mylib.py": """
        FACTOR = 7
        def helper(x):
            return x * FACTOR
        def scaled(x):
            return helper(x) + 1
        """
        },
    )
    assert out == "[1, 8, 15, 22]"


def test_local_module_detection() -> None:
    import json

    import cloudpickle as installed

    assert not is_local_module(json)
    assert not is_local_module(installed)
    assert not is_local_module(sys.modules["__main__"])
