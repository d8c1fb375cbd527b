"""Turning the user's inputs into segments: lazily, pickled, packed behind an offset table.

Inputs may be any iterable or async iterable and are consumed one at a time, so a generator of
a million inputs never sits in memory. Segments start small and double, so the first inputs
are stored (and can start running) almost at once, while tens of thousands of inputs still
cost only tens of PUTs; a segment is also closed early when its inputs arrive slowly.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass

from ._backend import Segment
from ._exceptions import ConfigurationError
from ._pickling import pickle_input
from ._worker import pack_segment

FIRST_SEGMENT_INPUTS = 16
MAX_SEGMENT_INPUTS = 1_000
MAX_SEGMENT_BYTES = 16 * 1024 * 1024
# Inputs that trickle in (a slow generator) are flushed after this long, so they start.
MAX_SEGMENT_WAIT_SECONDS = 0.25


@dataclass(frozen=True)
class PackedSegment:
    segment: Segment
    data: bytes


def check_inputs(inputs: object) -> None:
    if isinstance(inputs, (str, bytes)) or not (
        isinstance(inputs, Iterable) or isinstance(inputs, AsyncIterable)
    ):
        raise ConfigurationError(
            f"inputs must be an iterable or async iterable of inputs, got "
            f"{type(inputs).__name__}: e.g. knot.map([1, 2, 3]) or knot.map(range(10))"
        )


async def _each(inputs: Iterable[object] | AsyncIterable[object]) -> AsyncIterator[object]:
    if isinstance(inputs, AsyncIterable):
        async for value in inputs:
            yield value
    else:
        for value in inputs:
            yield value


async def pack_inputs(
    inputs: Iterable[object] | AsyncIterable[object], *, starmap: bool
) -> AsyncIterator[PackedSegment]:
    """Yield packed segments in input order; raises ``SerializationError`` naming an input."""
    limit = FIRST_SEGMENT_INPUTS
    first = 0
    pending: list[bytes] = []
    size = 0
    opened = time.monotonic()
    index = 0
    async for value in _each(inputs):
        data = pickle_input(value, index, starmap=starmap)
        if not pending:
            opened = time.monotonic()
        pending.append(data)
        size += len(data)
        index += 1
        if (
            len(pending) >= limit
            or size >= MAX_SEGMENT_BYTES
            or time.monotonic() - opened >= MAX_SEGMENT_WAIT_SECONDS
        ):
            yield PackedSegment(Segment(first, len(pending)), pack_segment(pending))
            first, pending, size = index, [], 0
            limit = min(limit * 2, MAX_SEGMENT_INPUTS)
    if pending:
        yield PackedSegment(Segment(first, len(pending)), pack_segment(pending))
