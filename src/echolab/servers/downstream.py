"""``echolab downstream``: the HTTP service the echo servers call as their dependency (``--io http``).

``GET /delay/<ms>`` answers ``ok`` after ``ms`` milliseconds, standing for a
remote API. What the lab measures through it is the callers' HTTP clients and
their pools, so it must never be the bottleneck, nor take the cores the
servers under test need: an asyncio Protocol on uvloop with httptools' parser,
a timer per call and prebuilt replies. A bare ASGI app on uvicorn, the first
build, cost four times the CPU per call (68-81 against 17 us, measured in
alternating rounds at 2,000 and 5,000 calls of 100 ms) and fell short of the
20,000 calls/s of 2,000 callers; several uvicorn processes would have taken
the machine's second core. One process also keeps the peak exact: the most
calls in progress at once, which the tests compare with the callers' pool
sizes, is one counter's maximum, not a sum of per-process maxima.

HTTP/1.1 keep-alive, as the callers' pools use it; pipelined requests are
answered in order, one at a time, and reading pauses while they queue. A
connection whose client closes ends its call (it is no longer in progress).
Bad input gets one line: 404 another path, 405 another method, 400 a delay
that is not a number of milliseconds from 0 to ``--max-delay-ms`` or a request
that is not HTTP, 431 8 KiB read without a whole request; after the last
three, a close.
A connection with nothing in progress closes after ``--keep-alive`` of
silence. SIGTERM or SIGINT: no new connections, the calls in progress
answered for up to ``--drain-timeout`` (then cut), exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import httptools
import uvloop
from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from ..metrics import spec
from ..runtime import listening, log, log_drain, stop_event
from ..settings import DownstreamSettings

PREFIX = b"/delay/"
MILLISECONDS = re.compile(rb"\d+(?:\.\d*)?")
MAX_REQUEST_BYTES = 8192  # read without a whole request; the callers send GETs of a hundred bytes
SWEEP_SECONDS = 1.0  # how often idle connections are looked for: one pass, not a timer each
CODES = (200, 400, 404, 405, 431)
REASONS = {
    200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
    431: b"Request Header Fields Too Large",
}  # fmt: skip


def response(status: int, body: bytes, close: bool = False, *headers: bytes) -> bytes:
    head = [
        b"HTTP/1.1 %d %s" % (status, REASONS[status]),
        b"content-type: text/plain; charset=utf-8",
        b"content-length: %d" % len(body),
        *headers,
        *([b"connection: close"] if close else []),
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


OK = {close: response(200, b"ok\n", close) for close in (False, True)}
NOT_FOUND = b"not found: this service answers GET /delay/<ms>\n"
NOT_ALLOWED = b"method not allowed: GET /delay/<ms>\n"
NOT_HTTP = b"bad request: not an HTTP/1.1 request\n"
TOO_LARGE = b"request too large: %d bytes without a whole request\n" % MAX_REQUEST_BYTES


class Service(Collector):
    """What the connections share: the counts (exported when Prometheus scrapes), the drain."""

    def __init__(self, settings: DownstreamSettings, loop: asyncio.AbstractEventLoop) -> None:
        self.max_delay_ms = settings.max_delay_ms
        self.keep_alive = settings.keep_alive
        self.loop = loop
        self.answered = dict.fromkeys(CODES, 0)
        self.in_progress = 0
        self.peak = 0
        self.connections: set[Connection] = set()
        self.closing = False
        self.drained: asyncio.Future[None] = loop.create_future()

    def route(self, method: bytes, url: bytes) -> float | tuple[int, bytes]:
        """A well-formed call's delay in seconds, or the status and line of the refusal."""
        path = url.partition(b"?")[0]
        if not path.startswith(PREFIX):
            return 404, NOT_FOUND
        if method != b"GET":
            return 405, NOT_ALLOWED
        text = path[len(PREFIX) :]
        if MILLISECONDS.fullmatch(text) and float(text) <= self.max_delay_ms:
            return float(text) / 1000
        shown = text[:32].decode("latin-1")
        return 400, f"bad delay {shown!r}: milliseconds, a number from 0 to {self.max_delay_ms:g}\n".encode()

    def call_started(self) -> None:
        self.in_progress += 1
        if self.in_progress > self.peak:
            self.peak = self.in_progress

    def release(self, conn: Connection) -> None:
        self.connections.discard(conn)
        if self.closing and not self.connections and not self.drained.done():
            self.drained.set_result(None)

    def sweep(self) -> None:
        """Close the connections that were silent for the keep-alive time with nothing in progress."""
        silent_since = self.loop.time() - self.keep_alive
        for conn in [c for c in self.connections if not c.queue and c.last_read < silent_since]:
            conn.transport.close()
        self.loop.call_later(SWEEP_SECONDS, self.sweep)

    async def drain(self, timeout: float) -> int:
        """Answer the calls in progress, closing each connection after its last; return how many were cut."""
        self.closing = True
        for conn in list(self.connections):
            if not conn.queue:
                conn.transport.close()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.drained), timeout)
        cut = self.in_progress
        for conn in list(self.connections):
            conn.transport.abort()
        return cut

    def collect(self) -> Iterator[Metric]:
        answered = {str(code): count for code, count in self.answered.items()}
        yield spec("echo_downstream_requests").family(answered)  # by its one label, the status code
        yield spec("echo_downstream_calls_in_progress").family({"": self.in_progress})
        yield spec("echo_downstream_calls_in_progress_peak").family({"": self.peak})


class Connection(asyncio.Protocol):
    """One caller's connection: its requests, parsed and answered in order, one call at a time."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.url = b""
        self.received = 0  # bytes of the request being read
        self.queue: deque[tuple[bytes, bytes, bool]] = deque()  # (method, url, keep-alive), the first in work
        self.call: asyncio.TimerHandle | None = None
        self.last_read = service.loop.time()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.service.connections.add(self)
        if self.service.closing:
            transport.close()

    def data_received(self, data: bytes) -> None:
        self.last_read = self.service.loop.time()
        self.received += len(data)
        if self.received > MAX_REQUEST_BYTES:
            return self.refuse(431, TOO_LARGE)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:  # an upgrade too: no other protocol here
            self.refuse(400, NOT_HTTP)
        return None

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        self.queue.append((self.parser.get_method(), self.url, self.parser.should_keep_alive()))
        self.url, self.received = b"", 0
        if len(self.queue) == 1:
            self.next()
        else:  # pipelined behind a call: read on once they are answered
            self.transport.pause_reading()

    def next(self) -> None:
        method, url, _ = self.queue[0]
        routed = self.service.route(method, url)
        if isinstance(routed, tuple):
            self.answer(*routed)
            return
        self.service.call_started()
        self.call = self.service.loop.call_later(routed, self.slept)

    def slept(self) -> None:
        self.call = None
        self.service.in_progress -= 1
        self.answer(200)

    def answer(self, status: int, line: bytes = b"") -> None:
        *_, keep_alive = self.queue.popleft()
        # After a 405 too: to a HEAD, the body would read as the next reply's start.
        close = not keep_alive or self.service.closing or status == 405
        if status == 200:
            self.transport.write(OK[close])
        else:
            allow = (b"allow: GET",) if status == 405 else ()
            self.transport.write(response(status, line, close, *allow))
        self.service.answered[status] += 1
        if close:
            self.transport.close()
        elif self.queue:
            self.next()
        else:
            self.transport.resume_reading()

    def refuse(self, status: int, line: bytes) -> None:
        """A request that cannot be parsed: answered if nothing before it is owed, then the close."""
        if not self.queue:
            self.transport.write(response(status, line, close=True))
            self.service.answered[status] += 1
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.call is not None:  # the caller left: its call is over
            self.call.cancel()
            self.service.in_progress -= 1
        self.service.release(self)


def listening_socket(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=backlog)


async def serve(settings: DownstreamSettings, sock: socket.socket, metrics_port: int) -> None:
    loop = asyncio.get_running_loop()
    service = Service(settings, loop)
    REGISTRY.register(service)
    server = await loop.create_server(lambda: Connection(service), sock=sock, backlog=settings.backlog)
    stop = stop_event(loop)
    service.sweep()
    listening(
        "%s:%d: GET /delay/<ms> up to %g ms; metrics on port %d",
        settings.host, sock.getsockname()[1], settings.max_delay_ms, metrics_port,
    )  # fmt: skip
    await stop.wait()
    started, in_flight = time.monotonic(), service.in_progress
    log.info("shutting down: no new connections, draining for up to %gs", settings.drain_timeout)
    server.close()
    cut = await service.drain(settings.drain_timeout)
    log_drain(in_flight, cut, cut, time.monotonic() - started)


def run(settings: DownstreamSettings) -> int:
    """Serve until SIGTERM or SIGINT; OSError if a port cannot be bound."""
    # /metrics first: once the service's port accepts, its counts can be read.
    metrics_server, _ = start_http_server(settings.metrics_port, addr=settings.host)
    sock = listening_socket(settings.host, settings.port, settings.backlog)
    uvloop.run(serve(settings, sock, metrics_server.server_port))
    return 0
