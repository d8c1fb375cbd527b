"""A fault-injecting HTTP proxy between aioknot (client and workers) and the moto server.

Real AWS fails in ways moto never does: throttling bursts, 500s and 503s, connections reset
mid-request, slow answers. This proxy forwards every request to moto and, for the requests
that match a `Fault` rule, answers with that failure instead, in the wire format the
service's own SDK parses (S3's XML errors, Batch's REST-JSON errors, the query APIs' XML), so
botocore sees exactly what it would see from AWS.

It runs an aiohttp server on 127.0.0.1 on its own thread and event loop, so synchronous tests,
async tests, benchmarks and the worker processes (given ``proxy.url`` as their endpoint) all
go through it. Requests are classified by service (the SigV4 credential scope) and operation
(S3: the HTTP method, LIST for a bucket listing; Batch: the REST path; JSON-target APIs: the
``X-Amz-Target``; query APIs: ``Action``).
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import parse_qs, unquote, urlsplit

import aiohttp
from aiohttp import web

FAULT_KINDS = ("throttle", "500", "503", "403", "reset", "delay")
_SCOPE = re.compile(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/aws4_request")
# Headers that describe one hop of the connection, not the message.
_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
    }
)
# Services that speak REST-JSON or JSON-target (errors as JSON), the rest answer XML.
_JSON_SERVICES = frozenset({"batch", "logs", "ecr", "secretsmanager", "ssm"})


@dataclass(eq=False)
class Fault:
    """Answer matching requests with a failure. ``None`` matches anything."""

    kind: str
    service: str | None = None
    operation: str | None = None
    key_contains: str | None = None  # a substring of the request path (S3: the key)
    rate: float = 1.0  # the chance that one matching request gets the fault
    times: int | None = None  # at most this many faults, then the rule is spent
    duration: float | None = None  # seconds after being added during which the rule acts
    seconds: float = 0.0  # for "delay": how long to hold the request before forwarding
    injected: int = 0
    added_at: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}: one of {FAULT_KINDS}")

    def active(self) -> bool:
        if self.times is not None and self.injected >= self.times:
            return False
        return self.duration is None or time.monotonic() - self.added_at < self.duration

    def matches(self, service: str, operation: str, path: str) -> bool:
        if not self.active():
            return False
        if self.service is not None and self.service.lower() != service:
            return False
        if self.operation is not None and self.operation.lower() != operation.lower():
            return False
        if self.key_contains is not None and self.key_contains not in path:
            return False
        return random.random() < self.rate


def classify(
    method: str, path: str, query: str, headers: dict[str, str], body: bytes
) -> tuple[str, str]:
    """``(service, operation)`` of a signed AWS request."""
    scope = _SCOPE.search(headers.get("authorization", ""))
    service = scope.group(1) if scope else "unknown"
    if service == "s3":
        parts = [part for part in path.split("/") if part]
        arguments = parse_qs(query, keep_blank_values=True)
        if method == "GET" and len(parts) <= 1 and ("list-type" in arguments or not parts):
            return service, "LIST"
        return service, method
    target = headers.get("x-amz-target")
    if target:
        return service, target.rpartition(".")[2]
    if body and b"Action=" in body:
        action = parse_qs(body.decode("utf-8", "replace")).get("Action", [""])[0]
        if action:
            return service, action
    if "Action=" in query:
        return service, parse_qs(query).get("Action", [""])[0]
    # REST APIs (Batch: POST /v1/describejobs): the path names the operation.
    return service, path.rstrip("/").rpartition("/")[2] or method


def _error_response(kind: str, service: str) -> web.Response:
    status, code, message = {
        "throttle": (429, "TooManyRequestsException", "Rate exceeded"),
        "500": (500, "InternalError", "We encountered an internal error. Please try again."),
        "503": (503, "ServiceUnavailable", "Please reduce your request rate."),
        "403": (403, "AccessDenied", "Access Denied"),
    }[kind]
    if service == "s3":
        if kind == "throttle":
            status, code = 503, "SlowDown"
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            "<RequestId>fault-proxy</RequestId></Error>"
        )
        return web.Response(status=status, text=body, content_type="application/xml")
    if service in _JSON_SERVICES:
        if kind == "500":
            code = "ServerException" if service == "batch" else "InternalFailure"
        elif kind == "403":
            code = "AccessDeniedException"
        return web.json_response(
            {"__type": code, "message": message},
            status=status,
            headers={"x-amzn-ErrorType": code, "x-amzn-RequestId": "fault-proxy"},
        )
    if kind == "throttle":
        status, code = 400, "Throttling"
    body = (
        f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>"
        f"<Message>{message}</Message></Error><RequestId>fault-proxy</RequestId></ErrorResponse>"
    )
    return web.Response(status=status, text=body, content_type="text/xml")


class FaultProxy:
    """Forward to ``upstream``, failing the requests the rules pick (see the module doc)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.url = ""
        self.counts: Counter[tuple[str, str]] = Counter()
        self.faults: Counter[tuple[str, str, str]] = Counter()
        self._rules: list[Fault] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- rules ---------------------------------------------------------------------------

    def add(self, fault: Fault) -> Fault:
        fault.added_at = time.monotonic()
        with self._lock:
            self._rules.append(fault)
        return fault

    def remove(self, fault: Fault) -> None:
        with self._lock:
            if fault in self._rules:
                self._rules.remove(fault)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()
            self.faults.clear()

    def _pick(self, service: str, operation: str, path: str) -> Fault | None:
        with self._lock:
            self.counts[(service, operation)] += 1
            for rule in self._rules:
                if rule.matches(service, operation, path):
                    rule.injected += 1
                    self.faults[(service, operation, rule.kind)] += 1
                    return rule
        return None

    # -- serving -------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {key.lower(): value for key, value in request.headers.items()}
        split = urlsplit(str(request.rel_url))
        service, operation = classify(
            request.method, unquote(split.path), split.query, headers, body
        )
        fault = self._pick(service, operation, unquote(split.path))
        if fault is not None:
            if fault.kind == "reset":
                _reset(request)
                raise asyncio.CancelledError  # aiohttp drops the request, sends nothing
            if fault.kind == "delay":
                await asyncio.sleep(fault.seconds)
            else:
                return _error_response(fault.kind, service)
        assert self._session is not None
        forward = {
            key: value for key, value in request.headers.items() if key.lower() not in _HOP_HEADERS
        }
        async with self._session.request(
            request.method,
            self.upstream + str(request.rel_url),
            headers=forward,
            data=body if body else None,
            allow_redirects=False,
        ) as upstream:
            payload = await upstream.read()
            reply_headers = {
                key: value
                for key, value in upstream.headers.items()
                if key.lower() not in _HOP_HEADERS
            }
            if request.method == "HEAD" and "Content-Length" in upstream.headers:
                # A HEAD answer has no body but says how long the object is.
                reply_headers["Content-Length"] = upstream.headers["Content-Length"]
                return web.Response(status=upstream.status, headers=reply_headers)
            return web.Response(status=upstream.status, body=payload, headers=reply_headers)

    async def _serve(self) -> None:
        self._stopped = asyncio.Event()
        # No automatic decompression: bodies pass through byte for byte.
        self._session = aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=300)
        )
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        self._ready.set()
        try:
            await self._stopped.wait()
        finally:
            await runner.cleanup()
            await self._session.close()

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as error:  # reported by start()
            self._error = error
            self._ready.set()
        finally:
            loop.close()

    def start(self) -> FaultProxy:
        self._session: aiohttp.ClientSession | None = None
        self._thread = threading.Thread(target=self._main, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=30) or self._error is not None:
            raise RuntimeError(f"the fault proxy did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(timeout=30)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _reset(request: web.Request) -> None:
    """Close the client's connection with a TCP RST (SO_LINGER 0), as a dropped link would."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
