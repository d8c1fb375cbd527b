"""Turning the user's inputs into segments: lazily, pickled in blocks behind an offset table.

Inputs may be any iterable or async iterable and are consumed one at a time, so a generator of
a million inputs never sits in memory. Segments start small and double, so the first inputs
are stored (and can start running) almost at once, while tens of thousands of inputs still
cost only tens of PUTs; a segment is also closed early when its inputs arrive slowly.
"""

from __future__ import annotations

import contextlib
import pickle
import queue
import threading
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread

from ._backends.base import Segment
from ._exceptions import ConfigurationError
from ._pickling import pickle_block, starmap_arguments
from ._tasks import task_group
from ._worker import pack_segment

_fast_dumps = pickle.dumps
FIRST_SEGMENT_INPUTS = 16
MAX_SEGMENT_INPUTS = 1_000
# When the number of inputs is known (a list, a range), the segments after the first are a
# quarter of them (at least MAX_SEGMENT_INPUTS, at most this): 100,000 inputs take 8
# segments rather than 106 (fewer writes and hand-overs, chunks that span more inputs), while
# the first still starts as small as ever.
MAX_KNOWN_SEGMENT_INPUTS = 16_000
KNOWN_SEGMENT_SHARE = 4
MAX_SEGMENT_BYTES = 16 * 1024 * 1024
# Inputs are pickled in blocks of up to this many, of about this many bytes (see _Packer).
BLOCK_INPUTS = 64
BLOCK_BYTES = 64 * 1024
# Inputs that trickle in (a slow generator) are flushed after this long, so they start.
MAX_SEGMENT_WAIT_SECONDS = 0.25
# The event loop is given back at least this often while inputs are pickled or pulled.
LOOP_SLICE_SECONDS = 0.005
PULL_QUEUE_SIZE = 1_024  # inputs pulled ahead from a sync iterator (and taken per batch)


@dataclass(frozen=True)
class PackedSegment:
    segment: Segment
    data: bytes


def check_inputs(inputs: object) -> None:
    if isinstance(inputs, (str, bytes)) or not (
        isinstance(inputs, Iterable) or isinstance(inputs, AsyncIterable)
    ):
        pipeline = ""
        if callable(getattr(inputs, "result", None)):  # a Job or a Future of another knot
            pipeline = (
                "; to feed one knot's results to another, give AsyncKnot.map the other's Run "
                "(run_b = await knot_b.map(await knot_a.map(xs))), or give the values "
                "(job.result())"
            )
        raise ConfigurationError(
            f"inputs must be an iterable or async iterable of inputs, got "
            f"{type(inputs).__name__}: e.g. knot.map([1, 2, 3]) or knot.map(range(10))"
            f"{pipeline}"
        )


class _Packer:
    """Accumulates inputs in pickled blocks; says when a segment is full and hands it out.

    Inputs are pickled a block at a time (`aioknot._worker.pack_segment`): one pickle of up to
    `BLOCK_INPUTS` inputs costs a few times less per input than one each, in the client and in
    the worker that unpickles them. A block is kept near `BLOCK_BYTES`, judged from the inputs
    pickled so far, so that a worker given one large input does not unpickle many: the first
    segment, before anything is known, has one input per block.
    """

    def __init__(self, starmap: bool, length: int | None = None) -> None:
        self.starmap = starmap
        self.limit = FIRST_SEGMENT_INPUTS  # inputs in the segment being filled
        self.max_inputs = MAX_SEGMENT_INPUTS
        self.known = length is not None
        if length is not None:
            share = length // KNOWN_SEGMENT_SHARE
            self.max_inputs = min(MAX_KNOWN_SEGMENT_INPUTS, max(MAX_SEGMENT_INPUTS, share))
        self.first = 0  # the index of its first input
        self.index = 0  # inputs added so far
        self.block_size = 1  # inputs per block in the segment being filled
        self.block: list[object] = []  # the block being filled
        self.blocks: list[bytes] = []  # the segment's pickled blocks
        self.size = 0  # their bytes
        self.opened = 0.0
        self._pickled_inputs = 0  # inputs pickled so far, and their bytes: sizes blocks
        self._pickled_bytes = 0

    @property
    def pending(self) -> int:
        """Inputs added to the segment being filled."""
        return self.index - self.first

    def add(self, value: object) -> bool:
        """Add one input; True when the segment should be closed now."""
        if self.index == self.first:
            self.opened = time.monotonic()
        if self.starmap and type(value) is not tuple:
            value = starmap_arguments(value, self.index)
        block = self.block
        block.append(value)
        self.index += 1
        if len(block) >= self.block_size:
            self._close_block()
        elif self.index - self.first < self.limit:
            return False  # the common case, at once: the rest is checked once per block
        return (
            self.index - self.first >= self.limit
            or self.size >= MAX_SEGMENT_BYTES
            or self.overdue()
        )

    def add_block(self, values: list[object]) -> bool:
        """Add ``values`` as a whole block (not a starmap; no block begun; at most
        ``block_size`` of them, fewer only as the segment's last): `add` without a Python
        step per input. True when the segment should be closed now."""
        if self.index == self.first:
            self.opened = time.monotonic()
        self.block = values
        self.index += len(values)
        self._close_block()
        return (
            self.index - self.first >= self.limit
            or self.size >= MAX_SEGMENT_BYTES
            or self.overdue()
        )

    def _close_block(self) -> None:
        block = self.block
        try:
            # The common case inline: most of a tiny task's client cost is right here.
            data = _fast_dumps(block, 5)
        except Exception:
            # cloudpickle where needed; the error names the input that cannot be sent.
            data = pickle_block(block, self.index - len(block))
        self.blocks.append(data)
        self.block = []
        self.size += len(data)
        self._pickled_inputs += len(block)
        self._pickled_bytes += len(data)

    def overdue(self) -> bool:
        """Inputs that trickle in are stored after a short wait, so that they start."""
        return bool(self.pending) and time.monotonic() - self.opened >= MAX_SEGMENT_WAIT_SECONDS

    def take(self) -> PackedSegment:
        if self.block:
            self._close_block()
        count = self.pending
        data = pack_segment(self.blocks, count, self.block_size)
        packed = PackedSegment(Segment(self.first, count), data)
        self.first, self.blocks, self.size = self.index, [], 0
        # Known inputs need no slow start past the first segment: the rest go in segments of
        # their share at once (fewer segments: fewer writes, and chunks that span more).
        self.limit = self.max_inputs if self.known else min(self.limit * 2, self.max_inputs)
        per_input = self._pickled_bytes / max(1, self._pickled_inputs)
        self.block_size = max(1, min(BLOCK_INPUTS, int(BLOCK_BYTES / max(per_input, 1.0))))
        return packed


class StretchPacker:
    """Packs stretches of consecutive inputs that come in any order (a pipeline's upstream
    results, as they complete) into segments, blocks sized as the inputs so far say.

    The values go as they are, even to a starmap: an upstream value that is not a tuple of
    arguments fails its own input in the worker (`aioknot._worker.spread_arguments`), as it
    does where Batch workers read the upstream records themselves, not the whole submission.
    """

    def __init__(self) -> None:
        self._packer = _Packer(starmap=False)

    def pack(self, first: int, values: Sequence[object]) -> list[PackedSegment]:
        packer = self._packer
        packer.first = packer.index = first
        packed = []
        for value in values:
            if packer.add(value):
                packed.append(packer.take())
        if packer.pending:
            packed.append(packer.take())
        return packed


Store = Callable[[PackedSegment], Awaitable[None]]


async def pack_inputs(
    inputs: Iterable[object] | AsyncIterable[object], *, starmap: bool, store: Store
) -> None:
    """Pack the inputs into segments and ``store`` each, in input order.

    Raises ``SerializationError`` naming an input that cannot be pickled, and whatever the
    inputs' own iteration raises, as itself.
    """
    if isinstance(inputs, (list, tuple, range)):
        packer = _Packer(starmap, len(inputs))
        await _pack_in_memory(inputs, packer, store)
    else:
        packer = _Packer(starmap)
        await _pack_stream(inputs, packer, store)
    if packer.pending:
        await store(packer.take())


async def _pack_in_memory(inputs: Sequence[object], packer: _Packer, store: Store) -> None:
    """Inputs already in memory: sliced a block at a time into the packer (one C call per
    block, where most of a tiny task's client cost used to be), with a checkpoint now and then
    so that a long list never holds the event loop for more than a few milliseconds."""
    since = time.monotonic()
    position, count = 0, len(inputs)
    while position < count:
        size = min(packer.block_size, packer.limit - packer.pending)
        if packer.starmap or size < 2:
            full = packer.add(inputs[position])
            position += 1
        else:
            full = packer.add_block(list(inputs[position : position + size]))
            position += size
        if full:
            await store(packer.take())
            since = time.monotonic()
        elif not packer.block and time.monotonic() - since > LOOP_SLICE_SECONDS:
            await anyio.lowlevel.checkpoint()  # looked at once per block
            since = time.monotonic()


class _Pulled:
    """Inputs pulled from a sync iterator by a thread of their own, through a bounded queue.

    The thread may block inside the iterator (a generator reading files, waiting on
    something) without blocking the event loop or holding back the inputs it already gave.
    """

    _END = object()

    def __init__(self, inputs: Iterable[object]) -> None:
        self._iterator = iter(inputs)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=PULL_QUEUE_SIZE)
        self._stop = threading.Event()
        self._ended = False  # the end marker was taken
        self.error: BaseException | None = None

    def pull_all(self) -> None:
        """In a worker thread: put every input on the queue, then the end marker."""
        try:
            for value in self._iterator:
                if not self._put(value):
                    return
        except Exception as error:
            self.error = error
        self._put(self._END)

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def next_batch(self) -> list[object] | None:
        """In a worker thread: wait for an input, then take all that are ready; None at the end."""
        if self._ended:
            return None
        batch = [self._queue.get()]
        while len(batch) < PULL_QUEUE_SIZE:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if batch[-1] is self._END:
            batch.pop()
            self._ended = True
            return batch or None
        return batch

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(self._END)  # wakes a next_batch that waits


async def _pack_stream(
    inputs: Iterable[object] | AsyncIterable[object], packer: _Packer, store: Store
) -> None:
    """Inputs that are produced as they go (generators, async iterables).

    A sync iterator is pulled by a thread of its own, so a slow generator never blocks the
    event loop; a timer stores a part-full segment once it has waited
    ``MAX_SEGMENT_WAIT_SECONDS``, so a trickle of inputs starts running.
    """
    failure: list[BaseException] = []  # raised as itself after the group, not wrapped
    lock = anyio.Lock()  # segments are stored one at a time, in order
    send, receive = anyio.create_memory_object_stream[list[object]](4)

    async def produce(group: anyio.abc.TaskGroup) -> None:
        async with send:
            try:
                if isinstance(inputs, AsyncIterable):
                    async for value in inputs:
                        await send.send([value])
                    return
                pulled = _Pulled(inputs)

                async def pull_in_thread() -> None:
                    # Abandoned on cancel: the iterator may block; stop() ends it later.
                    await anyio.to_thread.run_sync(pulled.pull_all, abandon_on_cancel=True)

                group.start_soon(pull_in_thread)
                try:
                    while True:
                        batch = await anyio.to_thread.run_sync(
                            pulled.next_batch, abandon_on_cancel=True
                        )
                        if batch is None:
                            break
                        await send.send(batch)
                finally:
                    pulled.stop()
                if pulled.error is not None:
                    raise pulled.error
            except Exception as error:
                failure.append(error)

    async def consume(group: anyio.abc.TaskGroup) -> None:
        try:
            async with receive:
                async for batch in receive:
                    async with lock:
                        for value in batch:
                            if packer.add(value):
                                await store(packer.take())
        except Exception as error:
            failure.append(error)
        group.cancel_scope.cancel()  # the timer's work is over too

    async def flush_overdue() -> None:
        while True:
            wait = MAX_SEGMENT_WAIT_SECONDS
            if packer.pending:
                wait -= time.monotonic() - packer.opened
            await anyio.sleep(max(wait, 0.001))
            async with lock:
                if packer.overdue():
                    # Shielded: the group is cancelled when the inputs end, and a segment
                    # taken from the packer must be stored whole.
                    with anyio.CancelScope(shield=True):
                        await store(packer.take())

    async with task_group() as group:
        group.start_soon(produce, group)
        group.start_soon(flush_overdue)
        group.start_soon(consume, group)
    if failure:
        raise failure[0]
