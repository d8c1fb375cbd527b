"""The examples run on the local backend as shipped: the README's main job (the paper's pi
example) and the pipeline of two knots."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "monte_pi.py"


def test_monte_pi_estimates_pi_with_both_faces(aioknot_home: str) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "40", "20000"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    estimates = [float(x) for x in re.findall(r"pi ~ ([0-9.]+)", result.stdout)]
    assert len(estimates) == 2, result.stdout
    # 800,000 points: the standard error is about 0.002; 0.05 is far outside chance.
    assert all(abs(estimate - 3.14159) < 0.05 for estimate in estimates), estimates
    assert "done-callback: 40 counts" in result.stdout
    assert re.search(r"pi-calc\s+succeeded\s+40/40", result.stdout)


def test_pipeline_example_summarises_every_walk_but_the_failed_one(aioknot_home: str) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE.parent / "pipeline.py"), "30"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "walk 13: not summarised: input 13 was not run: its input, input 13 of run walks/" in (
        result.stdout
    )
    found = re.search(
        r"29 of 30 walks summarised .* mean farthest distance ([0-9.]+)", result.stdout
    )
    assert found, result.stdout
    # max |S_n| over 20,000 steps: mean ~177, deviation ~0.5 x that; 30 walks: far from 0.
    assert 100 < float(found.group(1)) < 260
