"""Shared benchmark helpers: a request-counting moto server, RSS sampling, report lines.

The moto server runs in its own process (``python benchmarks/_common.py --serve-moto PORT``):
moto's WSGI app wrapped in a middleware that records every request it receives (method,
path, query, Range header, User-Agent) before moto sees it. That counts everything honestly,
the client's aiobotocore requests and the worker processes' boto3 requests alike; the
User-Agent tells them apart. ``GET /__bench__/log`` returns the record as JSON and
``POST /__bench__/reset`` empties it. ``POST /__bench__/delay`` (body: seconds) holds every
later request that long before moto sees it, as a slow or distant S3 would: the server is
threaded, so held requests wait side by side and only their latency grows, not their cost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
)

from infra.moto import FAKE_CREDENTIALS, free_port  # noqa: E402  (one set, one helper)

LOG_PATH = "/__bench__/log"
RESET_PATH = "/__bench__/reset"
DELAY_PATH = "/__bench__/delay"


# -- the counting moto server ----------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One HTTP request as the server received it."""

    method: str
    path: str
    query: str
    range: str
    agent: str

    @property
    def from_client(self) -> bool:
        """Sent by the aioknot client (aiobotocore), not by a worker process (boto3)."""
        return "aiobotocore" in self.agent or "aioboto3" in self.agent


def _serve_moto(port: int) -> None:
    """Run moto's app behind the counting middleware until SIGTERM."""
    import logging
    import signal

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # per-request logging is slow
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    moto_app = DomainDispatcherApplication(create_backend_app)
    log: list[list[str]] = []
    lock = threading.Lock()
    delay = [0.0]  # seconds each request is held (set through DELAY_PATH)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == LOG_PATH:
            with lock:
                body = json.dumps(log).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        if path == RESET_PATH:
            with lock:
                log.clear()
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"reset"]
        if path == DELAY_PATH:
            size = int(environ.get("CONTENT_LENGTH") or 0)
            delay[0] = float(environ["wsgi.input"].read(size) or 0)
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"delay"]
        entry = [
            environ.get("REQUEST_METHOD", ""),
            path,
            environ.get("QUERY_STRING", ""),
            environ.get("HTTP_RANGE", ""),
            environ.get("HTTP_USER_AGENT", ""),
        ]
        with lock:
            log.append(entry)
        if delay[0]:
            time.sleep(delay[0])  # this request's thread only: the others go on meanwhile
        result: Iterable[bytes] = moto_app(environ, start_response)
        return result

    run_simple("127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler)


class CountingMotoServer:
    """A moto server in its own process that records every request it receives."""

    def __init__(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve-moto", str(port)],
            env={**os.environ, **FAKE_CREDENTIALS},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.reset()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the moto server did not start on {self.url}") from None
                time.sleep(0.1)

    def reset(self) -> None:
        request = urllib.request.Request(self.url + RESET_PATH, data=b"", method="POST")
        urllib.request.urlopen(request, timeout=5).close()

    def set_delay(self, seconds: float) -> None:
        """Hold every request from now on ``seconds`` before answering it (0: none)."""
        request = urllib.request.Request(
            self.url + DELAY_PATH, data=str(seconds).encode(), method="POST"
        )
        urllib.request.urlopen(request, timeout=5).close()

    def requests(self) -> list[Request]:
        with urllib.request.urlopen(self.url + LOG_PATH, timeout=30) as response:
            return [Request(*entry) for entry in json.loads(response.read())]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def use_for_s3(self, bucket: str) -> None:
        """Point this process and the workers it starts at this server, with ``bucket`` made."""
        os.environ.update(FAKE_CREDENTIALS)
        os.environ["AWS_ENDPOINT_URL"] = self.url  # the client and the workers alike
        os.environ.pop("AWS_PROFILE", None)
        import boto3

        boto3.client("s3", endpoint_url=self.url).create_bucket(Bucket=bucket)

    def __enter__(self) -> CountingMotoServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# -- memory --------------------------------------------------------------------------------


def proc_status_kib(field: str) -> int:
    """A ``kB`` field of /proc/self/status (``VmRSS``, ``VmHWM``), in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")
        return True
    except OSError:
        return False


class RssSampler:
    """Samples this process's RSS in a thread; ``peak_kib`` is the largest sample seen."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak_kib = proc_status_kib("VmRSS")
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, proc_status_kib("VmRSS"))
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, proc_status_kib("VmRSS"))


# -- reporting -----------------------------------------------------------------------------


class Checks:
    """Targets met or missed; ``exit_code`` is 1 when any was missed."""

    def __init__(self) -> None:
        self.results: list[tuple[str, bool]] = []

    def check(self, what: str, ok: bool) -> None:
        self.results.append((what, ok))

    def report(self) -> int:
        print("\ntargets:")
        for what, ok in self.results:
            print(f"  [{'met' if ok else 'MISSED'}] {what}")
        return 0 if all(ok for _, ok in self.results) else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-moto"]:
        _serve_moto(int(sys.argv[2]))
