"""Fan work out from a FastAPI service: one knot for the app's life, one run per request.

    uvicorn examples.fastapi_app:app --port 8000
    curl 'http://127.0.0.1:8000/primes?below=50000&parts=8'

The knot opens when the app starts and closes when it stops (``lifespan``). Each request maps
the function over its inputs with ``amap``, whose run belongs to the request: a client that
disconnects from the streaming endpoint cancels its tasks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import StreamingResponse

import aioknot


def count_primes(span: tuple[int, int]) -> int:
    """Primes in ``[start, stop)``: a CPU-bound task worth sending to a worker."""
    start, stop = span
    return sum(
        1 for n in range(max(start, 2), stop) if all(n % d for d in range(2, int(n**0.5) + 1))
    )


def spans(below: int, parts: int) -> list[tuple[int, int]]:
    step = -(-below // parts)
    return [(start, min(start + step, below)) for start in range(0, below, step)]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with aioknot.AsyncKnot(count_primes, name="primes") as knot:
        app.state.knot = knot
        yield


app = FastAPI(lifespan=lifespan)


@app.get("/primes")
async def primes(below: int = 10_000, parts: int = 4) -> dict[str, int]:
    knot: aioknot.AsyncKnot[int] = app.state.knot
    total = 0
    async for count in knot.amap(spans(below, parts)):
        total += count
    return {"below": below, "primes": total}


@app.get("/primes/stream")
async def primes_stream(below: int = 10_000, parts: int = 4) -> StreamingResponse:
    """One line per part as it completes; a client that leaves cancels the rest."""
    knot: aioknot.AsyncKnot[int] = app.state.knot

    async def lines() -> AsyncIterator[str]:
        async for count in knot.amap(spans(below, parts)):
            yield f"{count}\n"

    return StreamingResponse(lines(), media_type="text/plain")
