"""``echolab downstream``: the HTTP service the echo servers call as their dependency (``--io http``).

``GET /delay/<ms>`` answers ``ok`` after ``ms`` milliseconds of awaited
sleep, standing for a remote API. What the lab measures through it is the
callers' HTTP clients and their pools, so it must never be the bottleneck:
a bare ASGI app on uvicorn (uvloop, httptools), one process, no work per
request beyond the sleep and three integer updates. One process also keeps
its peak exact: the most calls in progress at once, which the tests compare
with the callers' pool sizes, is one counter's maximum, not a sum of
per-process maxima that need not have coincided.

Bad input gets one line: 404 for another path, 405 for another method, 400
for a delay that is not a number of milliseconds from 0 to ``--max-delay-ms``.
SIGTERM or SIGINT: no new connections, the calls in progress answered (for up
to ``--drain-timeout``), exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import uvicorn
from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..metrics import spec
from ..runtime import IGNORED_SIGNALS, ignore_signal, log, log_drain
from ..settings import DownstreamSettings
from .async_http import cut_quietly

PREFIX = "/delay/"
MILLISECONDS = re.compile(r"\d+(?:\.\d*)?", re.ASCII)
CODES = (200, 400, 404, 405)
TEXT = (b"content-type", b"text/plain; charset=utf-8")


def start_message(status: int, body: bytes, *extra: tuple[bytes, bytes]) -> dict[str, Any]:
    """The ASGI start message of a fixed reply, built once (uvicorn only reads it)."""
    headers = [TEXT, (b"content-length", b"%d" % len(body)), *extra]
    return {"type": "http.response.start", "status": status, "headers": headers}


OK = b"ok\n"
OK_START = start_message(200, OK)
OK_BODY = {"type": "http.response.body", "body": OK}


class Delays(Collector):
    """The app, and the counts it exports when Prometheus scrapes (plain integers: one thread)."""

    def __init__(self, max_delay_ms: float) -> None:
        self.max_delay_ms = max_delay_ms
        self.answered = dict.fromkeys(CODES, 0)
        self.in_progress = 0
        self.peak = 0
        self.cut = 0  # calls cut short by the drain's timeout

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path: str = scope["path"]
        if not path.startswith(PREFIX):
            return await self.refuse(send, 404, b"not found: this service answers GET /delay/<ms>\n")
        if scope["method"] != "GET":
            return await self.refuse(send, 405, b"method not allowed: GET /delay/<ms>\n", (b"allow", b"GET"))
        text = path[len(PREFIX) :]
        if not MILLISECONDS.fullmatch(text) or float(text) > self.max_delay_ms:
            line = f"bad delay {text[:32]!r}: milliseconds, a number from 0 to {self.max_delay_ms:g}\n"
            return await self.refuse(send, 400, line.encode())
        self.in_progress += 1
        self.peak = max(self.peak, self.in_progress)
        try:
            await asyncio.sleep(float(text) / 1000)
        except asyncio.CancelledError:
            self.cut += 1
            raise
        finally:
            self.in_progress -= 1
        await send(OK_START)
        await send(OK_BODY)
        self.answered[200] += 1

    async def refuse(self, send: Any, status: int, line: bytes, *extra: tuple[bytes, bytes]) -> None:
        await send(start_message(status, line, *extra))
        await send({"type": "http.response.body", "body": line})
        self.answered[status] += 1

    def collect(self) -> Iterator[Metric]:
        requests = spec("echo_downstream_requests")
        family = CounterMetricFamily(requests.name, requests.help, labels=requests.labels)
        for code, count in self.answered.items():
            family.add_metric([str(code)], count)
        yield family
        for name, value in (
            ("echo_downstream_calls_in_progress", self.in_progress),
            ("echo_downstream_calls_in_progress_peak", self.peak),
        ):
            yield GaugeMetricFamily(name, spec(name).help, value=value)


class Server(uvicorn.Server):
    """uvicorn's server, with echolab's shutdown: logged as the echo servers log it, and exit 0.

    uvicorn re-raises the stopping signal once it has drained, for a caller
    embedding it that wants to die of it; here the service is the process, and
    a drained SIGTERM is a clean exit. The signals that would otherwise kill it
    (SIGHUP, SIGUSR1, SIGUSR2) are logged and ignored, as by every echo server.
    """

    def __init__(self, config: uvicorn.Config, delays: Delays) -> None:
        super().__init__(config)
        self.delays = delays

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        handlers: dict[int, Callable[[int, FrameType | None], Any]] = {
            signal.SIGTERM: self.handle_exit, signal.SIGINT: self.handle_exit,
            **dict.fromkeys(IGNORED_SIGNALS, ignore_signal),
        }  # fmt: skip
        previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        started, in_flight = time.monotonic(), self.delays.in_progress
        drain = self.config.timeout_graceful_shutdown
        log.info("shutting down: no new connections, draining for up to %gs", drain)
        await super().shutdown(sockets)
        cut = self.delays.cut
        log_drain(in_flight, cut, cut, time.monotonic() - started)


def listening_socket(host: str, port: int, backlog: int) -> socket.socket:
    """Bound here rather than by uvicorn, which logs a port in use and exits 1 on its own."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=backlog)


def run(settings: DownstreamSettings) -> int:
    """Serve until SIGTERM or SIGINT; OSError if a port cannot be bound."""
    delays = Delays(settings.max_delay_ms)
    REGISTRY.register(delays)
    # /metrics first: once the service's port accepts, its counts can be read.
    metrics_server, _ = start_http_server(settings.metrics_port, addr=settings.host)
    sock = listening_socket(settings.host, settings.port, settings.backlog)
    config = uvicorn.Config(
        cut_quietly(delays), loop="uvloop", http="httptools", ws="none", lifespan="off",
        access_log=False, log_config=None, backlog=settings.backlog,
        # Longer than the clients' pools keep an idle connection (httpx: 5 s), so that the client,
        # not the service, closes it: a close racing the client's next request on it fails that request.
        # uvicorn annotates both timeouts int and uses them as seconds, fractions included.
        timeout_keep_alive=settings.keep_alive,  # type: ignore[arg-type]
        timeout_graceful_shutdown=settings.drain_timeout,  # type: ignore[arg-type]
    )  # fmt: skip
    log.info(
        "listening on %s:%d: GET /delay/<ms> up to %g ms; metrics on port %d",
        settings.host, sock.getsockname()[1], settings.max_delay_ms, metrics_server.server_port,
    )  # fmt: skip
    Server(config, delays).run(sockets=[sock])
    return 0
