"""examples/fastapi_app.py under a real uvicorn on 127.0.0.1, 50 concurrent requests by httpx."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
from helpers.processes import wait_until_gone, worker_processes
from helpers.waiting import wait_until, wait_until_async
from infra.moto import free_port

ROOT = Path(__file__).resolve().parent.parent


def _primes_below(n: int) -> int:
    return sum(1 for k in range(2, n) if all(k % d for d in range(2, int(k**0.5) + 1)))


async def _fifty_requests(base: str) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:

        async def answers() -> bool:
            try:
                await client.get("/primes", params={"below": 10, "parts": 1})
            except httpx.TransportError:
                return False  # not listening yet: another process, it can only be asked
            return True

        await wait_until_async(answers, timeout=30, interval=0.1, what="uvicorn answering")
        answers: dict[int, dict[str, int]] = {}

        async def ask(i: int) -> None:
            below = 1_000 + 10 * i
            response = await client.get("/primes", params={"below": below, "parts": 4})
            response.raise_for_status()
            answers[i] = response.json()

        async with anyio.create_task_group() as group:
            for i in range(50):
                group.start_soon(ask, i)
        for i in range(50):
            below = 1_000 + 10 * i
            assert answers[i] == {"below": below, "primes": _primes_below(below)}
        streamed = await client.get("/primes/stream", params={"below": 2_000, "parts": 5})
        assert sum(int(line) for line in streamed.text.split()) == _primes_below(2_000)


def test_fifty_concurrent_requests_fan_out(tmp_path: Path) -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "examples.fastapi_app:app", "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, "AIOKNOT_HOME": str(tmp_path / "home"), "AIOKNOT_BACKEND": "local"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        anyio.run(_fifty_requests, f"http://127.0.0.1:{port}")
        workers = worker_processes(server.pid)
        assert workers  # the app's knot runs its tasks in worker processes of its own
        # Each request's amap run removes its data when the request is answered: 51 requests
        # leave no runs behind (it was 302 runs and 2,720 files after a short test).
        runs = tmp_path / "home" / "knots" / "primes" / "runs"
        wait_until(
            lambda: runs.is_dir() and not any(runs.iterdir()),
            timeout=30,
            what="every request's run data removed",
        )
    finally:
        server.send_signal(signal.SIGINT)  # uvicorn shuts down: the lifespan closes the knot
        output = server.communicate(timeout=60)[0].decode()
    assert server.returncode == 0, output
    assert "Traceback" not in output, output
    assert wait_until_gone(workers) == []
