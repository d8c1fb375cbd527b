"""The worker image as data: spec defaults, Dockerfile layers, build context and content tag."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import aioknot._image.dockerfile as dockerfile_module
from aioknot._exceptions import ConfigurationError
from aioknot._image.dockerfile import (
    ENTRYPOINT,
    WORKER_PATH,
    ImageSpec,
    build_context,
    default_base_image,
    make_image_spec,
    read_worker_source,
    render_dockerfile,
)

WORKER = b"print('a stand-in worker')\n"
MINOR = f"{sys.version_info[0]}.{sys.version_info[1]}"


def spec(**changes: object) -> ImageSpec:
    base = make_image_spec(
        ["boto3==1.40.61", "cloudpickle==3.1.2", "PyYAML==6.0.3"],
        apt_packages=["libgomp1", "curl"],
        dockerfile_lines=["ENV OMP_NUM_THREADS=1"],
        worker_source=WORKER,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_defaults_follow_the_client_python_and_the_installed_worker() -> None:
    made = make_image_spec(["cloudpickle==3.1.2"])
    assert made.base_image == default_base_image() == f"python:{MINOR}-slim"
    assert made.python_version == MINOR
    installed = Path(dockerfile_module.__file__).parent.parent / "_worker.py"
    assert made.worker_source == read_worker_source() == installed.read_bytes()


def test_a_different_base_image_is_allowed_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="aioknot"):
        made = make_image_spec([], base_image="my.registry/gpu-python:3", worker_source=WORKER)
    assert made.base_image == "my.registry/gpu-python:3"
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert MINOR in caplog.text and "cloudpickle" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="aioknot"):
        make_image_spec([], base_image=default_base_image(), worker_source=WORKER)
    assert not caplog.records


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"apt_packages": ["curl; rm -rf /"]}, "apt_packages"),
        ({"apt_packages": "curl"}, "list of strings"),
        ({"dockerfile_lines": "RUN true"}, "list of strings"),
        ({"base_image": "python:3.11 slim"}, "base_image"),
        ({"requirements": ["numpy\nscipy"]}, "one non-empty line"),
    ],
)
def test_bad_options_are_refused(options: dict[str, object], match: str) -> None:
    arguments: dict[str, object] = {"requirements": [], "worker_source": WORKER, **options}
    requirements = arguments.pop("requirements")
    with pytest.raises(ConfigurationError, match=match):
        make_image_spec(requirements, **arguments)  # type: ignore[arg-type]


def test_layers_go_from_least_to_most_often_changed() -> None:
    text = render_dockerfile(spec())
    lines = text.splitlines()
    assert lines[1] == f"FROM python:{MINOR}-slim"

    def index(prefix: str) -> int:
        return next(i for i, line in enumerate(lines) if line.startswith(prefix))

    apt = index("RUN apt-get update")
    extra = index("ENV OMP_NUM_THREADS=1")
    requirements = index("COPY requirements.txt")
    pip = index("RUN PIP_BREAK_SYSTEM_PACKAGES=1 python -m pip install")
    worker = index("COPY aioknot_worker.py")
    user = index("USER ")
    entry = index("ENTRYPOINT ")
    assert index("RUN python -c") < apt < extra < requirements < pip < worker < user < entry
    assert "curl libgomp1" in lines[apt]  # sorted: the tag must not depend on their order
    assert lines[user] == "USER 10001:10001"  # not root
    assert json.loads(lines[entry].removeprefix("ENTRYPOINT ")) == list(ENTRYPOINT)
    assert list(ENTRYPOINT) == ["python", "/opt/aioknot/aioknot_worker.py"] and lines[
        worker
    ].endswith(WORKER_PATH)


def test_no_apt_layer_without_apt_packages() -> None:
    assert "apt-get" not in render_dockerfile(spec(apt_packages=()))


@pytest.mark.parametrize(("version", "ok"), [(MINOR, True), ("3.9", False)])
def test_the_first_step_refuses_a_base_image_with_another_python(version: str, ok: bool) -> None:
    line = next(
        line
        for line in render_dockerfile(spec(python_version=version)).splitlines()
        if line.startswith("RUN python -c")
    )
    # Run the step's shell command here, where `python` is this client's Python.
    command = line.removeprefix("RUN ").replace("python -c", f"{sys.executable} -c", 1)
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=False)
    assert (result.returncode == 0) is ok
    if not ok:
        assert "cloudpickle needs the same minor version" in result.stderr


def test_the_context_holds_exactly_the_three_files_and_is_reproducible() -> None:
    made = spec()
    data = build_context(made)
    assert data == build_context(spec()) == made.context()
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        members = {m.name: archive.extractfile(m).read() for m in archive.getmembers()}  # type: ignore[union-attr]
    assert members == {
        "Dockerfile": made.dockerfile().encode(),
        "requirements.txt": b"boto3==1.40.61\ncloudpickle==3.1.2\nPyYAML==6.0.3\n",
        "aioknot_worker.py": WORKER,
    }


def test_the_tag_is_a_valid_docker_tag_and_a_pure_function_of_the_content() -> None:
    tag = spec().tag
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tag)
    assert tag.startswith(f"py{MINOR}-")
    assert spec().tag == tag
    # The same dependencies listed in another order give the same image.
    assert spec(apt_packages=("curl", "libgomp1")).tag == tag
    assert "worker_source" not in repr(spec())


@pytest.mark.parametrize(
    "change",
    [
        {"requirements": ("boto3==1.40.61", "cloudpickle==3.1.2", "PyYAML==6.0.2")},
        {"apt_packages": ("curl",)},
        {"dockerfile_lines": ("ENV OMP_NUM_THREADS=2",)},
        {"base_image": "python:3.11-bookworm"},
        {"python_version": "3.12"},
        {"worker_source": WORKER + b"# changed\n"},
    ],
)
def test_any_change_of_content_changes_the_tag(change: dict[str, object]) -> None:
    assert spec(**change).tag != spec().tag
