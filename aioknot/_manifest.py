"""A run's manifest: what is needed to re-attach a run from another process or a later day.

One JSON object per run, at ``<run prefix>/manifest.json``, written when the first segment of
inputs is stored (a run can be found from then on), when submission is over (``complete``) and
when the run is cancelled. The format is versioned (``format``); this module is the only one
that writes or reads it, and a corrupt manifest is a `ConfigurationError` that names it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ._exceptions import ConfigurationError
from ._version import __version__

MANIFEST_FORMAT = 1


def _this_process() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


@dataclass(frozen=True)
class Manifest:
    knot: str
    run: str
    backend: str
    store: str  # the store's URL, as a worker reaches it
    function: str  # the stored function's key
    starmap: bool
    segments: tuple[tuple[int, int], ...]  # (first, count) of each stored input segment
    created: float = field(default_factory=time.time)
    # When every input had an outcome (or the run was cancelled), and the outcomes by kind.
    finished: float | None = None
    counts: Mapping[str, int] = field(default_factory=dict)
    complete: bool = False  # submission is over: every input is stored and submitted
    cancelled: bool = False  # whatever has no record will never get one
    total: int | None = None  # the number of inputs, once complete
    jobs: tuple[str, ...] = ()  # the backend's ids for what it submitted
    owner: Mapping[str, Any] = field(default_factory=_this_process)  # who submitted it
    # A pipeline's: the run whose results are this run's inputs ("<knot>/<run id>").
    upstream: str | None = None
    format: int = MANIFEST_FORMAT
    aioknot: str = __version__  # the version that wrote it

    def to_bytes(self) -> bytes:
        record = asdict(self)
        record["segments"] = [list(segment) for segment in self.segments]
        record["jobs"] = list(self.jobs)
        record["owner"] = dict(self.owner)
        record["counts"] = dict(self.counts)
        return json.dumps(record, indent=1).encode()


def read_manifest(data: bytes, where: str) -> Manifest:
    """A run's manifest, parsed and checked; a corrupt one is a ConfigurationError naming it."""
    try:
        record: object = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _corrupt(where, f"not JSON: {error}") from None
    if not isinstance(record, dict):
        raise _corrupt(where, "it is not a JSON object")
    problems = [
        f"{name!r} is missing or of the wrong type"
        for name, kind in _REQUIRED.items()
        if not _has_type(record.get(name), kind)
    ]
    segments = record.get("segments")
    if isinstance(segments, list) and not all(
        isinstance(pair, list)
        and len(pair) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in pair)
        for pair in segments
    ):
        problems.append("'segments' is not a list of [first, count] pairs")
    jobs = record.get("jobs", [])
    if not isinstance(jobs, list) or not all(isinstance(job, str) for job in jobs):
        problems.append("'jobs' is not a list of job ids")
    total = record.get("total")
    if total is not None and not _has_type(total, int):
        problems.append("'total' is not a whole number")
    finished = record.get("finished")
    if finished is not None and not _has_type(finished, (int, float)):
        problems.append("'finished' is not a time")
    counts = record.get("counts", {})
    if not isinstance(counts, dict) or not all(_has_type(n, int) for n in counts.values()):
        problems.append("'counts' is not a mapping of counts")
    if problems:
        raise _corrupt(where, "; ".join(problems))
    owner = record.get("owner")
    return Manifest(
        knot=str(record.get("knot", "")),
        run=str(record.get("run", "")),
        backend=str(record.get("backend", "")),
        store=str(record.get("store", "")),
        function=record["function"],
        starmap=record["starmap"],
        segments=tuple((first, count) for first, count in record["segments"]),
        created=float(record["created"]),
        finished=float(finished) if finished is not None else None,
        counts={str(kind): count for kind, count in counts.items()},
        complete=bool(record.get("complete")),
        cancelled=bool(record.get("cancelled")),
        total=total,
        jobs=tuple(jobs),
        owner=owner if isinstance(owner, dict) else {},
        upstream=str(record["upstream"]) if record.get("upstream") else None,
        format=int(record["format"]),
        aioknot=str(record.get("aioknot", "")),
    )


def check_attachable(manifest: Manifest, run_id: str) -> None:
    """Refuse a manifest this version cannot attach: another format, or a run still being
    submitted (its inputs are not all known yet)."""
    if manifest.format != MANIFEST_FORMAT:
        raise ConfigurationError(
            f"run {run_id!r} cannot be attached: its manifest is of an unknown format "
            f"({manifest.format}, written by aioknot {manifest.aioknot or 'unknown'}; this "
            f"version reads format {MANIFEST_FORMAT})"
        )
    if not manifest.complete:
        raise ConfigurationError(
            f"run {run_id!r} cannot be attached: its manifest is incomplete (a run can be "
            "attached once its map() has returned)"
        )


# Fields a manifest must have, and their types, to be read at all.
_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "format": int,
    "function": str,
    "starmap": bool,
    "created": (int, float),
    "segments": list,
}


def _has_type(value: object, kind: type | tuple[type, ...]) -> bool:
    # JSON's true is not a number of seconds, nor a format version.
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def _corrupt(where: str, problem: str) -> ConfigurationError:
    return ConfigurationError(
        f"the run manifest {where} is corrupt ({problem}); the run cannot be attached. Its "
        "results, if any, are still stored beside it"
    )
