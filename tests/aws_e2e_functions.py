"""Functions the end-to-end AWS test runs in real containers.

They live in a module of their own, with only the imports they need, because a function from
a local module travels by value and its module's imports decide the worker image: the test
module's own imports (pytest, aioknot) must not end up in the image.
"""

from __future__ import annotations

import math
import os


def hypotenuse(pair: tuple[float, float]) -> float:
    return math.hypot(*pair)


def refuse_three(x: int) -> int:
    """Squares, but raises on 3 (the pipeline test's upstream step too)."""
    if x == 3:
        raise ValueError(f"three is right out (got {x})")
    return int(math.pow(x, 2))


def exit_on_three(x: int) -> int:
    if x == 3:
        os._exit(3)  # the process dies at once: no record, no traceback, exit code 3
    return x * x


def plus_one(x: int) -> int:
    """The downstream step of the pipeline test (upstream: `refuse_three`)."""
    return x + 1
