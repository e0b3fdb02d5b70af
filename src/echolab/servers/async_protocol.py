"""The async server, tuned (``--api protocol``): an asyncio ``Protocol`` with callbacks and coalesced timers.

No coroutine and no task per connection or request: ``data_received``
frames the requests, each request's work runs in callbacks, and the
simulated IO is a timer shared by every request due in the same
millisecond (one timer per millisecond of due time, not one per request),
which matters at 10,000 connections where the timer heap would otherwise
be the main cost. Requests pipelined on a connection are worked on one
after another, each with its own due time, so replies keep their order.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from typing import Any

from ..protocol import ERROR_BUSY, ERROR_SHUTTING_DOWN, ERROR_TOO_LARGE, MessageTooLarge, make_framer
from .event_loop import LINGER_SECONDS, LoopServer, count_connection_error

TICK = 0.001  # timer coalescing granularity, seconds


class DelayQueue:
    """Calls ``io_done`` on each protocol when its request's IO time is over.

    Requests due within the same millisecond share one timer.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._batches: dict[int, list[EchoProtocol]] = {}

    def add(self, proto: EchoProtocol, delay: float) -> None:
        # Round up, so no request waits less than its delay (the epsilon keeps
        # float noise on uvloop's whole-millisecond clock from adding a tick).
        due = math.ceil((self._loop.time() + delay) / TICK - 1e-6)
        batch = self._batches.get(due)
        if batch is None:
            batch = self._batches[due] = []
            self._loop.call_at(due * TICK, self._fire, due)
        batch.append(proto)

    def _fire(self, due: int) -> None:
        now = time.perf_counter()
        for proto in self._batches.pop(due):
            proto.io_done(now)


class EchoProtocol(asyncio.Protocol):
    __slots__ = (
        "client_done",
        "delays",
        "failed",
        "framer",
        "io",
        "last_read",
        "message",
        "metrics",
        "pending",
        "queue",
        "refused",
        "server",
        "started",
        "transport",
        "work",
    )

    def __init__(self, server: LoopServer, delays: DelayQueue) -> None:
        self.server = server
        self.delays = delays
        self.metrics = server.metrics
        self.work = server.work
        self.framer = make_framer(server.settings.framing, server.settings.max_message_bytes)
        self.queue: collections.deque[bytes] = collections.deque()  # read, work not started
        self.message: bytes | None = None  # the request in work
        self.started = self.io = 0.0
        self.pending = 0  # requests read, not yet answered: the queue and the one in work
        self.failed = False
        self.refused = False
        self.client_done = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.last_read = self.server.loop.time()
        reason = self.server.admit(self)
        if reason is not None:
            self.refused = True
            self._end_with(ERROR_SHUTTING_DOWN if reason == "shutdown" else ERROR_BUSY)

    def data_received(self, data: bytes) -> None:
        if self.failed or self.refused:
            return  # lingering: discard until the client closes or the linger ends
        self.last_read = self.server.loop.time()
        try:
            messages = self.framer.feed(data)
        except MessageTooLarge as exc:
            messages, self.failed = exc.complete, True
        if messages:
            self.queue.extend(messages)
            self.pending += len(messages)
            self.server.in_flight += len(messages)
            if self.message is None:
                self._next()
        if self.framer.closes_after_reply:
            self.transport.pause_reading()
        if self.failed and not self.pending:
            self._fail_too_large()

    # --- one request at a time: CPU and blocking work, then the IO timer, then the reply

    def _next(self) -> None:
        """Work on the queued requests in order; those with nothing to wait for are answered here."""
        work = self.work
        while self.queue:
            self.message = self.queue.popleft()
            self.started = time.perf_counter()
            if work.before_io and not work.start(self.server.loop, self._blocked):
                return  # the blocking call is in the offload pool: _blocked goes on
            if not self._wait_io():
                return  # io_done goes on

    def _blocked(self) -> None:
        if self._wait_io():
            self._next()

    def _wait_io(self) -> bool:
        """Start the request's IO timer; or, without IO, answer it now (True)."""
        self.io = self.work.io()
        if self.io > 0:
            self.delays.add(self, self.io)
            return False
        self._reply(time.perf_counter())
        return True

    def io_done(self, now: float) -> None:
        self._reply(now)
        self._next()

    def _reply(self, now: float) -> None:
        message, self.message = self.message, None
        assert message is not None
        self.work.finish(self.io)
        self.pending -= 1
        self.server.in_flight -= 1
        transport = self.transport
        if not transport.is_closing():
            payload, received, non_utf8 = self.framer.respond([message])
            transport.write(payload)
            # A write that fails at once closes the transport: the client reset the
            # connection. With oneshot, reading is paused, so the write is the first to notice.
            if not transport.is_closing():
                self.metrics.answered(1, now - self.started, received, len(payload))
                if non_utf8:
                    self.metrics.non_utf8(non_utf8)
                if not self.pending:
                    self._done()
                return
        # The client is gone: this request and those queued behind it are not answered.
        self.metrics.not_answered("aborted", 1 + len(self.queue))
        self.server.in_flight -= len(self.queue)
        self.pending -= len(self.queue)
        self.queue.clear()

    def _done(self) -> None:
        """Every request read is answered: end the connection if that is what comes next."""
        if self.failed:
            self._fail_too_large()
        elif self.framer.closes_after_reply or self.client_done or self.server.closing:
            self.transport.close()

    # --- the connection -----------------------------------------------------

    def eof_received(self) -> bool:
        # The client will send no more: keep the transport open to answer
        # what it already sent; _done() closes it after the last reply.
        self.client_done = True
        return bool(self.pending)

    def pause_writing(self) -> None:
        # The client is not reading its replies: stop reading its requests too.
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        if not (self.failed or self.refused or self.framer.closes_after_reply):
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        count_connection_error(self.metrics, exc)
        if not self.refused:
            self.server.release(self)

    def close_if_idle(self) -> None:
        if not self.pending:
            self.transport.close()

    def abort(self) -> None:
        self.transport.abort()

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


def sweep_idle(server: LoopServer) -> None:
    """Close connections idle past the timeout; one pass per tick for all of them."""
    timeout = server.settings.idle_timeout
    deadline = server.loop.time() - timeout
    idle = [
        conn
        for conn in server.connections
        if isinstance(conn, EchoProtocol) and not conn.pending and conn.last_read < deadline
    ]
    for proto in idle:
        server.metrics.connection_timed_out()
        proto.transport.close()
    server.loop.call_later(min(1.0, timeout / 4), sweep_idle, server)


async def start(server: LoopServer, **listen: Any) -> asyncio.Server:
    delays = DelayQueue(server.loop)
    listener = await server.loop.create_server(lambda: EchoProtocol(server, delays), **listen)
    sweep_idle(server)
    return listener
