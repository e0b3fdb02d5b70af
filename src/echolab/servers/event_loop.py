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
import math
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
    StopWatch,
    binding,
    listening,
    log,
    log_drain,
    stop_event,
    sweep_interval,
)
from ..settings import AsyncSettings
from . import work_model
from .work_model import IoOnly, Workload

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
        self.workload = (
            IoOnly(settings) if "work" in off else Workload(settings, metrics.worked, events=metrics)
        )
        pool = self.workload.pool
        if pool is not None:
            metrics.track_pool(lambda: (pool.busy, pool.queued))
        self._drained: asyncio.Future[None] | None = None
        self.signalled = math.inf  # when a stop signal came (time.monotonic())
        self.in_flight_signalled = 0  # the requests in flight then
        self.drain_due = math.inf  # after this, no request starts its work
        self.cut = 0  # connections cut by the drain timeout
        self.probed = time.monotonic()  # when the lag probe last ran: the loop's last sign of life
        metrics.track(active=lambda: len(self.connections), in_flight=lambda: self.in_flight)

    def stop_requested(self) -> None:
        """A stop signal came: refuse newcomers, and start no request's work past the drain timeout.

        Called by the signal handler, wherever the loop's thread is: the loop
        may be running a callback that blocks it (a blocking call on the
        loop, a thousand connections' worth queued: 20 s before the loop
        would read its signal pipe). Requests already read are worked on
        until the drain timeout; past it, each is cut instead, so the loop
        comes back to the shutdown by then, however much work was queued.
        """
        if self.signalled == math.inf:
            self.closing = True
            self.in_flight_signalled = self.in_flight
            self.signalled = time.monotonic()
            self.drain_due = self.signalled + self.settings.drain_timeout

    def overdue(self) -> bool:
        """Whether the drain timeout is over: a request not yet in work is then cut, not started
        (its caller aborts the connection, counted here among those the drain cut)."""
        if time.monotonic() <= self.drain_due:
            return False
        self.cut += 1
        return True

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
        now = self.probed = time.monotonic()
        if expected is not None:
            self.metrics.loop_lag(max(0.0, now - expected))
        self.loop.call_later(LAG_PROBE_INTERVAL, self.probe_lag, now + LAG_PROBE_INTERVAL)

    async def shutdown(self) -> int:
        """Stop taking requests, let in-flight ones finish until the drain timeout; return how many
        connections were cut."""
        self.closing = True
        for conn in list(self.connections):
            conn.close_if_idle()
        if self.connections:
            self._drained = self.loop.create_future()
            with contextlib.suppress(TimeoutError):
                timeout = max(0.0, self.drain_due - time.monotonic())
                await asyncio.wait_for(asyncio.shield(self._drained), timeout)
        left = list(self.connections)
        for conn in left:
            conn.abort()
        self.cut += len(left)
        return self.cut

    def still_open(self) -> str:
        """What the stop waits for (for the StopWatch)."""
        quiet = time.monotonic() - self.probed
        loop = (
            f"the event loop, held for {quiet:.1f}s by one callback (work on the loop?)"
            if quiet > 1.0
            else "the event loop"
        )
        return f"{loop}; {len(self.connections)} connection(s) open, {self.in_flight} request(s) in work"


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
    # The echo port first, not yet serving: a port in use fails the start before the dependency is
    # touched.
    with binding("echo", settings.host, settings.port):
        server = await start(state, backlog=settings.backlog, start_serving=False, **listen(settings))
    await state.workload.open()
    try:
        await serving(state, server, accept_errors, metrics_port)
    finally:
        # After a failure too: a pool's tasks left to asyncio.run's closing kept the process from
        # ending (it cancels them, and psycopg_pool's connection attempts outlive a cancellation).
        await state.workload.aclose()
        state.workload.shutdown()


async def serving(
    state: LoopServer, server: asyncio.Server, accept_errors: AcceptErrorLog, metrics_port: int
) -> None:
    """Serve until SIGTERM or SIGINT, then drain."""
    settings, loop = state.settings, state.loop
    await server.start_serving()
    watch = StopWatch(state.still_open)
    names: list[str] = []

    def on_signal(name: str) -> None:
        # In the signal handler, wherever the loop's thread is (see LoopServer.stop_requested):
        # values set, and the watch armed (a float and an Event).
        names.append(name)
        state.stop_requested()
        watch.arm(settings.drain_timeout)

    stop = stop_event(loop, on_signal)
    state.probe_lag()
    if "deadlines" not in state.off:
        state.sweep()
    if settings.loop == "uvloop":
        state.probe_fds(server.sockets[0].fileno(), accept_errors)
    port = server.sockets[0].getsockname()[1]
    listening(
        "%s:%d api=%s loop=%s framing=%s %s metrics=%s",
        settings.host,
        port,
        settings.api,
        settings.loop,
        settings.framing,
        work_model.describe(settings),
        metrics_port or "off",
    )
    await stop.wait()
    late = time.monotonic() - state.signalled
    log.info(
        "shutting down on %s: no new connections, draining for up to %gs%s",
        names[0],
        settings.drain_timeout,
        f" (the loop was busy for {late:.1f}s after the signal)" if late > LAG_PROBE_INTERVAL else "",
    )
    server.close()
    cut = await state.shutdown()
    log_drain(state.in_flight_signalled, state.in_flight, cut, time.monotonic() - state.signalled)
