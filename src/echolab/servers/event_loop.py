"""What the async server's two APIs share: limits, probes, accept errors, shutdown, the work.

One thread serves every connection, through one of two APIs
(``--api``, :mod:`.async_streams` or :mod:`.async_protocol`); each gives this
module its connections, which answer :class:`Connection`'s two questions,
and this module does the rest the same way for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import time
from asyncio.constants import ACCEPT_RETRY_DELAY as ASYNCIO_ACCEPT_RETRY_DELAY
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ..metrics import ServerMetrics
from ..runtime import (
    RESOURCE_ERRNOS,
    AcceptErrorLog,
    log,
    log_drain,
    stop_event,
    sweep_interval,
)
from ..settings import AsyncSettings
from . import work as work_module
from .work import IoOnly, Work

LINGER_SECONDS = 1.0
# Backpressure, per connection: past HIGH_WATER bytes held (requests read and not yet answered,
# replies not yet taken by the client), the server stops reading from it until they drain to
# LOW_WATER. asyncio's and uvloop's own marks for a transport's write buffer, made explicit.
HIGH_WATER = 64 * 1024
LOW_WATER = HIGH_WATER // 4
LAG_PROBE_INTERVAL = 0.25
FD_PROBE_INTERVAL = 1.0


class Connection(Protocol):
    """A client connection, as the shutdown and the deadline sweep see it."""

    def close_if_idle(self) -> None:
        """Close now if no request is in work or queued; else once the last one is answered."""

    def abort(self) -> None:
        """Close now, whatever is in work (the drain timeout is over)."""

    def check(self, now: float) -> None:
        """End the connection if a deadline has passed (the sweep's visit, once a tick)."""


class Deadlines:
    """What the sweep knows of one connection: what it waits for, since when, having read how many.

    A wait is seen to begin at the first visit after it did, and to last too
    long at the first visit after that: deadlines are met to within two
    ticks, never early. The connection says what it waits for at each visit:
    ``idle`` (its first byte, or its next request), ``request_deadline`` (the
    rest of a line begun) or ``work`` (the server's time: no deadline); and
    a count that moves whenever a wait ends (requests read, replies written),
    so that a wait that ended and began again between two visits is a new one.
    """

    __slots__ = ("seen", "since", "unsent", "waiting")

    def __init__(self, now: float) -> None:
        self.waiting, self.since, self.seen, self.unsent = "idle", now, 0, 0

    def overdue(
        self, now: float, settings: AsyncSettings, unsent: int, waiting: str, progress: int
    ) -> str | None:
        """The deadline that has passed (a reason of echo_connections_timed_out_total), or None.

        ``unsent``, the replies the client has not taken, comes first: a reply
        being written is not idle, but one the client takes none of for the
        idle timeout ends the connection (``not_reading``).
        """
        if unsent:
            if self.waiting != "not_reading" or unsent < self.unsent:
                self.waiting, self.since = "not_reading", now
            self.unsent = unsent
            return "not_reading" if now - self.since > settings.idle_timeout else None
        self.unsent = 0
        if waiting != self.waiting or progress != self.seen:
            self.waiting, self.seen, self.since = waiting, progress, now
            return None
        if waiting == "idle" and now - self.since > settings.idle_timeout:
            return waiting
        if waiting == "request_deadline" and now - self.since > settings.request_timeout:
            return waiting
        return None


class LoopServer:
    """The state shared by all connections: limits, the work, probes, shutdown."""

    def __init__(
        self,
        settings: AsyncSettings,
        metrics: ServerMetrics,
        loop: asyncio.AbstractEventLoop,
        off: frozenset[str] = frozenset(),
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.loop = loop
        self.off = off  # bench only: the protections turned off (.protections)
        self.connections: set[Connection] = set()
        self.in_flight = 0
        self.closing = False
        self.work = (IoOnly if "work" in off else Work)(settings, metrics.work)
        pool = self.work.pool
        if pool is not None:
            metrics.track_pool(lambda: (pool.busy, pool.queued))
        self._drained: asyncio.Future[None] | None = None
        metrics.track(active=lambda: len(self.connections), in_flight=lambda: self.in_flight)

    def admit(self, conn: Connection) -> str | None:
        """Take ``conn`` in, or say why not (it is then refused, with an error line)."""
        if self.closing:
            reason = "shutdown"
        elif len(self.connections) >= self.settings.max_connections:
            reason = "max_connections"
        else:
            self.connections.add(conn)
            self.metrics.connection_opened()
            return None
        self.metrics.connection_refused(reason)
        return reason

    def release(self, conn: Connection) -> None:
        self.connections.discard(conn)
        if not self.connections and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def sweep(self) -> None:
        """Visit every connection once a tick for its deadlines, where a timer per connection
        and per request would cost every request."""
        now = self.loop.time()
        for conn in list(self.connections):
            conn.check(now)
        self.loop.call_later(
            sweep_interval(self.settings.idle_timeout, self.settings.request_timeout), self.sweep
        )

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
        for conn in list(self.connections):
            conn.close_if_idle()
        if self.connections:
            self._drained = self.loop.create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._drained), timeout)
        left = list(self.connections)
        for conn in left:
            conn.abort()
        return len(left)


def count_connection_error(metrics: ServerMetrics, exc: BaseException | None) -> None:
    """A connection lost to ``exc`` (None: closed cleanly, nothing to count)."""
    if isinstance(exc, ConnectionResetError):
        metrics.connection_error("reset")
    elif isinstance(exc, BrokenPipeError):
        metrics.connection_error("broken_pipe")
    elif exc is not None:
        metrics.connection_error("other")


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
    """Where to listen, as ``create_server`` takes it: uvloop binds itself; asyncio gets a ListeningSocket."""
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


# An API's server: given the shared state and create_server's arguments, a listening server.
StartServer = Callable[..., Awaitable[asyncio.Server]]


async def serve(
    settings: AsyncSettings,
    metrics: ServerMetrics,
    metrics_port: int,
    start: StartServer,
    off: frozenset[str] = frozenset(),
) -> None:
    loop = asyncio.get_running_loop()
    if settings.loop == "uvloop":
        accept_errors = AcceptErrorLog(retry="new connections are closed at once (libuv's EMFILE trick)")
    else:
        accept_errors = AcceptErrorLog(
            retry=f"retrying every {ASYNCIO_ACCEPT_RETRY_DELAY:g}s (asyncio's pause)"
        )
    loop.set_exception_handler(handle_loop_exception(accept_errors, metrics))
    state = LoopServer(settings, metrics, loop, off)
    server = await start(state, backlog=settings.backlog, **listen(settings))
    stop = stop_event(loop)
    state.probe_lag()
    if "deadlines" not in state.off:
        state.sweep()
    if settings.loop == "uvloop":
        state.probe_fds(server.sockets[0].fileno(), accept_errors)
    port = server.sockets[0].getsockname()[1]
    log.info(
        "listening on %s:%d api=%s loop=%s framing=%s %s metrics=%s",
        settings.host,
        port,
        settings.api,
        settings.loop,
        settings.framing,
        work_module.describe(settings),
        metrics_port or "off",
    )
    await stop.wait()
    started, in_flight = time.monotonic(), state.in_flight
    log.info("shutting down: no new connections, draining for up to %gs", settings.drain_timeout)
    server.close()
    cut = await state.shutdown(settings.drain_timeout)
    log_drain(in_flight, state.in_flight, cut, time.monotonic() - started)
    state.work.shutdown()
