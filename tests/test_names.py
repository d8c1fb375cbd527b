"""Names (aioknot/_names.py and the worker's keys): knot names, run ids, and where a knot's and
a run's objects live in a store."""

from __future__ import annotations

import calendar
import functools
import random
import time
import types
from pathlib import Path

import pytest

from aioknot import ConfigurationError, _names
from aioknot._names import (
    default_home,
    default_knot_name,
    function_key,
    knot_prefix,
    manifest_key,
    new_run_id,
    run_prefix,
    validate_knot_name,
    validate_run_id,
)
from aioknot._worker import parse_result_key, result_key, results_prefix, segment_key


@pytest.mark.parametrize("name", ["a", "pi-calc", "Knot-2", "x" * 48, "a--b"])
def test_knot_names_aws_can_name_things_after_are_taken(name: str) -> None:
    assert validate_knot_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "2pi", "-pi", "pi_calc", "pi calc", "pi.calc", "x" * 49, "é", None, 42]
)
def test_other_knot_names_are_refused_saying_what_is_allowed(name: object) -> None:
    with pytest.raises(ConfigurationError) as refused:
        validate_knot_name(name)
    message = str(refused.value)
    assert repr(name) in message and "letters, digits and hyphens" in message
    assert "name=" in message  # an example of one that works


def _named(name: str) -> types.FunctionType:
    def function() -> None:
        pass

    function.__name__ = name
    return function


@pytest.mark.parametrize(
    ("function_name", "knot"),
    [
        ("monte_pi_count", "monte-pi-count"),
        ("_private", "private"),
        ("__call__", "call"),
        ("<lambda>", "lambda"),
        ("f2", "f2"),
        ("_2d_fit", "knot-2d-fit"),
        ("λ", "knot"),
        ("a" * 60, "a" * 48),
        ("a" * 47 + "_b", "a" * 47),  # cut at 48, and no hyphen left dangling at the end
    ],
)
def test_a_function_gives_its_knot_a_valid_name(function_name: str, knot: str) -> None:
    name = default_knot_name(_named(function_name))
    assert name == knot
    assert validate_knot_name(name) == name


def test_a_callable_without_a_name_gives_a_valid_name() -> None:
    name = default_knot_name(functools.partial(pow, 2))
    assert validate_knot_name(name) == name


def test_run_ids_sort_by_when_they_were_made(monkeypatch: pytest.MonkeyPatch) -> None:
    made = [
        "2026-11-21 09:15:00",
        "2026-11-21 09:15:01",
        "2026-11-21 10:00:00",
        "2026-12-01 00:00:00",
        "2027-01-01 00:00:00",
    ]
    ids = []
    for moment in made:
        seconds = calendar.timegm(time.strptime(moment, "%Y-%m-%d %H:%M:%S"))
        # Only _names' view of the clock moves: the rest of the process keeps the real one.
        clock = types.SimpleNamespace(
            strftime=time.strftime, gmtime=lambda s=seconds: time.gmtime(s)
        )
        monkeypatch.setattr(_names, "time", clock)
        ids.append(new_run_id())
    assert sorted(ids) == ids
    assert all(validate_run_id(run_id) == run_id for run_id in ids)
    # Made in the same second, two runs of a knot still get different ids.
    assert len({new_run_id() for _ in range(20)}) == 20


@pytest.mark.parametrize(
    "run_id", ["latest", "../other-knot", "20261121T091500-3FA2C1", "20261121T091500", ""]
)
def test_anything_else_is_not_a_run_id(run_id: str) -> None:
    with pytest.raises(ConfigurationError, match="run.id"):
        validate_run_id(run_id)


def test_everything_of_a_knot_is_under_its_prefix_and_nothing_of_another() -> None:
    run_id = "20261121T091500-3fa2c1"
    for knot, other in [("a", "a-b"), ("a-b", "a"), ("pi", "pi2")]:
        mine = knot_prefix(knot) + "/"  # what clobber() deletes
        run = run_prefix(knot, run_id)
        keys = [
            function_key(knot, "0" * 64),
            manifest_key(run),
            segment_key(run, 0),
            result_key(run, 7),
            result_key(run, 16, 100),
        ]
        assert all(key.startswith(mine) for key in keys)
        assert all(key.startswith(run + "/") for key in keys[1:])
        others = [function_key(other, "0" * 64), result_key(run_prefix(other, run_id), 0)]
        assert not any(key.startswith(mine) for key in others)


def test_result_keys_sort_in_input_order_groups_included() -> None:
    """The watcher LISTs results from the lowest unfinished input on (``start_after``), so a
    key's place in S3's order must be its input's place: a group at its first input."""
    run = run_prefix("pi", "20261121T091500-3fa2c1")
    single = [9, 10, 99, 101, 1_000, 123_456_789]
    keys = {result_key(run, i): (i, 1) for i in single}
    keys[result_key(run, 100, 1)] = (100, 1)
    keys[result_key(run, 102, 898)] = (102, 898)  # a group of inputs 102..999
    in_s3_order = sorted(keys)
    assert [keys[key][0] for key in in_s3_order] == sorted(first for first, _ in keys.values())
    assert all(key.startswith(results_prefix(run)) for key in keys)
    assert all(parse_result_key(key) == place for key, place in keys.items())
    shuffled = [segment_key(run, first) for first in random.sample(range(0, 10**6, 1000), 50)]
    assert sorted(shuffled) == sorted(shuffled, key=lambda key: int(key.rsplit("/", 1)[1]))


def test_the_local_store_lives_where_aioknot_home_says(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AIOKNOT_HOME", "~/knots")
    assert default_home() == str(tmp_path / "knots")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AIOKNOT_HOME", "relative")
    assert default_home() == str(tmp_path / "relative")  # absolute: workers run elsewhere
    monkeypatch.delenv("AIOKNOT_HOME")
    assert "aioknot" in default_home() and Path(default_home()).is_absolute()
