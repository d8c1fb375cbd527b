"""Checked by mypy (tests/test_typing.py), never run: results carry the function's type, and
a misspelled or mistyped option is a type error."""

from __future__ import annotations

import concurrent.futures
from collections.abc import AsyncIterator, Iterator

from typing_extensions import assert_type

import aioknot


def count(n: int) -> int:
    return n


async def the_async_face() -> None:
    async with aioknot.AsyncKnot(count, name="typed", workers=2) as knot:
        assert_type(knot, aioknot.AsyncKnot[int])
        assert_type(knot.amap([1, 2]), AsyncIterator[int])
        run = await knot.map([1, 2], kwargs={"n": 1})
        assert_type(run, aioknot.Run[int])
        assert_type(await run.gather(), list[int])
        async for index, value in run.items():
            assert_type(index, int)
            assert_type(value, int)
        assert_type(await knot.attach(run.id), aioknot.Run[int])


def the_blocking_face() -> None:
    with aioknot.Knot(count, workers=2) as knot:
        assert_type(knot.map([1, 2]), concurrent.futures.Future[list[int]])
        assert_type(knot.imap([1, 2]), Iterator[int])
        assert_type(knot.submit(3), concurrent.futures.Future[int])
        assert_type(knot.attach("run").result(), list[int])


def typos_are_flagged() -> None:
    aioknot.Knot(count, wokers=2)  # type: ignore[call-arg]
    aioknot.AsyncKnot(count, retries="3")  # type: ignore[arg-type]
