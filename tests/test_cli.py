"""The ``aioknot`` command, run for real: ``python -m aioknot`` (and once the installed console
script) in a subprocess, against runs a real knot made in the test, in a local store
(AIOKNOT_HOME=tmp_path), in a bucket on the moto server, and on moto's Batch."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers.aws import IMAGE, MotoClients, make_bucket
from helpers.waiting import wait_until_async
from infra.moto import MotoServer

from aioknot import AsyncKnot, TaskLost

pytestmark = pytest.mark.usefixtures("aioknot_home")

CONSOLE_SCRIPT = Path(sys.executable).parent / "aioknot"
OLD_RUN_ID = "20200101T000000-0a0a0a"  # a run id whose time says 2020
UNKNOWN_RUN_ID = "20200101T000000-bbbbbb"


def fails_on_three(x: int) -> int:
    print(f"hello {x}")
    if x == 3:
        raise ValueError("three is not allowed")
    return x * x


def cube(x: int) -> int:
    return x**3


def waits_for_gate(gate: str) -> str:
    """Prints, then waits until the test creates the file ``gate``, prints again, returns."""
    print("before the gate", flush=True)
    Path(gate + ".started").touch()
    while not os.path.exists(gate):
        time.sleep(0.02)  # the work under test: an input that runs until the test says
    print("after the gate", flush=True)
    return "through"


@dataclass
class Done:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def aioknot(*args: str, script: bool = False, **env: str) -> Done:
    """The command, in a subprocess with this process's environment (AIOKNOT_HOME, and the
    AWS settings pointing at moto when the test uses it) plus ``env``."""
    command = [str(CONSOLE_SCRIPT)] if script else [sys.executable, "-m", "aioknot"]
    with anyio.fail_after(100):
        done = await anyio.run_process(
            [*command, *args], check=False, env={**os.environ, **env} if env else None
        )
    return Done(done.returncode, done.stdout.decode(), done.stderr.decode())


def ok(done: Done) -> Done:
    assert done.code == 0, done.err
    assert done.err == "" or "Traceback" not in done.err, done.err
    return done


async def make_runs(**options: Any) -> tuple[str, str]:
    """Two finished runs in the store: squares (input 3 raised) and cubes (all succeeded)."""
    async with AsyncKnot(fails_on_three, name="squares", backend="local", **options) as knot:
        squares = await knot.map(range(6))
        await squares.gather(return_exceptions=True)
    async with AsyncKnot(cube, name="cubes", backend="local", **options) as knot:
        cubes = await knot.map(range(3))
        await cubes.gather()
    return squares.id, cubes.id


# --- a local store --------------------------------------------------------------------------


async def test_runs_lists_every_knot_newest_first_in_columns() -> None:
    squares, cubes = await make_runs()
    done = ok(await aioknot("runs"))
    header, *rows = done.out.splitlines()
    assert header.split() == [
        "RUN",
        "CREATED",
        "BACKEND",
        "STATE",
        "DONE",
        "INPUTS",
        "SUCCEEDED",
        "FAILED",
        "LOST",
    ]
    assert [row.split()[0] for row in rows] == [f"cubes/{cubes}", f"squares/{squares}"]
    # Aligned: each column starts where its header does.
    for name in ("BACKEND", "STATE"):
        assert {row.index("local" if name == "BACKEND" else "finished") for row in rows} == {
            header.index(name)
        }
    assert rows[1].split()[5:] == ["6", "6", "5", "1", "0"]

    listed = ok(await aioknot("runs", "squares", "--json")).json()
    assert [(r["knot"], r["id"], r["backend"], r["state"]) for r in listed] == [
        ("squares", squares, "local", "finished")
    ]
    assert listed[0]["total"] == 6
    assert listed[0]["counts"] == {"succeeded": 5, "failed": 1, "lost": 0}
    assert listed[0]["created"] <= listed[0]["finished"] <= time.time()


async def test_status_of_a_run_by_its_full_and_its_bare_id() -> None:
    squares, _ = await make_runs()
    done = ok(await aioknot("status", f"squares/{squares}"))
    fields = dict(line.split(":", 1) for line in done.out.splitlines())
    fields = {key: value.strip() for key, value in fields.items()}
    assert fields["run"] == f"squares/{squares}"
    assert fields["state"] == "finished"
    assert fields["backend"] == "local"
    assert (fields["inputs"], fields["succeeded"], fields["failed"], fields["lost"]) == (
        "6",
        "5",
        "1",
        "0",
    )
    described = ok(await aioknot("status", squares, "--json")).json()  # found among the knots
    assert described["knot"] == "squares" and described["state"] == "finished"
    assert described["status"]["succeeded"] == 5 and described["status"]["failed"] == 1


async def test_results_exit_1_when_an_input_failed_and_show_it() -> None:
    squares, cubes = await make_runs()
    done = await aioknot("results", f"squares/{squares}")
    assert done.code == 1
    lines = [line.split(None, 2) for line in done.out.splitlines()]
    assert lines == [
        ["0", "succeeded", "0"],
        ["1", "succeeded", "1"],
        ["2", "succeeded", "4"],
        ["3", "failed", "ValueError: three is not allowed"],
        ["4", "succeeded", "16"],
        ["5", "succeeded", "25"],
    ]
    assert "1 of 6 inputs failed" in done.err and "Traceback" not in done.err

    failed = await aioknot("results", squares, "--failed", "--json")
    assert failed.code == 1
    (only,) = failed.json()
    assert (only["index"], only["state"], only["error"]) == (3, "failed", "ValueError")
    assert "three is not allowed" in only["traceback"]

    everything = ok(await aioknot("results", f"cubes/{cubes}", "--json")).json()
    assert [(r["index"], r["state"], r["value"]) for r in everything] == [
        (0, "succeeded", 0),
        (1, "succeeded", 1),
        (2, "succeeded", 8),
    ]
    assert ok(await aioknot("results", cubes, "--failed")).out == ""


async def test_the_console_script_is_the_same_command() -> None:
    squares, _ = await make_runs()
    assert CONSOLE_SCRIPT.exists(), "pip install -e . makes the console script"
    listed = ok(await aioknot("runs", "--json", script=True)).json()
    assert squares in [run["id"] for run in listed]
    assert "examples:" in ok(await aioknot("--help", script=True)).out


async def test_logs_print_what_one_input_printed() -> None:
    squares, _ = await make_runs()
    done = ok(await aioknot("logs", f"squares/{squares}", "3"))
    assert "hello 3" in done.out.splitlines()
    assert "hello 2" not in done.out


async def test_logs_follow_until_the_input_has_an_outcome(tmp_path: Path) -> None:
    gate = str(tmp_path / "gate")
    async with AsyncKnot(waits_for_gate, name="gated", backend="local") as knot:
        run = await knot.map([gate])
        await wait_until_async(
            lambda: os.path.exists(gate + ".started"), timeout=30, what="the input started"
        )
        command = [sys.executable, "-m", "aioknot", "logs", f"gated/{run.id}", "0", "--follow"]
        async with await anyio.open_process(command) as follower:
            assert follower.stderr is not None and follower.stdout is not None
            # It says when it is following: only then is the input let through.
            said = b""
            with anyio.fail_after(60):
                async for chunk in follower.stderr:
                    said += chunk
                    if b"following input 0" in said:
                        break
            assert follower.returncode is None  # the input has no outcome yet
            # The line printed while the input runs is shown before it ends (the gate is
            # opened only then).
            printed = b""
            with anyio.fail_after(60):
                async for chunk in follower.stdout:
                    printed += chunk
                    if b"before the gate\n" in printed:
                        break
            assert follower.returncode is None
            Path(gate).touch()
            with anyio.fail_after(60):
                async for chunk in follower.stdout:
                    printed += chunk
                async for chunk in follower.stderr:
                    said += chunk
                code = await follower.wait()
        assert code == 0, said
        assert printed.decode().splitlines() == ["before the gate", "after the gate"]
        assert await run.gather() == ["through"]


async def test_cancel_a_running_run_then_status_says_cancelled(tmp_path: Path) -> None:
    gates = [str(tmp_path / f"gate-{i}") for i in range(3)]
    async with AsyncKnot(waits_for_gate, name="gated", backend="local", workers=2) as knot:
        run = await knot.map(gates)
        await wait_until_async(
            lambda: os.path.exists(gates[0] + ".started"), timeout=30, what="an input started"
        )
        # Looking does not touch it: status leaves the run running.
        before = ok(await aioknot("status", f"gated/{run.id}", "--json")).json()
        assert before["state"] == "running"
        assert before["status"]["pending"] == 3
        listed = ok(await aioknot("runs", "gated", "--json")).json()
        assert listed[0]["state"] == "running"  # closing the CLI's knot left it alone
        # A local run's workers are its process's children: the CLI (another process) says
        # where to cancel it, and changes nothing.
        refused = await aioknot("cancel", run.id)
        assert refused.code == 1 and f"process {os.getpid()}" in refused.err, refused
        assert ok(await aioknot("status", f"gated/{run.id}", "--json")).json()["state"] == "running"
        await run.cancel()
        after = ok(await aioknot("status", f"gated/{run.id}", "--json")).json()
        assert after["state"] == "cancelled"
        assert after["finished"] is not None
        again = ok(await aioknot("cancel", run.id))
        assert "already cancelled" in again.out
        for gate in gates:  # let the workers go, whatever became of them
            Path(gate).touch()


def passes_or_waits(gate: str) -> str:
    return "no gate" if not gate else waits_for_gate(gate)


async def test_ctrl_c_stops_waiting_for_results_and_leaves_the_run(tmp_path: Path) -> None:
    gate = str(tmp_path / "gate")
    async with AsyncKnot(passes_or_waits, name="gated", backend="local") as knot:
        run = await knot.map(["", gate])
        await wait_until_async(
            lambda: os.path.exists(gate + ".started"), timeout=30, what="input 1 started"
        )
        command = [sys.executable, "-m", "aioknot", "results", f"gated/{run.id}"]
        async with await anyio.open_process(command) as reader:
            assert reader.stdout is not None and reader.stderr is not None
            printed = b""
            with anyio.fail_after(60):
                async for chunk in reader.stdout:  # input 0's result, then it waits
                    printed += chunk
                    if b"\n" in printed:
                        break
            assert printed.split() == [b"0", b"succeeded", b"'no", b"gate'"]
            reader.send_signal(signal.SIGINT)
            with anyio.fail_after(60):
                said = b"".join([chunk async for chunk in reader.stderr])
                code = await reader.wait()
        assert code == 130
        assert said == b"aioknot: interrupted\n"
        listed = ok(await aioknot("runs", "gated", "--json")).json()
        assert listed[0]["state"] == "running"
        Path(gate).touch()
        assert await run.gather() == ["no gate", "through"]


async def test_gc_removes_old_runs_and_keeps_new_ones(aioknot_home: str) -> None:
    squares, cubes = await make_runs()
    runs = Path(aioknot_home) / "knots" / "squares" / "runs"
    # A run from 2020, by its id (a run's age is its id's, as on a bucket's lifecycle rule).
    shutil.copytree(runs / squares, runs / OLD_RUN_ID)
    done = ok(await aioknot("gc", "--older-than", "7d"))
    assert done.out.splitlines() == [
        f"removed squares/{OLD_RUN_ID}",
        f"removed 1 run created over 1 week ago from file://{aioknot_home}",
    ]
    assert sorted(p.name for p in runs.iterdir()) == [squares]
    assert (Path(aioknot_home) / "knots" / "cubes" / "runs" / cubes).is_dir()
    # The default age is the library's: AIOKNOT_RETENTION_DAYS, else 7 days.
    shutil.copytree(runs / squares, runs / OLD_RUN_ID)
    done = ok(await aioknot("gc", "cubes", AIOKNOT_RETENTION_DAYS="2"))
    assert done.out.splitlines()[-1].startswith("removed 0 runs created over 2 days ago")
    done = ok(await aioknot("gc", "squares", "cubes"))
    assert done.out.splitlines()[0] == f"removed squares/{OLD_RUN_ID}"
    assert sorted(p.name for p in runs.iterdir()) == [squares]
    bad = await aioknot("gc", AIOKNOT_RETENTION_DAYS="soon")
    assert bad.code == 1 and "AIOKNOT_RETENTION_DAYS" in bad.err


async def test_clobber_deletes_a_knots_data(aioknot_home: str) -> None:
    squares, cubes = await make_runs()
    done = ok(await aioknot("clobber", "squares"))
    assert done.out.startswith("clobbered knot squares: deleted ")
    assert not (Path(aioknot_home) / "knots" / "squares").exists()
    listed = ok(await aioknot("runs", "--json")).json()
    assert [run["id"] for run in listed] == [cubes]


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        ([], "COMMAND"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["status"], "the following arguments are required: RUN"),
        (["status", "last-tuesday"], "'last-tuesday' is not a run: give KNOT/RUN_ID or RUN_ID"),
        (["status", f"no_such/{UNKNOWN_RUN_ID}"], "is not a run"),
        (["runs", "under_score"], "'under_score' is not a knot name"),
        (["logs", UNKNOWN_RUN_ID, "first"], "'first' is not an input index"),
        (["gc", "--older-than", "7 days"], "'7 days' is not a duration"),
        (["gc", "--older-than", "7"], "give a number and a unit"),
        (["runs", "--bucket", "b-b-b", "--directory", "/tmp"], "--bucket and --directory"),
        (["--store", "/tmp", "runs", "--bucket", "b-b-b"], "--bucket and --store"),
        (["clobber"], "the following arguments are required: KNOT"),
    ],
)
async def test_usage_errors_exit_2_and_say_what_is_wrong(
    arguments: list[str], complaint: str
) -> None:
    done = await aioknot(*arguments)
    assert done.code == 2
    assert "usage: aioknot" in done.err
    assert complaint in done.err
    assert "Traceback" not in done.err


async def test_an_input_index_the_run_does_not_have_is_a_usage_error() -> None:
    squares, _ = await make_runs()
    done = await aioknot("logs", squares, "6")
    assert done.code == 2
    assert f"run squares/{squares} has 6 inputs: INDEX is 0 to 5, not 6" in done.err


async def test_an_unknown_run_exits_1_saying_what_to_do(aioknot_home: str) -> None:
    squares, _ = await make_runs()
    for reference, where in [
        (f"squares/{UNKNOWN_RUN_ID}", "of knot 'squares'"),
        (UNKNOWN_RUN_ID, "of any knot"),
    ]:
        done = await aioknot("status", reference)
        assert done.code == 1
        assert done.out == ""
        assert done.err.startswith(f"aioknot: error: there is no run {UNKNOWN_RUN_ID} {where}")
        assert "`aioknot runs" in done.err and "--bucket" in done.err
        assert "Traceback" not in done.err
    # A bare id that two knots have: name one.
    knots = Path(aioknot_home) / "knots"
    shutil.copytree(knots / "squares" / "runs" / squares, knots / "cubes" / "runs" / squares)
    done = await aioknot("results", squares)
    assert done.code == 1
    assert f"name one of them: cubes/{squares}, squares/{squares}" in done.err


async def test_every_command_has_help_with_an_example() -> None:
    overview = ok(await aioknot("--help")).out
    commands = ("runs", "status", "logs", "results", "cancel", "gc", "clobber")
    for command in commands:
        assert command in overview
        page = ok(await aioknot(command, "--help")).out
        assert f"usage: aioknot {command}" in page
        assert (
            f"examples:\n  aioknot {command}" in page or f"aioknot --backend aws {command}" in page
        )
        assert "--bucket" in page  # where the runs live, after the command too


# --- a bucket on the moto server ------------------------------------------------------------


async def test_runs_status_results_gc_in_a_bucket(aws: MotoServer, boto: MotoClients) -> None:
    await make_bucket(aws.url, "cli-bucket")
    squares, _ = await make_runs(bucket="s3://cli-bucket/team")
    where = ["--bucket", "s3://cli-bucket/team"]
    listed = ok(await aioknot("runs", *where, "--json")).json()
    assert {(run["knot"], run["state"]) for run in listed} == {
        ("squares", "finished"),
        ("cubes", "finished"),
    }
    # The options work before the command too, and --store says the same as --bucket.
    status = ok(await aioknot("--store", "s3://cli-bucket/team", "status", squares, "--json"))
    assert status.json()["status"]["failed"] == 1
    failed = await aioknot("results", f"squares/{squares}", "--failed", *where)
    assert failed.code == 1 and failed.out.split(None, 2)[:2] == ["3", "failed"]
    # Nothing in the local store, and nothing created by looking in a bucket that is not there.
    assert ok(await aioknot("runs")).out.startswith("no runs in file://")
    missing = await aioknot("runs", "--bucket", "no-such-bucket")
    assert missing.code == 1 and "no-such-bucket" in missing.err
    assert "Traceback" not in missing.err
    buckets = [b["Name"] for b in boto("s3").list_buckets()["Buckets"]]
    assert buckets == ["cli-bucket"]

    s3 = boto("s3")
    prefix = f"team/knots/squares/runs/{squares}/"
    for item in s3.list_objects_v2(Bucket="cli-bucket", Prefix=prefix)["Contents"]:
        old = item["Key"].replace(squares, OLD_RUN_ID)
        s3.copy_object(Bucket="cli-bucket", Key=old, CopySource=f"cli-bucket/{item['Key']}")
    done = ok(await aioknot("gc", *where, "--older-than", "30d"))
    assert done.out.splitlines()[0] == f"removed squares/{OLD_RUN_ID}"
    left = s3.list_objects_v2(Bucket="cli-bucket", Prefix="team/knots/squares/runs/")
    assert {item["Key"].split("/")[4] for item in left["Contents"]} == {squares}


# --- AWS Batch on the moto server -----------------------------------------------------------


async def test_aws_runs_status_logs_results_and_clobber(
    simple_batch: MotoServer, boto: MotoClients
) -> None:
    # Simple-mode Batch ends each child at once without running it: every input is lost.
    async with AsyncKnot(cube, name="squares", backend="aws", image=IMAGE) as knot:
        run = await knot.map(range(3))
        outcomes = await run.gather(return_exceptions=True)
        child = f"{run.backend_run.job_ids[0]}:2"  # type: ignore[attr-defined]
    assert all(isinstance(outcome, TaskLost) for outcome in outcomes)
    batch = boto("batch")
    stream = batch.describe_jobs(jobs=[child])["jobs"][0]["container"]["logStreamName"]
    logs = boto("logs")
    logs.create_log_group(logGroupName="/aws/batch/job")
    logs.create_log_stream(logGroupName="/aws/batch/job", logStreamName=stream)
    logs.put_log_events(
        logGroupName="/aws/batch/job",
        logStreamName=stream,
        logEvents=[{"timestamp": int(time.time() * 1000), "message": "hello from Batch"}],
    )

    aws = ["--backend", "aws"]
    listed = ok(await aioknot(*aws, "runs", "squares", "--json")).json()
    assert [(r["id"], r["backend"]) for r in listed] == [(run.id, "aws")]
    assert listed[0]["counts"] == {"succeeded": 0, "failed": 0, "lost": 3}
    status = ok(await aioknot("status", f"squares/{run.id}", "--json", AIOKNOT_BACKEND="aws"))
    assert status.json()["status"]["lost"] == 3
    assert ok(await aioknot(*aws, "logs", run.id, "2")).out == "hello from Batch\n"
    results = await aioknot(*aws, "results", run.id)
    assert results.code == 1
    assert [line.split()[1] for line in results.out.splitlines()] == ["lost"] * 3
    # The bucket read with the local backend: the run's status is in the store, but its
    # logs are Batch's, and the run says which backend it ran on.
    bucket = ["--bucket", f"aioknot-123456789012-{os.environ['AWS_DEFAULT_REGION']}"]
    assert ok(await aioknot(*bucket, "status", run.id, "--json")).json()["backend"] == "aws"
    wrong = await aioknot(*bucket, "logs", run.id, "2")
    assert wrong.code == 1 and "ran on the aws backend" in wrong.err
    assert "add --backend aws" in wrong.err

    done = ok(await aioknot(*aws, "clobber", "squares"))
    assert "clobbered knot squares" in done.out
    assert "deregistered 1 job definitions" in done.err  # what it deletes, as it goes
    definitions = batch.describe_job_definitions(
        jobDefinitionName="aioknot-squares", status="ACTIVE"
    )["jobDefinitions"]
    assert definitions == []
    assert ok(await aioknot(*aws, "runs", "--json")).json() == []
