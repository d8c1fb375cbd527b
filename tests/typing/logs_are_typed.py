"""Checked by mypy (tests/test_typing.py), never run: ``logs(i)`` is the lines written so far
(awaited on the async face), ``logs(i, follow=True)`` an iterator of lines as they come."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator

from typing_extensions import assert_type

import aioknot


def count(n: int) -> int:
    return n


async def the_async_face(follow: bool) -> None:
    async with aioknot.AsyncKnot(count, name="typed") as knot:
        run = await knot.map([1, 2])
        assert_type(await run.logs(0), list[str])
        assert_type(run.logs(0, follow=True), AsyncGenerator[str, None])
        async for line in run.logs(1, follow=True):
            assert_type(line, str)
        await run.logs(0, follow=True)  # type: ignore[misc]
        either = run.logs(0, follow=follow)
        if isinstance(either, AsyncGenerator):
            assert_type(either, AsyncGenerator[str, None])


def the_blocking_face() -> None:
    with aioknot.Knot(count) as knot:
        job = knot.attach("run")
        assert_type(job.logs(0), list[str])
        assert_type(job.logs(0, follow=True), Iterator[str])
        for line in job.logs(0, follow=True):
            assert_type(line, str)
