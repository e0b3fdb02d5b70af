"""The async echo server: asyncio ``Protocol``/transport on uvloop (or asyncio).

One thread serves every connection. The simulated IO is a timer, never a
blocking call; timers are coalesced (one per millisecond of due time, not
one per request), which matters at 10,000 connections where the timer heap
would otherwise be the main cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import os
import signal
import socket
import time
from asyncio.constants import ACCEPT_RETRY_DELAY as ASYNCIO_ACCEPT_RETRY_DELAY
from typing import Any

from .. import metrics as metrics_module
from ..catalogue import Server
from ..metrics import ServerMetrics
from ..protocol import ERROR_BUSY, ERROR_SHUTTING_DOWN, ERROR_TOO_LARGE, MessageTooLarge, make_framer
from ..runtime import IGNORED_SIGNALS, RESOURCE_ERRNOS, AcceptErrorLog, ignore_signal, log, log_drain
from ..settings import AsyncSettings

TICK = 0.001  # timer coalescing granularity, seconds
LINGER_SECONDS = 1.0
LAG_PROBE_INTERVAL = 0.25
FD_PROBE_INTERVAL = 1.0


class DelayQueue:
    """Runs ``deliver`` for each request ``delay`` seconds after it arrived.

    Requests due within the same millisecond share one timer; every request
    waits the same delay, so deliveries stay in arrival order per connection.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self._loop = loop
        self._delay = delay
        self._batches: dict[int, list[tuple[EchoProtocol, bytes, int, int, float]]] = {}

    def add(self, item: tuple[EchoProtocol, bytes, int, int, float]) -> None:
        # Round up, so no request waits less than the delay (the epsilon keeps
        # float noise on uvloop's whole-millisecond clock from adding a tick).
        due = math.ceil((self._loop.time() + self._delay) / TICK - 1e-6)
        batch = self._batches.get(due)
        if batch is None:
            batch = self._batches[due] = []
            self._loop.call_at(due * TICK, self._fire, due)
        batch.append(item)

    def _fire(self, due: int) -> None:
        now = time.perf_counter()
        for proto, payload, count, received, started in self._batches.pop(due):
            proto.deliver(payload, count, received, started, now)


class EchoProtocol(asyncio.Protocol):
    __slots__ = (
        "client_done",
        "failed",
        "framer",
        "last_read",
        "metrics",
        "pending",
        "refused",
        "server",
        "transport",
    )

    def __init__(self, server: AsyncEchoServer) -> None:
        self.server = server
        self.metrics = server.metrics
        self.framer = make_framer(server.settings.framing, server.settings.max_message_bytes)
        self.pending = 0
        self.failed = False
        self.refused = False
        self.client_done = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.last_read = self.server.loop.time()
        reason = self.server.admit(self)
        if reason is not None:
            self.refused = True
            self.metrics.connection_refused(reason)
            self._end_with(ERROR_SHUTTING_DOWN if reason == "shutdown" else ERROR_BUSY)

    def data_received(self, data: bytes) -> None:
        if self.failed or self.refused:
            return  # lingering: discard until the client closes or the linger ends
        server = self.server
        self.last_read = server.loop.time()
        try:
            messages = self.framer.feed(data)
        except MessageTooLarge as exc:
            messages, self.failed = exc.complete, True
        if messages:
            payload, received, non_utf8 = self.framer.respond(messages)
            if non_utf8:
                self.metrics.non_utf8(non_utf8)
            count = len(messages)
            started = time.perf_counter()
            self.pending += count
            server.in_flight += count
            if server.delay_queue is None:
                self.deliver(payload, count, received, started, started)
            else:
                server.delay_queue.add((self, payload, count, received, started))
        if self.framer.closes_after_reply:
            self.transport.pause_reading()
        if self.failed and not self.pending:
            self._fail_too_large()

    def deliver(self, payload: bytes, count: int, received: int, started: float, now: float) -> None:
        self.pending -= count
        self.server.in_flight -= count
        transport = self.transport
        if transport.is_closing():
            self.metrics.not_answered("aborted", count)
            return
        transport.write(payload)
        if transport.is_closing():
            # The write failed at once: the client reset the connection. With
            # oneshot, reading is paused, so the write is the first to notice.
            self.metrics.not_answered("aborted", count)
            return
        self.metrics.answered(count, now - started, received, len(payload))
        if self.pending:
            return
        if self.failed:
            self._fail_too_large()
        elif self.framer.closes_after_reply or self.client_done or self.server.closing:
            transport.close()

    def eof_received(self) -> bool:
        # The client will send no more: keep the transport open to answer
        # what it already sent; deliver() closes it after the last reply.
        self.client_done = True
        return bool(self.pending)

    def pause_writing(self) -> None:
        # The client is not reading its replies: stop reading its requests too.
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        if not (self.failed or self.refused or self.framer.closes_after_reply):
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if isinstance(exc, ConnectionResetError):
            self.metrics.connection_error("reset")
        elif isinstance(exc, BrokenPipeError):
            self.metrics.connection_error("broken_pipe")
        elif exc is not None:
            self.metrics.connection_error("other")
        if not self.refused:
            self.server.release(self)

    def _fail_too_large(self) -> None:
        self.metrics.not_answered("too_large")
        self._end_with(ERROR_TOO_LARGE)

    def _end_with(self, error: bytes) -> None:
        """Send an error line and close without a reset (see threaded.send_error)."""
        transport = self.transport
        transport.write(error)
        if transport.can_write_eof():
            transport.write_eof()
        # oneshot paused reading; read again so the lingering discards what
        # the client still sends and sees its EOF (then the transport closes
        # at once) instead of holding the connection for the whole linger.
        transport.resume_reading()
        self.server.loop.call_later(LINGER_SECONDS, transport.close)


class AsyncEchoServer:
    """The state shared by all connections: limits, timers, shutdown."""

    def __init__(
        self, settings: AsyncSettings, metrics: ServerMetrics, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.loop = loop
        self.connections: set[EchoProtocol] = set()
        self.in_flight = 0
        self.closing = False
        delay = settings.delay_ms / 1000.0
        self.delay_queue = DelayQueue(loop, delay) if delay > 0 else None
        self._drained: asyncio.Future[None] | None = None
        metrics.track(active=lambda: len(self.connections), in_flight=lambda: self.in_flight)

    def admit(self, proto: EchoProtocol) -> str | None:
        if self.closing:
            return "shutdown"
        if len(self.connections) >= self.settings.max_connections:
            return "max_connections"
        self.connections.add(proto)
        self.metrics.connection_opened()
        return None

    def release(self, proto: EchoProtocol) -> None:
        self.connections.discard(proto)
        if not self.connections and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def sweep_idle(self) -> None:
        """Close connections idle past the timeout; one pass per tick for all of them."""
        timeout = self.settings.idle_timeout
        deadline = self.loop.time() - timeout
        for proto in [p for p in self.connections if not p.pending and p.last_read < deadline]:
            self.metrics.connection_timed_out()
            proto.transport.close()
        self.loop.call_later(min(1.0, timeout / 4), self.sweep_idle)

    def probe_fds(self, fd: int, accept_errors: AcceptErrorLog) -> None:
        """uvloop only: notice running out of file descriptors, which libuv hides.

        When accept() fails with EMFILE, libuv frees a spare descriptor it
        keeps for this, accepts the waiting connections, closes them at once
        and reports nothing (its "EMFILE trick", uv__emfile_trick): the loop's
        exception handler never hears of it, clients just see a close. So ask
        for a descriptor once a second: if that fails, so does the next
        accept(); count and log it like a failed accept (once per probe, so a
        long episode counts seconds, not turned-away clients).
        """
        if self.closing:
            return  # the listener (``fd``) is closed or about to be
        try:
            os.close(os.dup(fd))
        except OSError as exc:
            if exc.errno not in RESOURCE_ERRNOS:
                # EBADF: the listener is gone. uvloop closes it by itself when
                # libuv cannot even get its spare descriptor back; say so.
                log.error("listener closed (%s): no new connections; stop probing", exc.strerror)
                return
            self.metrics.accept_error(errno.errorcode[exc.errno])
            accept_errors.failed(exc)
        self.loop.call_later(FD_PROBE_INTERVAL, self.probe_fds, fd, accept_errors)

    def probe_lag(self, expected: float | None = None) -> None:
        now = time.monotonic()
        if expected is not None:
            self.metrics.loop_lag(max(0.0, now - expected))
        self.loop.call_later(LAG_PROBE_INTERVAL, self.probe_lag, now + LAG_PROBE_INTERVAL)

    async def shutdown(self, timeout: float) -> int:
        """Stop taking requests, let in-flight ones finish; return how many connections were cut."""
        self.closing = True
        for proto in list(self.connections):
            if not proto.pending:
                proto.transport.close()
        if self.connections:
            self._drained = self.loop.create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._drained), timeout)
        left = list(self.connections)
        for proto in left:
            proto.transport.abort()
        return len(left)


class ListeningSocket(socket.socket):
    """A listening socket whose accept() ends asyncio's accept loop at a resource error.

    CPython's selector loop (python/cpython#151615; 3.11 has it): when
    accept() fails with EMFILE, ``_accept_connection`` schedules a retry in
    1 s, as it should, but does not return: it calls accept() again, up to
    ``backlog`` (4096) times, each failing and scheduling one more retry, and
    the retries re-arm the listener: some 15,000 failed accepts a second.
    Answering the next call with BlockingIOError ("nothing to accept") ends
    the loop, as the upstream fix does. (uvloop does not call this method.)
    """

    _failed = False

    def accept(self) -> tuple[socket.socket, Any]:
        if self._failed:
            self._failed = False
            raise BlockingIOError(errno.EAGAIN, "accept loop ended after a resource error")
        try:
            return super().accept()
        except OSError as exc:
            self._failed = exc.errno in RESOURCE_ERRNOS
            raise


def listen(settings: AsyncSettings) -> dict[str, Any]:
    """Where ``create_server`` listens: uvloop binds itself; asyncio gets a ListeningSocket."""
    if settings.loop == "uvloop":
        return {"host": settings.host, "port": settings.port, "reuse_address": True}
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    plain = socket.create_server((settings.host, settings.port), family=family, backlog=settings.backlog)
    return {"sock": ListeningSocket(fileno=plain.detach())}


def handle_loop_exception(accept_errors: AcceptErrorLog, metrics: ServerMetrics):  # type: ignore[no-untyped-def]
    """Count and rate-limit accept() failures; leave everything else to asyncio."""

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS:
            metrics.accept_error(errno.errorcode[exc.errno])
            accept_errors.failed(exc)
            return
        loop.default_exception_handler(context)

    return handler


async def serve(settings: AsyncSettings, metrics: ServerMetrics, metrics_port: int) -> None:
    loop = asyncio.get_running_loop()
    if settings.loop == "uvloop":
        accept_errors = AcceptErrorLog(retry="new connections are closed at once (libuv's EMFILE trick)")
    else:
        accept_errors = AcceptErrorLog(
            retry=f"retrying every {ASYNCIO_ACCEPT_RETRY_DELAY:g}s (asyncio's pause)"
        )
    loop.set_exception_handler(handle_loop_exception(accept_errors, metrics))
    state = AsyncEchoServer(settings, metrics, loop)
    server = await loop.create_server(
        lambda: EchoProtocol(state), backlog=settings.backlog, **listen(settings)
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    for sig in IGNORED_SIGNALS:
        loop.add_signal_handler(sig, ignore_signal, sig)
    state.sweep_idle()
    state.probe_lag()
    if settings.loop == "uvloop":
        state.probe_fds(server.sockets[0].fileno(), accept_errors)
    port = server.sockets[0].getsockname()[1]
    log.info(
        "listening on %s:%d loop=%s framing=%s delay=%gms metrics=%s",
        settings.host,
        port,
        settings.loop,
        settings.framing,
        settings.delay_ms,
        metrics_port or "off",
    )
    await stop.wait()
    started, in_flight = time.monotonic(), state.in_flight
    log.info("shutting down: no new connections, draining for up to %gs", settings.drain_timeout)
    server.close()
    cut = await state.shutdown(settings.drain_timeout)
    log_drain(in_flight, state.in_flight, cut, time.monotonic() - started)


def run(server: Server, settings: AsyncSettings) -> int:
    info = {"loop": settings.loop, "framing": settings.framing, "delay_ms": f"{settings.delay_ms:g}"}
    metrics, metrics_port = metrics_module.start(
        server, info, settings.metrics, settings.host, settings.metrics_port, cgroup_root=settings.cgroup_root
    )
    if settings.loop == "uvloop":
        import uvloop

        uvloop.run(serve(settings, metrics, metrics_port))
    else:
        asyncio.run(serve(settings, metrics, metrics_port))
    logging.shutdown()
    return 0
