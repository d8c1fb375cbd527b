"""The aioknot worker: runs the user's function on its own inputs and writes one record each.

This file is self-contained on purpose: it runs inside the AWS Batch container (copied there as
``aioknot_worker.py``) and as the local backend's worker processes, and imports only the
standard library, cloudpickle and (for S3) boto3. It never imports the rest of aioknot; the
client imports the wire-format helpers below from here, so the format is written once.

Two ways to run it:

* ``python aioknot_worker.py`` (a Batch job): everything comes from environment variables
  (``AIOKNOT_*`` below); the array index comes from ``AWS_BATCH_JOB_ARRAY_INDEX``, else the
  ``:<i>`` suffix of ``AWS_BATCH_JOB_ID`` (moto sets only the latter).
* forked by ``python aioknot_worker.py --zygote FD`` (the local backend; `zygote`, or the
  same function in a process forked from the client): `serve` reads one JSON chunk per line
  on stdin (with the store's settings: endpoint, region, profile), and reports on the original
  stdout (``serve`` lists the lines); what the user's code writes to stdout or stderr is kept
  per input (`OutputCapture`) and passed on to the client's stderr, so it cannot corrupt the
  channel.

Data layout (relative to the store's root; DESIGN.md):
    <run>/inputs/<first index:09d>         a segment: many pickled inputs behind an offset table
    <run>/results/<index:09d>              the record of one input: a value or an exception
    <run>/results/<first:09d>-<count>      the records of ``count`` consecutive inputs
    <run>/logs/<index:09d>[.<attempt>]     what one input's task wrote to stdout and stderr
                                           (local workers; only when it wrote something)
    <run>/metrics/<index:09d>              the figures of one measured input (JSON; the
                                           trial runs of knot.estimate: `Measurer`)

A record is written as soon as its input finishes. Inputs that finish within a few
milliseconds of each other (tiny tasks) share one object: one write instead of hundreds, which
is what makes 10,000 tiny tasks cheap; an input that takes a while gets its own object at once,
and records that wait in a group are written by a flusher thread if the next input runs long.

What can go wrong in the store is handled here, not by dying: S3 calls are retried while they
fail transiently (botocore's standard mode, then jittered retries of our own); an input whose
record cannot be written (a full disk, a refusal) is reported with the reason and the chunk
goes on, so one bad disk costs one clear ``TaskLost`` per input, not a crash per input.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import pickle
import random
import signal
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

# A segment: magic, input count, inputs per block, (blocks + 1) absolute offsets, then the
# blocks, each one pickle of a list of consecutive inputs (the last block may hold fewer).
# One pickle per block, not per input: packing and unpickling cost a few times less per
# input, and a block is small enough (`read_inputs`) that a chunk of one input wastes little.
# A worker reads any range of inputs with two ranged GETs (`read_inputs`).
SEGMENT_MAGIC = b"AKSEG002"
SEGMENT_MAGIC_V1 = b"AKSEG001"  # one pickle per input, no block size (still read)
_U64 = struct.Struct("<Q")
SEGMENT_HEADER_SIZE = len(SEGMENT_MAGIC) + 2 * _U64.size

RECORD_MAGIC = b"AKR1"
GROUP_MAGIC = b"AKG1"
VALUES_MAGIC = b"AKV1"  # consecutive inputs that all returned: one pickle of their values
RECORD_VALUE = b"V"
RECORD_ERROR = b"E"
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")


def segment_key(run: str, first_index: int) -> str:
    return f"{run}/inputs/{first_index:09d}"


# Records of short inputs are grouped until the group is this old (or the chunk ends) ...
GROUP_SECONDS = 0.02
# ... unless inputs take this long each: then every record is written on its own at once.
# So a record waits at most ~40 ms, and a 3 ms task no longer costs a PUT of its own.
SLOW_INPUT_SECONDS = 0.02
GROUP_MAX_INPUTS = 10_000


def result_key(run: str, first: int, count: int = 1) -> str:
    name = f"{first:09d}" if count == 1 else f"{first:09d}-{count}"
    return f"{run}/results/{name}"


def results_prefix(run: str) -> str:
    return f"{run}/results/"


def log_key(run: str, index: int, attempt: int = 1) -> str:
    """Where the output of input ``index``'s task is kept: its first attempt's under the
    index, a retried attempt's with the attempt's number after a dot (``000000007.2``)."""
    name = f"{index:09d}" if attempt == 1 else f"{index:09d}.{attempt}"
    return f"{run}/logs/{name}"


def log_attempt(key: str, index: int) -> int | None:
    """The attempt whose output ``key`` holds if it is input ``index``'s log, else None
    (a LIST of ``log_key(run, index)`` as a prefix also finds no other input's: nine digits)."""
    name = key.rsplit("/", 1)[1]
    head, dot, attempt = name.partition(".")
    if head != f"{index:09d}":
        return None
    if not dot:
        return 1
    return int(attempt) if attempt.isdigit() else None


def parse_result_key(key: str) -> tuple[int, int]:
    """``.../results/000000100-50`` -> ``(100, 50)``; a single record's count is 1."""
    name = key.rsplit("/", 1)[1]
    first, _, count = name.partition("-")
    return int(first), int(count or 1)


def encode_group(records: list[bytes]) -> bytes:
    """One object for the records of consecutive inputs (a single record stays as it is)."""
    if len(records) == 1:
        return records[0]
    sizes = struct.pack(f"<{len(records)}Q", *(len(r) for r in records))
    return b"".join([GROUP_MAGIC, _U32.pack(len(records)), sizes, *records])


class Failed:
    """In a list of results: an input whose function raised, as its error record."""

    __slots__ = ("record",)

    def __init__(self, record: bytes) -> None:
        self.record = record


def encode_results(first: int, results: list[Any], failures: int = -1) -> bytes:
    """One object for consecutive inputs' results: each a value, or `Failed` with its
    record. ``failures`` counts the `Failed` ones, if known (-1: look).

    When every input returned, the values are pickled as one list (one C call instead of a
    record each, which is most of the cost of a tiny task); otherwise one record each.
    """
    if failures < 0:
        failures = sum(type(result) is Failed for result in results)
    if not failures:
        try:
            return VALUES_MAGIC + dumps(results)
        except Exception:
            pass  # some value cannot be pickled: find which, below
    records = []
    for offset, payload in enumerate(results):
        if type(payload) is Failed:
            records.append(payload.record)
            continue
        try:
            records.append(encode_value_record(payload))
        except Exception as error:
            failure = TypeError(
                f"the function's result for input {first + offset} cannot be pickled: {error}"
            )
            records.append(encode_error_record(failure))
    return encode_group(records)


def decode_values(data: bytes) -> list[Any] | None:
    """The values of a values object, or None when ``data`` holds records instead."""
    if data[:4] != VALUES_MAGIC:
        return None
    values: list[Any] = pickle.loads(data[4:])
    return values


def decode_group(data: bytes) -> list[bytes]:
    """The records of a result object; raises ValueError when its framing does not add up (an
    object cut short, most often)."""
    if data[:4] != GROUP_MAGIC:
        return [data]
    try:
        (count,) = _U32.unpack_from(data, 4)
        sizes = struct.unpack_from(f"<{count}Q", data, 8)
    except struct.error as error:
        raise ValueError(f"its header is cut short: {error}") from None
    expected = 8 + 8 * count + sum(sizes)
    if expected != len(data):
        raise ValueError(f"it has {len(data)} bytes where its table says {expected}")
    records, offset = [], 8 + 8 * count
    for size in sizes:
        records.append(data[offset : offset + size])
        offset += size
    return records


def dumps(obj: object) -> bytes:
    """Pickle with the fast stdlib pickler, falling back to cloudpickle for what it can't do."""
    try:
        return pickle.dumps(obj, protocol=5)
    except Exception:
        import cloudpickle  # here, not with the module: the client imports this file too

        return cloudpickle.dumps(obj, protocol=5)  # type: ignore[no-any-return]


def pack_segment(blocks: list[bytes], count: int, block_size: int) -> bytes:
    """One segment object of ``count`` inputs: ``blocks``, each a pickled list of
    ``block_size`` consecutive inputs (the last one of the rest)."""
    offset = SEGMENT_HEADER_SIZE + _U64.size * (len(blocks) + 1)
    offsets = [offset]
    for block in blocks:
        offset += len(block)
        offsets.append(offset)
    table = struct.pack(f"<{len(blocks) + 1}Q", *offsets)
    return b"".join([SEGMENT_MAGIC, _U64.pack(count), _U64.pack(block_size), table, *blocks])


class InputBlocks:
    """The blocks of a segment that hold a range of its inputs, as read (`read_blocks`)."""

    def __init__(self, blocks: list[bytes], listed: bool, sizes: list[int], skip: int, count: int):
        self.blocks = blocks
        self.listed = listed  # each block a pickled list (else one pickled input: version 1)
        self.sizes = sizes  # inputs in each block
        self.skip = skip  # inputs of the first block before the range
        self.count = count  # inputs in the range

    def unpickle(self) -> list[Any]:
        """The range's inputs; in place of those of a block that cannot be unpickled here (a
        module missing on the worker), an `Unreadable` with the error, for their records."""
        inputs: list[Any] = []
        for block, size in zip(self.blocks, self.sizes, strict=True):
            try:
                inputs.extend(pickle.loads(block) if self.listed else [pickle.loads(block)])
            except Exception as error:
                inputs.extend([Unreadable(error)] * size)
        return inputs[self.skip : self.skip + self.count]


class Unreadable:
    """An input that could not be unpickled on the worker: its task fails with ``error``."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def read_blocks(read: Callable[[int, int], bytes], start: int, stop: int) -> InputBlocks:
    """The blocks holding inputs ``start..stop`` (positions in a segment), with two ranged
    reads of it: ``read(lo, hi)`` returns its bytes ``lo..hi`` (fewer at its end).

    The first read takes the header and enough of the offset table for any block size (a
    block holds at least one input, so the offsets of the blocks up to ``stop`` lie within
    ``stop + 1`` entries); the second, the blocks.
    """
    head = read(0, SEGMENT_HEADER_SIZE + _U64.size * (stop + 1))
    magic = head[: len(SEGMENT_MAGIC)]
    total = _U64.unpack_from(head, len(SEGMENT_MAGIC))[0]
    if magic == SEGMENT_MAGIC:
        block_size = _U64.unpack_from(head, len(SEGMENT_MAGIC) + _U64.size)[0]
        table_at = SEGMENT_HEADER_SIZE
    elif magic == SEGMENT_MAGIC_V1:
        block_size, table_at = 1, len(SEGMENT_MAGIC_V1) + _U64.size
    else:
        raise ValueError("not an aioknot input segment")
    first_block, end_block = start // block_size, -(-stop // block_size)
    offsets = struct.unpack_from(
        f"<{end_block - first_block + 1}Q", head, table_at + _U64.size * first_block
    )
    base = offsets[0]
    data = read(base, offsets[-1])
    blocks = [
        data[offsets[k] - base : offsets[k + 1] - base] for k in range(end_block - first_block)
    ]
    sizes = [min(block_size, total - k * block_size) for k in range(first_block, end_block)]
    skip = start - first_block * block_size
    return InputBlocks(blocks, magic == SEGMENT_MAGIC, sizes, skip, stop - start)


def read_inputs(read: Callable[[int, int], bytes], start: int, stop: int) -> list[Any]:
    """Inputs ``start..stop`` of a segment (`read_blocks`), unpickled."""
    return read_blocks(read, start, stop).unpickle()


def encode_value_record(value: object) -> bytes:
    return RECORD_MAGIC + RECORD_VALUE + dumps(value)


def encode_error_record(error: BaseException) -> bytes:
    if type(error) is UpstreamFailed:
        return encode_upstream_record(error)
    info = {
        "type": _qualified_name(type(error)),
        "message": str(error),
        "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__)),
    }
    try:
        import cloudpickle

        pickled: bytes = cloudpickle.dumps(error, protocol=5)
        pickle.loads(pickled)  # an exception that pickles but cannot be rebuilt is no use
    except Exception:
        pickled = b""
    header = json.dumps(info).encode()
    return RECORD_MAGIC + RECORD_ERROR + _U32.pack(len(header)) + header + pickled


# ---------------------------------------------------------------------------------------------
# Pipelines: a run whose inputs are another run's results. Its input i is the value of the
# upstream run's input i, read from the upstream record, so values never pass through the
# client; an upstream input without a value makes a record that says so, and is not run.


class UpstreamFailed(Exception):
    """The upstream input this input stands for has no value: it raised (``info``, its
    record's error header) or it has no record at all (``info`` None: it was lost)."""

    def __init__(
        self, run: str, index: int, info: Mapping[str, Any] | None, reason: str = ""
    ) -> None:
        self.run, self.index, self.info, self.reason = run, index, info, reason
        if info is None:
            said = f"was lost ({reason})" if reason else "has no result record: it was lost"
        else:
            said = f"raised {info.get('type')}: {info.get('message')}"
        super().__init__(f"input {index} of run {run}, its input, {said}; it was not run")


def encode_upstream_record(failure: UpstreamFailed) -> bytes:
    """The error record of an input not run because its upstream input has no value: the
    upstream's exception type and traceback, and where it came from (``upstream``)."""
    remote = failure.info
    lost = remote is None
    if remote is None:
        remote = {"type": "aioknot.TaskLost", "message": failure.reason or "it has no record"}
    info = {
        "type": str(remote.get("type")),
        "message": str(remote.get("message")),
        "traceback": str(remote.get("traceback", "")),
        "upstream": {"run": failure.run, "index": failure.index, "lost": lost},
    }
    header = json.dumps(info).encode()
    return RECORD_MAGIC + RECORD_ERROR + _U32.pack(len(header)) + header


def upstream_name(upstream_prefix: str) -> str:
    """``.../knots/<knot>/runs/<run id>`` -> ``<knot>/<run id>``, as errors name a run."""
    parts = upstream_prefix.rstrip("/").split("/")
    return f"{parts[-3]}/{parts[-1]}" if len(parts) >= 3 else upstream_prefix


_MISSING: Any = object()


def read_upstream(
    store: WorkerStorage, upstream: str, start: int, stop: int, lost: str = ""
) -> list[Any]:
    """Inputs ``start..stop`` of a downstream run: the values of the same inputs of the
    upstream run (its prefix ``upstream``), from its records; an `Unreadable` holding an
    `UpstreamFailed` for each input without one (``lost``: why, when the client knows).

    One LIST finds the records from ``start`` on (a downstream child covers the same inputs as
    its upstream child, whose records all begin inside them), then one GET per record. Only
    when some input is not covered is the stretch before ``start`` listed too (the most a
    record can hold: `GROUP_MAX_INPUTS`), for records grouped across the boundary.
    """
    name = upstream_name(upstream)
    prefix = results_prefix(upstream)
    found: dict[int, Any] = {}

    def take(after: int, until: int) -> None:
        # Keys sort by their zero-padded first index: a key after "<after>." begins past it.
        start_after = f"{prefix}{after:09d}." if after >= 0 else ""
        for key in store.keys(prefix, start_after):
            try:
                first, count = parse_result_key(key)
            except ValueError:
                continue  # a stray object, a temporary file
            if first >= until:
                break
            if first + count <= start or all(i in found for i in range(first, first + count)):
                continue
            _take_record(store.read(key), key, first, count, name, found)

    take(start - 1, stop)
    if len(found) < stop - start and start > 0:
        take(max(start - GROUP_MAX_INPUTS, 0) - 1, start)
    inputs = []
    for index in range(start, stop):
        value = found.get(index, _MISSING)
        missing = value is _MISSING
        inputs.append(Unreadable(UpstreamFailed(name, index, None, lost)) if missing else value)
    return inputs


def _take_record(
    data: bytes, key: str, first: int, count: int, name: str, found: dict[int, Any]
) -> None:
    """Put the values (or failures) an upstream result object holds into ``found``."""
    try:
        values = decode_values(data)
        if values is not None:
            for offset, value in enumerate(values):
                found.setdefault(first + offset, value)
            return
        for offset, record in enumerate(decode_group(data)):
            ok, payload = decode_record(record)
            index = first + offset
            found.setdefault(
                index, payload if ok else Unreadable(UpstreamFailed(name, index, payload[0]))
            )
    except Exception as error:  # a damaged object, a value whose class is not importable
        info = {"type": type(error).__name__, "message": f"its record {key} is unreadable: {error}"}
        for index in range(first, first + count):
            found.setdefault(index, Unreadable(UpstreamFailed(name, index, info)))


def spread_arguments(value: Any, index: int) -> tuple[Any, ...]:
    """A starmap pipeline's upstream value as the function's positional arguments (the
    client made every other starmap input a tuple before sending it): a dict or a string,
    which would spread as its keys or characters, is refused, as is what cannot spread."""
    kind = type(value).__name__
    what = f"input {index} is an upstream value of type {kind}, not a tuple of arguments"
    if isinstance(value, (Mapping, str, bytes)):
        raise TypeError(
            f"{what} (it would spread as its keys or characters): with "
            "starmap=True, return a tuple of the arguments upstream"
        )
    try:
        return tuple(value)
    except TypeError:
        raise TypeError(
            f"{what}: with starmap=True, return a tuple of the arguments upstream"
        ) from None


def decode_record(data: bytes) -> tuple[bool, Any]:
    """Return ``(True, value)`` or ``(False, (info dict, exception or None))``."""
    if data[:4] != RECORD_MAGIC:
        raise ValueError("not an aioknot result record")
    kind, body = data[4:5], data[5:]
    if kind == RECORD_VALUE:
        return True, pickle.loads(body)
    (length,) = _U32.unpack_from(body)
    info = json.loads(body[4 : 4 + length])
    exception: BaseException | None = None
    if len(body) > 4 + length:
        try:
            exception = pickle.loads(body[4 + length :])
        except Exception:
            exception = None
    return False, (info, exception)


def _qualified_name(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


# ---------------------------------------------------------------------------------------------
# The store, as the worker sees it: ranged reads and whole-object writes, blocking. (The
# client's stores are aioknot._stores: async, batched, and translating their errors.)


class WorkerStorage(Protocol):
    def read(self, key: str, start: int | None = None, stop: int | None = None) -> bytes: ...

    def write(self, key: str, data: bytes) -> None: ...

    def keys(self, prefix: str, start_after: str = "") -> Iterator[str]:
        """The keys under ``prefix`` after ``start_after``, in order (a pipeline's reads)."""
        ...


class WorkerDirectory:
    """The worker's view of a store in a local directory (``file:///path``)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def read(self, key: str, start: int | None = None, stop: int | None = None) -> bytes:
        with open(os.path.join(self.root, key), "rb") as file:
            if start is None:
                return file.read()
            file.seek(start)
            return file.read((stop or 0) - start)

    def keys(self, prefix: str, start_after: str = "") -> Iterator[str]:
        directory, _, head = prefix.rpartition("/")
        try:
            names = sorted(os.listdir(os.path.join(self.root, directory)))
        except FileNotFoundError:
            return
        for name in names:
            key = f"{directory}/{name}" if directory else name
            if name.startswith(head) and key > start_after:
                yield key

    def write(self, key: str, data: bytes) -> None:
        path = os.path.join(self.root, key)
        # Write then rename: a reader never sees half a record.
        # Unique per process and thread: two writers of one key must not share a temp file.
        temporary = f"{path}.{os.getpid()}-{threading.get_ident()}.tmp"
        try:
            file = open(temporary, "wb")
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            file = open(temporary, "wb")
        try:
            with file:
                file.write(data)
            os.replace(temporary, path)
        except BaseException:
            # A full disk stays full if half-written temporaries pile up on it.
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise


# Transient S3 failures are retried by the worker's own jittered backoff, for this long since
# a call's first failure: a blip or a burst of 503s costs time, never a result; a longer outage
# fails the inputs affected, each with the reason, and the client decides what the run does.
# botocore's standard mode retries each call BOTOCORE_RETRIES time(s) under it (its
# ``max_attempts`` counts retries: two attempts in all). Leaving the retrying to botocore
# alone, with its own backoff, made each fault cost ~0.6 s of a chunk's critical path: 15%
# faulty requests cut throughput to a third. Ours waits ~50 ms after a 5xx or a dropped
# connection, ~0.5 s after throttling (where waiting is the point), doubling to 5 s.
BOTOCORE_RETRIES = 1
FIRST_PAUSE_SECONDS = 0.05
FIRST_THROTTLED_PAUSE_SECONDS = 0.5
LONGEST_PAUSE_SECONDS = 5.0
STORE_GIVE_UP_SECONDS = 120.0
STORE_CONNECT_TIMEOUT_SECONDS = 5.0
STORE_READ_TIMEOUT_SECONDS = 20.0
# The error codes that say "too many requests, wait", and those that say "not now" rather
# than "no" (AWS's own list for its SDKs' retries, plus the credential codes a refresh cures).
# Written here, where the self-contained worker can read them; aioknot._retry builds on them.
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ProvisionedThroughputExceededException",
        "BandwidthLimitExceeded",
        "SlowDown",
        "EC2ThrottledException",
        "PriorRequestNotComplete",
    }
)
TRANSIENT_CODES = THROTTLING_CODES | frozenset(
    {
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "ServerException",
        "RequestTimeout",
        "RequestTimeoutException",
        "TransactionInProgressException",
        "ExpiredToken",
        "ExpiredTokenException",
        "RequestExpired",
        "IDPCommunicationError",
    }
)
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
# botocore's and urllib3's connection-level errors, told by name so that the worker needs no
# import beyond boto3 (their classes live in botocore and urllib3).
_TRANSIENT_CLASSES = frozenset(
    {
        "ConnectionError",  # builtins' and botocore's (reset, closed, refused, timeouts)
        "HTTPClientError",
        "IncompleteReadError",
        "ResponseStreamingError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "ProtocolError",
        "CredentialRetrievalError",
        "TimeoutError",
    }
)


def _answer(error: BaseException) -> tuple[str, int | None] | None:
    """``(error code, HTTP status)`` of a botocore ClientError (the service answered)."""
    response = getattr(error, "response", None)
    if not isinstance(response, dict):
        return None
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(response.get("Error", {}).get("Code", "")), status


def is_transient(error: BaseException) -> bool:
    """Whether a store call that raised ``error`` may well succeed if tried again."""
    answer = _answer(error)
    if answer is not None:
        code, status = answer
        return code in TRANSIENT_CODES or status in TRANSIENT_STATUS
    return any(cls.__name__ in _TRANSIENT_CLASSES for cls in type(error).__mro__)


def _throttled(error: BaseException) -> bool:
    answer = _answer(error)
    return answer is not None and (answer[0] in THROTTLING_CODES or answer[1] == 429)


def retry_transient(call: Callable[[], Any], give_up_after: float = STORE_GIVE_UP_SECONDS) -> Any:
    """``call()``, retried with jittered backoff while it fails transiently, for at most
    ``give_up_after`` seconds since its first failure; then the last error is raised.

    The client's retries go through `aioknot._retry` (async, on anyio's clock); this loop is
    the worker's own, synchronous and stdlib-only, because this file must stay
    self-contained. The two share the codes above; the pauses differ on purpose (see
    ``FIRST_PAUSE_SECONDS``).
    """
    failing_since: float | None = None
    delay = 0.0
    while True:
        try:
            return call()
        except Exception as error:
            if not is_transient(error):
                raise
            now = time.monotonic()
            if failing_since is None:
                failing_since = now
            throttled = FIRST_THROTTLED_PAUSE_SECONDS if _throttled(error) else 0.0
            delay = min(max(delay * 2, FIRST_PAUSE_SECONDS, throttled), LONGEST_PAUSE_SECONDS)
            # Jittered: the workers that failed together must not retry together.
            pause = random.uniform(delay / 2, delay)
            if now - failing_since + pause > give_up_after:
                raise
        time.sleep(pause)


class WorkerBucket:
    """The worker's view of a store in ``s3://bucket/prefix``; boto3 is imported only then.

    ``environment`` holds the client's store settings as it uses them
    (``AIOKNOT_ENDPOINT_URL``, ``AIOKNOT_REGION``, ``AIOKNOT_PROFILE``,
    ``AIOKNOT_EXPECTED_BUCKET_OWNER``): a Batch child's environment, or what the local
    backend passes with each chunk.
    """

    def __init__(self, url: str, environment: Mapping[str, str] | None = None) -> None:
        import boto3  # deferred: the local backend on a local store never pays for it
        from boto3.session import Config  # botocore's, as boto3 re-exports it

        env = os.environ if environment is None else environment
        bucket, _, prefix = url[len("s3://") :].partition("/")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        endpoint = env.get("AIOKNOT_ENDPOINT_URL") or None
        self.owner = env.get("AIOKNOT_EXPECTED_BUCKET_OWNER") or None
        # botocore reads AWS_DEFAULT_REGION and the profile, not AWS_REGION: read it here.
        region = env.get("AIOKNOT_REGION") or None
        if region is None and not os.environ.get("AWS_DEFAULT_REGION"):
            region = os.environ.get("AWS_REGION") or None
        session = boto3.Session(profile_name=env.get("AIOKNOT_PROFILE") or None)
        config = Config(
            retries={"mode": "standard", "max_attempts": BOTOCORE_RETRIES},
            # A request that hangs is abandoned and retried (botocore waits 60 s by default).
            connect_timeout=STORE_CONNECT_TIMEOUT_SECONDS,
            read_timeout=STORE_READ_TIMEOUT_SECONDS,
            # The worker writes from two threads (the flusher and the main one).
            max_pool_connections=4,
        )
        self.client = session.client("s3", endpoint_url=endpoint, region_name=region, config=config)

    def _owner(self) -> dict[str, str]:
        return {"ExpectedBucketOwner": self.owner} if self.owner else {}

    def read(self, key: str, start: int | None = None, stop: int | None = None) -> bytes:
        extra = self._owner()
        if start is not None:
            extra["Range"] = f"bytes={start}-{(stop or 1) - 1}"

        def get() -> bytes:
            # The body is read inside the retried call: a connection reset mid-body is as
            # transient as one before the answer.
            response = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key, **extra)
            return response["Body"].read()  # type: ignore[no-any-return]

        return retry_transient(get)  # type: ignore[no-any-return]

    def keys(self, prefix: str, start_after: str = "") -> Iterator[str]:
        request = {"Bucket": self.bucket, "Prefix": self.prefix + prefix, **self._owner()}
        if start_after:
            request["StartAfter"] = self.prefix + start_after
        while True:
            page = retry_transient(lambda: self.client.list_objects_v2(**request))
            for item in page.get("Contents", ()):
                yield item["Key"][len(self.prefix) :]
            if not page.get("IsTruncated"):
                return
            request["ContinuationToken"] = page["NextContinuationToken"]

    def write(self, key: str, data: bytes) -> None:
        retry_transient(
            lambda: self.client.put_object(
                Bucket=self.bucket, Key=self.prefix + key, Body=data, **self._owner()
            )
        )


def open_storage(url: str, environment: Mapping[str, str] | None = None) -> WorkerStorage:
    if url.startswith("file://"):
        return WorkerDirectory(url[len("file://") :])
    if url.startswith("s3://"):
        return WorkerBucket(url, environment)
    raise ValueError(f"unknown store URL {url!r}")


# "The device is full" in its two forms: no blocks left, or this user's quota spent.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
# A reason is one line of the channel, which the backend reads in lines of at most 64 KiB.
MAX_REASON = 2_000


def store_failure(error: BaseException, store_url: str, what: str) -> str:
    """One line that says why ``what`` failed in the store, for the inputs' ``TaskLost``."""
    if isinstance(error, OSError) and error.errno in DISK_FULL:
        why = "no space left on device" if error.errno == errno.ENOSPC else "disk quota exceeded"
        text = f"{why}: the worker could not {what} in the store {store_url} ({error})"
    else:
        detail = f"{type(error).__name__}: {error}"
        text = f"the worker could not {what} in the store {store_url}: {detail}"
    text = " ".join(text.split())  # one line: it travels on the worker's channel
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Running tasks.


# A finished input's record waits at most about this long while the next input runs: then
# the flusher thread writes what is pending, so a hung input never holds back a result.
HELD_SECONDS = GROUP_SECONDS


class _Flusher:
    """Writes the pending records of finished inputs while the input after them runs long.

    The main thread groups the records of quick inputs and writes them when the group is old
    enough, but only between inputs: if the next input hangs, they would wait for it. This
    daemon thread looks every ``HELD_SECONDS`` while a chunk runs; when the same input is
    still running as at its last look, it writes what is pending (under the worker's lock,
    which every write and every report takes). It costs the main thread one counter update
    per input.
    """

    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock
        self.started = 0  # inputs started so far; only the main thread writes it
        # Called at every look (the local worker passes the running input's output on).
        self.tick: Callable[[], None] | None = None
        self._flush: Callable[[], None] | None = None
        self._active = threading.Event()
        self._thread: threading.Thread | None = None

    def begin(self, flush: Callable[[], None]) -> None:
        with self.lock:
            self._flush = flush
        self._active.set()
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="aioknot-flusher", daemon=True)
            self._thread.start()

    def end(self) -> None:
        self._active.clear()
        with self.lock:
            self._flush = None  # once this returns, the thread writes nothing of this chunk

    def _loop(self) -> None:
        seen = -1
        while True:
            self._active.wait()
            time.sleep(HELD_SECONDS)
            tick = self.tick
            if tick is not None:
                tick()
            started = self.started
            if started == seen:
                with self.lock:
                    if self._flush is not None:
                        self._flush()
            seen = started


# While an input runs and writes, its log in the store is rewritten at most this often (so
# that `aioknot logs --follow` shows a long task's lines as they come), and never taking more
# than a tenth of the flusher thread's time: a log that takes 0.5 s to write waits 5 s.
LIVE_LOG_SECONDS = 1.0
LIVE_LOG_SHARE = 0.1


class OutputCapture:
    """What each input's task writes to stdout and stderr, kept apart from the others'.

    File descriptors 1 and 2 point at one file (opened for appending), so that everything the
    task writes lands there: ``print``, a C library's ``write(1, ...)``, and the processes it
    starts (they inherit the descriptors). After each input, `take` returns what the file
    holds (that input's output) and empties it, and `keep` stores it as the input's log. A
    quiet input costs a flush and one ``lseek`` (the shared offset says whether anything was
    written): ~0.45 us, so 10,000 tiny quiet tasks pay ~5 ms of CPU in all.

    The output is also passed on to ``passthrough`` (the client's stderr) for people watching
    a terminal: while an input runs, by the flusher thread at each look (`pass_through`), and
    the rest when it ends. ``report_passed`` shares how much was passed on with the local
    backend (the progress file), which passes on the rest if the process is killed. At those
    looks, the log of an input that runs long and writes is also stored as it grows.
    """

    def __init__(
        self, path: str, passthrough: int, report_passed: Callable[[int], None] | None = None
    ) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND)
        self._passthrough = passthrough
        self._report_passed = report_passed
        self._passed = 0  # bytes of the file passed on already
        self._lock = threading.Lock()  # the main thread's take and the flusher's pass_through
        # The input running now (-1 once it ended), set by the main thread before each one.
        self.index = -1
        # Where its log goes: the chunk's store, run and attempt (`begin`).
        self._store: WorkerStorage | None = None
        self._run = ""
        self._attempt = 1
        # A log is written whole under this lock, and a growing one only while its input
        # runs: its final version is never overwritten by an older one.
        self._log_lock = threading.Lock()
        self._live_index = -1  # the input whose growing log the flusher looks after
        self._live_at = 0.0  # when it may next write it (time.monotonic())
        self._live_size = 0  # how much of it is stored

    def redirect(self) -> None:
        """Point stdout and stderr (the descriptors, and so Python's streams) at the file."""
        os.dup2(self._fd, 1)
        os.dup2(self._fd, 2)

    def begin(self, store: WorkerStorage, run: str, attempt: int) -> None:
        """Where the logs of the chunk about to run go."""
        self._store, self._run, self._attempt = store, run, attempt

    def take(self) -> bytes:
        """What was written since the last take (the input's that just ended); empties it."""
        # Once per input, so written for speed.
        self.index = -1
        stdout, stderr = sys.stdout, sys.stderr
        try:
            stderr.flush()  # Python's buffers: a partial line, or a stdout made anew
            if stdout is not stderr:
                stdout.flush()
        except (OSError, ValueError, AttributeError):
            pass  # closed or replaced by the task: what reached the file is kept
        if os.lseek(self._fd, 0, os.SEEK_CUR) == 0:
            return b""
        with self._lock:
            data = self._read(0)
            self._pass_on(data[self._passed :])
            os.ftruncate(self._fd, 0)
            os.lseek(self._fd, 0, os.SEEK_SET)
            self._set_passed(0)
        return data

    def keep(self, index: int, data: bytes) -> None:
        """Store ``data``, what input ``index`` wrote (`take`), as its log."""
        if self._store is None:
            return
        key = log_key(self._run, index, self._attempt)
        with self._log_lock:
            try:
                self._store.write(key, data)
            except Exception as error:
                # The result matters more than its log: say so, and go on.
                self.say(f"the output of input {index} could not be stored at {key}: {error}")

    def pass_through(self) -> None:
        """Pass on what the running input wrote since the last look; store its log as it
        grows if it runs long (the flusher thread, every ``HELD_SECONDS`` while a chunk runs)."""
        with self._lock:
            end = os.lseek(self._fd, 0, os.SEEK_CUR)
            if end > self._passed:
                data = self._read(self._passed)
                self._pass_on(data)
                self._set_passed(self._passed + len(data))
            index, now = self.index, time.monotonic()
            if index != self._live_index:  # another input: its log may wait a while
                self._live_index, self._live_at, self._live_size = index, now + LIVE_LOG_SECONDS, 0
                return
            store, run, attempt = self._store, self._run, self._attempt
            if index < 0 or store is None or end <= self._live_size or now < self._live_at:
                return
            output = self._read(0)
        with self._log_lock:
            if (self.index, self._run, self._attempt) != (index, run, attempt):
                return  # it ended meanwhile: the main thread stores its whole log
            try:
                store.write(log_key(run, index, attempt), output)
            except Exception:
                pass  # it is stored whole when the input ends, or said then why not
            took = time.monotonic() - now
        self._live_size = len(output)
        self._live_at = time.monotonic() + max(LIVE_LOG_SECONDS, took / LIVE_LOG_SHARE)

    def say(self, text: str) -> None:
        """A line of the worker's own for the client's stderr, never in any input's log."""
        self._pass_on(f"aioknot worker: {text}\n".encode())

    def _read(self, start: int) -> bytes:
        parts: list[bytes] = []
        while True:
            part = os.pread(self._fd, 1 << 20, start)
            if not part:
                return b"".join(parts)
            parts.append(part)
            start += len(part)

    def _set_passed(self, passed: int) -> None:
        self._passed = passed
        if self._report_passed is not None:
            self._report_passed(passed)

    def _pass_on(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._passthrough, view) :]
        except OSError:
            pass  # the client's stderr is gone: the log in the store is what counts


# ---------------------------------------------------------------------------------------------
# Measuring (``knot.estimate``): with ``AIOKNOT_MEASURE=1`` in a chunk's environment (a Batch
# child's, or the local chunk's ``env``), each input runs in a child forked for it alone, so
# that its figures are its own: wall time, CPU time (the child's rusage, with any process it
# started and waited for), peak memory (its peak resident size less its size when forked: the
# pages it shares with the worker count in both) and bytes written (its /proc/self/io, read
# just before it ends; None without /proc). The value or error comes back through a pipe and
# is recorded as usual; the figures are stored as one small JSON object per input
# (`metrics_key`), before the input's record, so that they are there once the result is.
# Measured inputs run one at a time on a machine (`_measuring_alone`): tasks that compete for
# its CPUs would measure the machine, not the task (a Batch child is alone in its container).

MEASURE_VARIABLE = "AIOKNOT_MEASURE"
METRICS_FORMAT = 1
MEASURE_LOCK_NAME = "aioknot-measure.lock"


def metrics_key(run: str, index: int) -> str:
    return f"{run}/metrics/{index:09d}"


def _resident_bytes() -> int | None:
    """This process's resident size now (Linux), else None."""
    try:
        with open("/proc/self/statm", "rb") as file:
            return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _io_counters() -> dict[str, int]:
    """This process's I/O counters (``wchar``, ``write_bytes``, ...), {} without /proc."""
    try:
        with open("/proc/self/io", "rb") as file:
            lines = file.read().decode().splitlines()
    except OSError:
        return {}
    counters = {}
    for line in lines:
        name, _, value = line.partition(":")
        if value.strip().isdigit():
            counters[name.strip()] = int(value)
    return counters


def _own_memory_bytes() -> int | None:
    """This worker's own memory as a fresh worker in a container would hold it: its private
    resident pages (Linux). A local worker forked from the client shares the client's pages,
    which its resident size counts (a test runner's 280 MB, say); a container's worker is a
    fresh process, whose pages are all private. Elsewhere, the resident size."""
    try:
        with open("/proc/self/smaps_rollup") as file:
            fields = dict(line.split(":", 1) for line in file if ":" in line)
        private = ("Private_Clean", "Private_Dirty")
        return sum(int(fields[name].split()[0]) for name in private) * 1024
    except (OSError, ValueError, KeyError, IndexError):
        return _resident_bytes()


def _host_figures() -> dict[str, int | None]:
    """The CPUs this process may use and the machine's memory, as the measuring host has them."""
    try:
        cpus: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count()
    try:
        memory: int | None = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        memory = None
    return {"cpus": cpus, "memory_bytes": memory}


def _measured_child(
    function: Callable[..., Any], argument: Any, starmap: bool, index: int, pipe: int
) -> None:
    """In the forked child: run the input, send its record and figures, never return."""
    code = 0
    try:
        base = _resident_bytes()
        if base is None:  # no /proc: the peak so far stands in (macOS: bytes)
            import resource

            maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            base = maxrss if sys.platform == "darwin" else maxrss * 1024
        try:
            value = function(*argument) if starmap else function(argument)
            try:
                record = encode_value_record(value)
            except Exception as error:
                record = encode_error_record(
                    TypeError(f"the function's result for input {index} cannot be pickled: {error}")
                )
        except BaseException as error:  # as the worker's loop: KeyboardInterrupt too
            record = encode_error_record(error)
        header = json.dumps({"base_rss_bytes": base, "io": _io_counters()}).encode()
        # The lengths first: the parent reads exactly this much, not up to the pipe's end,
        # which a process the function started and left running keeps open.
        lengths = _U32.pack(len(header)) + _U64.pack(len(record))
        view = memoryview(lengths + header + record)
        while view:
            view = view[os.write(pipe, view) :]
    except BaseException:
        code = 1
    finally:
        _exit_flushed(code)


def _measuring_alone() -> int | None:
    """Wait for this machine's measuring lock (a file in the temporary directory, locked
    with flock: released when its last descriptor closes, also by a process that dies) and
    return its descriptor; None where there is no such lock (it is then not waited for)."""
    try:
        import fcntl
        import tempfile

        path = os.path.join(tempfile.gettempdir(), MEASURE_LOCK_NAME)
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    except (ImportError, OSError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        os.close(fd)
        return None
    return fd


def killed_by(signal_number: int) -> str:
    """``SIGKILL (the out-of-memory killer sends SIGKILL)``: a signal, said for a reason."""
    try:
        name = signal.Signals(signal_number).name
    except ValueError:
        name = f"signal {signal_number}"
    hint = " (the out-of-memory killer sends SIGKILL)" if name == "SIGKILL" else ""
    return f"{name}{hint}"


def _ended(wait_status: int) -> str:
    code = os.waitstatus_to_exitcode(wait_status)
    if code < 0:
        return f"was killed by {killed_by(-code)}"
    return f"exited with code {code}"


def _exit_flushed(code: int) -> None:
    """End a forked child at once (no interpreter clean-up: the parent's objects are not
    ours to finalize), with what it printed flushed."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    os._exit(code)


class Measurer:
    """Runs each input of a measured chunk in a child of its own, and stores its figures."""

    def __init__(self, store: WorkerStorage, run: str) -> None:
        self.store = store
        self.run = run
        self.host = _host_figures()
        self.own_memory = _own_memory_bytes()

    def call(self, function: Callable[..., Any], argument: Any, starmap: bool, index: int) -> Any:
        """The input's value, or `Failed` with its error record (a function that raised, or a
        child that died: its figures are stored all the same, they may say why)."""
        import warnings

        lock = _measuring_alone()
        try:
            read_end, write_end = os.pipe()
            started = time.perf_counter()
            with warnings.catch_warnings():
                # Python 3.12+ warns about forking with threads (the flusher's): the child
                # only runs the function and writes to its pipe, taking none of their locks.
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
            if pid == 0:
                os.close(read_end)
                if lock is not None:  # the lock is the worker's: processes the function
                    os.close(lock)  # leaves behind must not hold it for other measurements
                _measured_child(function, argument, starmap, index, write_end)
            os.close(write_end)
            with open(read_end, "rb", closefd=True) as pipe:
                data = pipe.read(_U32.size + _U64.size)
                if len(data) == _U32.size + _U64.size:
                    (header_size,) = _U32.unpack_from(data)
                    (record_size,) = _U64.unpack_from(data, _U32.size)
                    data += pipe.read(header_size + record_size)  # fewer if the child died
            _, wait_status, usage = os.wait4(pid, 0)
            wall = time.perf_counter() - started
        finally:
            if lock is not None:
                os.close(lock)
        figures: dict[str, Any] = {}
        died = None
        result: Any
        try:
            header_at = _U32.size + _U64.size
            (length,) = _U32.unpack_from(data)
            (record_size,) = _U64.unpack_from(data, _U32.size)
            figures = json.loads(data[header_at : header_at + length])
            record = data[header_at + length :]
            if len(record) != record_size:
                raise ValueError("the record was cut short")
            ok, value = decode_record(record)
            result = value if ok else Failed(record)
        except Exception:
            died = _ended(wait_status)
            failure = RuntimeError(
                f"the process that ran input {index} to measure it {died}, without a result"
            )
            result = Failed(encode_error_record(failure))
        # Linux gives the peak in KiB, macOS in bytes.
        peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        base = figures.get("base_rss_bytes")
        io = figures.get("io") or {}
        metrics = {
            "format": METRICS_FORMAT,
            "index": index,
            "wall_seconds": wall,
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "user_seconds": usage.ru_utime,
            "system_seconds": usage.ru_stime,
            "peak_rss_bytes": peak,
            "base_rss_bytes": base,
            "worker_memory_bytes": self.own_memory,
            "peak_memory_bytes": max(0, peak - base) if base is not None else None,
            "bytes_written": io.get("wchar"),
            "storage_bytes_written": io.get("write_bytes"),
            "died": died,
            **self.host,
        }
        try:
            self.store.write(metrics_key(self.run, index), json.dumps(metrics).encode())
        except Exception as error:  # the estimate says the figures are missing
            print(f"aioknot worker: storing the figures of input {index}: {error}", file=sys.stderr)
        return result


class Worker:
    """Runs contiguous chunks of one run's inputs; caches stores and functions between chunks."""

    def __init__(self) -> None:
        self._storages: dict[tuple[str, tuple[tuple[str, str], ...]], WorkerStorage] = {}
        self._functions: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self._flusher = _Flusher(self._lock)
        # Seconds the last chunk spent in its inputs (unpickling and the function), not in
        # the store: what sizes the next chunks. A store's latency is paid once per chunk, so
        # counting it per input would make chunks smaller exactly when they should be bigger.
        self.computing_seconds = 0.0

    def storage(self, url: str, environment: Mapping[str, str] | None = None) -> WorkerStorage:
        key = (url, tuple(sorted(environment.items())) if environment is not None else ())
        if key not in self._storages:
            self._storages[key] = open_storage(url, environment)
        return self._storages[key]

    def function(self, store_url: str, key: str, data: bytes | None) -> Any:
        """The function stored at ``key``: unpickled from ``data`` unless already cached."""
        if (store_url, key) not in self._functions:
            assert data is not None
            self._functions[(store_url, key)] = pickle.loads(data)
        return self._functions[(store_url, key)]

    def run_chunk(
        self,
        *,
        store_url: str,
        run: str,
        function_key: str,
        segment_first: int,
        start: int,
        stop: int,
        starmap: bool,
        environment: Mapping[str, str] | None = None,
        on_done: Callable[[int, int], None] | None = None,
        on_start: Callable[[int], None] | None = None,
        on_failed: Callable[[int, int, str], None] | None = None,
        stop_at: Callable[[], int] | None = None,
        capture: OutputCapture | None = None,
        attempt: int = 1,
        progress: Any = None,
        timed: bool = False,
        upstream: str | None = None,
        upstream_lost: str = "",
    ) -> int:
        """Run inputs ``start..stop`` (global indices, one segment) and record each result.

        ``on_done(first, count)`` follows each written object; ``on_failed(first, count,
        reason)`` reports inputs whose record could not be written or whose input could not
        be read (a full disk, a store that refuses), and the chunk goes on; without it, such
        an error is raised. ``stop_at()`` is read before each input: an input at or beyond it
        was taken back by the backend and is not run. With ``capture``, what each input
        wrote is stored as its log (``log_key``, under ``attempt``) before its record, when
        it wrote anything. Returns the index the chunk stopped at.

        With ``upstream`` (a pipeline's upstream run prefix), the inputs are that run's
        results for the same indices (`read_upstream`), not a segment's; ``upstream_lost``
        is what Batch said of the upstream container that died, if it did (a rerun's).

        ``progress`` (the local backend's mapped progress file, `PROGRESS_*`) does what
        ``on_start`` and ``stop_at`` do, without a Python call per input: the running index
        (and when it started, if ``timed``) is stored before each input, and the limit read.
        """
        store = self.storage(store_url, environment)
        lock = self._lock
        self.computing_seconds = 0.0
        measure = None  # knot.estimate's runs: each input in a child of its own (`Measurer`)
        if environment is not None and environment.get(MEASURE_VARIABLE) == "1":
            measure = Measurer(store, run)
        # The results of the chunk's inputs so far, in order: a value, or Failed. Only the
        # main thread appends (no lock per input: an append is atomic); results[written:] are
        # not written yet, and `flush` writes them, with the lock held, from either thread
        # (the flusher's, while an input runs long). Values are pickled when they are written
        # (within ~40 ms), as a process pool pickles a chunk's results at its end.
        results: list[Any] = []
        written = 0
        last_failed = -1  # the position of the last Failed appended

        def flush() -> None:  # called with the lock held
            nonlocal written
            count = len(results) - written
            if count <= 0:
                return
            first = start + written
            try:
                failures = -1 if last_failed >= written else 0  # -1: encode_results looks
                data = encode_results(first, results[written : written + count], failures)
                store.write(result_key(run, first, count), data)
            except Exception as error:
                if on_failed is None:
                    raise
                on_failed(first, count, store_failure(error, store_url, "write its result"))
            else:
                if on_done is not None:
                    on_done(first, count)
            written += count

        pickled: bytes | None = None
        try:
            if (store_url, function_key) not in self._functions:
                pickled = store.read(function_key)
        except Exception as error:
            if on_failed is None:
                raise
            with lock:
                reason = store_failure(error, store_url, "read the function")
                on_failed(start, stop - start, reason)
            return stop
        try:
            function = self.function(store_url, function_key, pickled)
        except Exception as error:
            # Every input gets the reason (a module missing on the worker, say), not a crash.
            failure = RuntimeError(f"the function could not be loaded on the worker: {error!r}")
            failure.__cause__ = error
            results.extend([Failed(encode_error_record(failure))] * (stop - start))
            last_failed = len(results) - 1
            with lock:
                flush()
            return stop
        key = segment_key(run, segment_first)
        try:
            if upstream is not None:
                arguments = read_upstream(store, upstream, start, stop, upstream_lost)
            else:
                # Two ranged reads for the whole chunk: the offsets, then the blocks.
                blocks = read_blocks(
                    lambda lo, hi: store.read(key, lo, hi),
                    start - segment_first,
                    stop - segment_first,
                )
        except Exception as error:
            if on_failed is None:
                raise
            with lock:
                on_failed(start, stop - start, store_failure(error, store_url, "read its input"))
            return stop
        if upstream is None:
            unpickling = time.perf_counter()
            arguments = blocks.unpickle()
            self.computing_seconds += time.perf_counter() - unpickling
        flusher = self._flusher if on_failed is not None else None
        if capture is not None:
            capture.begin(store, run, attempt)
        if flusher is not None:
            flusher.tick = capture.pass_through if capture is not None else None
            flusher.begin(flush)
        end = stop
        clock = time.perf_counter
        append = results.append
        # One clock reading per input: an input starts when the one before it ended (the
        # bookkeeping between them is a fraction of a microsecond), or when a write before
        # it ended: the store's time is not the function's (it sizes the chunks).
        began = opened = clock()
        try:
            pack, unpack, monotonic_ns = _I64.pack_into, _I64.unpack_from, time.monotonic_ns
            for index, argument in zip(range(start, stop), arguments, strict=True):
                if progress is not None:
                    if timed:  # the start first: the backend reads index, start, index
                        pack(progress, PROGRESS_STARTED, monotonic_ns())
                    pack(progress, PROGRESS_RUNNING, index)
                    # Read after announcing the input (the backend writes the limit, then
                    # reads the running index): one of the two sees the other's write.
                    if index >= unpack(progress, PROGRESS_STOP_AT)[0]:
                        pack(progress, PROGRESS_RUNNING, -1)
                        end = index
                        break
                if on_start is not None:
                    on_start(index)
                if stop_at is not None and index >= stop_at():  # as above
                    if on_start is not None:
                        on_start(-1)
                    end = index
                    break
                if flusher is not None:
                    flusher.started += 1
                if capture is not None:
                    capture.index = index
                try:
                    if type(argument) is Unreadable:
                        raise argument.error
                    if starmap and type(argument) is not tuple:  # a pipeline's upstream value
                        argument = spread_arguments(argument, index)
                    if measure is not None:
                        result = measure.call(function, argument, starmap, index)
                        if type(result) is Failed:
                            last_failed = index - start
                    else:
                        result = function(*argument) if starmap else function(argument)
                except BaseException as error:  # KeyboardInterrupt too: the user's code raised
                    result = Failed(encode_error_record(error))
                    last_failed = index - start  # before the append: flush reads it after
                finished = clock()
                took = finished - began
                self.computing_seconds += took
                if capture is not None:
                    output = capture.take()
                    if output:  # before the record: once the result is known, so is the log
                        capture.keep(index, output)
                        finished = clock()
                if len(results) == written:
                    opened = began  # the first unwritten result's start
                append(result)
                if (
                    took >= SLOW_INPUT_SECONDS
                    or finished - opened >= GROUP_SECONDS
                    or len(results) - written >= GROUP_MAX_INPUTS
                ):
                    with lock:
                        flush()
                    finished = clock()
                began = finished
            with lock:
                flush()
        finally:
            if flusher is not None:
                flusher.end()
        return end


def array_index_from_environment(environ: dict[str, str] | os._Environ[str]) -> int:
    """This Batch child's array index: the documented variable, else the job id's suffix."""
    if "AWS_BATCH_JOB_ARRAY_INDEX" in environ:
        return int(environ["AWS_BATCH_JOB_ARRAY_INDEX"])
    job_id = environ.get("AWS_BATCH_JOB_ID", "")
    head, colon, tail = job_id.rpartition(":")
    if colon and tail.isdigit():
        return int(tail)
    return 0  # a plain (non-array) job runs child 0


def parse_segments(text: str) -> list[tuple[int, int]]:
    """``"0:16,16:32"`` -> ``[(0, 16), (16, 32)]``: each segment's first index and count."""
    pairs = []
    for item in text.split(","):
        first, _, count = item.partition(":")
        pairs.append((int(first), int(count)))
    return pairs


def format_segments(segments: list[tuple[int, int]]) -> str:
    return ",".join(f"{first}:{count}" for first, count in segments)


def batch_main(environ: dict[str, str] | os._Environ[str]) -> int:
    """Run this array child's share of a job: ``AIOKNOT_CHUNK`` inputs from its position.

    An input whose record cannot be written (or read) does not stop the others: the child
    goes on, says why on stderr (its log), and exits with 1 so that Batch reports it failed.
    """
    store_url = environ["AIOKNOT_STORE"]
    run = environ["AIOKNOT_RUN"]
    function_key = environ["AIOKNOT_FUNCTION"]
    starmap = environ.get("AIOKNOT_STARMAP") == "1"
    segments = parse_segments(environ["AIOKNOT_SEGMENTS"])
    chunk_size = int(environ.get("AIOKNOT_CHUNK", "1"))
    upstream = environ.get("AIOKNOT_UPSTREAM") or None  # a pipeline's: inputs are its results
    upstream_lost = environ.get("AIOKNOT_UPSTREAM_LOST", "")  # a rerun's: why upstream died
    first = segments[0][0]
    end = segments[-1][0] + segments[-1][1]
    start = first + array_index_from_environment(environ) * chunk_size
    stop = min(start + chunk_size, end)
    failures: list[str] = []

    def report_failed(first: int, count: int, reason: str) -> None:
        failures.append(reason)
        print(f"aioknot worker: inputs {first}..{first + count - 1}: {reason}", file=sys.stderr)

    worker = Worker()
    for segment_first, count in segments:
        lo, hi = max(start, segment_first), min(stop, segment_first + count)
        if lo < hi:
            worker.run_chunk(
                store_url=store_url,
                run=run,
                function_key=function_key,
                segment_first=segment_first,
                start=lo,
                stop=hi,
                starmap=starmap,
                environment=environ,
                on_failed=report_failed,
                upstream=upstream,
                upstream_lost=upstream_lost,
            )
    if failures:
        return 1
    print(f"aioknot worker: inputs {start}..{stop - 1} of run {run} done", flush=True)
    return 0


# The progress file shared with the local backend: int64 slots for the input running now
# (-1 between chunks); the index the current chunk must stop at (the backend lowers it to
# take back the inputs queued behind a stuck one); when the running input started
# (time.monotonic_ns(), the clock every process shares: the backend enforces timeout= by it);
# and how many bytes of the output file were passed on to the client's stderr.
PROGRESS_RUNNING = 0
PROGRESS_STOP_AT = _I64.size
PROGRESS_STARTED = 2 * _I64.size
PROGRESS_PASSED = 3 * _I64.size
PROGRESS_SIZE = 4 * _I64.size


def serve(
    progress_path: str | None = None, capture_path: str | None = None, client: int | None = None
) -> int:
    """The local backend's worker loop: one JSON chunk per stdin line, until stdin closes.

    Reports on the original stdout, one line each: ``ready``; ``done <first> <count>`` per
    written object; ``failed <first> <count> <reason>`` for inputs whose record could not be
    written or whose input could not be read; ``chunk <seconds> <end>`` when a chunk is over,
    ``seconds`` being the time its inputs took (``Worker.computing_seconds``) and ``end`` where
    it stopped (its ``stop``, or where the backend took the rest back).

    ``progress_path`` names a file shared with the parent (``PROGRESS_*``): the index of the
    input running now (and when it started, if the chunk says ``timed``), written before each
    input (memory stores, not syscalls), so that when this process dies the parent knows
    exactly which input killed it, and can stop an input that overruns ``timeout=``; and the
    index to stop at, read before each input. ``capture_path`` names the file that stdout and
    stderr point at (`OutputCapture`): each input's output is stored as its log, and the
    parent keeps what a killed input wrote.
    """
    # Keep the original stdin and stdout for the protocol: the user's prints go elsewhere and
    # the user's input() reads an empty stdin, so neither can corrupt the channel.
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    chunks = os.fdopen(os.dup(0), "r")
    progress = None
    if progress_path is not None:
        import mmap

        with open(progress_path, "r+b") as file:
            progress = mmap.mmap(file.fileno(), PROGRESS_SIZE)
    capture = None
    if capture_path is not None:

        def report_passed(passed: int) -> None:
            if progress is not None:
                _I64.pack_into(progress, PROGRESS_PASSED, passed)

        capture = OutputCapture(capture_path, os.dup(2), report_passed)
        capture.redirect()
    else:
        os.dup2(2, 1)
    sys.stdout = sys.stderr  # one stream for both: their lines stay in the order written
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdin = open(os.devnull)

    def report_start(index: int) -> None:
        if progress is not None:
            _I64.pack_into(progress, PROGRESS_RUNNING, index)

    # Both are called with the worker's lock held: the flusher thread reports too.
    def report_done(first: int, count: int) -> None:
        channel.write(f"done {first} {count}\n")

    def report_failed(first: int, count: int, reason: str) -> None:
        channel.write(f"failed {first} {count} {reason}\n")

    paths = [p for p in (progress_path, capture_path) if p is not None]
    _watch_parent(client if client is not None else os.getppid(), paths, chunks.fileno())
    worker = Worker()
    try:
        channel.write("ready\n")
        for line in chunks:
            chunk = json.loads(line)
            end = worker.run_chunk(
                store_url=chunk["store"],
                run=chunk["run"],
                function_key=chunk["function"],
                segment_first=chunk["segment"],
                start=chunk["start"],
                stop=chunk["stop"],
                starmap=chunk["starmap"],
                environment=chunk.get("env"),
                on_done=report_done,
                on_failed=report_failed,
                progress=progress,
                timed=bool(chunk.get("timed")),
                capture=capture,
                attempt=chunk.get("attempt", 1),
            )
            report_start(-1)
            channel.write(f"chunk {worker.computing_seconds:.6f} {end}\n")
    except BrokenPipeError:
        # The client is gone: nobody is left to report to. Quietly: point the channel at
        # nothing so that its flush at exit raises nothing either.
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, channel.fileno())
        os.close(null)
    return 0


# ---------------------------------------------------------------------------------------------
# The zygote: where the local backend's worker processes come from. A fresh interpreter takes
# tens of milliseconds to start and import cloudpickle; a fork of a process that has done so
# serves in ~5 ms. So the client keeps one clean process per client process (forked
# from the client while it is small and has no threads, else this file run with --zygote),
# and asks it for each worker: it forks, the child serves (`serve`), and the zygote reports
# the child's pid and, once it has reaped it, how it ended.
#
# The client's requests arrive on a Unix stream socket (SOCK_SEQPACKET would keep messages
# apart, but macOS has none), each a 4-byte length and that much JSON, sent in one sendmsg:
# {"progress", "capture", "cwd", "environment"}, with three file descriptors: the worker's
# channel (its stdin and stdout: chunks in, reports out), a status socket on which the
# zygote writes "pid <pid>" and, later, "exit <returncode>" (negative: the signal that killed
# it), then closes it, and the client's stderr as it is now (the worker's stderr, as a
# subprocess started now would have it). The zygote ends when the client's end closes.

ZYGOTE_NAME = "aioknot-zygote"  # what ps and top show (the process's comm)
WORKER_NAME = "aioknot-worker"
_LENGTH = struct.Struct("<I")  # a request's length, before it


def _receive_request(control: Any) -> tuple[bytes, list[int]]:
    """The next request and its file descriptors; b"" once the client's end is closed.

    The descriptors come with the length (the first bytes of the sendmsg they were sent
    with); the rest of the request is read after it.
    """
    import socket

    head, fds, _, _ = socket.recv_fds(control, _LENGTH.size, 3)
    while head and len(head) < _LENGTH.size:
        more = control.recv(_LENGTH.size - len(head))
        if not more:
            return b"", fds
        head += more
    if not head:
        return b"", fds
    (size,) = _LENGTH.unpack(head)
    parts, left = [], size
    while left:
        part = control.recv(min(left, 1 << 20))
        if not part:
            return b"", fds
        parts.append(part)
        left -= len(part)
    return b"".join(parts), fds


def request_bytes(request: dict[str, Any]) -> bytes:
    """A request as the zygote reads it (`_receive_request`)."""
    message = json.dumps(request).encode()
    return _LENGTH.pack(len(message)) + message


def _set_name(name: str) -> None:
    try:
        with open("/proc/self/comm", "w") as file:
            file.write(name)
    except OSError:
        pass  # not Linux: the name is cosmetic


_KEPT: list[object] = []


def _fresh_stdio() -> None:
    """Standard streams on file descriptors 0-2, as a fresh interpreter has them: a zygote
    forked from the client inherits the client's stream objects (a notebook's, pytest's)."""
    # The old ones are kept, never finalized: one that owned its descriptor would close it,
    # and that number may be another file's by then.
    _KEPT.extend([sys.stdin, sys.stdout, sys.stderr, sys.__stdin__, sys.__stdout__, sys.__stderr__])
    for name, fd, mode in (("stdin", 0, "r"), ("stdout", 1, "w"), ("stderr", 2, "w")):
        stream = open(fd, mode, buffering=1 if mode == "w" else -1, closefd=False)  # noqa: SIM115
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def zygote(control_fd: int) -> int:
    """Serve the client's requests for worker processes until it closes its end."""
    import selectors
    import socket

    _set_name(ZYGOTE_NAME)
    # A zygote forked from the client has a copy of its objects, and its descriptors closed:
    # the garbage collector must never finalize one of them (a socket would close a number
    # that may be another file's by then). Nothing of the client's is collected here.
    gc.freeze()
    _fresh_stdio()
    # Once here, not in each worker: every worker needs them (~2 ms each).
    import mmap  # noqa: F401

    import cloudpickle  # noqa: F401

    # No terminal signals: Ctrl-C interrupts the client, which stops the workers it owns.
    if os.getpid() != os.getsid(0):
        os.setsid()
    control = socket.socket(fileno=control_fd)
    wakeup_read, wakeup_write = os.pipe()  # not inheritable (Python's default)
    os.set_blocking(wakeup_read, False)
    os.set_blocking(wakeup_write, False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes the select below
    signal.set_wakeup_fd(wakeup_write, warn_on_full_buffer=False)
    statuses: dict[int, socket.socket] = {}  # a live worker's pid -> its status socket
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    selector.register(wakeup_read, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj is control:
                try:
                    message, fds = _receive_request(control)
                except ConnectionError:
                    message, fds = b"", []
                if not message:
                    for fd in fds:
                        os.close(fd)
                    # The client is gone. Its workers notice it too (their channels hang
                    # up: `_watch_parent`), remove their files and stop their groups.
                    return 0
                try:
                    _fork_worker(json.loads(message), fds, statuses)
                except Exception:  # a request it cannot read: the client retries, or says why
                    for fd in fds:
                        try:
                            os.close(fd)
                        except OSError:
                            pass
            else:
                try:
                    os.read(wakeup_read, 4096)
                except BlockingIOError:
                    pass
                _reap(statuses)


def _fork_worker(request: dict[str, Any], fds: list[int], statuses: dict[int, Any]) -> None:
    import socket

    channel, status_fd, stderr = fds
    status = socket.socket(fileno=status_fd)
    try:
        pid = os.fork()
    except OSError as error:
        # Out of processes or memory: this worker cannot be, the zygote and the others go on.
        try:
            status.sendall(f"error {error}\n".encode())
        except OSError:
            pass
        status.close()
        os.close(channel)
        os.close(stderr)
        return
    if pid == 0:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            os.setsid()  # its own group: stopping the worker stops what its function started
            _set_name(WORKER_NAME)
            os.dup2(channel, 0)
            os.dup2(channel, 1)
            os.dup2(stderr, 2)
            # Nothing of the zygote's: its socket, the other workers' status sockets.
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["environment"])
            code = serve(request["progress"], request["capture"], request.get("client"))
        except BaseException:
            traceback.print_exc()
        finally:
            _exit_flushed(code)
    os.close(channel)
    os.close(stderr)
    try:
        status.sendall(f"pid {pid}\n".encode())  # SIGPIPE is ignored, as Python sets it
    except OSError:
        pass  # the client gave up on it: it is stopped with its group when it ends
    statuses[pid] = status


def _reap(statuses: dict[int, Any]) -> None:
    """Report each worker that ended, after stopping what its function left running: its
    group (which it led) cannot be reused by another until the worker is reaped."""
    import socket

    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        status = statuses.pop(pid, None)
        if status is None:
            continue
        code = os.waitstatus_to_exitcode(wait_status)
        try:
            status.sendall(f"exit {code}\n".encode(), socket.MSG_NOSIGNAL)
        except OSError:
            pass  # the client stopped listening (its knot closed)
        status.close()


PARENT_POLL_SECONDS = 0.5


def _client_gone(client: int, channel: int, wait: float) -> bool:
    """Whether the client is gone, waiting up to ``wait`` seconds for it to go: its end of
    the channel hangs up when it dies, however it dies (a dead process that is not yet
    reaped has its files closed all the same); its pid is looked at too, where a hang-up is
    not reported."""
    import select

    try:
        poller = select.poll()
        poller.register(channel, select.POLLHUP)
        if poller.poll(wait * 1000):
            return True
    except (OSError, ValueError):
        time.sleep(wait)
    if client == os.getppid():
        return False
    try:
        os.kill(client, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # there, and not ours to signal
    return False


def _watch_parent(client: int, paths: list[str], channel: int) -> None:
    """End this worker, its function's processes and its files when its client dies.

    The client removes the progress and output files and stops the worker's process group
    when it closes; a client that was killed (SIGKILL, a crashed notebook) can do neither,
    and a worker busy in a long input would not notice its closed channel until that input
    ends. The client is watched, not the zygote that forked the worker: should the zygote
    die (the out-of-memory killer may pick it), the workers go on serving the client.
    """

    def watch() -> None:
        while not _client_gone(client, channel, PARENT_POLL_SECONDS):
            pass
        for path in paths:
            try:
                os.unlink(path)
            except OSError:
                pass
        try:
            os.killpg(os.getpgrp(), signal.SIGKILL)  # the worker leads its own group
        except OSError:
            os._exit(0)

    threading.Thread(target=watch, name="aioknot client watch", daemon=True).start()


def _argument(name: str) -> str | None:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv[:-1] else None


if __name__ == "__main__":
    zygote_fd = _argument("--zygote")
    if zygote_fd is not None:
        sys.exit(zygote(int(zygote_fd)))
    sys.exit(batch_main(os.environ))
