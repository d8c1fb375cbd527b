"""Time to submit: from ``AsyncKnot(...)`` to every input stored and every job submitted.

Runs ``AsyncKnot(f, backend="aws")`` over ``--inputs`` (1,000) inputs twice against a moto
server this script starts, with the real container stack (tests/infra/containers.sh: a private
Docker engine and an htpasswd registry on loopback):

* the **first** run makes everything: the environment and knot stacks, the worker image
  (built with the engine, pushed to a repository of its own in the local registry), the job
  definition; then stores the inputs and submits the array jobs;
* the **repeat** run is a new knot with the same function and options: nothing to build or
  create.

For each it prints the wall time to all-submitted, the AWS calls by service (counted with
botocore ``before-call`` hooks on every session), the engine requests (aiodocker) and registry
lookups, and the three phases (stacks, image, input upload) as spans of wall time, with the
overlap achieved: the phases' summed spans over the wall time (1.0 would be no overlap at all).

moto's Batch runs in simple mode here (jobs end at submission, no containers): the figure is
time to submit, and 1,000 real containers would measure this machine, not aioknot.

    python benchmarks/time_to_submit.py [--inputs 1000] [--cold]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from infra.containers import ContainerStack, ensure_container_stack  # noqa: E402
from infra.moto import FAKE_CREDENTIALS, MotoServer, start_moto_server, stop_moto_server  # noqa: E402


def monte_pi_count(n: int) -> int:
    import random

    return sum(random.random() ** 2 + random.random() ** 2 <= 1.0 for _ in range(n))


# --- the moto server ----------------------------------------------------------------------------


def start_moto(stack: ContainerStack) -> MotoServer:
    """A moto server that runs Batch jobs in simple mode (nothing to run: submission is timed)."""
    server = start_moto_server({"DOCKER_HOST": stack.docker_host})
    server.configure({"batch": {"use_docker": False}})
    return server


# --- counting and timing ------------------------------------------------------------------------


class Meter:
    """AWS calls, engine requests and phase spans of one measured run."""

    def __init__(self) -> None:
        self.aws: Counter[str] = Counter()
        self.engine: Counter[str] = Counter()
        self.registry_lookups = 0
        self.spans: dict[str, list[tuple[float, float]]] = {}

    def span(self, phase: str, start: float, end: float) -> None:
        self.spans.setdefault(phase, []).append((start, end))

    def phase_seconds(self, phase: str) -> float:
        spans = self.spans.get(phase, [])
        return max(e for _, e in spans) - min(s for s, _ in spans) if spans else 0.0


METER = Meter()


def timed(phase: str, func: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.monotonic()
        try:
            return await func(*args, **kwargs)
        finally:
            METER.span(phase, start, time.monotonic())

    return wrapper


def instrument() -> None:
    """Hook every aioboto3 session, the engine client and the phases' entry points."""
    import aioboto3
    import aiodocker.docker

    from aioknot._backends.aws import backend as aws_backend
    from aioknot._backends.aws import image as aws_image
    from aioknot._stores import s3 as s3_store

    original_session = aioboto3.Session

    class CountingSession(original_session):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)

            def count(model: Any, **_: Any) -> None:
                METER.aws[f"{model.service_model.service_name}:{model.name}"] += 1

            self.events.register("before-call", count)

    aioboto3.Session = CountingSession  # type: ignore[misc]

    original_query = aiodocker.docker.Docker._do_query

    async def counting_query(self: Any, path: Any, method: str, **kwargs: Any) -> Any:
        METER.engine[f"{method} {str(path).split('?')[0]}"] += 1
        return await original_query(self, path, method, **kwargs)

    aiodocker.docker.Docker._do_query = counting_query  # type: ignore[method-assign]

    original_digest = aws_image.image_digest

    async def counting_digest(*args: Any, **kwargs: Any) -> str | None:
        METER.registry_lookups += 1
        return await original_digest(*args, **kwargs)

    aws_image.image_digest = counting_digest  # type: ignore[assignment]
    backend = aws_backend.AwsBackend
    backend._ensure_environment = timed("stacks", backend._ensure_environment)  # type: ignore[method-assign]
    backend._ensure_knot_stack = timed("stacks", backend._ensure_knot_stack)  # type: ignore[method-assign]
    aws_backend.plan_image = timed("image", aws_backend.plan_image)  # type: ignore[assignment]
    aws_backend.produce_image = timed("image", aws_backend.produce_image)  # type: ignore[assignment]
    original_put = s3_store.S3Store.put

    async def timed_put(self: Any, key: str, data: bytes) -> None:
        start = time.monotonic()
        try:
            await original_put(self, key, data)
        finally:
            if "/inputs/" in key:  # the input segments; not the manifest written at the end
                METER.span("upload", start, time.monotonic())

    s3_store.S3Store.put = timed_put  # type: ignore[method-assign]


async def measure(label: str, options: dict[str, Any], inputs: int) -> dict[str, Any]:
    import aioknot

    global METER
    METER = Meter()
    started = time.monotonic()
    async with aioknot.AsyncKnot(monte_pi_count, name="time-to-submit", **options) as knot:
        run = await knot.map([100] * inputs)
        wall = time.monotonic() - started
        jobs = len(run.backend_run.job_ids)  # type: ignore[union-attr]
        # Only time to submit is measured; the run itself is left to be cancelled on exit.
    phases = {phase: METER.phase_seconds(phase) for phase in ("stacks", "image", "upload")}
    by_service: Counter[str] = Counter()
    for name, count in METER.aws.items():
        by_service[name.split(":")[0]] += count
    return {
        "label": label,
        "wall": wall,
        "jobs": jobs,
        "phases": phases,
        "overlap": sum(phases.values()) / wall if wall else 0.0,
        "aws": dict(METER.aws),
        "aws_by_service": dict(by_service),
        "engine": dict(METER.engine),
        "registry_lookups": METER.registry_lookups,
    }


def report(result: dict[str, Any]) -> None:
    phases = result["phases"]
    print(f"\n== {result['label']} run ==")
    print(f"wall time to all submitted: {result['wall']:.2f} s ({result['jobs']} Batch jobs)")
    print(
        "phases (spans): "
        + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in phases.items())
        + f"; overlap = sum / wall = {result['overlap']:.2f}"
    )
    aws = result["aws"]
    total = sum(aws.values())
    s3 = result["aws_by_service"].get("s3", 0)
    print(f"AWS calls: {total} ({s3} S3, {total - s3} control plane)")
    for name in sorted(aws):
        if not name.startswith("s3:"):
            print(f"  {name}: {aws[name]}")
    s3_ops = {k.split(":")[1]: v for k, v in aws.items() if k.startswith("s3:")}
    print(f"  S3: {s3_ops}")
    engine = result["engine"]
    print(f"engine requests: {sum(engine.values())} {dict(sorted(engine.items()))}")
    print(f"registry lookups: {result['registry_lookups']}")


async def main_async(stack: ContainerStack, url: str, inputs: int, cold: bool) -> None:
    os.environ.update(FAKE_CREDENTIALS)
    os.environ["AWS_ENDPOINT_URL"] = url
    os.environ.pop("AWS_PROFILE", None)
    instrument()
    repository = f"aioknot-bench-{uuid.uuid4().hex[:8]}"
    login = f"{stack.registry_user}:{stack.registry_password}"
    options: dict[str, Any] = {
        "backend": "aws",
        "registry": f"{login}@{stack.registry}/{repository}",
        "docker_host": stack.docker_host,
    }
    first = await measure("first", {**options, "rebuild": cold}, inputs)
    repeat = await measure("repeat", options, inputs)
    report(first)
    report(repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=1000)
    parser.add_argument(
        "--cold", action="store_true", help="build without the engine's layer cache"
    )
    arguments = parser.parse_args()
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    stack = ensure_container_stack()
    server = start_moto(stack)
    try:
        asyncio.run(main_async(stack, server.url, arguments.inputs, arguments.cold))
    finally:
        stop_moto_server(server)


if __name__ == "__main__":
    main()
