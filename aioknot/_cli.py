"""The ``aioknot`` command: look at, follow and tidy up a store's runs from a terminal.

    aioknot runs [KNOT] [--json]           a store's runs, newest first
    aioknot status RUN [--json]            one run's state and its inputs by state
    aioknot logs RUN INDEX [--follow]      what the task that ran one input printed
    aioknot results RUN [--failed] [--json]
    aioknot cancel RUN
    aioknot gc [KNOT ...] [--older-than 7d]
    aioknot clobber KNOT [--environment] [--images] [--force]

It reads the store the library writes, with the same options and environment variables
(``--backend``/``AIOKNOT_BACKEND``, ``--bucket``/``--directory``/``--store``, ``AIOKNOT_HOME``,
``AWS_*``), through a knot that has no function (``AsyncKnot._operator``): opening it creates
nothing, so a typo in a bucket name is an error rather than a new bucket. Each command is one
async function, run with ``anyio.run``.

Built on argparse, from the standard library: aioknot is installed into research
environments beside other people's pins, and a command line is not worth a dependency (click,
typer, rich) that could conflict with theirs.

Exit codes: 0 done; 1 an aioknot error (its message on stderr, no traceback) or a command
that found failures (``results`` of a run with failed or lost inputs); 2 a usage error
(a bad argument, or an input index the run does not have); 130 interrupted (Ctrl-C, which
leaves the run as it was).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from ._exceptions import KnotError, TaskError, TaskLost
from ._knot import AsyncKnot
from ._names import KNOT_NAME_PATTERN, RUN_ID_PATTERN, manifest_key, run_prefix
from ._options import DEFAULT_RETENTION_DAYS, _retention_days
from ._retention import DAY, RunSummary, collect_garbage, knot_names, summarise

PROG = "aioknot"
# The knot name under which the CLI opens a store when no knot is named yet (listing every
# knot, finding a bare run id, gc): an operator knot creates and runs nothing, so any valid
# name does.
STORE_ONLY = "aioknot-cli"
# A value shown in a table is cut here (an array's repr can be megabytes); --json has it whole.
VALUE_WIDTH = 120
DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DURATION = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)([smhdw])$")
EXAMPLE_RUN = "pi-calc/20261121T091500-3fa2c1"

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


class UsageError(Exception):
    """A command's argument is wrong in a way only the store could tell (an input index the
    run does not have): reported like argparse's own errors, with exit code 2."""


# -- arguments -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunReference:
    """``KNOT/RUN_ID``, or a bare ``RUN_ID`` to be found among the store's knots."""

    knot: str | None
    run_id: str

    def __str__(self) -> str:
        return f"{self.knot}/{self.run_id}" if self.knot else self.run_id


def run_reference(text: str) -> RunReference:
    knot, slash, run_id = text.rpartition("/")
    if not RUN_ID_PATTERN.fullmatch(run_id) or (slash and not KNOT_NAME_PATTERN.fullmatch(knot)):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a run: give KNOT/RUN_ID or RUN_ID, e.g. {EXAMPLE_RUN} "
            "(`aioknot runs` lists them)"
        )
    return RunReference(knot or None, run_id)


def knot_name(text: str) -> str:
    if not KNOT_NAME_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a knot name: knot names are 1 to 48 letters, digits and hyphens, "
            "starting with a letter, e.g. pi-calc"
        )
    return text


def input_index(text: str) -> int:
    try:
        index = int(text)
    except ValueError:
        index = -1
    if index < 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an input index: give the input's position in the run, 0 for the first"
        )
    return index


def duration(text: str) -> float:
    """``7d``, ``12h``, ``30m``, ``90s``, ``2w`` (or ``1.5d``) -> seconds."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: give a number and a unit (s, m, h, d or w), e.g. "
            "7d, 12h or 30m"
        )
    return float(match.group(1)) * DURATION_UNITS[match.group(2)]


# The options that say where the runs live, exactly as a knot takes them.
LOCATION_OPTIONS: tuple[tuple[str, str, str], ...] = (
    (
        "--backend",
        "NAME",
        "the backend the runs ran on: local or aws (default: $AIOKNOT_BACKEND, else local). "
        "It decides the default store: a local knot's directory, or the AWS account's bucket",
    ),
    (
        "--bucket",
        "BUCKET",
        "an S3 bucket, 'name' or 's3://name/prefix', as the knot's bucket= "
        "(default for --backend aws: aioknot-<account>-<region>)",
    ),
    (
        "--directory",
        "PATH",
        "a local store's directory, as the knot's directory= "
        "(default: $AIOKNOT_HOME, else the user cache directory)",
    ),
    (
        "--store",
        "URL",
        "the store as one URL, as the knot's store=: s3://bucket/prefix, file:///path or a path",
    ),
    ("--endpoint-url", "URL", "an S3/AWS endpoint (moto, MinIO); default $AWS_ENDPOINT_URL"),
    ("--region", "REGION", "the AWS region (default: $AWS_REGION, the profile's)"),
    ("--profile", "NAME", "the AWS profile (default: $AWS_PROFILE)"),
)
LOCATION_NAMES = ("backend", "bucket", "directory", "store", "endpoint_url", "region", "profile")


def _add_location_options(parser: argparse.ArgumentParser, *, before_command: bool) -> None:
    group = parser.add_argument_group(
        "where the runs live (the same options and environment variables as a knot's)"
    )
    for flag, metavar, text in LOCATION_OPTIONS:
        # Accepted before the command and after it. After it, an option that is not given
        # must not overwrite one given before (argparse's subparser defaults would).
        group.add_argument(
            flag,
            metavar=metavar,
            help=text,
            default=None if before_command else argparse.SUPPRESS,
        )


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    handler: Command,
    summary: str,
    description: str,
    examples: str,
) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog="examples:\n" + examples,
        formatter_class=_Formatter,
    )
    parser.set_defaults(handler=handler, parser=parser)
    _add_location_options(parser, before_command=False)
    return parser


def _add_json(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=_Formatter,
        description=(
            "Look at, follow and tidy up the runs of aioknot knots: what `knot.map(...)`\n"
            "stored, in the same store and with the same settings as the library (a local\n"
            "directory by default, or a bucket with --backend aws or --bucket).\n\n"
            "A run is named KNOT/RUN_ID (as `aioknot runs` lists it), or by its RUN_ID alone\n"
            "when only one knot has a run of that id."
        ),
        epilog=(
            "examples:\n"
            "  aioknot runs                          every run in the local store\n"
            f"  aioknot status {EXAMPLE_RUN}\n"
            f"  aioknot results {EXAMPLE_RUN} --failed\n"
            "  aioknot --backend aws runs pi-calc    a knot's runs in the AWS account's bucket\n"
            "  aioknot gc --older-than 3d            remove runs created over 3 days ago\n\n"
            "Run `aioknot COMMAND --help` for a command's options and examples. Exit codes:\n"
            "0 done, 1 an error or failed inputs found, 2 a usage error."
        ),
    )
    _add_location_options(parser, before_command=True)
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")

    runs = _command(
        commands,
        "runs",
        _runs,
        "list runs: id, created, backend, state, inputs by state",
        "List the runs of one knot, or of every knot in the store, newest first: when each\n"
        "was created, on which backend, its state (submitting, running, finished,\n"
        "cancelled) and its inputs by outcome (done so far, while it runs).",
        "  aioknot runs\n  aioknot runs pi-calc --json\n"
        "  aioknot runs --bucket s3://my-bucket/aioknot",
    )
    runs.add_argument("knot", metavar="KNOT", nargs="?", type=knot_name, help="one knot's runs")
    _add_json(runs, "a list of runs")

    status = _command(
        commands,
        "status",
        _status,
        "one run's state and counts",
        "Show one run: its state, when it was created and finished, and its inputs by\n"
        "state (succeeded, failed, lost, pending; and on the backend: queued, running).",
        f"  aioknot status {EXAMPLE_RUN}\n  aioknot status 20261121T091500-3fa2c1 --json",
    )
    status.add_argument("run", metavar="RUN", type=run_reference, help="KNOT/RUN_ID or RUN_ID")
    _add_json(status, "the run")

    logs = _command(
        commands,
        "logs",
        _logs,
        "what the task that ran one input printed",
        "Print the log lines (stdout and stderr) of the task that ran input INDEX of a run:\n"
        "from the store for a local run, from CloudWatch Logs for an AWS Batch run.\n"
        "With --follow, keep printing new lines until that input has an outcome.",
        f"  aioknot logs {EXAMPLE_RUN} 0\n  aioknot logs {EXAMPLE_RUN} 17 --follow",
    )
    logs.add_argument("run", metavar="RUN", type=run_reference, help="KNOT/RUN_ID or RUN_ID")
    logs.add_argument(
        "index", metavar="INDEX", type=input_index, help="the input's position (0 is the first)"
    )
    logs.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="print new lines as they come, until the input has an outcome",
    )

    results = _command(
        commands,
        "results",
        _results,
        "each input's value or error, in input order",
        "Print each input's outcome in input order: its value, or the error it raised, or\n"
        "why its task was lost. Waits for a run that is still going (Ctrl-C stops waiting\n"
        "and leaves the run alone). Exits with 1 if any input failed or was lost.",
        f"  aioknot results {EXAMPLE_RUN}\n  aioknot results {EXAMPLE_RUN} --failed\n"
        f"  aioknot results {EXAMPLE_RUN} --json > results.json",
    )
    results.add_argument("run", metavar="RUN", type=run_reference, help="KNOT/RUN_ID or RUN_ID")
    results.add_argument(
        "--failed", action="store_true", help="only the inputs that failed or were lost"
    )
    _add_json(
        results,
        "a list of outcomes (a value JSON cannot hold is given as 'value_repr')",
    )

    cancel = _command(
        commands,
        "cancel",
        _cancel,
        "stop a run's unfinished inputs",
        "Cancel a run: its queued and running tasks are stopped and each input without a\n"
        "result becomes lost ('cancelled'). Results already stored stay.",
        f"  aioknot cancel {EXAMPLE_RUN}",
    )
    cancel.add_argument("run", metavar="RUN", type=run_reference, help="KNOT/RUN_ID or RUN_ID")

    gc = _command(
        commands,
        "gc",
        _gc,
        "remove old runs from the store",
        "Remove the runs (inputs, results, manifest) created longer ago than --older-than,\n"
        "of the knots named, or of every knot in the store. Knots' functions stay.\n"
        "Knots also sweep their own old runs when they open (at most once a day), and the\n"
        "bucket aioknot creates on AWS expires them by a lifecycle rule.",
        "  aioknot gc\n  aioknot gc --older-than 12h\n  aioknot gc pi-calc --older-than 30d",
    )
    gc.add_argument(
        "knots", metavar="KNOT", nargs="*", type=knot_name, help="only these knots' runs"
    )
    gc.add_argument(
        "--older-than",
        metavar="AGE",
        type=duration,
        default=None,
        help="a duration: 90s, 30m, 12h, 7d, 2w (default: $AIOKNOT_RETENTION_DAYS days, "
        f"else {DEFAULT_RETENTION_DAYS}d)",
    )

    clobber = _command(
        commands,
        "clobber",
        _clobber,
        "delete everything a knot stored (and made on AWS)",
        "Delete everything a knot stored: its functions and all its runs. With --backend\n"
        "aws it also deregisters the knot's job definitions, and on request deletes the\n"
        "shared environment stack (--environment) and the knot's images (--images).\n"
        "There is no undo.",
        "  aioknot clobber pi-calc\n  aioknot --backend aws clobber pi-calc --images\n"
        "  aioknot --backend aws clobber pi-calc --environment --force",
    )
    clobber.add_argument("knot", metavar="KNOT", type=knot_name, help="the knot to delete")
    clobber.add_argument(
        "--environment",
        action="store_true",
        help="also delete the shared AWS environment stack (refused while other knots use it)",
    )
    clobber.add_argument("--images", action="store_true", help="also delete the knot's images")
    clobber.add_argument(
        "--force",
        action="store_true",
        help="with --environment: delete the environment even while other knots use it",
    )
    return parser


# -- opening the store, finding runs -------------------------------------------------------


def _knot_options(args: argparse.Namespace) -> dict[str, Any]:
    """The knot options the location arguments name (none given: the library's defaults)."""
    names = ("bucket", "directory", "store", "endpoint_url", "region", "profile")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


@contextlib.asynccontextmanager
async def _open(
    args: argparse.Namespace, name: str = STORE_ONLY, **extra: Any
) -> AsyncIterator[AsyncKnot[Any]]:
    knot = AsyncKnot._operator(name, backend=args.backend, **_knot_options(args), **extra)
    async with knot:
        yield knot


@contextlib.asynccontextmanager
async def _beside(
    args: argparse.Namespace, opened: AsyncKnot[Any], name: str
) -> AsyncIterator[AsyncKnot[Any]]:
    """Knot ``name`` in the store ``opened`` has open (one store client, not one per knot)."""
    if name == opened.name:
        yield opened
        return
    options = {
        key: value
        for key, value in _knot_options(args).items()
        if key not in ("bucket", "directory", "store")
    }
    async with AsyncKnot._operator(
        name, backend=args.backend, store=opened.store, **options
    ) as knot:
        yield knot


async def _exists(knot: AsyncKnot[Any], names: Sequence[str], run_id: str) -> list[str]:
    """Which of the knots ``names`` have a run ``run_id`` (one batched look at the store)."""
    keys = [manifest_key(run_prefix(name, run_id)) for name in names]
    found = await knot.store.exists_many(keys) if keys else []
    return [name for name, exists in zip(names, found, strict=True) if exists]


@contextlib.asynccontextmanager
async def _run_knot(
    args: argparse.Namespace, reference: RunReference
) -> AsyncIterator[tuple[AsyncKnot[Any], RunSummary]]:
    """The knot that has the run ``reference`` names, open, and the run's summary.

    A bare run id is looked for among every knot of the store; none or several is an error
    that says what to do.
    """
    async with _open(args, reference.knot or STORE_ONLY) as opened:
        if reference.knot is not None:
            names = [reference.knot]
            where = f"knot {reference.knot!r}"
        else:
            names = await knot_names(opened.store)
            where = "any knot"
        found = await _exists(opened, names, reference.run_id)
        if not found:
            raise KnotError(
                f"there is no run {reference.run_id} of {where} in {opened.store.url}: "
                f"`aioknot runs{' ' + reference.knot if reference.knot else ''}` lists the "
                "runs there; if the run is elsewhere, say where with --backend, --bucket, "
                "--directory or --store (or AIOKNOT_BACKEND, AIOKNOT_HOME)"
            )
        if len(found) > 1:
            choices = ", ".join(f"{name}/{reference.run_id}" for name in found)
            raise KnotError(
                f"run id {reference.run_id} is a run of {len(found)} knots in "
                f"{opened.store.url}: name one of them: {choices}"
            )
        async with _beside(args, opened, found[0]) as knot:
            summary = await summarise(knot.store, knot.name, reference.run_id)
            if summary is None:
                raise KnotError(
                    f"run {knot.name}/{reference.run_id} in {opened.store.url} has a manifest "
                    "that cannot be read (see the warning above); its results, if any, are "
                    "stored beside it"
                )
            yield knot, summary


def _check_backend(knot: AsyncKnot[Any], summary: RunSummary) -> None:
    """A run is followed by the backend it ran on (its tasks, their deaths, their logs)."""
    if summary.backend and summary.backend != knot.backend:
        raise KnotError(
            f"run {summary.knot}/{summary.id} ran on the {summary.backend} backend, and this "
            f"command looked with the {knot.backend} one: add --backend {summary.backend} "
            f"(or set AIOKNOT_BACKEND={summary.backend})"
        )


def _check_attachable(summary: RunSummary, doing: str) -> None:
    if summary.state == "submitting":
        raise KnotError(
            f"run {summary.knot}/{summary.id} is still being submitted (its map() has not "
            f"returned): {doing} once it has; `aioknot status` shows it meanwhile"
        )


# -- output --------------------------------------------------------------------------------


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int]) -> None:
    """Columns aligned: text to the left, numbers to the right."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        cells = [
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2))


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _took(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} d {hours % 24} h"


OUTCOMES = ("succeeded", "failed", "lost")


def _done(summary: RunSummary) -> int:
    """Inputs with an outcome: the three counts once finished, the records stored before."""
    if any(kind in summary.counts for kind in OUTCOMES):
        return sum(summary.counts.get(kind, 0) for kind in OUTCOMES)
    return summary.counts.get("done", 0)


def _count(summary: RunSummary, kind: str) -> str:
    return str(summary.counts[kind]) if kind in summary.counts else "-"


# -- the commands --------------------------------------------------------------------------


async def _runs(args: argparse.Namespace) -> int:
    async with _open(args, args.knot or STORE_ONLY) as opened:
        names = [args.knot] if args.knot else await knot_names(opened.store)
        summaries: list[RunSummary] = []
        for name in names:
            async with _beside(args, opened, name) as knot:
                summaries.extend(await knot.runs())
        url = opened.store.url
    summaries.sort(key=lambda summary: summary.created, reverse=True)
    if args.json:
        _print_json([summary.to_json() for summary in summaries])
        return 0
    if not summaries:
        whose = f"of knot {args.knot} " if args.knot else ""
        print(f"no runs {whose}in {url}")
        return 0
    header = ["RUN", "CREATED", "BACKEND", "STATE", "DONE", "INPUTS", *map(str.upper, OUTCOMES)]
    rows = [
        [
            f"{summary.knot}/{summary.id}",
            _when(summary.created),
            summary.backend,
            summary.state,
            str(_done(summary)),
            "?" if summary.total is None else str(summary.total),
            *(_count(summary, kind) for kind in OUTCOMES),
        ]
        for summary in summaries
    ]
    _print_table(header, rows, numeric={4, 5, 6, 7, 8})
    return 0


async def _status(args: argparse.Namespace) -> int:
    async with _run_knot(args, args.run) as (knot, summary):
        counts: dict[str, int] | None = None
        if summary.state != "running" and any(kind in summary.counts for kind in OUTCOMES):
            # Over: its manifest has the final counts (losses included, which the store's
            # records alone cannot tell); nothing to ask the backend.
            total = summary.total if summary.total is not None else _done(summary)
            outcomes = {kind: summary.counts.get(kind, 0) for kind in OUTCOMES}
            counts = {"total": total, "submitted": total, **outcomes, "pending": 0}
        elif summary.state != "submitting":
            _check_backend(knot, summary)
            run = await knot.attach(summary.id)
            counts = await run.status()
    if args.json:
        _print_json({**summary.to_json(), "status": counts})
        return 0
    lines = [
        ("run", f"{summary.knot}/{summary.id}"),
        ("state", summary.state),
        ("backend", summary.backend),
        ("created", _when(summary.created)),
    ]
    if summary.finished is not None:
        lines.append(
            (
                "finished",
                f"{_when(summary.finished)} (after {_took(summary.finished - summary.created)})",
            )
        )
    lines.append(("inputs", "?" if summary.total is None else str(summary.total)))
    shown = counts if counts is not None else summary.counts
    lines.extend((kind, str(count)) for kind, count in shown.items() if kind != "total")
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        print(f"{label + ':':<{width + 1}}  {value}")
    return 0


async def _logs(args: argparse.Namespace) -> int:
    async with _run_knot(args, args.run) as (knot, summary):
        _check_attachable(summary, "its logs can be read")
        _check_backend(knot, summary)
        run = await knot.attach(summary.id)
        if args.index >= len(run):
            raise UsageError(
                f"run {summary.knot}/{summary.id} has {len(run)} inputs: INDEX is 0 to "
                f"{len(run) - 1}, not {args.index}"
            )
        if not args.follow:
            lines = await run.logs(args.index)
            for line in lines:
                print(line)
            if not lines:
                print(f"(no log lines for input {args.index} yet)", file=sys.stderr)
            return 0
        print(
            f"following input {args.index} of run {summary.knot}/{summary.id} until it has an "
            "outcome (Ctrl-C stops following; the run goes on)",
            file=sys.stderr,
            flush=True,
        )
        async with contextlib.aclosing(run.logs(args.index, follow=True)) as following:
            async for line in following:
                print(line, flush=True)
    return 0


def _jsonable(value: object) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def _outcome(index: int, value: object) -> dict[str, Any]:
    if isinstance(value, TaskError):
        return {
            "index": index,
            "state": "failed",
            "error": value.remote_type,
            "message": value.remote_message,
            "traceback": value.remote_traceback,
        }
    if isinstance(value, TaskLost):
        return {
            "index": index,
            "state": "lost",
            "reason": value.reason,
            "exit_code": value.exit_code,
            "log": value.log,
            "job_id": value.job_id,
        }
    if _jsonable(value):
        return {"index": index, "state": "succeeded", "value": value}
    return {"index": index, "state": "succeeded", "value_repr": repr(value)}


def _describe(outcome: dict[str, Any]) -> str:
    if outcome["state"] == "failed":
        text = f"{outcome['error']}: {outcome['message']}"
    elif outcome["state"] == "lost":
        text = str(outcome["reason"])
        if outcome["log"]:
            text += f" (log: {outcome['log']})"
    else:
        text = repr(outcome["value"]) if "value" in outcome else outcome["value_repr"]
    text = " ".join(text.split())  # one line per input
    return text if len(text) <= VALUE_WIDTH else text[: VALUE_WIDTH - 3] + "..."


async def _results(args: argparse.Namespace) -> int:
    failures = 0
    outcomes: list[dict[str, Any]] = []
    async with _run_knot(args, args.run) as (knot, summary):
        _check_attachable(summary, "its results can be read")
        _check_backend(knot, summary)
        run = await knot.attach(summary.id)
        width = len(str(max(len(run) - 1, 0)))
        items = run.items(return_exceptions=True, ordered=True)
        async with contextlib.aclosing(items):
            async for index, value in items:
                outcome = _outcome(index, value)
                failed = outcome["state"] != "succeeded"
                failures += failed
                if args.failed and not failed:
                    continue
                if args.json:
                    outcomes.append(outcome)
                else:  # printed as they come: a long run shows its first results at once
                    print(f"{index:>{width}}  {outcome['state']:<9}  {_describe(outcome)}")
                    sys.stdout.flush()
    if args.json:
        _print_json(outcomes)
    if failures:
        print(
            f"{failures} of {len(run)} inputs failed or were lost "
            f"(`aioknot logs {summary.knot}/{summary.id} INDEX` shows what one printed)",
            file=sys.stderr,
        )
        return 1
    return 0


async def _cancel(args: argparse.Namespace) -> int:
    async with _run_knot(args, args.run) as (knot, summary):
        name = f"{summary.knot}/{summary.id}"
        if summary.state in ("finished", "cancelled"):
            print(f"run {name} is already {summary.state}: nothing to cancel")
            return 0
        _check_attachable(summary, "it can be cancelled")
        _check_backend(knot, summary)
        run = await knot.attach(summary.id)
        counts = await run.status()
        await run.cancel()
    finished = sum(counts.get(kind, 0) for kind in OUTCOMES)
    print(
        f"cancelled run {name}: {finished} of {counts.get('total', len(run))} inputs had "
        "finished; the others are lost as cancelled"
    )
    return 0


async def _gc(args: argparse.Namespace) -> int:
    older_than = args.older_than
    if older_than is None:  # the library's default retention, read the library's way
        older_than = _retention_days(None) * DAY
    async with _open(args) as opened:
        removed = await collect_garbage(
            opened.store, older_than=older_than, knots=args.knots or None
        )
        url = opened.store.url
    for name in removed:
        print(f"removed {name}")
    print(
        f"removed {len(removed)} run{'s' if len(removed) != 1 else ''} created over "
        f"{_age(older_than)} ago from {url}"
    )
    return 0


def _age(seconds: float) -> str:
    for unit, name in (("w", "week"), ("d", "day"), ("h", "hour"), ("m", "minute")):
        count = seconds / DURATION_UNITS[unit]
        if count >= 1 and math.isclose(count, round(count)):
            return f"{round(count)} {name}{'s' if round(count) != 1 else ''}"
    return _took(seconds)


async def _clobber(args: argparse.Namespace) -> int:
    def report(message: str) -> None:  # deleting a stack takes minutes: say what goes
        print(message, file=sys.stderr, flush=True)

    async with _open(args, args.knot, progress=report) as knot:
        deleted = await knot.clobber(
            environment=args.environment, images=args.images, force=args.force
        )
        url = knot.store.url
    print(f"clobbered knot {args.knot}: deleted {deleted} stored objects from {url}")
    return 0


# -- the entry point -----------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``aioknot ...``: parse, run the command on an event loop, and say how it went."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    command: argparse.ArgumentParser = args.parser
    given = [f"--{name}" for name in ("bucket", "directory", "store") if getattr(args, name)]
    if len(given) > 1:
        command.error(f"{' and '.join(given)} each say where the runs live: give one")
    handler: Command = args.handler
    try:
        return anyio.run(handler, args)
    except UsageError as error:
        command.error(str(error))  # exits with 2
    except KnotError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`aioknot results RUN | head`): that is not an error, and
        # Python must not complain again about stdout when it exits.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
