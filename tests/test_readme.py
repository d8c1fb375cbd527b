"""Every Python block in README.md runs as written (on the local backend, no AWS account)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```$", README.read_text(), flags=re.S | re.M)


def test_the_readme_has_python_blocks() -> None:
    assert BLOCKS, "README.md lost its Python examples"


@pytest.mark.parametrize("number", range(len(BLOCKS)))
def test_readme_block_runs_as_written(number: int, tmp_path: Path) -> None:
    script = tmp_path / f"readme_block_{number}.py"
    script.write_text(BLOCKS[number])
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=110,
        cwd=tmp_path,
        env={**os.environ, "AIOKNOT_HOME": str(tmp_path / "home"), "AIOKNOT_BACKEND": "local"},
    )
    assert done.returncode == 0, done.stderr
    # Local workers pass a task's output on to this process's stderr as it comes: the log
    # following block prints the same lines from run.logs(..., follow=True); nothing else.
    passed_on = [
        line.removeprefix("input 0: ")
        for line in done.stdout.splitlines()
        if line.startswith("input 0: ")
    ]
    assert done.stderr.splitlines() == passed_on, done.stderr
    # What the blocks print is checked where they print it: the pi example's estimates.
    estimates = [float(x) for x in re.findall(r"pi ~ ([0-9.]+)", done.stdout)]
    assert len(estimates) == BLOCKS[number].count('"pi ~"'), done.stdout
    # 8,000,000 points: the standard error is under 0.001; 0.05 is far outside chance.
    assert all(abs(estimate - 3.14159) < 0.05 for estimate in estimates), done.stdout


def test_ci_runs_exactly_the_readmes_test_command() -> None:
    commands = re.search(r"^```bash\n(.*?)^```$", README.read_text(), flags=re.S | re.M)
    assert commands is not None, "README.md lost its two commands"
    install_and_run, install_and_test = commands.group(1).splitlines()
    assert "examples/" in install_and_run
    ci = (README.parent / ".ci" / "run").read_text().splitlines()
    assert ci[-1] == install_and_test
    # The checks come before the tests, so that CI fails fast on a lint or type error.
    for check in ("ruff check", "ruff format --check", "mypy", "pytest"):
        assert check in install_and_test
