"""The worker module on its own: formats, index discovery, Batch mode and self-containment."""

from __future__ import annotations

import ast
import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from aioknot import _worker
from aioknot._pickling import pickle_function
from aioknot._worker import (
    Unreadable,
    WorkerDirectory,
    array_index_from_environment,
    decode_group,
    decode_record,
    decode_values,
    encode_error_record,
    encode_group,
    encode_value_record,
    format_segments,
    pack_segment,
    parse_result_key,
    parse_segments,
    read_blocks,
    read_inputs,
    result_key,
    segment_key,
)


def test_the_worker_imports_only_stdlib_cloudpickle_and_boto3() -> None:
    tree = ast.parse(Path(_worker.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "the worker must not import the rest of aioknot"
            imported.add((node.module or "").partition(".")[0])
    allowed = set(sys.stdlib_module_names) | {"cloudpickle", "boto3", "__future__"}
    assert imported <= allowed, imported - allowed


def _segment(inputs: list[Any], block_size: int = 3) -> bytes:
    """A segment of ``inputs`` in blocks of ``block_size``, as the client packs them."""
    blocks = [pickle.dumps(inputs[i : i + block_size]) for i in range(0, len(inputs), block_size)]
    return pack_segment(blocks, len(inputs), block_size)


class _Reads:
    """A segment read as a store reads it (fewer bytes at its end), counting the reads."""

    def __init__(self, segment: bytes) -> None:
        self.segment = segment
        self.count = 0

    def __call__(self, lo: int, hi: int) -> bytes:
        self.count += 1
        return self.segment[lo:hi]


@pytest.mark.parametrize("block_size", [1, 2, 3, 64])
def test_a_segment_gives_any_range_of_inputs_back_with_two_ranged_reads(block_size: int) -> None:
    inputs = ["a", 1, None, list(range(100)), {"k": b"v"}, 2.5, ("t",)]
    segment = _segment(inputs, block_size)
    for start, stop in [(0, 1), (2, 4), (0, 7), (4, 5), (6, 7), (1, 6)]:
        reads = _Reads(segment)
        assert read_inputs(reads, start, stop) == inputs[start:stop]
        assert reads.count == 2


def test_a_segment_of_the_first_format_one_pickle_per_input_is_still_read() -> None:
    inputs = ["a", 1, None, [1, 2]]
    pickled = [pickle.dumps(x) for x in inputs]
    offsets = [16 + 8 * (len(inputs) + 1)]
    for data in pickled:
        offsets.append(offsets[-1] + len(data))
    segment = b"".join(
        [b"AKSEG001", len(inputs).to_bytes(8, "little")]
        + [offset.to_bytes(8, "little") for offset in offsets]
        + pickled
    )
    assert read_inputs(_Reads(segment), 1, 4) == inputs[1:4]


def test_a_block_that_cannot_be_unpickled_fails_its_own_inputs_only() -> None:
    good = pickle.dumps([0, 1])
    bad = pickle.dumps([2, 3])[:-3] + b"xx."  # truncated: not a pickle any more
    segment = pack_segment([good, bad, pickle.dumps([4])], 5, 2)
    inputs = read_blocks(_Reads(segment), 0, 5).unpickle()
    assert inputs[:2] == [0, 1] and inputs[4] == 4
    assert all(isinstance(value, Unreadable) for value in inputs[2:4])


def test_records_round_trip_values_none_and_exceptions() -> None:
    assert decode_record(encode_value_record(None)) == (True, None)
    assert decode_record(encode_value_record({"a": [1, 2]})) == (True, {"a": [1, 2]})
    try:
        raise ZeroDivisionError("boom")
    except ZeroDivisionError as error:
        record = encode_error_record(error)
    ok, (info, exception) = decode_record(record)
    assert not ok and info["type"] == "ZeroDivisionError" and info["message"] == "boom"
    assert "raise ZeroDivisionError" in info["traceback"]
    assert isinstance(exception, ZeroDivisionError)


def test_an_exception_that_cannot_be_rebuilt_still_gives_type_message_and_traceback() -> None:
    class Strange(Exception):
        def __init__(self, a: int, b: int) -> None:  # pickles, but cannot be rebuilt
            super().__init__(f"{a}/{b}")

    try:
        raise Strange(1, 2)
    except Strange as error:
        ok, (info, exception) = decode_record(encode_error_record(error))
    assert not ok and info["message"] == "1/2" and exception is None
    assert info["type"].endswith("Strange")


def test_groups_and_result_keys() -> None:
    records = [encode_value_record(i) for i in range(3)]
    assert decode_group(encode_group(records)) == records
    assert decode_group(encode_group(records[:1])) == records[:1]
    assert parse_result_key(result_key("r", 7)) == (7, 1)
    assert parse_result_key(result_key("r", 100, 50)) == (100, 50)
    assert result_key("r", 100, 50) > result_key("r", 99) and result_key("r", 100) < result_key(
        "r", 100, 50
    )
    assert parse_segments(format_segments([(0, 16), (16, 32)])) == [(0, 16), (16, 32)]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"AWS_BATCH_JOB_ARRAY_INDEX": "7", "AWS_BATCH_JOB_ID": "abc:3"}, 7),
        ({"AWS_BATCH_JOB_ID": "0f3c-11:42"}, 42),  # moto sets only this
        ({"AWS_BATCH_JOB_ID": "plain-job"}, 0),
        ({}, 0),
    ],
)
def test_the_array_index_comes_from_the_variable_else_the_job_id(
    environ: dict[str, str], expected: int
) -> None:
    assert array_index_from_environment(environ) == expected


def _double(x: int) -> int:
    return 2 * x


def test_batch_mode_runs_its_chunk_of_a_run_in_a_real_process(tmp_path: Path) -> None:
    """A real ``python _worker.py`` process, as the container runs it, on a file store."""
    store = WorkerDirectory(str(tmp_path))
    run = "knots/k/runs/r1"
    store.write("knots/k/functions/f.pkl", pickle_function(_double).data)  # by value
    store.write(segment_key(run, 0), _segment([i for i in range(4)]))
    store.write(segment_key(run, 4), _segment([i for i in range(4, 10)]))
    environment = {
        **os.environ,
        "AIOKNOT_STORE": f"file://{tmp_path}",
        "AIOKNOT_RUN": run,
        "AIOKNOT_FUNCTION": "knots/k/functions/f.pkl",
        "AIOKNOT_SEGMENTS": "0:4,4:6",
        "AIOKNOT_CHUNK": "3",
        "AWS_BATCH_JOB_ID": "parent-job:1",  # child 1 of chunk 3: inputs 3, 4 and 5
    }
    subprocess.run([sys.executable, _worker.__file__], env=environment, check=True, cwd=tmp_path)
    values = {}
    for name in sorted(os.listdir(tmp_path / run / "results")):
        first, _ = parse_result_key(f"x/{name}")
        data = store.read(f"{run}/results/{name}")
        decoded = decode_values(data)  # inputs that all returned: one list of values
        assert decoded is not None
        values.update({first + offset: value for offset, value in enumerate(decoded)})
    assert values == {3: 6, 4: 8, 5: 10}


def test_a_function_that_cannot_be_loaded_gives_every_input_the_reason(tmp_path: Path) -> None:
    store = WorkerDirectory(str(tmp_path))
    run = "knots/k/runs/r2"
    store.write("knots/k/functions/f.pkl", b"not a pickle")
    store.write(segment_key(run, 0), _segment([i for i in range(2)]))
    _worker.Worker().run_chunk(
        store_url=f"file://{tmp_path}",
        run=run,
        function_key="knots/k/functions/f.pkl",
        segment_first=0,
        start=0,
        stop=2,
        starmap=False,
    )
    (name,) = os.listdir(tmp_path / run / "results")
    records = decode_group(store.read(f"{run}/results/{name}"))
    assert len(records) == 2 and decode_values(store.read(f"{run}/results/{name}")) is None
    for record in records:
        ok, (info, _) = decode_record(record)
        assert not ok and "could not be loaded on the worker" in info["message"]


def test_results_of_a_group_with_an_error_or_an_unpicklable_value_are_records() -> None:
    from aioknot._worker import Failed, encode_results

    try:
        raise OSError("disk")
    except OSError as error:
        failed = encode_error_record(error)
    mixed = encode_results(10, [1, Failed(failed), threading.Lock()])
    assert decode_values(mixed) is None
    records = [decode_record(r) for r in decode_group(mixed)]
    assert records[0] == (True, 1)
    assert records[1][1][0]["type"] == "OSError"
    assert "input 12 cannot be pickled" in records[2][1][0]["message"]
    assert decode_values(encode_results(0, [None, "x"])) == [None, "x"]
    assert decode_values(encode_results(0, [None, "x"], failures=0)) == [None, "x"]


# -- the store as the client uses it; transient faults; hung inputs; failed writes -----------


def test_the_s3_store_takes_endpoint_region_and_profile_from_the_chunk(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import botocore.exceptions

    # Only the chunk's settings may reach the store: none from this process's environment.
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    (tmp_path / "config").write_text("[profile chosen]\nregion = eu-west-3\n")
    environment = {
        "AIOKNOT_ENDPOINT_URL": "http://127.0.0.1:9",
        "AIOKNOT_REGION": "ap-south-1",
        "AIOKNOT_PROFILE": "chosen",
    }
    store = _worker.WorkerBucket("s3://bucket/prefix", environment)
    assert store.client.meta.endpoint_url == "http://127.0.0.1:9"
    assert store.client.meta.region_name == "ap-south-1"  # the option wins over the profile's
    del environment["AIOKNOT_REGION"]
    assert _worker.WorkerBucket("s3://b", environment).client.meta.region_name == "eu-west-3"
    with pytest.raises(botocore.exceptions.ProfileNotFound):
        _worker.WorkerBucket("s3://b", {"AIOKNOT_PROFILE": "not-configured"})
    # Without a chunk environment (a Batch child) the process's own variables say it.
    monkeypatch.setenv("AIOKNOT_ENDPOINT_URL", "http://127.0.0.1:8")
    monkeypatch.setenv("AWS_REGION", "sa-east-1")  # botocore alone ignores AWS_REGION
    store = _worker.WorkerBucket("s3://b")
    assert store.client.meta.endpoint_url == "http://127.0.0.1:8"
    assert store.client.meta.region_name == "sa-east-1"


def _client_error(code: str, status: int) -> Exception:
    from botocore.exceptions import ClientError

    response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "PutObject")  # type: ignore[arg-type]


def test_transient_store_errors_are_told_from_real_ones() -> None:
    import errno

    from botocore.exceptions import ConnectionClosedError, EndpointConnectionError

    assert _worker.is_transient(_client_error("SlowDown", 503))
    assert _worker.is_transient(_client_error("InternalError", 500))
    assert _worker.is_transient(_client_error("Whatever", 502))
    assert _worker.is_transient(EndpointConnectionError(endpoint_url="http://x"))
    assert _worker.is_transient(ConnectionClosedError(endpoint_url="http://x"))
    assert _worker.is_transient(ConnectionResetError())
    assert not _worker.is_transient(_client_error("AccessDenied", 403))
    assert not _worker.is_transient(_client_error("NoSuchBucket", 404))
    assert not _worker.is_transient(OSError(errno.ENOSPC, "No space left on device"))


def test_transient_failures_are_retried_and_real_ones_raised_at_once() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise _client_error("SlowDown", 503)
        return "ok"

    assert _worker.retry_transient(flaky) == "ok" and len(calls) == 3

    def denied() -> None:
        calls.append(1)
        raise _client_error("AccessDenied", 403)

    calls.clear()
    with pytest.raises(Exception, match="AccessDenied"):
        _worker.retry_transient(denied)
    assert len(calls) == 1

    def down() -> None:
        raise _client_error("ServiceUnavailable", 503)

    with pytest.raises(Exception, match="ServiceUnavailable"):
        _worker.retry_transient(down, give_up_after=0.5)  # an outage ends, with its error


def _hangs_on_three(x: tuple[int, str]) -> int:
    index, release = x
    if index == 3:
        while not os.path.exists(release):
            time.sleep(0.005)
    return index


def test_a_finished_record_is_written_while_the_next_input_hangs_and_the_rest_can_be_taken_back(
    tmp_path: Path,
) -> None:
    store = WorkerDirectory(str(tmp_path))
    run, release = "knots/k/runs/r3", str(tmp_path / "release")
    store.write("knots/k/functions/f.pkl", pickle_function(_hangs_on_three).data)
    store.write(segment_key(run, 0), _segment([(i, release) for i in range(8)]))
    done: list[tuple[int, int]] = []
    started: list[int] = []
    limit = [8]
    ended: list[int] = []
    failures: list[str] = []  # pytest.fail in the thread would only end the thread
    worker = _worker.Worker()
    thread = threading.Thread(
        target=lambda: ended.append(
            worker.run_chunk(
                store_url=f"file://{tmp_path}",
                run=run,
                function_key="knots/k/functions/f.pkl",
                segment_first=0,
                start=0,
                stop=8,
                starmap=False,
                on_done=lambda first, count: done.append((first, count)),
                on_start=started.append,
                on_failed=lambda first, count, reason: failures.append(reason),
                stop_at=lambda: limit[0],
            )
        )
    )
    thread.start()
    try:
        deadline = time.monotonic() + 30
        # Inputs 0-2 reported, and input 3 announced (the report may come before or after).
        while time.monotonic() < deadline and not (
            sum(count for _, count in done) >= 3 and started and started[-1] == 3
        ):
            time.sleep(0.01)
        # Inputs 0-2 are written and reported although input 3 has not finished.
        assert sorted(i for first, count in done for i in range(first, first + count)) == [
            0,
            1,
            2,
        ]
        assert started[-1] == 3
        limit[0] = 4  # the backend takes back inputs 4-7
    finally:
        Path(release).touch()
        thread.join(30)
    assert failures == []
    assert ended == [4]
    assert sorted(i for first, count in done for i in range(first, first + count)) == [0, 1, 2, 3]
    assert started[-1] == -1  # it announced input 4, saw the limit, and took it back
    assert len(os.listdir(tmp_path / run / "results")) == len(done)


def test_a_record_that_cannot_be_written_is_reported_and_the_chunk_goes_on(
    tmp_path: Path,
) -> None:
    store = WorkerDirectory(str(tmp_path))
    run = "knots/k/runs/r4"
    store.write("knots/k/functions/f.pkl", pickle_function(_double).data)
    store.write(segment_key(run, 0), _segment([i for i in range(5)]))
    (tmp_path / run / "results").write_text("a file where the results directory should be")
    failed: list[tuple[int, int, str]] = []
    end = _worker.Worker().run_chunk(
        store_url=f"file://{tmp_path}",
        run=run,
        function_key="knots/k/functions/f.pkl",
        segment_first=0,
        start=0,
        stop=5,
        starmap=False,
        on_failed=lambda first, count, reason: failed.append((first, count, reason)),
    )
    assert end == 5
    assert sorted(i for first, count, _ in failed for i in range(first, first + count)) == [
        0,
        1,
        2,
        3,
        4,
    ]
    for _, _, reason in failed:
        assert "could not write its result" in reason and f"file://{tmp_path}" in reason
        assert "\n" not in reason


def test_no_space_left_is_said_plainly() -> None:
    import errno

    error = OSError(errno.ENOSPC, "No space left on device")
    reason = _worker.store_failure(error, "file:///data/aioknot", "write its result")
    assert reason.startswith("no space left on device") and "file:///data/aioknot" in reason


def test_batch_mode_reports_a_record_it_cannot_write_and_exits_1(tmp_path: Path) -> None:
    store = WorkerDirectory(str(tmp_path))
    run = "knots/k/runs/r5"
    store.write("knots/k/functions/f.pkl", pickle_function(_double).data)
    store.write(segment_key(run, 0), _segment([i for i in range(2)]))
    (tmp_path / run / "results").write_text("not a directory")
    environment = {
        **os.environ,
        "AIOKNOT_STORE": f"file://{tmp_path}",
        "AIOKNOT_RUN": run,
        "AIOKNOT_FUNCTION": "knots/k/functions/f.pkl",
        "AIOKNOT_SEGMENTS": "0:2",
        "AIOKNOT_CHUNK": "2",
        "AWS_BATCH_JOB_ID": "parent-job:0",
    }
    result = subprocess.run(
        [sys.executable, _worker.__file__], env=environment, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "inputs 0..1" in result.stderr and "could not write its result" in result.stderr
