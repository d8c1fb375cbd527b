"""How the local backend cuts a run's queued inputs into chunks (aioknot/_backends/local.py).

A chunk is what one worker process is handed at a time. It is sized from the run's measured
time per input: the first chunk is one input (nothing is measured yet), tiny inputs then
travel in large chunks and slow ones one at a time, and the tail of a run is shared out over
every process, but not in pieces so small that handing them out costs more than it balances.

No process starts here: the backend's dispatcher is switched off (`Unstarted`) and the test
takes the chunks itself, reporting each one's time as a worker would.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from aioknot._backends import local
from aioknot._backends.base import RunSpec, Segment
from aioknot._backends.local import LocalBackend, LocalRun


class Unstarted(LocalBackend):
    """A local backend with no processes: submitting queues the inputs, and only the test
    takes chunks off the queue."""

    async def dispatch(self) -> None:
        pass


class NoListener:
    def done(self, first: int, count: int) -> None:
        pass

    def lost(self, index: int, reason: str, **details: object) -> None:
        pass


@pytest.fixture
def backend() -> Iterator[Unstarted]:
    backend = Unstarted(workers=4)
    yield backend
    local._LIVE_RUN_IDS.difference_update({"20261121T000000-c0ffee"})


async def a_run(backend: Unstarted, *segments: Segment) -> LocalRun:
    spec = RunSpec(
        knot="chunks",
        run_id="20261121T000000-c0ffee",
        run_prefix="knots/chunks/runs/20261121T000000-c0ffee",
        function_key="knots/chunks/functions/x.pkl",
        store_url="file:///nowhere",
        starmap=False,
    )
    run = backend.open_run(spec, NoListener())
    await run.submit(list(segments), last=True)
    return run


def take_all(backend: Unstarted, run: LocalRun, seconds_per_input: float) -> list[range]:
    """Every chunk in the order the backend hands them out, each reported back as taking
    ``seconds_per_input`` per input (as its worker would) before the next is taken."""
    total = run.queued
    chunks: list[range] = []
    while (chunk := backend._next_chunk()) is not None:
        size = chunk.stop - chunk.start
        chunks.append(range(chunk.start, chunk.stop))
        # Every input is queued, running or done: taking a chunk moves it, loses nothing.
        assert run.queued + run.running + sum(map(len, chunks[:-1])) == total
        run.running -= size  # done, as the worker's report says
        run.measured(seconds_per_input * size, size)
    return chunks


async def test_the_first_chunk_of_a_run_is_one_input_to_measure_it(backend: Unstarted) -> None:
    run = await a_run(backend, Segment(0, 1_000))
    assert run.seconds_per_input is None
    assert run.chunk_size(backend.workers) == 1


@pytest.mark.parametrize("seconds_per_input", [1e-6, 1e-4, 1e-3, 0.01])
async def test_a_chunk_is_about_the_same_time_of_work_whatever_the_input(
    backend: Unstarted, seconds_per_input: float
) -> None:
    run = await a_run(backend, Segment(0, 100_000))  # far from the tail
    run.measured(seconds_per_input, 1)
    size = run.chunk_size(backend.workers)
    work = size * seconds_per_input
    if size < local.MAX_CHUNK:
        # As long as a pipe round trip is noise beside it, as short as that allows.
        assert local.TARGET_CHUNK_SECONDS / 2 < work <= local.TARGET_CHUNK_SECONDS
    else:
        assert work < local.TARGET_CHUNK_SECONDS  # tiny inputs: capped by count instead


async def test_tiny_inputs_travel_in_large_chunks_and_slow_ones_one_at_a_time(
    backend: Unstarted,
) -> None:
    run = await a_run(backend, Segment(0, 100_000))
    run.measured(2e-6, 1)  # a few microseconds: a chunk of one would be mostly round trip
    assert run.chunk_size(backend.workers) >= 1_000
    run.seconds_per_input = None
    run.measured(2.0, 1)  # seconds: nothing should wait behind it in its chunk
    assert run.chunk_size(backend.workers) == 1


async def test_the_tail_of_a_run_is_shared_out_over_every_process(backend: Unstarted) -> None:
    run = await a_run(backend, Segment(0, 12))
    run.measured(0.01, 1)  # 10 ms each: a chunk of 5 would be the usual size
    assert run.chunk_size(backend.workers) == 3  # 12 left for 4 processes: 3 each
    # ... but not in pieces of less work than the round trip is worth.
    run.seconds_per_input = None
    run.measured(1e-5, 1)  # 12 inputs are 0.1 ms of work in all: one chunk takes them
    assert run.chunk_size(backend.workers) >= 12


async def test_the_measure_follows_the_inputs_halfway_at_each_chunk(backend: Unstarted) -> None:
    run = await a_run(backend, Segment(0, 1_000))
    run.measured(1.0, 100)
    assert run.seconds_per_input == pytest.approx(0.01)
    run.measured(0.5, 10)  # slower inputs now: 50 ms each
    assert run.seconds_per_input == pytest.approx(0.03)
    run.measured(0.5, 10)
    assert run.seconds_per_input == pytest.approx(0.04)  # and on towards them


async def test_chunks_tile_the_inputs_within_their_segments(backend: Unstarted) -> None:
    segments = [Segment(0, 16), Segment(16, 32), Segment(48, 1_000)]
    run = await a_run(backend, *segments)
    chunks = take_all(backend, run, seconds_per_input=0.001)
    # In order, every input exactly once ...
    assert [i for chunk in chunks for i in chunk] == list(range(1_048))
    # ... a chunk never spans two segments (a worker reads one segment's offset table) ...
    for chunk in chunks:
        (holder,) = [s for s in segments if s.first <= chunk.start < s.stop]
        assert chunk.stop <= holder.stop
    # ... the first is one input, then about a chunk's time of work each, and the tail in
    # smaller pieces, shared out.
    largest = max(len(chunk) for chunk in chunks)
    assert len(chunks[0]) == 1
    assert local.TARGET_CHUNK_SECONDS / 2 < largest * 0.001 <= local.TARGET_CHUNK_SECONDS
    last_full = max(n for n, chunk in enumerate(chunks) if len(chunk) == largest)
    tail = [len(chunk) for chunk in chunks[last_full + 1 :]]
    assert len(tail) >= backend.workers and tail == sorted(tail, reverse=True)
    # (None of less work than a round trip is worth, but the remainder.)
    assert all(size * 0.001 >= local.MIN_CHUNK_SECONDS for size in tail[:-1])
    assert run.queued == 0 and run.running == 0
