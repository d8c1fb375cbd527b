"""Turning the user's inputs into segments: lazily, pickled, packed behind an offset table.

Inputs may be any iterable or async iterable and are consumed one at a time, so a generator of
a million inputs never sits in memory. Segments start small and double, so the first inputs
are stored (and can start running) almost at once, while tens of thousands of inputs still
cost only tens of PUTs; a segment is also closed early when its inputs arrive slowly.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass

from ._backend import Segment
from ._exceptions import ConfigurationError
from ._pickling import pickle_input
from ._worker import pack_segment

_fast_dumps = pickle.dumps
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


class _Packer:
    """Accumulates pickled inputs; says when a segment is full and hands it out."""

    def __init__(self) -> None:
        self.limit = FIRST_SEGMENT_INPUTS
        self.first = 0
        self.index = 0
        self.pending: list[bytes] = []
        self.size = 0
        self.opened = 0.0

    def add(self, value: object, starmap: bool) -> bool:
        """Pickle one input; True when the segment should be closed now."""
        try:
            # The common case inline (most of a tiny task's client cost is right here);
            # pickle_input handles starmap, cloudpickle fallback and the error message.
            data = _fast_dumps(value, 5) if not starmap else b""
        except Exception:
            data = b""
        if not data:
            data = pickle_input(value, self.index, starmap=starmap)
        pending = self.pending
        if not pending:
            self.opened = time.monotonic()
        pending.append(data)
        self.size += len(data)
        self.index += 1
        return (
            len(pending) >= self.limit
            or self.size >= MAX_SEGMENT_BYTES
            or (
                len(pending) % 64 == 0
                and time.monotonic() - self.opened >= MAX_SEGMENT_WAIT_SECONDS
            )
        )

    def take(self) -> PackedSegment:
        packed = PackedSegment(Segment(self.first, len(self.pending)), pack_segment(self.pending))
        self.first, self.pending, self.size = self.index, [], 0
        self.limit = min(self.limit * 2, MAX_SEGMENT_INPUTS)
        return packed


async def pack_inputs(
    inputs: Iterable[object] | AsyncIterable[object], *, starmap: bool
) -> AsyncIterator[PackedSegment]:
    """Yield packed segments in input order; raises ``SerializationError`` naming an input."""
    packer = _Packer()
    if isinstance(inputs, AsyncIterable):
        async for value in inputs:
            if packer.add(value, starmap):
                yield packer.take()
    else:
        # A plain loop: no await per input, so a list of 100,000 costs only the pickling.
        for value in inputs:
            if packer.add(value, starmap):
                yield packer.take()
    if packer.pending:
        yield packer.take()
