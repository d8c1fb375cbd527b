"""mypy --strict on tests/typing/: results are typed by the function's return type, and an
option's typo or wrong type is flagged (each `type: ignore` there must be needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TYPING = Path(__file__).resolve().parent / "typing"


def test_results_and_options_are_typed() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--warn-unused-ignores",
            "--no-incremental",
            "--python-version",
            "3.11",
            str(TYPING),
        ],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stdout + done.stderr
