"""Watching a run: learning from the store which inputs finished, and from the backend which died.

The store is the truth for results. A look LISTs the results prefix from the lowest
outstanding index on (one request per 1,000 keys: every record written since, whatever its
grouping) while more than a few inputs could have a record, and HEADs the record keys of the
last few (`HEAD_POLL_MAX`); each finished record then costs one GET. Looks back off
exponentially while nothing new turns up. A backend that knows when a record was written (the
local backend does) hints it, which skips discovery altogether. A backend that knows its tasks'
states (AWS Batch) says which inputs are queued (no look at all while every outstanding input
is), which started, and when tasks ended (a look at once, whatever the backoff). Once a task
has started, looks keep their own pace until the first result (a record is stored before its
task is over, so a look finds it before the backend can say so); after it, the watcher's own
looks are only a slow net for records written before their task ends.

The backend is the truth for deaths: a task it reports lost becomes ``TaskLost`` unless a
record holding its input turns up after all (a grouped record ``results/<first>-<count>``
counts as much as a single one), and once the backend says every task is over, whatever still
has no record after one last look is ``TaskLost`` too, so nothing waits forever. Losses are
confirmed in bulk: one LIST sweep of the stretch of the results prefix that could hold their
records (one request per 1,000 keys), never a HEAD per lost input.

A record that exists but cannot be decoded fails only the inputs it holds: a corrupt or
truncated one is a ``TaskLost`` naming its key; a value whose class cannot be imported here is
a ``TaskError`` saying so. Store errors (``StoreError``, ``ConfigurationError``: the store
retries transient faults itself, so these mean it is down or refusing) end the watch, raised
as themselves.
"""

from __future__ import annotations

import math
import pickle
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel

from ._backends.base import BackendRun
from ._exceptions import TaskError, TaskFailure, TaskLost
from ._stores.base import Store
from ._tasks import task_group
from ._worker import (
    GROUP_MAX_INPUTS,
    decode_group,
    decode_record,
    decode_values,
    parse_result_key,
    result_key,
    results_prefix,
)

# HEAD each key that could hold a record while there are at most this many; LIST beyond. A
# look of n HEADs is n requests against a LIST's one, but S3 prices a LIST like a PUT, ~12x a
# HEAD: at 4, a HEAD look costs at most a third of a LIST, and the last 4 results found one by
# one cost at most 4 + 3 + 2 + 1 HEADs (once per run, not per result).
HEAD_POLL_MAX = 4
SWEEP_EVERY = 4  # in HEAD mode, every 4th empty poll is a LIST sweep instead
HEAD_DELAYS = (0.05, 2.0)  # first and longest pause between polls, seconds
LIST_DELAYS = (0.25, 5.0)
# When the backend says when tasks end (`ended` wakes a look), the watcher's own looks after
# the first result are only a net for records written before their task ended (a chunk of
# several inputs), and for a backend that missed a state between two of its polls: slow ones.
TRACKED_DELAYS = (2.0, 15.0)
# The longest pause between looks for the first result of started tasks (HEAD_DELAYS'): a
# LIST every 2 s costs a run of 50 one-minute tasks 30 requests, and keeps its first result
# as prompt as the HEADs of a few did before issue 11.
FIRST_RESULT_LONGEST = 2.0
# Several jobs' ends are told in one poll of the backend: one look for them all.
ENDED_GATHER_SECONDS = 0.05
BACKOFF = 1.6
FETCH_BATCH = 256  # records fetched per store call (parallel GETs on S3)
# Losses come in floods too (a page of failed Batch children): settle them together, with one
# LIST sweep, rather than one sweep each.
LOSS_GATHER_SECONDS = 0.05
NO_RECORD_REASON = "the backend reports the task over, but it wrote no result"
# What a failure to decode says about the bytes: these mean they are damaged (cut short, not
# a record, a table that does not add up); anything else (ImportError, AttributeError, a
# class that will not rebuild) means the value is intact but cannot be rebuilt here.
DAMAGED = (pickle.UnpicklingError, EOFError, struct.error, ValueError)


class CorruptRecord(ValueError):
    """A result object whose framing does not hold together (truncated, or not a record)."""


@dataclass(slots=True)  # slots, not frozen: tens of thousands are made per run
class Outcome:
    index: int
    value: Any = None
    error: TaskFailure | None = None


@dataclass(slots=True)
class Values:
    """The outcomes of consecutive inputs ``first..`` that all returned: their values in one
    list, as their result object held them. Handed over as one object, not one per input:
    per result, an object costs more than the value it carries (tens of thousands a run)."""

    first: int
    values: list[Any]

    def outcomes(self) -> list[Outcome]:
        return [Outcome(self.first + k, value) for k, value in enumerate(self.values)]


Outcomes = list[Outcome | Values]


def as_outcomes(items: Outcomes) -> list[Outcome]:
    """Every outcome of ``items``, one object each (for readers that want them so)."""
    return [o for item in items for o in (item.outcomes() if isinstance(item, Values) else [item])]


def unreadable(index: int, error: Exception, run_id: str, where: str = "") -> Outcome:
    """The result cannot be used here: damaged bytes (``TaskLost`` naming the record), or an
    intact value this machine cannot rebuild, its class not importable, say (``TaskError``
    saying so)."""
    at = f" at {where}" if where else ""
    if isinstance(error, DAMAGED):
        return Outcome(
            index,
            error=TaskLost(
                index=index,
                reason=(
                    f"the result record{at} is corrupt or truncated "
                    f"({type(error).__name__}: {error}); run this input again"
                ),
                run_id=run_id,
            ),
        )
    return Outcome(
        index,
        error=TaskError(
            index=index,
            remote_type=type(error).__name__,
            remote_message=f"the result{at} could not be unpickled on this machine: {error}",
            remote_traceback="",
            run_id=run_id,
        ),
    )


def outcome_from_record(index: int, data: bytes, run_id: str, where: str = "") -> Outcome:
    try:
        ok, payload = decode_record(data)
        if ok:
            return Outcome(index, value=payload)
        info, exception = payload
        try:
            remote = (str(info["type"]), str(info["message"]), str(info["traceback"]))
            named = info.get("upstream")  # a pipeline's input not run: its upstream failed
            upstream = (str(named["run"]), int(named["index"])) if named is not None else None
        except (KeyError, TypeError, ValueError):
            raise CorruptRecord("its error header lacks the exception's type or text") from None
    except Exception as error:  # damaged bytes, or a value whose class is not importable here
        return unreadable(index, error, run_id, where)
    remote_type, remote_message, remote_traceback = remote
    if upstream is not None and named.get("lost"):
        return Outcome(
            index,
            error=TaskLost(index=index, reason=remote_message, run_id=run_id, upstream=upstream),
        )
    return Outcome(
        index,
        error=TaskError(
            index=index,
            remote_type=remote_type,
            remote_message=remote_message,
            remote_traceback=remote_traceback,
            exception=exception,
            run_id=run_id,
            upstream=upstream,
        ),
    )


def checked_records(data: bytes, count: int) -> list[bytes]:
    """The records of a (grouped) result object that should hold ``count`` inputs; raises
    ``CorruptRecord`` when its framing says otherwise (a truncated object, most often)."""
    try:
        records = decode_group(data)
    except ValueError as error:
        raise CorruptRecord(str(error)) from None
    if len(records) != count:
        raise CorruptRecord(f"it holds {len(records)} records for {count} inputs")
    return records


def _parse(key: str) -> tuple[int, int] | None:
    """``(first, count)`` of a result key, or None for a stray object under the prefix."""
    if key.endswith(".tmp"):
        return None
    try:
        first, count = parse_result_key(key)
    except ValueError:
        return None
    return (first, count) if first >= 0 and count >= 1 else None


class ResultWatcher:
    """Finds the records of one run's submitted inputs and hands their outcomes to ``emit``
    (an `Outcome` each, or `Values` for a stretch of inputs that all returned)."""

    def __init__(
        self, store: Store, run_prefix: str, run_id: str, emit: Callable[[Outcomes], None]
    ) -> None:
        self._store = store
        self._run = run_prefix
        self._run_id = run_id
        self._emit = emit
        self.no_record_reason = NO_RECORD_REASON  # what an input without a record died of
        self._finished = bytearray()  # 1 where the input's outcome was emitted
        self._submitted = 0
        self._outstanding = 0
        self._low = 0  # every input below this one is finished
        self._hinted: list[tuple[int, int]] = []  # (first, count) of objects written
        self._lost: dict[int, TaskLost] = {}
        # (first, stop) of inputs whose tasks have not started (`queued`): not looked for.
        self._waiting: list[tuple[int, int]] = []
        # (first, stop) of inputs whose tasks ended since the last look (`ended`): look now.
        self._ended: list[tuple[int, int]] = []
        self._tracked = False  # the backend tells task states: its `ended` wakes the looks
        self._backend_over = False
        self._submission_over = False
        self._wake = anyio.Event()
        # Set once the store has been looked at (or the watch ended): what a re-attached
        # run's status() waits for, so that it counts the records already stored.
        self.looked = anyio.Event()
        # A re-attached run's first look is a LIST sweep: it may have grouped records already,
        # which HEADs of single keys would miss (and its status() counts them).
        self.sweep_first = False

    # -- what the run and the backend tell the watcher -------------------------------------

    def submitted(self, stop: int) -> None:
        """Inputs below ``stop`` are stored and submitted."""
        if stop > self._submitted:
            self._finished.extend(bytes(stop - len(self._finished)))
            self._outstanding += stop - self._submitted
            self._submitted = stop
            self._wake.set()

    def submission_over(self) -> None:
        self._submission_over = True
        self._wake.set()

    def done(self, first: int, count: int) -> None:
        self._hinted.append((first, count))
        self._wake.set()

    def queued(self, first: int, count: int) -> None:
        """The tasks of these inputs have not started: no record of theirs can exist yet."""
        self._tracked = True
        if self._waiting and self._waiting[-1][1] == first:  # the next segment: one stretch
            self._waiting[-1] = (self._waiting[-1][0], first + count)
        else:
            self._waiting.append((first, first + count))

    def started(self, first: int, count: int) -> None:
        """Tasks of these inputs may have started: their records may turn up from now on."""
        self._tracked = True
        stop = first + count
        waiting = []
        for low, high in self._waiting:
            if high <= first or stop <= low:
                waiting.append((low, high))
                continue
            if low < first:
                waiting.append((low, first))
            if stop < high:
                waiting.append((stop, high))
        if waiting != self._waiting:
            self._waiting = waiting
            self._wake.set()

    def ended(self, first: int, count: int) -> None:
        """Tasks of these inputs ended: their records should be there now, so look at once."""
        self.started(first, count)
        self._ended.append((first, first + count))
        self._wake.set()

    def lost(
        self,
        index: int,
        reason: str,
        *,
        log: str | None = None,
        exit_code: int | None = None,
        job_id: str | None = None,
        attempts: int | None = None,
    ) -> None:
        self._lost[index] = TaskLost(
            index=index,
            reason=reason,
            log=log,
            exit_code=exit_code,
            run_id=self._run_id,
            job_id=job_id,
            attempts=attempts,
        )
        self._wake.set()

    def abandon(self, reason: str) -> None:
        """The run was cancelled: every outstanding input is lost with ``reason``."""
        outcomes = [
            Outcome(i, error=TaskLost(index=i, reason=reason, run_id=self._run_id))
            for i in range(self._low, self._submitted)
            if not self._finished[i]
        ]
        self._finish(outcomes)
        self._submission_over = True
        self._wake.set()

    # -- the loop ------------------------------------------------------------------------

    @property
    def low(self) -> int:
        """Every input below this one has had its outcome emitted."""
        return self._low

    @property
    def complete(self) -> bool:
        return self._submission_over and self._outstanding == 0

    def _finish(self, outcomes: Sequence[Outcome | Values]) -> None:
        finished, lost = self._finished, self._lost
        fresh: Outcomes = []
        count = 0
        for item in outcomes:
            if isinstance(item, Values):
                first, stop = item.first, item.first + len(item.values)
                if finished.find(1, first, stop) == -1:  # the common case: all of them new
                    finished[first:stop] = b"\x01" * (stop - first)
                    if lost:
                        for index in range(first, stop):
                            lost.pop(index, None)
                    fresh.append(item)
                    count += stop - first
                    continue
                items: list[Outcome] = item.outcomes()  # some finished meanwhile: one by one
            else:
                items = [item]
            for outcome in items:
                if not finished[outcome.index]:
                    finished[outcome.index] = 1
                    lost.pop(outcome.index, None)
                    fresh.append(outcome)
                    count += 1
        self._outstanding -= count
        low = finished.find(0, self._low, self._submitted)
        self._low = self._submitted if low == -1 else low
        if fresh:
            self._emit(fresh)

    async def _fetch(self, objects: list[tuple[int, int]]) -> None:
        """GET the result objects ``(first, count)`` that hold an unfinished input."""
        wanted = sorted(
            {
                (first, count)
                for first, count in objects
                if not all(self._finished[first : first + count])
            }
        )
        for start in range(0, len(wanted), FETCH_BATCH):
            batch = wanted[start : start + FETCH_BATCH]
            keys = [result_key(self._run, *o) for o in batch]
            try:
                datas: list[bytes | None] = list(await self._store.get_many(keys))
            except KeyError:
                # Listed a moment ago, gone now (deleted under the run): fetch what remains.
                datas = [await self._get_or_none(key) for key in keys]
            outcomes: Outcomes = []
            for (first, count), key, data in zip(batch, keys, datas, strict=True):
                if data is not None:
                    outcomes.extend(self._outcomes_of(first, count, data, key))
            self._finish(outcomes)

    async def _get_or_none(self, key: str) -> bytes | None:
        try:
            return await self._store.get(key)
        except KeyError:
            return None

    def _outcomes_of(self, first: int, count: int, data: bytes, key: str) -> Outcomes:
        """The outcomes of the unfinished inputs held by one result object. Whatever is wrong
        with the object fails its own inputs only, never the run."""
        finished = self._finished
        # Bounded by what was submitted: a stray key must not index past the run.
        stop = min(first + count, len(finished))
        if stop <= first:
            return []
        all_new = finished.find(1, first, stop) == -1  # the common case: none seen yet
        unfinished = (
            range(first, stop) if all_new else [i for i in range(first, stop) if not finished[i]]
        )
        where = f"{self._store.url}/{key}"
        try:
            values = decode_values(data)
            if values is not None and (not isinstance(values, list) or len(values) != count):
                raise CorruptRecord(f"it does not hold the {count} values its key says")
            records = None if values is not None else checked_records(data, count)
        except Exception as error:  # damaged bytes, or a class not importable here
            return [unreadable(i, error, self._run_id, where) for i in unfinished]
        if values is not None:
            if all_new:
                return [Values(first, values[: stop - first])]
            return [Outcome(i, values[i - first]) for i in unfinished]
        assert records is not None
        return [outcome_from_record(i, records[i - first], self._run_id, where) for i in unfinished]

    def _unfinished(self) -> list[int]:
        return [i for i in range(self._low, self._submitted) if not self._finished[i]]

    def _lookable(self) -> list[tuple[int, int]]:
        """``(first, stop)`` stretches of the outstanding inputs whose tasks may have started
        (all of them unless the backend said some are queued)."""
        stretches = [(self._low, self._submitted)]
        for low, high in sorted(self._waiting):
            last_low, last_high = stretches[-1]
            if high <= last_low or last_high <= low:
                continue
            stretches[-1:] = [(last_low, low), (high, last_high)]
        return [(low, high) for low, high in stretches if low < high]

    def _lookable_count(self) -> int:
        """How many unfinished inputs may have a record by now (asked at every turn of the
        loop: no count at all unless the backend said some are queued, and C-speed then)."""
        if not self._waiting:
            return self._outstanding
        finished = self._finished
        return sum(high - low - finished.count(1, low, high) for low, high in self._lookable())

    def _unfinished_lookable(self) -> list[int]:
        """The unfinished inputs that may have a record (few: for HEADs), found without a
        Python loop over the finished ones around them."""
        finished = self._finished
        found = []
        for low, high in self._lookable():
            index = finished.find(0, low, high)
            while index != -1:
                found.append(index)
                index = finished.find(0, index + 1, high)
        return found

    def _delays(self, lookable: int) -> tuple[float, float]:
        first, longest = HEAD_DELAYS if lookable <= HEAD_POLL_MAX else LIST_DELAYS
        if not self._tracked:
            return first, longest
        if self._outstanding < self._submitted:
            return TRACKED_DELAYS
        # Until the first result, started tasks are looked for at a pace of their own: a
        # record is in the store before its task is over, and the backend sees that only at
        # its next poll (moto's Batch: 10 s or more later).
        return first, FIRST_RESULT_LONGEST

    async def _discover(self, *, sweep: bool = False) -> list[tuple[int, int]]:
        """Result objects that exist now, found by HEADs (of the last few inputs that could
        have a record) or by a LIST sweep."""
        if not sweep and self._lookable_count() <= HEAD_POLL_MAX:
            # HEAD finds single records only; grouped ones turn up in the periodic sweeps.
            candidates = self._unfinished_lookable()
            exists = await self._store.exists_many([result_key(self._run, i) for i in candidates])
            return [(i, 1) for i, there in zip(candidates, exists, strict=True) if there]
        start_after = result_key(self._run, self._low - 1) if self._low else None
        keys = await self._store.list_keys(results_prefix(self._run), start_after=start_after)
        return self._holding_unfinished(keys)

    def _holding_unfinished(self, keys: list[str]) -> list[tuple[int, int]]:
        found = []
        for key in keys:
            parsed = _parse(key)
            if parsed is None:
                continue
            first, count = parsed
            if first + count <= self._submitted and not all(self._finished[first : first + count]):
                found.append((first, count))
        return found

    async def _settle_lost(self) -> None:
        """Inputs reported lost whose task may have written their record (single or grouped)
        just before it died: one LIST sweep of the stretch of keys that could hold them says
        which; those records are fetched, and the inputs no record holds are ``TaskLost``."""
        lost = {
            i: error
            for i, error in self._lost.items()
            if i < self._submitted and not self._finished[i]
        }
        self._lost.clear()
        if not lost:
            return
        lowest, highest = min(lost), max(lost)
        # A record holding input i starts at most GROUP_MAX_INPUTS - 1 before it, and not
        # below the lowest unfinished input (a record of unfinished inputs is unfetched).
        start = max(self._low, lowest - GROUP_MAX_INPUTS + 1)
        keys = await self._store.list_keys(
            results_prefix(self._run),
            start_after=result_key(self._run, start - 1) if start else None,
            before=result_key(self._run, highest + 1),
        )
        await self._fetch(self._holding_unfinished(keys))
        self._finish([Outcome(i, error=error) for i, error in lost.items()])

    async def run(self, backend_run: BackendRun) -> None:
        """Watch until every submitted input has an outcome. A store or backend error ends
        the watch, raised as itself (never inside an ``ExceptionGroup``)."""
        try:
            async with task_group() as group:

                async def watch_backend() -> None:
                    await backend_run.watch()
                    self._backend_over = True
                    self._wake.set()

                group.start_soon(watch_backend)
                await self._loop()
                group.cancel_scope.cancel()
        finally:
            self.looked.set()

    async def _loop(self) -> None:
        delay = 0.0
        empty_polls = 0
        # The store is polled on its own clock: a hint, a loss or a submission wakes the loop
        # to handle that event only, never to poll early (hints would otherwise trigger a
        # LIST or HEADs each, and cost more requests than the results themselves). The one
        # exception is the backend saying that tasks ended: their records are there to fetch.
        next_poll = anyio.current_time()
        resting = False  # nothing could be found: every outstanding input's task is queued
        while not self.complete:
            self._wake = anyio.Event()
            if self._hinted:
                # Hints come in floods: yield once, so that those already told are fetched
                # together; no longer (a wait delayed every first result, and saved nothing:
                # a result object is one GET either way, and a local one no thread hop).
                await anyio.lowlevel.checkpoint()
                hinted, self._hinted = self._hinted, []
                await self._fetch(hinted)
                continue
            if self._lost:
                if len(self._lost) < FETCH_BATCH:
                    await anyio.sleep(LOSS_GATHER_SECONDS)
                await self._settle_lost()
                continue
            if self._backend_over and self._submission_over:
                await self._last_look()
                return
            first_look = self.sweep_first and not self.looked.is_set()
            lookable = self._lookable_count() if self._outstanding else 0
            if self._outstanding and not lookable and not first_look:
                # No task of an outstanding input has started: nothing to look for until the
                # backend says one did (`started`, `ended`), which wakes the loop.
                resting = True
                self._ended.clear()
                self.looked.set()  # a look would find nothing
                await self._wake.wait()
                continue
            if resting:
                # A task just started: its record takes a while, and `ended` says when.
                resting = False
                delay = self._delays(lookable)[0]
                next_poll = anyio.current_time() + delay
            finished = self._finished
            self._ended = [(a, b) for a, b in self._ended if finished.find(0, a, b) != -1]
            if self._outstanding and (
                first_look or self._ended or anyio.current_time() >= next_poll
            ):
                ended = bool(self._ended)
                if ended and not first_look:
                    await anyio.sleep(ENDED_GATHER_SECONDS)
                self._ended.clear()
                sweep = first_look or empty_polls % SWEEP_EVERY == SWEEP_EVERY - 1
                found = await self._discover(sweep=sweep)
                empty_polls = 0 if found else empty_polls + 1
                await self._fetch(found)
                self.looked.set()
                first, longest = self._delays(self._lookable_count())
                # Tasks ending say that more records are coming: look again at the first pace.
                busy = found or ended
                delay = first if busy else min(max(delay, first) * BACKOFF, longest)
                next_poll = anyio.current_time() + delay
                continue
            # Nothing outstanding: nothing to look for until more is submitted.
            wait = next_poll - anyio.current_time() if self._outstanding else math.inf
            with anyio.move_on_after(max(wait, 0.0)):
                await self._wake.wait()

    async def _last_look(self) -> None:
        """The backend says all is over: fetch what exists; the rest died without a record."""
        await self._fetch(await self._discover(sweep=True))
        self._finish(
            [
                Outcome(
                    i,
                    error=self._lost.get(i)
                    or TaskLost(index=i, reason=self.no_record_reason, run_id=self._run_id),
                )
                for i in self._unfinished()
            ]
        )
