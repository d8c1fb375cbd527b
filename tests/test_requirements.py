"""The worker image's requirements: found from real functions, pinned offline to this venv."""

from __future__ import annotations

import importlib.metadata
import logging
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from docker.errors import NotFound

from aioknot._exceptions import ConfigurationError
from aioknot._image.requirements import (
    image_requirements,
    merge_requirements,
    pin_imports,
    scan_imports,
    worker_requirements,
)

# Functions of this test module are scanned as if cloudpickle shipped them by value, the way
# aioknot's pickling ships a local module that is not installed.
HERE = [__name__]


def pin(distribution: str) -> str:
    meta = importlib.metadata.distribution(distribution)
    return f"{meta.metadata['Name']}=={meta.version}"


def uses_inline_imports(text):
    import json
    import os.path

    import botocore.config
    import requests as rq
    from yaml import safe_load

    return json, os.path, botocore.config, rq, safe_load(text)


def uses_module_globals(text):
    # `yaml` and `requests` are imported at the top of this file, never in this source.
    return yaml.safe_load(text), requests.codes


def uses_imported_class(name):
    return NotFound(name)


def imports_something_missing(x):
    import aioknot_surely_not_installed_anywhere  # noqa: F401

    return x


def imports_relatively(x):
    from .sibling import helper  # noqa: F401

    return x


class SessionAdapter(requests.adapters.HTTPAdapter):
    def describe(self) -> str:
        import docker

        return docker.__name__


def uses_local_class(x):
    return SessionAdapter().describe(), x


def test_inline_imports_are_pinned_to_installed_versions_and_stdlib_is_ignored() -> None:
    uses = scan_imports(uses_inline_imports, by_value_modules=HERE)
    assert set(uses) == {"botocore", "requests", "yaml"}
    reqs = image_requirements(uses_inline_imports, by_value_modules=HERE)
    for distribution in ("PyYAML", "requests", "botocore", "cloudpickle", "boto3"):
        assert pin(distribution) in reqs
    assert not any(line.startswith(("json", "os")) for line in reqs)


def test_module_level_imports_used_by_the_function_are_found_through_its_globals() -> None:
    assert set(scan_imports(uses_module_globals, by_value_modules=HERE)) == {"requests", "yaml"}


def test_a_class_imported_from_a_package_names_that_package() -> None:
    assert set(scan_imports(uses_imported_class, by_value_modules=HERE)) == {"docker"}


def test_a_local_class_travels_with_its_base_class_and_its_methods_imports() -> None:
    assert set(scan_imports(uses_local_class, by_value_modules=HERE)) == {"docker", "requests"}


def test_closures_and_default_arguments_count() -> None:
    session = requests.Session()

    def closure(x):
        return session, x

    def with_default(x, loader=yaml.SafeLoader):
        return loader, x

    assert set(scan_imports(closure, by_value_modules=HERE)) == {"requests"}
    assert set(scan_imports(with_default, by_value_modules=HERE)) == {"yaml"}


class CallableTask:
    def __call__(self, x):
        import docker

        return docker, x


def test_a_callable_object_of_a_local_class_needs_what_its_methods_import() -> None:
    assert set(scan_imports(CallableTask(), by_value_modules=HERE)) == {"docker"}


def test_a_function_of_an_installed_package_needs_that_package() -> None:
    assert pin("PyYAML") in image_requirements(yaml.safe_dump)


def test_an_import_not_installed_here_is_named_with_what_to_do() -> None:
    with pytest.raises(ConfigurationError) as caught:
        image_requirements(imports_something_missing, by_value_modules=HERE)
    message = str(caught.value)
    assert "aioknot_surely_not_installed_anywhere" in message
    assert "not installed here" in message
    assert "extra_requirements" in message and "requirements=[...]" in message


def test_extra_requirements_can_supply_what_is_not_installed_here() -> None:
    reqs = image_requirements(
        imports_something_missing,
        by_value_modules=HERE,
        extra_requirements=["aioknot-surely-not-installed-anywhere==1.0"],
    )
    assert "aioknot-surely-not-installed-anywhere==1.0" in reqs


def test_requirements_replace_the_scan_but_the_worker_needs_stay() -> None:
    reqs = image_requirements(
        imports_something_missing, by_value_modules=HERE, requirements=["numpy==2.1.3"]
    )
    assert reqs == merge_requirements(worker_requirements(), ["numpy==2.1.3"])
    assert pin("cloudpickle") in reqs and pin("boto3") in reqs


def test_extra_requirements_win_over_a_scanned_pin_of_the_same_project() -> None:
    reqs = image_requirements(
        uses_module_globals, by_value_modules=HERE, extra_requirements=["pyyaml>=6"]
    )
    assert "pyyaml>=6" in reqs
    assert pin("PyYAML") not in reqs


def test_a_different_cloudpickle_is_allowed_but_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="aioknot"):
        reqs = image_requirements(
            uses_module_globals, by_value_modules=HERE, extra_requirements=["cloudpickle==2.2"]
        )
    assert "cloudpickle==2.2" in reqs
    assert "cloudpickle" in caplog.text and "pickles may not load" in caplog.text


def test_relative_imports_are_not_taken_for_packages() -> None:
    assert scan_imports(imports_relatively, by_value_modules=HERE) == {}


def test_unreadable_source_falls_back_to_the_bytecode_and_the_globals() -> None:
    namespace: dict[str, object] = {"yaml": yaml, "__name__": "__main__"}
    exec(  # noqa: S102 - the point: code whose source inspect cannot find
        "def made(x):\n    import requests\n    from docker import errors\n    return yaml, x\n"
        "lam = lambda x: __import__('json') and yaml.dump(x)\n",
        namespace,
    )
    assert set(scan_imports(namespace["made"])) == {"docker", "requests", "yaml"}  # type: ignore[arg-type]
    assert set(scan_imports(namespace["lam"])) == {"yaml"}  # type: ignore[arg-type]


def test_a_lambda_whose_source_line_does_not_parse_still_gets_its_globals() -> None:
    functions = [
        lambda x: yaml.dump(x),  # the source line of this lambda is not a statement
    ]
    assert set(scan_imports(functions[0], by_value_modules=HERE)) == {"yaml"}


@pytest.fixture
def local_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A module of the user's project: importable here, installed by no distribution."""
    (tmp_path / "aioknot_test_local_helpers.py").write_text(
        textwrap.dedent(
            """
            import requests
            from docker import errors

            def helper(x):
                return requests.codes, x
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "aioknot_test_local_helpers"
    sys.modules.pop("aioknot_test_local_helpers", None)


def test_a_local_module_the_worker_cannot_import_is_reported(local_module: str) -> None:
    namespace: dict[str, object] = {"__name__": "__main__"}
    exec(f"import {local_module} as helpers\ndef f(x):\n    return helpers.helper(x)\n", namespace)
    with pytest.raises(ConfigurationError) as caught:
        image_requirements(namespace["f"])  # type: ignore[arg-type]
    message = str(caught.value)
    assert local_module in message and "local module" in message
    assert "register_pickle_by_value" in message


def test_a_local_module_shipped_by_value_contributes_its_imports(local_module: str) -> None:
    namespace: dict[str, object] = {"__name__": "__main__"}
    exec(f"import {local_module} as helpers\ndef f(x):\n    return helpers.helper(x)\n", namespace)
    uses = scan_imports(namespace["f"], by_value_modules=[local_module])  # type: ignore[arg-type]
    assert set(uses) == {"docker", "requests"}


def test_a_function_from_a_by_value_module_contributes_only_what_it_uses(local_module: str) -> None:
    module = __import__(local_module)
    # helper refers to requests only; the module's `docker` import is not shipped with it.
    assert set(scan_imports(module.helper, by_value_modules=[module])) == {"requests"}


def test_pin_imports_reports_every_problem_at_once() -> None:
    uses = {
        **scan_imports(imports_something_missing, by_value_modules=HERE),
        **scan_imports(uses_module_globals, by_value_modules=HERE),
    }
    with pytest.raises(ConfigurationError, match="aioknot_surely_not_installed_anywhere"):
        pin_imports(uses)


def test_merge_requirements_is_sorted_deduplicated_and_later_groups_win() -> None:
    merged = merge_requirements(
        ["requests==2.0", "PyYAML==6.0"],
        ["--extra-index-url https://example.invalid/simple", "pyyaml==5.4", "Boto3==1"],
    )
    assert merged == (
        "--extra-index-url https://example.invalid/simple",
        "Boto3==1",
        "pyyaml==5.4",
        "requests==2.0",
    )
    with pytest.raises(ConfigurationError, match="one line"):
        merge_requirements(["numpy\nscipy"])


def test_one_string_instead_of_a_list_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="list"):
        image_requirements(uses_module_globals, requirements="numpy")  # type: ignore[arg-type]


def test_scanning_leaves_the_root_logger_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # pipreqs' logging.debug() would call basicConfig() on a root logger without handlers.
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    scan_imports(uses_inline_imports, by_value_modules=HERE)
    assert root.handlers == []


def test_scanning_is_fast() -> None:
    started = time.perf_counter()
    for _ in range(10):
        image_requirements(uses_inline_imports, by_value_modules=HERE)
    assert (time.perf_counter() - started) / 10 < 0.5
