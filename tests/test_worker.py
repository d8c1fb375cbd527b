"""The worker module on its own: formats, index discovery, Batch mode and self-containment."""

from __future__ import annotations

import ast
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from aioknot import _worker
from aioknot._pickling import pickle_function
from aioknot._worker import (
    FileStore,
    array_index_from_environment,
    decode_group,
    decode_record,
    decode_values,
    encode_error_record,
    encode_group,
    encode_value_record,
    format_segments,
    offset_table_range,
    pack_segment,
    parse_result_key,
    parse_segments,
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


def test_a_segment_gives_each_input_back_with_two_ranged_reads() -> None:
    inputs = [pickle.dumps(x) for x in ["a", 1, None, list(range(100)), {"k": b"v"}]]
    segment = pack_segment(inputs)
    for start, stop in [(0, 1), (2, 4), (0, 5), (4, 5)]:
        lo, hi = offset_table_range(start, stop)
        offsets = [int.from_bytes(segment[i : i + 8], "little") for i in range(lo, hi, 8)]
        data = segment[offsets[0] : offsets[-1]]
        base = offsets[0]
        values = [
            pickle.loads(data[offsets[k] - base : offsets[k + 1] - base])
            for k in range(stop - start)
        ]
        assert values == [pickle.loads(x) for x in inputs[start:stop]]


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
    store = FileStore(str(tmp_path))
    run = "knots/k/runs/r1"
    store.write("knots/k/functions/f.pkl", pickle_function(_double).data)  # by value
    store.write(segment_key(run, 0), pack_segment([pickle.dumps(i) for i in range(4)]))
    store.write(segment_key(run, 4), pack_segment([pickle.dumps(i) for i in range(4, 10)]))
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
    store = FileStore(str(tmp_path))
    run = "knots/k/runs/r2"
    store.write("knots/k/functions/f.pkl", b"not a pickle")
    store.write(segment_key(run, 0), pack_segment([pickle.dumps(i) for i in range(2)]))
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
    import threading

    from aioknot._worker import encode_results

    try:
        raise OSError("disk")
    except OSError as error:
        failed = encode_error_record(error)
    mixed = encode_results(10, [(True, 1), (False, failed), (True, threading.Lock())])
    assert decode_values(mixed) is None
    records = [decode_record(r) for r in decode_group(mixed)]
    assert records[0] == (True, 1)
    assert records[1][1][0]["type"] == "OSError"
    assert "input 12 cannot be pickled" in records[2][1][0]["message"]
    assert decode_values(encode_results(0, [(True, None), (True, "x")])) == [None, "x"]
