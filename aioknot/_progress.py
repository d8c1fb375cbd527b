"""Progress bars for the blocking face: ``progress=True`` on ``Knot.map`` and ``Knot.imap``.

tqdm's ``auto`` flavour picks a notebook widget under Jupyter and a text bar elsewhere. The
bar counts inputs with an outcome (done, failed or lost, shown beside it) against the total,
which is known once submission is over.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._exceptions import TaskLost


class ProgressBar:
    def __init__(self, description: str, total: int | None = None) -> None:
        from tqdm.auto import tqdm

        self._bar: Any = tqdm(total=total, desc=description, unit="input", dynamic_ncols=True)
        self._counts = {"done": 0, "failed": 0, "lost": 0}

    def show(self, counts: Mapping[str, int]) -> None:
        """A run's status counts (``Run.status()``)."""
        total = counts.get("total")
        if total and total != self._bar.total:
            self._bar.total = total
        self._counts = {
            "done": counts.get("succeeded", 0),
            "failed": counts.get("failed", 0),
            "lost": counts.get("lost", 0),
        }
        self._refresh()

    def add(self, value: object) -> None:
        """One result as an iterator yields it (an exception stands for a failure)."""
        kind = "lost" if isinstance(value, TaskLost) else "failed"
        self._counts["done" if not isinstance(value, BaseException) else kind] += 1
        self._refresh()

    def _refresh(self) -> None:
        self._bar.n = sum(self._counts.values())
        self._bar.set_postfix(self._counts, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()
