"""The function benchmarks/batch_requests.py runs in real Batch containers.

A module of its own, with only the imports it needs: a function from a local module travels by
value and its module's imports decide the worker image (the benchmark's own imports, aioknot
among them, must not end up in it).
"""

from __future__ import annotations

import time


def task(x: int) -> int:
    """``x * x``, after 1 to 3 seconds (by ``x``: the children end spread out, as real ones do)."""
    time.sleep(1.0 + (x % 5) * 0.5)
    return x * x
