"""The local backend: the worker module run as a pool of processes on this machine.

Each process runs the worker file's loop (`aioknot._worker.serve`), forked by this client's
zygote (`zygote`: a fork serves in ~5 ms where a fresh interpreter took ~76): it takes one
chunk (a contiguous range of one stored segment) per line on its channel and reports each
written record. Chunks are sized from the measured time per input, so tiny tasks travel in
large chunks and slow ones one at a time (a slow input never holds a queue of others behind
it), and a run's last inputs are spread over all processes. A process that dies loses only
the input it was running: that one becomes ``TaskLost`` with the signal or exit code, the
rest of its chunk goes back to the queue.

Nothing one input does holds back another: a finished record is written while the next input
runs (the worker's flusher); the inputs queued behind an input that runs far longer than its
chunk was expected to take are taken back and handed to other processes (the backend lowers
the chunk's "stop at" in the process's progress file, which the worker reads before each
input); an input whose record cannot be written (a full disk) is reported lost with the
reason, by the worker that keeps going. Each process leads its own process group, and
stopping a process stops the group: what the user's function started dies with it.

The same semantics as AWS Batch:

* ``timeout=``: an input that runs longer is stopped (its process group killed) and lost with
  a reason that starts with "timeout"; the rest of its chunk goes back to the queue, and a
  new process takes over. As on Batch, a timed-out attempt is final (never retried).
* ``retries=``: an input whose process died (a signal, the out-of-memory killer, an exit) is
  run again, alone, up to ``retries`` attempts in all, as Batch retries a child whose host
  failed; an input whose function raised has its result (a ``TaskError``) and never runs again.
* Logs: what each input's task writes to stdout and stderr is stored under the run
  (``<run>/logs/<index>``, only when it wrote something; the worker's `OutputCapture`), also
  what a killed input wrote (the backend keeps it from the process's output file), and
  ``run.logs(index)`` reads it back, every attempt in order.

Runs that share the workers are served in turn: each run has its own queue, and a free process
takes its next chunk from the next run that has work waiting (round-robin), so a small run
started behind a large one waits for one chunk per process, not for the large run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import anyio

from .. import _worker
from .._exceptions import ConfigurationError, KnotError
from .._manifest import Manifest
from .._options import KnotOptions
from .._stores.base import Store
from .._tasks import task_group
from . import zygote
from .base import (
    Backend,
    BackendKind,
    BackendRun,
    Capacity,
    KnotSetup,
    LogTail,
    RunSpec,
    Segment,
    TaskListener,
)
from .zygote import WorkerProcess

# A chunk should take about this long: long enough that pipe round trips are noise, short
# enough that the tail of a run is shared out evenly.
TARGET_CHUNK_SECONDS = 0.05
# ... and the tail of a run is not split into chunks of less than this much work: below it
# the round trip costs more than the balance gains.
MIN_CHUNK_SECONDS = 0.005
# A chunk holds at most this many inputs (a round trip costs ~0.4 ms: 10,000 tiny inputs, ~10 ms
# of work, make it noise; records are still written every GROUP_SECONDS within a chunk).
MAX_CHUNK = 10_000
# The rest of a chunk is taken back when its current input has kept the chunk this many times
# its expected time (and at least this long): the expected time is a guess from the run's
# measured inputs, so a little over it is noise, several times over is a stuck input.
STUCK_FACTOR = 4.0
STUCK_FLOOR_SECONDS = 0.5
OWNER_POLL_SECONDS = 1.0
# A worker that could not be started (no processes or memory to spare) is tried again after.
RESTART_SECONDS = 1.0
# Keeping a killed input's output is worth this long at most: its loss is reported either way.
SAVE_OUTPUT_SECONDS = 10.0
# Runs this process is running now: a run re-attached in its own process is over when it is
# no longer here (the process is alive, so its pid says nothing).
_LIVE_RUN_IDS: set[str] = set()


def death_reason(returncode: int | None) -> str:
    if returncode is None:
        return (
            "the worker process ended while running it, and how is unknown: the zygote that "
            "forked it (and reports how workers end) was gone"
        )
    if returncode is not None and returncode < 0:
        return f"the worker process was killed by {_worker.killed_by(-returncode)}"
    return f"the worker process exited with code {returncode} while running it"


def timeout_reason(timeout: float) -> str:
    return f"timeout: the task ran longer than timeout={timeout:g}s and was stopped"


@dataclass
class _Range:
    run: LocalRun
    segment: int  # first index of the segment the range is in
    start: int
    stop: int
    attempt: int = 1  # > 1: one input run again after its process died (alone in its range)


# The worker's progress file (_worker.PROGRESS_*): the index it is running (or -1), and the
# index its chunk must stop at. The worker maps it; the backend reads and writes it by offset.
_I64 = struct.Struct("<q")
_NO_LIMIT = 2**63 - 1


def _read_running(fd: int) -> int:
    try:
        (index,) = _I64.unpack(os.pread(fd, _I64.size, _worker.PROGRESS_RUNNING))
    except (OSError, struct.error):
        return -1
    return int(index)


def _read_slot(fd: int, offset: int, default: int) -> int:
    try:
        (value,) = _I64.unpack(os.pread(fd, _I64.size, offset))
    except (OSError, struct.error):
        return default
    return int(value)


def _running_since(fd: int) -> tuple[int, float] | None:
    """The input the worker runs and since when (``time.monotonic()``); None between inputs,
    or when it moved on while being read (it started the next one just now)."""
    running = _read_running(fd)
    started = _read_slot(fd, _worker.PROGRESS_STARTED, 0)
    if running < 0 or _read_running(fd) != running:
        return None
    return running, started / 1e9


def _write_stop_at(fd: int, index: int) -> None:
    os.pwrite(fd, _I64.pack(index), _worker.PROGRESS_STOP_AT)


def _read_output(path: str, passed_fd: int) -> tuple[bytes, int]:
    """What the worker's output file holds (the output of the input it ran when it died), and
    how much of it the worker had passed on to this process's stderr already."""
    try:
        with open(path, "rb") as file:
            output = file.read()
    except OSError:
        return b"", 0
    return output, max(0, min(len(output), _read_slot(passed_fd, _worker.PROGRESS_PASSED, 0)))


@dataclass
class _WorkerProcess:
    process: WorkerProcess
    progress: int  # the progress file's descriptor
    output_path: str  # the file its stdout and stderr point at (the running input's output)
    chunk: _Range | None = None
    next_index: int = 0  # the first index of the chunk not yet reported done (or failed)
    killed: bool = False  # by cancel_run: it takes no more work, and its death blames no one
    timed_out: int | None = None  # the input it was killed for running over timeout=
    deadline: float = math.inf  # when the rest of the chunk is taken back
    timeout_at: float = math.inf  # when the running input may have overrun timeout=
    wake: anyio.Event = field(default_factory=anyio.Event)  # a new deadline was set


class LocalRun(BackendRun):
    backend_name = "local"

    def __init__(self, backend: LocalBackend, spec: RunSpec, listener: TaskListener) -> None:
        self._backend = backend
        self.spec = spec
        self.listener = listener
        self.seconds_per_input: float | None = None
        self.ranges: deque[_Range] = deque()  # this run's queue, served in turn with others'
        self.queued = 0  # inputs waiting in the backend's queue
        self.running = 0  # inputs of chunks handed to a process and not yet done
        self.submitted = 0  # inputs below this index were submitted
        self.last_submitted = False
        self.cancelled = False
        self._over = anyio.Event()
        _LIVE_RUN_IDS.add(spec.run_id)

    @property
    def job_ids(self) -> list[str]:
        return []

    async def submit(self, segments: Sequence[Segment], *, last: bool) -> None:
        for segment in segments:
            self._backend.enqueue(_Range(self, segment.first, segment.first, segment.stop))
            self.queued += segment.count
            self.submitted = max(self.submitted, segment.stop)
        self.last_submitted = self.last_submitted or last
        self.check_over()
        await self._backend.dispatch()

    def check_over(self) -> None:
        if self.cancelled or (self.last_submitted and self.queued == 0 and self.running == 0):
            self._over.set()
            _LIVE_RUN_IDS.discard(self.spec.run_id)

    async def watch(self) -> None:
        await self._over.wait()

    async def status(self) -> dict[str, int]:
        return {"queued": self.queued, "running": self.running}

    async def cancel(self) -> None:
        self.cancelled = True
        await self._backend.cancel_run(self)
        self.check_over()

    async def logs(self, index: int) -> list[str]:
        """What input ``index``'s task wrote to stdout and stderr, every attempt in order."""
        return await self.tail_logs(index).read(final=True)

    def tail_logs(self, index: int) -> LogTail:
        return LocalLogTail(self._backend.knot_store, self.spec.run_prefix, index)

    def chunk_size(self, workers: int) -> int:
        fair_share = math.ceil(self.queued / workers) if self.queued else 1
        if self.seconds_per_input is None:
            return 1  # measure first: the first chunk of a run is one input
        per_input = max(self.seconds_per_input, 1e-7)
        by_time = int(TARGET_CHUNK_SECONDS / per_input)
        floor = int(MIN_CHUNK_SECONDS / per_input)
        return max(1, min(MAX_CHUNK, by_time, max(fair_share, floor)))

    def measured(self, seconds: float, count: int) -> None:
        per_input = seconds / max(count, 1)
        previous = self.seconds_per_input
        self.seconds_per_input = per_input if previous is None else 0.5 * (previous + per_input)


class AttachedLocalRun(BackendRun):
    """A local run re-attached from its manifest: over once the process that ran it is gone."""

    backend_name = "local"

    def __init__(self, backend: LocalBackend, spec: RunSpec, manifest: Manifest) -> None:
        self._backend = backend
        self._spec = spec
        self._run_id = spec.run_id
        self._owner = manifest.owner

    @property
    def job_ids(self) -> list[str]:
        return []

    async def submit(self, segments: Sequence[Segment], *, last: bool) -> None:
        raise RuntimeError("a re-attached run takes no new inputs")

    def _owner_alive(self) -> bool:
        if self._owner.get("host") != socket.gethostname():
            return True  # cannot tell from here: trust the store
        if self._owner.get("pid") == os.getpid():
            return self._run_id in _LIVE_RUN_IDS
        try:
            os.kill(int(self._owner.get("pid", 0)), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError):
            return True
        return True

    async def watch(self) -> None:
        # Another process's liveness cannot be awaited, only looked at now and then.
        while True:
            if not self._owner_alive():
                return
            await anyio.sleep(OWNER_POLL_SECONDS)

    async def cancel(self) -> None:
        """Refuse, saying where it runs, while another process runs it (its workers are that
        process's children, out of reach). In this process, the run itself is cancelled first
        (`Run.cancel` sees to that), so there is nothing left to stop here."""
        if self._owner_alive() and self._owner:
            raise ConfigurationError(
                f"run {self._run_id} is running in process {self._owner.get('pid')} on "
                f"{self._owner.get('host')}, whose worker processes are its own: cancel it "
                "there (or stop that process); it can be cancelled from anywhere on Batch"
            )

    async def logs(self, index: int) -> list[str]:
        return await self.tail_logs(index).read(final=True)

    def tail_logs(self, index: int) -> LogTail:
        return LocalLogTail(self._backend.knot_store, self._spec.run_prefix, index)


class LocalBackend(Backend):
    name = "local"
    runs_outlive_client = False  # the workers are this process's children

    def __init__(
        self,
        workers: int | None = None,
        *,
        timeout: float | None = None,
        retries: int | None = None,
    ) -> None:
        self.workers = workers or os.cpu_count() or 1
        # Seconds an input may run (None: no limit) and attempts per input whose process
        # dies; the knot's timeout= and retries= when not given here (see `bind`).
        self.timeout = timeout
        self.retries = retries
        # The runs with queued work, in the order they are served: a free process takes a
        # chunk from the first, which goes to the back if it has more (round-robin).
        self._queue: deque[LocalRun] = deque()
        self._processes: list[_WorkerProcess] = []
        self._idle: list[_WorkerProcess] = []
        self._starting = 0
        self._closed = False
        # The store, for logs: read by run.logs(), written for a killed input. Opened on
        # first use (most knots never need it); closed by aclose when it was opened here.

    def bind(self, knot: KnotSetup) -> None:
        super().bind(knot)
        if self.timeout is None:
            self.timeout = knot.options.timeout
        if self.retries is None:
            self.retries = knot.options.retries
        if not knot.operating:
            # Now, in the knot's constructor: a script has no threads yet, so the zygote can
            # be forked from this process and is ready at once (see `zygote`).
            zygote.prestart()

    @property
    def attempts(self) -> int:
        """Attempts per input whose process dies: retries=, by default 1 (no retry), because
        locally the process's death is most often the input's own doing (memory)."""
        return self.retries or 1

    async def prepare(self) -> None:
        """Start the worker processes now, while the first inputs are still being packed."""
        starting = self.workers - len(self._processes) - self._starting
        if starting > 0:
            self._tell(f"starting {starting} worker processes")
        self._spawn(starting)

    def capacity(self) -> Capacity:
        return Capacity(tasks=self.workers)  # resources do not limit a local worker

    def open_run(self, spec: RunSpec, listener: TaskListener) -> LocalRun:
        return LocalRun(self, spec, listener)

    def attach_run(
        self, spec: RunSpec, listener: TaskListener, manifest: Manifest
    ) -> AttachedLocalRun:
        return AttachedLocalRun(self, spec, manifest)

    def enqueue(self, work: _Range, *, front: bool = False) -> None:
        """Queue ``work`` in its run's queue (``front``: it was handed out, and comes back)."""
        run = work.run
        if front:
            run.ranges.appendleft(work)
        else:
            run.ranges.append(work)
        if run not in self._queue:  # a few runs at most: a scan is cheaper than a set
            self._queue.append(run)

    async def dispatch(self) -> None:
        """Hand queued work to idle processes, and start processes while work waits."""
        while self._queue and self._idle:
            await self._assign(self._idle.pop())
        queued_inputs = sum(run.queued for run in self._queue)
        self._spawn(min(queued_inputs, self.workers - len(self._processes) - self._starting))

    def _spawn(self, count: int) -> None:
        if self._group is None:
            raise RuntimeError("the local backend was not started by its knot")
        for _ in range(max(0, count)):
            self._starting += 1
            self._group.start_soon(self._run_process)

    def _next_chunk(self) -> _Range | None:
        """The next chunk of the next run in turn; that run goes to the back of the line."""
        while self._queue:
            run = self._queue.popleft()
            if run.cancelled or not run.ranges:
                continue
            head = run.ranges[0]
            size = run.chunk_size(self.workers)
            stop = min(head.start + size, head.stop)
            chunk = _Range(run, head.segment, head.start, stop, head.attempt)
            head.start = chunk.stop
            if head.start >= head.stop:
                run.ranges.popleft()
            run.queued -= chunk.stop - chunk.start
            run.running += chunk.stop - chunk.start
            if run.ranges:
                self._queue.append(run)
            return chunk
        return None

    async def _assign(self, worker: _WorkerProcess) -> None:
        if worker.killed:
            return  # its end is near; the chunk it would get stays queued
        chunk = self._next_chunk()
        if chunk is None:
            self._idle.append(worker)
            return
        worker.chunk, worker.next_index = chunk, chunk.start
        run = chunk.run
        spec = run.spec
        line = json.dumps(
            {
                "store": spec.store_url,
                "run": spec.run_prefix,
                "function": spec.function_key,
                "starmap": spec.starmap,
                "segment": chunk.segment,
                "start": chunk.start,
                "stop": chunk.stop,
                # The store as the client uses it (endpoint, region, profile, owner).
                "env": dict(spec.store_environment),
                "attempt": chunk.attempt,  # names a retried input's log
                "timed": self.timeout is not None,  # say when each input starts
            }
        )
        # Before the line: the worker reads the limit only once it has the chunk.
        _write_stop_at(worker.progress, chunk.stop)
        size = chunk.stop - chunk.start
        if size > 1:
            expected = size * (run.seconds_per_input or 0.0)
            patience = max(STUCK_FLOOR_SECONDS, STUCK_FACTOR * expected)
            worker.deadline = anyio.current_time() + patience
            worker.wake.set()
        if self.timeout is not None:
            # Its first input starts after now: no input of it can overrun before this.
            worker.timeout_at = anyio.current_time() + self.timeout
            worker.wake.set()
        try:
            await worker.process.send(line.encode() + b"\n")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the process died; its reader reports the chunk

    async def _run_process(self) -> None:
        import tempfile  # here: it imports shutil and the compressors, which a knot needs not

        progress_fd, progress_path = tempfile.mkstemp(prefix="aioknot-worker-")
        output_path = ""
        try:
            initial = bytearray(_worker.PROGRESS_SIZE)  # laid out by the worker's offsets
            _I64.pack_into(initial, _worker.PROGRESS_RUNNING, -1)
            _I64.pack_into(initial, _worker.PROGRESS_STOP_AT, _NO_LIMIT)
            os.write(progress_fd, initial)
            output_fd, output_path = tempfile.mkstemp(prefix="aioknot-output-")
            os.close(output_fd)
        except BaseException:
            _remove_files(progress_fd, progress_path, output_path)
            raise
        try:
            # Shielded: a start cancelled half-way would leave a process nobody stops. The
            # worker has a session of its own: the terminal's Ctrl-C (SIGINT to the
            # foreground process group) interrupts the client's wait, not the workers' tasks.
            with anyio.CancelScope(shield=True):
                process = await zygote.start_worker(progress_path, output_path)
        except zygote.WorkerStartError as error:
            # Out of processes or memory for now (a process limit, a cgroup's pids.max): the
            # work stays queued, for the workers there are and for another try in a while.
            self._starting -= 1
            _remove_files(progress_fd, progress_path, output_path)
            self._tell(f"{error}; trying again in {RESTART_SECONDS:g} s")
            await anyio.sleep(RESTART_SECONDS)
            if not self._closed:
                await self.dispatch()
            return
        except BaseException:
            self._starting -= 1
            _remove_files(progress_fd, progress_path, output_path)
            raise
        self._starting -= 1
        worker = _WorkerProcess(process, progress_fd, output_path)
        self._processes.append(worker)
        output, passed = b"", 0
        try:
            async with task_group() as group:
                group.start_soon(self._watch_worker, worker)
                while True:
                    try:
                        # A reason (a "failed" line) may be long; the rest are short.
                        line = await process.lines.receive_until(b"\n", 65536)
                    except (
                        anyio.EndOfStream,
                        anyio.IncompleteRead,
                        anyio.ClosedResourceError,
                        anyio.BrokenResourceError,
                    ):
                        break
                    await self._handle_line(worker, line.decode())
                returncode = await process.wait()
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await _stop_process(process)
            if worker in self._processes:
                self._processes.remove(worker)
            if worker in self._idle:
                self._idle.remove(worker)
            running = _read_running(progress_fd)
            if worker.chunk is not None and not worker.killed and not self._closed:
                # What the input it died in wrote: its log, and what the terminal has not seen.
                output, passed = _read_output(output_path, progress_fd)
                _pass_on(output[passed:])
            _remove_files(progress_fd, progress_path, output_path)
        await self._handle_death(worker, returncode, running, output)
        if not self._closed:
            await self.dispatch()  # replace the process if work is still waiting

    async def _handle_line(self, worker: _WorkerProcess, line: str) -> None:
        kind, _, value = line.rstrip("\n").partition(" ")
        chunk = worker.chunk
        if kind in ("done", "failed") and chunk is not None:
            first_text, count_text, reason = (value.split(" ", 2) + [""])[:3]
            first, count = int(first_text), int(count_text)
            # Inputs beyond the chunk's (lowered) stop were taken back and run elsewhere too;
            # only this chunk's share counts here.
            stop = min(first + count, chunk.stop)
            chunk.run.running -= max(0, stop - max(first, worker.next_index))
            worker.next_index = max(worker.next_index, first + count)
            if kind == "done":
                chunk.run.listener.done(first, count)
            else:
                for index in range(first, stop):
                    chunk.run.listener.lost(index, reason, log="this process's stderr")
        elif kind == "chunk" and chunk is not None:
            seconds, _, end_text = value.partition(" ")
            end = int(end_text) if end_text else chunk.stop
            run = chunk.run
            run.measured(float(seconds), max(1, min(end, chunk.stop) - chunk.start))
            worker.chunk, worker.deadline, worker.timeout_at = None, math.inf, math.inf
            if end < chunk.stop and not run.cancelled and not self._closed:
                # It stopped at a limit it saw before the backend knew (see _take_back).
                self._give_back(chunk, end, chunk.stop)
            run.check_over()
            await self._assign(worker)
            if end < chunk.stop:
                await self.dispatch()
        elif kind == "ready":
            await self._assign(worker)

    async def _watch_worker(self, worker: _WorkerProcess) -> None:
        """Sleep until the worker's chunk is overdue (then take back what waits behind it) or
        its running input may have overrun timeout= (then stop it if it has)."""
        while True:
            now = anyio.current_time()
            due = min(worker.deadline, worker.timeout_at)
            if due > now:
                worker.wake = anyio.Event()
                with anyio.move_on_after(due - now):
                    await worker.wake.wait()
                continue
            if worker.timeout_at <= now:
                self._enforce_timeout(worker, now)
            if worker.deadline <= now:
                worker.deadline = math.inf
                await self._take_back(worker)

    def _enforce_timeout(self, worker: _WorkerProcess, now: float) -> None:
        """Kill the worker's group if its running input has run ``timeout`` seconds, else
        sleep until it would have. Its death is then that input's ``TaskLost("timeout...")``
        (`_handle_death`), and the rest of its chunk goes back to the queue."""
        worker.timeout_at = math.inf
        if (
            self.timeout is None
            or worker.chunk is None
            or worker.killed
            or worker.timed_out is not None
        ):
            return
        running = _running_since(worker.progress)
        if running is None:  # between inputs: the next one starts after now
            worker.timeout_at = now + self.timeout
            return
        index, started = running
        left = self.timeout - (time.monotonic() - started)
        if left > 0:
            worker.timeout_at = now + left
            return
        worker.timed_out = index
        worker.process.kill()

    async def _take_back(self, worker: _WorkerProcess) -> None:
        """Hand the inputs queued behind the worker's running input to other processes.

        The worker reads the chunk's "stop at" before each input, after announcing it as
        running; here the limit is written, then the running index read again. If it is
        still the same input, the worker will see the limit before the next one: the rest is
        requeued now. If it moved on meanwhile, it stops at the limit or soon after, and its
        ``chunk`` line says where; the rest is requeued then. Either way nothing runs twice
        or is forgotten.
        """
        chunk = worker.chunk
        if chunk is None or worker.killed or chunk.run.cancelled or self._closed:
            return
        running = _read_running(worker.progress)
        if not chunk.start <= running < chunk.stop - 1:
            return  # between inputs, or on its last one: nothing waits behind it
        limit = max(running + 1, worker.next_index)
        _write_stop_at(worker.progress, limit)
        if _read_running(worker.progress) != running or limit >= chunk.stop:
            return
        self._give_back(chunk, limit, chunk.stop)
        chunk.stop = limit
        await self.dispatch()

    def _give_back(self, chunk: _Range, start: int, stop: int, attempt: int = 0) -> None:
        """Inputs ``start..stop`` of a chunk handed out go to the front of their run's queue
        again (as ``attempt``, else the chunk's)."""
        if start < stop:
            work = _Range(chunk.run, chunk.segment, start, stop, attempt or chunk.attempt)
            self.enqueue(work, front=True)
            chunk.run.running -= stop - start
            chunk.run.queued += stop - start

    async def _handle_death(
        self, worker: _WorkerProcess, returncode: int | None, running: int, output: bytes
    ) -> None:
        """The input that was running is lost, or runs again (``retries``); the rest of the
        chunk goes back to the queue. ``output`` is what that input wrote: its log.

        That rest includes inputs that finished but whose grouped records were not yet
        written: they run again rather than being reported lost.
        """
        chunk = worker.chunk
        if chunk is None or chunk.run.cancelled or self._closed:
            return
        run = chunk.run
        unwritten = worker.next_index
        if unwritten >= chunk.stop:
            run.check_over()  # every input of the chunk was reported: it died after them
            return
        # Died between inputs (reading, writing): blame the first unwritten one, so that a
        # process that keeps dying there still makes progress.
        lost = running if unwritten <= running < chunk.stop else unwritten
        # Killed for another run's cancel just after it took this chunk, or for timeout=
        # just as the input ended: nobody's death, the chunk runs again.
        blameless = worker.killed or worker.timed_out not in (None, lost)
        log = None
        if output and not blameless:
            log = await self._save_output(run.spec, lost, chunk.attempt, output)
        if run.cancelled or self._closed:
            return  # while the output was being kept; cancel_run has settled the run
        worker.chunk = None
        if blameless:
            self._give_back(chunk, unwritten, chunk.stop)
            return
        self._give_back(chunk, unwritten, lost)
        self._give_back(chunk, lost + 1, chunk.stop)
        timed_out = worker.timed_out is not None
        reason = timeout_reason(self.timeout or 0.0) if timed_out else death_reason(returncode)
        where = f"input {lost} of run {run.spec.run_id}"
        if not timed_out and chunk.attempt < self.attempts:
            # As Batch retries a child whose host failed: again, alone (a range of one).
            self._give_back(chunk, lost, lost + 1, attempt=chunk.attempt + 1)
            self._tell(f"{where}: {reason}; running it again (attempt {chunk.attempt + 1} "
                       f"of {self.attempts})")  # fmt: skip
            return
        run.running -= 1  # the lost input: reported below, not run again
        self._tell(f"{where} is lost: {reason}")
        run.listener.lost(lost, reason, log=log, exit_code=returncode, attempts=chunk.attempt)
        run.check_over()

    def _tell(self, message: str) -> None:
        """An event of the worker pool, for the knot's ``progress=`` callback and log."""
        if self._setup is not None:
            self._setup.progress(message)

    async def _save_output(
        self, spec: RunSpec, index: int, attempt: int, output: bytes
    ) -> str | None:
        """Keep what a killed input wrote as its log; where it is, or None if it could not
        be kept (its loss is reported either way: a log is not worth failing the run for)."""
        key = _worker.log_key(spec.run_prefix, index, attempt)
        with anyio.move_on_after(SAVE_OUTPUT_SECONDS), contextlib.suppress(KnotError, OSError):
            store = self.knot_store
            await store.put(key, output)
            return f"{store.url}/{key}"
        return None

    async def cancel_run(self, run: LocalRun) -> None:
        if run in self._queue:
            self._queue.remove(run)
        run.ranges.clear()
        run.queued = 0
        for worker in list(self._processes):
            if worker.chunk is not None and worker.chunk.run is run:
                worker.killed = True
                worker.process.kill()
        run.running = 0

    async def aclose(self) -> None:
        self._closed = True
        self._queue.clear()
        with anyio.CancelScope(shield=True):
            workers = list(self._processes)
            for worker in workers:
                worker.process.kill()  # all at once: their ends are then awaited together
            for worker in workers:
                await _stop_process(worker.process)


class LocalLogTail(LogTail):
    """An input's log in the store, every attempt in order, read as it grows.

    A worker stores the log of an input that runs long and writes while it runs (rewritten
    whole, growing, at most every ``_worker.LIVE_LOG_SECONDS``), and whole when it ends,
    before its record; a retried attempt's log gets a key of its own (``<i>.<a>``), made once
    the attempt before it is over. Each read lists the input's log keys and reads the logs
    not known to be over, returning what follows what was returned before: only whole lines,
    until the input has an outcome (``final``) or a later attempt began.
    """

    def __init__(self, store: Store, run_prefix: str, index: int) -> None:
        self._store = store
        self._prefix = _worker.log_key(run_prefix, index)
        self._index = index
        self._returned: dict[int, int] = {}  # bytes of each attempt's log returned so far
        self._over: set[int] = set()  # attempts whose logs were read to their end

    async def read(self, *, final: bool = False) -> list[str]:
        keys = await self._store.list_keys(self._prefix)
        attempts = sorted(
            (attempt, key)
            for key in keys
            if (attempt := _worker.log_attempt(key, self._index)) is not None
        )
        lines: list[str] = []
        for place, (attempt, key) in enumerate(attempts):
            if attempt in self._over:
                continue
            try:
                data = await self._store.get(key)
            except KeyError:
                continue  # removed since it was listed (the run's data expired)
            # A later attempt exists: this one is over, and its log was stored whole.
            over = final or place < len(attempts) - 1
            start = self._returned.get(attempt, 0)
            end = len(data) if over else whole_lines(data, start)
            if end > start:
                lines.extend(data[start:end].decode("utf-8", errors="replace").splitlines())
                self._returned[attempt] = end
            if over:
                self._over.add(attempt)
        return lines


def whole_lines(data: bytes, start: int) -> int:
    """Where the whole lines of ``data`` after ``start`` end (``start`` if there is none): after
    its last line break, ``\n`` or ``\r`` (a progress bar's), but not a last ``\r``, which may
    be the first half of ``\r\n``."""
    end = len(data) - 1 if data.endswith(b"\r") else len(data)
    return max(data.rfind(b"\n", start, end), data.rfind(b"\r", start, end), start - 1) + 1


def _remove_files(progress_fd: int, progress_path: str, output_path: str) -> None:
    os.close(progress_fd)
    for path in (progress_path, output_path):
        if path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _pass_on(output: bytes) -> None:
    """Show a dead worker's last output where its workers' output goes: this process's
    stderr (the file descriptor the workers inherit)."""
    view = memoryview(output)
    with contextlib.suppress(OSError):
        while view:
            view = view[os.write(2, view) :]


async def _stop_process(process: WorkerProcess) -> None:
    """Kill the process and its group if they still run (their work is over or abandoned),
    and wait until it is reaped. Processes the user's function started die too."""
    await process.aclose()


@dataclass(frozen=True)
class LocalOptions:
    workers: int | None = None  # worker processes (default: os.cpu_count())


def _parse_options(options: Mapping[str, object], core: KnotOptions) -> LocalOptions:
    workers = options.get("workers")
    if workers is not None and (
        not isinstance(workers, int) or isinstance(workers, bool) or workers < 1
    ):
        raise ConfigurationError(
            f"workers= must be a positive whole number of processes, got {workers!r}"
        )
    return LocalOptions(workers=workers)


def _create(options: KnotOptions) -> LocalBackend:
    return LocalBackend(
        workers=options.backend_options("local", LocalOptions).workers,
        timeout=options.timeout,
        retries=options.retries,
    )


KIND = BackendKind(
    name="local",
    option_names=frozenset({"workers"}),
    parse_options=_parse_options,
    create=_create,
)
