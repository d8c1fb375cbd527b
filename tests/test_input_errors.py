"""Inputs the user cannot mean, refused before anything of them is stored or runs; and a
failing input generator's own exception reaching the caller in every mode."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import aioknot
from aioknot import SerializationError


def identity(x: object) -> object:
    return x


def add(a: int, b: int) -> int:
    return a + b


@pytest.mark.parametrize("what", ["file", "nested file", "lock", "generator"])
async def test_live_objects_are_refused_naming_the_index(
    what: str, tmp_path: Path, aioknot_home: str
) -> None:
    path = tmp_path / "data.txt"
    path.write_text("contents")
    with open(path) as file:  # noqa: ASYNC230 (the input under test is an open file)
        live: object = {
            "file": file,
            "nested file": [1, {"handle": file}],
            "lock": threading.Lock(),
            "generator": (x for x in range(3)),
        }[what]
        async with aioknot.AsyncKnot(identity, workers=1) as knot:
            with pytest.raises(SerializationError) as refused:
                await knot.map([1, 2, live])
    assert refused.value.index == 2
    assert "input 2" in str(refused.value)
    assert what.split()[-1] in str(refused.value)


async def test_a_dict_under_starmap_says_use_tuples_or_kwargs(aioknot_home: str) -> None:
    async with aioknot.AsyncKnot(add, workers=1) as knot:
        with pytest.raises(SerializationError, match="kwargs=") as refused:
            await knot.map([(1, 2), {"a": 1, "b": 2}], starmap=True)
        assert refused.value.index == 1
        # Tuples and lists still spread as arguments.
        assert await (await knot.map([(1, 2), [3, 4]], starmap=True)).gather() == [3, 7]


async def test_closures_and_lambdas_as_inputs_still_travel(aioknot_home: str) -> None:
    offset = 10
    async with aioknot.AsyncKnot(lambda f: f(1), workers=1) as knot:
        run = await knot.map([lambda x: x + offset, lambda x: x * 2])
        assert await run.gather() == [11, 2]


def broken_inputs() -> Iterator[int]:
    yield 1
    yield 2
    raise ValueError("the input generator broke")


@pytest.mark.parametrize("ordered", [False, True])
async def test_a_failing_generator_reaches_the_caller_under_amap(
    ordered: bool, aioknot_home: str
) -> None:
    async with aioknot.AsyncKnot(identity, workers=1) as knot:
        with pytest.raises(ValueError, match="the input generator broke"):
            async for _ in knot.amap(broken_inputs(), ordered=ordered):
                pass
        with pytest.raises(ValueError, match="the input generator broke"):
            await knot.map(broken_inputs())


def test_a_failing_generator_reaches_the_caller_of_the_blocking_face(aioknot_home: str) -> None:
    with aioknot.Knot(identity, workers=1) as knot:
        with pytest.raises(ValueError, match="the input generator broke"):
            knot.map(broken_inputs()).result(timeout=60)
