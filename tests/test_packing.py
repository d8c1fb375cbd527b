"""Packing inputs into segments (aioknot/_inputs.py), read back as a worker reads them.

`pack_inputs` is driven with a ``store`` of the test's own that keeps each packed segment;
each segment is then read the worker's way (aioknot/_worker.py `read_inputs`): the header
and offsets with one ranged read, then the blocks holding a range of inputs with a second.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import anyio
import pytest

from aioknot import SerializationError, _inputs
from aioknot._inputs import PackedSegment, pack_inputs
from aioknot._worker import read_inputs


class Stored:
    """The store `pack_inputs` writes to: keeps every segment, in the order it was stored."""

    def __init__(self) -> None:
        self.segments: list[PackedSegment] = []

    async def __call__(self, packed: PackedSegment) -> None:
        self.segments.append(packed)

    @property
    def counts(self) -> list[int]:
        return [packed.segment.count for packed in self.segments]

    def inputs(self) -> list[Any]:
        """Every input, read back from the segments as the workers would read them."""
        return [
            value for packed in self.segments for value in read(packed, 0, packed.segment.count)
        ]


def read(packed: PackedSegment, start: int, stop: int) -> list[Any]:
    """Positions ``start..stop`` of a segment, the worker's way (its own reader)."""
    return read_inputs(lambda lo, hi: packed.data[lo:hi], start, stop)


def read_all(packed: PackedSegment) -> list[Any]:
    return read(packed, 0, packed.segment.count)


async def packed(inputs: Iterable[Any] | AsyncIterator[Any], starmap: bool = False) -> Stored:
    stored = Stored()
    await pack_inputs(inputs, starmap=starmap, store=stored)
    return stored


@pytest.fixture
def no_flush_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A segment is closed by its size only: on a loaded machine a pause of the pulling
    thread would otherwise close one early (that timer has its own test below)."""
    monkeypatch.setattr(_inputs, "MAX_SEGMENT_WAIT_SECONDS", 600.0)


@pytest.mark.usefixtures("no_flush_timer")
async def test_segments_start_small_then_double_and_tile_the_inputs() -> None:
    stored = await packed(iter(range(10_000)))  # a stream: how many inputs is unknown
    counts = stored.counts
    # The first inputs are stored (and can start) almost at once ...
    assert counts[0] == _inputs.FIRST_SEGMENT_INPUTS < 100
    # ... then each segment is twice the one before, until they are as large as they get ...
    largest = max(counts)
    growing = counts[: counts.index(largest)]
    assert all(b == 2 * a for a, b in zip(growing, growing[1:], strict=False))
    assert growing[-1] < largest <= 2 * growing[-1]
    assert counts[len(growing) : -1] == [largest] * (len(counts) - len(growing) - 1)
    # ... so that ten thousand inputs cost a few tens of PUTs, not ten thousand.
    assert len(counts) < 20
    # Each starts where the one before ended: no input is missing or stored twice.
    firsts = [packed.segment.first for packed in stored.segments]
    assert firsts == [sum(counts[:n]) for n in range(len(counts))]
    assert stored.inputs() == list(range(10_000))


@pytest.mark.usefixtures("no_flush_timer")
async def test_when_the_number_of_inputs_is_known_segments_are_a_share_of_them() -> None:
    """The first segment is as small as ever (work starts at once); the rest need no slow
    start: segments of a quarter of the inputs (at least 1,000, at most 16,000)."""
    for count, share in [(10_000, 2_500), (200_000, _inputs.MAX_KNOWN_SEGMENT_INPUTS)]:
        stored = await packed(range(count))
        counts = stored.counts
        assert counts[0] == _inputs.FIRST_SEGMENT_INPUTS
        assert counts[1:-1] == [share] * (len(counts) - 2) and counts[-1] <= share
        assert stored.inputs() == list(range(count))
    small = await packed(range(3_000))
    assert small.counts == [16, 1_000, 1_000, 984]
    unknown = await packed(iter(range(20_000)))  # a generator: no length to go by
    assert max(unknown.counts) == _inputs.MAX_SEGMENT_INPUTS


async def test_a_worker_reads_any_range_of_a_segment_with_two_reads() -> None:
    inputs = ["a", None, 1.5, list(range(300)), {"k": b"v"}, ("t", 2)] * 2  # one segment
    stored = await packed(inputs)
    (segment,) = stored.segments
    for start in range(len(inputs)):
        for stop in range(start + 1, len(inputs) + 1):
            assert read(segment, start, stop) == inputs[start:stop]


@pytest.mark.usefixtures("no_flush_timer")
async def test_generators_and_async_generators_pack_alike_and_lists_hold_the_same() -> None:
    values = [f"input {i}" for i in range(3_000)]

    def generated() -> Iterator[str]:
        yield from values

    async def streamed() -> AsyncIterator[str]:
        for value in values:
            yield value

    from_list = await packed(values)
    from_generator = await packed(generated())
    from_async = await packed(streamed())
    assert from_generator.counts == from_async.counts
    assert [s.data for s in from_generator.segments] == [s.data for s in from_async.segments]
    # A list's length is known: its segments are cut differently, around the same inputs.
    assert from_list.inputs() == from_generator.inputs() == values


async def test_a_segment_is_closed_early_once_its_bytes_reach_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_inputs, "MAX_SEGMENT_BYTES", 10_000)  # the rule, at a smaller size
    # Checked as each block is pickled: one input per block here, as for inputs this large.
    monkeypatch.setattr(_inputs, "BLOCK_BYTES", 3_000)
    inputs = [bytes([i]) * 3_000 for i in range(20)]
    stored = await packed(inputs)
    assert stored.inputs() == inputs
    for packed_segment in stored.segments[:-1]:
        sizes = [len(pickle.dumps(x, 5)) for x in read_all(packed_segment)]
        # Closed by the input that reached the limit, not before and not after.
        assert sum(sizes) >= 10_000 > sum(sizes[:-1])
    assert max(stored.counts) < _inputs.FIRST_SEGMENT_INPUTS


def _block_sizes(stored: Stored) -> list[int]:
    """Inputs per block of each segment, from its header (magic, count, block size)."""
    return [int.from_bytes(packed.data[16:24], "little") for packed in stored.segments]


async def test_inputs_are_pickled_in_blocks_that_hold_about_the_same_bytes() -> None:
    """The first segment has one input per block (nothing is known yet); then small inputs
    share blocks of `BLOCK_INPUTS`, large ones fewer, so that a block stays near
    `BLOCK_BYTES` and a worker given one input does not unpickle many large ones."""
    small = await packed(range(2_000))
    assert small.inputs() == list(range(2_000))
    assert _block_sizes(small)[0] == 1
    assert set(_block_sizes(small)[1:]) == {_inputs.BLOCK_INPUTS}
    large_input = 20_000
    large = await packed([bytes([i]) * large_input for i in range(100)])
    assert large.inputs() == [bytes([i]) * large_input for i in range(100)]
    expected = _inputs.BLOCK_BYTES // (large_input + 40)  # a pickle adds a few bytes
    assert set(_block_sizes(large)[1:]) == {expected} and 1 < expected < _inputs.BLOCK_INPUTS


async def test_an_input_that_cannot_be_pickled_is_named_in_a_block_of_good_ones() -> None:
    inputs: list[Any] = list(range(200))
    inputs[150] = threading.Lock()
    with pytest.raises(SerializationError, match="input 150 ") as raised:
        await packed(inputs)
    assert raised.value.index == 150


async def test_starmap_inputs_are_stored_as_tuples_of_arguments() -> None:
    stored = await packed([[1, 2], (3, 4), range(2)], starmap=True)
    assert stored.inputs() == [(1, 2), (3, 4), (0, 1)]
    with pytest.raises(SerializationError) as spread:
        await packed([(1, 2), {"a": 1}], starmap=True)
    assert spread.value.index == 1 and "kwargs=" in str(spread.value)


async def test_an_unpicklable_input_stops_packing_naming_its_index() -> None:
    inputs: list[object] = list(range(40))
    inputs[20] = threading.Lock()
    stored = Stored()
    with pytest.raises(SerializationError) as caught:
        await pack_inputs(inputs, starmap=False, store=stored)
    assert caught.value.index == 20 and "input 20" in str(caught.value)
    # What was stored before it is whole, and nothing at or after it was stored.
    assert stored.inputs() == list(range(sum(stored.counts)))
    assert sum(stored.counts) <= 20


@pytest.mark.parametrize("kind", ["generator", "async generator"])
async def test_inputs_that_raise_midway_raise_as_themselves(kind: str) -> None:
    def generated() -> Iterator[int]:
        yield from range(100)
        raise KeyError("the inputs broke")

    async def streamed() -> AsyncIterator[int]:
        for i in range(100):
            yield i
        raise KeyError("the inputs broke")

    stored = Stored()
    inputs = generated() if kind == "generator" else streamed()
    with pytest.raises(KeyError, match="the inputs broke"):  # not inside an ExceptionGroup
        await pack_inputs(inputs, starmap=False, store=stored)
    assert stored.inputs() == list(range(sum(stored.counts)))


async def test_a_trickle_of_inputs_is_stored_before_its_segment_fills() -> None:
    """Three inputs, then the generator waits for them to be stored: only the timer that
    closes a part-full segment can store them (else this would wait forever)."""
    stored = Stored()
    first_stored = anyio.Event()

    async def keep(segment: PackedSegment) -> None:
        await stored(segment)
        first_stored.set()

    async def trickle() -> AsyncIterator[int]:
        for i in range(3):
            yield i
        await first_stored.wait()
        yield 3

    with anyio.fail_after(30):
        await pack_inputs(trickle(), starmap=False, store=keep)
    assert stored.counts == [3, 1]
    assert stored.inputs() == [0, 1, 2, 3]


async def test_a_long_generator_is_pulled_only_a_little_ahead_of_what_is_stored() -> None:
    pulled = 0
    pulled_at_first_store: list[int] = []

    def numbers() -> Iterator[int]:
        nonlocal pulled
        for i in range(200_000):
            pulled += 1
            yield i

    async def store(segment: PackedSegment) -> None:
        if not pulled_at_first_store:
            pulled_at_first_store.append(pulled)

    await pack_inputs(numbers(), starmap=False, store=store)
    assert pulled == 200_000
    # Never the whole generator in memory: a bounded look-ahead, not a list of every input.
    assert pulled_at_first_store[0] < 20_000
