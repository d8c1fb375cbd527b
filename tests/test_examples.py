"""The README's main job: the paper's pi example runs on the local backend as shipped."""

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
