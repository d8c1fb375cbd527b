"""The runs kept in a store: listed, summarised, and removed once they are old.

A run is kept for its knot's ``retention_days=`` (default 7, ``AIOKNOT_RETENTION_DAYS``) after
it was created (its id says when), then removed by whichever comes first: ``aioknot gc``, the
lifecycle rule of the bucket aioknot created, or the sweep a knot makes when it opens (at most
once a day per knot and store, in the background). ``amap`` runs are removed as soon as their
iteration ends (they cannot be re-attached).

Listing costs one LIST of the knot's runs, one GET per manifest, and, for a run that is not
finished, one LIST of its results (its records counted, not read).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ._exceptions import ConfigurationError
from ._manifest import Manifest, read_manifest
from ._names import (
    KNOTS_PREFIX,
    RUN_ID_PATTERN,
    manifest_key,
    run_id_created,
    run_prefix,
    runs_prefix,
)
from ._stores.base import Store
from ._worker import parse_result_key, results_prefix

logger = logging.getLogger("aioknot")

DAY = 24 * 3600.0
SWEEP_EVERY_SECONDS = DAY  # a knot's opening sweeps its old runs at most this often
SWEPT_KEY = "swept.json"  # under the knot's prefix: when its runs were last swept


@dataclass(frozen=True)
class RunSummary:
    """One run of a knot, as the store describes it (``await knot.runs()``)."""

    id: str
    knot: str
    backend: str
    created: float  # epoch seconds
    finished: float | None  # when every input had an outcome, or the run was cancelled
    state: str  # "submitting", "running", "finished" or "cancelled"
    total: int | None  # inputs, once submission is over
    # succeeded / failed / lost once finished; before, "done": the records stored so far
    counts: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "knot": self.knot,
            "backend": self.backend,
            "created": self.created,
            "finished": self.finished,
            "state": self.state,
            "total": self.total,
            "counts": dict(self.counts),
        }


def _state(manifest: Manifest) -> str:
    if manifest.cancelled:
        return "cancelled"
    if manifest.finished is not None:
        return "finished"
    return "running" if manifest.complete else "submitting"


async def _records_stored(store: Store, prefix: str) -> int:
    return sum(parse_result_key(key)[1] for key in await store.list_keys(results_prefix(prefix)))


async def run_ids(store: Store, knot: str) -> list[str]:
    """The ids of a knot's runs in ``store``, oldest first."""
    return [name for name in await store.list_children(runs_prefix(knot)) if _is_run_id(name)]


def _is_run_id(name: str) -> bool:
    return RUN_ID_PATTERN.fullmatch(name) is not None


async def summarise(store: Store, knot: str, run_id: str) -> RunSummary | None:
    """A run's summary; None if it has no manifest (its first inputs were never stored)."""
    prefix = run_prefix(knot, run_id)
    key = manifest_key(prefix)
    try:
        data = await store.get(key)
    except KeyError:
        return None
    try:
        manifest = read_manifest(data, f"{store.url}/{key}")
    except ConfigurationError as error:
        logger.warning("%s", error)
        return None
    counts = dict(manifest.counts)
    if manifest.finished is None or not counts:
        counts = {"done": await _records_stored(store, prefix)}
    return RunSummary(
        id=run_id,
        knot=knot,
        backend=manifest.backend,
        created=manifest.created,
        finished=manifest.finished,
        state=_state(manifest),
        total=manifest.total,
        counts=counts,
    )


async def list_runs(store: Store, knot: str) -> list[RunSummary]:
    """A knot's runs, newest first."""
    summaries = [await summarise(store, knot, run_id) for run_id in await run_ids(store, knot)]
    return sorted(
        (summary for summary in summaries if summary is not None),
        key=lambda summary: summary.created,
        reverse=True,
    )


async def knot_names(store: Store) -> list[str]:
    """Every knot that has data in ``store``."""
    return await store.list_children(KNOTS_PREFIX)


async def collect_garbage(
    store: Store,
    *,
    older_than: float,
    knots: Sequence[str] | None = None,
    now: float | None = None,
) -> list[str]:
    """Remove the runs created more than ``older_than`` seconds ago (of ``knots``, or of every
    knot in the store); returns ``"knot/run id"`` of each run removed. A run's age is its id's:
    the same clock as a bucket's lifecycle rule, whatever its manifest says."""
    if older_than < 0:
        raise ConfigurationError(f"older_than must be 0 or more seconds, got {older_than!r}")
    cutoff = (time.time() if now is None else now) - older_than
    removed: list[str] = []
    for knot in knots if knots is not None else await knot_names(store):
        for run_id in await run_ids(store, knot):
            if run_id_created(run_id) < cutoff:
                await store.delete_prefix(run_prefix(knot, run_id) + "/")
                removed.append(f"{knot}/{run_id}")
    return removed


async def sweep(store: Store, knot: str, *, retention_days: int) -> list[str]:
    """The occasional sweep of a knot's opening: its runs older than ``retention_days``, at most
    once every `SWEEP_EVERY_SECONDS` (the time of the last sweep is kept in the store)."""
    key = f"{KNOTS_PREFIX}/{knot}/{SWEPT_KEY}"
    try:
        last = float(json.loads(await store.get(key))["at"])
    except (KeyError, ValueError, TypeError):
        last = 0.0
    now = time.time()
    if now - last < SWEEP_EVERY_SECONDS:
        return []
    await store.put(key, json.dumps({"at": now}).encode())
    removed = await collect_garbage(store, older_than=retention_days * DAY, knots=[knot], now=now)
    if removed:
        logger.info("removed %d runs of knot %s older than %d days", len(removed), knot,
                    retention_days)  # fmt: skip
    return removed
