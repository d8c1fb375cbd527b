"""A knot in a notebook: each cell runs in a task of its own, so a knot opened in one cell
must close in another; executed for real with nbclient and an ipykernel kernel."""

from __future__ import annotations

import anyio
import nbformat
import pytest
from nbclient import NotebookClient

import aioknot


def double(x: int) -> int:
    return 2 * x


async def test_a_knot_opened_in_one_task_closes_in_another(aioknot_home: str) -> None:
    knot = aioknot.AsyncKnot(double, workers=1)
    opened = anyio.Event()

    async def first_cell() -> None:
        await knot.__aenter__()
        opened.set()

    async with anyio.create_task_group() as cells:
        cells.start_soon(first_cell)
    await opened.wait()
    run = await knot.map([1, 2])  # a third task, after the first one ended
    assert await run.gather() == [2, 4]

    async def last_cell() -> None:
        await knot.aclose()

    async with anyio.create_task_group() as cells:
        cells.start_soon(last_cell)
    assert "closed" in repr(knot)


CELLS = [
    # The blocking face in a cell: its loop is its own, beside the kernel's.
    "import aioknot\n"
    "def triple(x):\n"
    "    return 3 * x\n"
    "knot = aioknot.Knot(triple, workers=1)\n"
    "print('blocking', knot.map(range(4)).result(timeout=60))\n"
    "knot.close()",
    # Top-level async with / async for on the kernel's own loop.
    "async with aioknot.AsyncKnot(triple, workers=1) as k:\n"
    "    got = sorted([y async for y in k.amap(range(3))])\n"
    "print('async', got)",
    # Opened in one cell ...
    "shared = aioknot.AsyncKnot(triple, workers=1)\n"
    "await shared.__aenter__()\n"
    "run = await shared.map([5, 6])",
    # ... used and closed in the next.
    "print('gathered', await run.gather())\nawait shared.aclose()\nprint('closed', shared)",
]


@pytest.mark.timeout(180)
def test_a_real_notebook_runs_every_face(aioknot_home: str) -> None:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    outputs = [
        "".join(output.get("text", "") for output in cell.outputs) for cell in notebook.cells
    ]
    errors = [o for cell in notebook.cells for o in cell.outputs if o.output_type == "error"]
    assert not errors, errors
    assert "blocking [0, 3, 6, 9]" in outputs[0]
    assert "async [0, 3, 6]" in outputs[1]
    assert "gathered [15, 18]" in outputs[3]
    assert "closed" in outputs[3]
