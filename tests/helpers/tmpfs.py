"""A real tmpfs for fault tests: its "no space left on device" and "read-only" are the
kernel's own. Mounting needs root, which CI has; elsewhere the test is skipped, saying so."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(mount: Path, options: str = "size=1m") -> Iterator[Path]:
    """Mount a tmpfs with ``options`` at ``mount`` (made if missing) for the block's time."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs (a real full disk) needs root; CI runs as root")
    mount.mkdir(exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    # As root, a refusal is a failure of the machine the test needs, not a reason to skip.
    assert done.returncode == 0, f"mount -t tmpfs failed as root: {done.stderr.strip()}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)
