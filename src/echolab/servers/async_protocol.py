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
import contextlib
import math
import time
from typing import Any

from ..protocol import (
    ERROR_BUSY,
    ERROR_DEPENDENCY,
    ERROR_REQUEST_TIMEOUT,
    ERROR_SHUTTING_DOWN,
    ERROR_TOO_LARGE,
    MessageTooLarge,
    make_framer,
)
from ..runtime import LINGER_SECONDS
from .event_loop import HIGH_WATER, LOW_WATER, Deadlines, LoopServer, count_connection_error

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
    """One connection: its requests taken from the framer one at a time, worked on in order.

    Backpressure: reading pauses once the connection holds more than
    HIGH_WATER bytes (requests read and not yet answered, plus replies the
    client has not taken), and resumes once the requests are down to
    LOW_WATER and the transport's buffer has drained to its low mark.

    Deadlines cost a request nothing but ``answered += 1``: the sweep
    (:meth:`.LoopServer.sweep`) visits every connection once a tick, sees
    what it waits for (its first byte or its next request, the rest of a
    line begun, a client to take its replies, or nothing: a request in work)
    and since when, as far as one tick tells, and ends it once that has
    lasted too long.
    """

    __slots__ = (
        "answered",
        "client_done",
        "deadlines",
        "delays",
        "ending",
        "failed",
        "framer",
        "io",
        "message",
        "metrics",
        "pending",
        "reading",
        "refused",
        "server",
        "started",
        "timed_out",
        "transport",
        "workload",
        "writing",
    )

    def __init__(self, server: LoopServer, delays: DelayQueue) -> None:
        self.server = server
        self.delays = delays
        self.metrics = server.metrics
        self.workload = server.workload
        self.framer = make_framer(server.settings.framing, server.settings.max_message_bytes)
        self.message: bytes | None = None  # the request in work
        self.started = self.io = 0.0
        self.failed = False  # the request in work: its dependency failed
        self.pending = 0  # requests read, not yet answered: those in the framer and the one in work
        self.reading = self.writing = True  # not paused by backpressure; the transport not full
        self.ending = False  # an error line is out (or the client is refused): no more requests
        self.refused = False
        self.client_done = False
        self.answered = 0  # replies written
        self.deadlines = Deadlines(server.loop.time())  # the sweep's view, from its first byte on
        self.timed_out = False  # ended on a deadline

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        reason = self.server.admit(self)
        if reason is not None:
            self.refused = True
            self._end_with(ERROR_SHUTTING_DOWN if reason == "shutdown" else ERROR_BUSY)
            return

    def data_received(self, data: bytes) -> None:
        if self.ending:
            return  # lingering: discard until the client closes or the linger ends
        framer = self.framer
        count = framer.feed(data)
        if count:
            self.pending += count
            self.server.in_flight += count
        if framer.closes_after_reply:
            self.transport.pause_reading()
        if self.message is None:
            self._next()
        # Requests pile up only behind one in work; otherwise the framer holds at most an
        # unfinished line (up to the size limit), and a full transport pauses reading itself.
        if (
            self.message is not None
            and self.reading
            and framer.buffered + self.transport.get_write_buffer_size() > HIGH_WATER
        ):
            self.reading = False
            self.transport.pause_reading()

    # --- one request at a time: CPU and blocking work, then the IO timer, then the reply

    def _next(self) -> None:
        """Work on the requests read, in order; those with nothing to wait for are answered here."""
        workload, framer = self.workload, self.framer
        while True:
            try:
                message = framer.next()
            except MessageTooLarge:  # that one, or the line begun already
                self._fail_too_large()
                return
            if message is None:
                return
            # Past the drain timeout (the loop was held up): cut, not started. `closing` first: a
            # stop signal sets it, and until then no request pays for a look at the clock.
            if self.server.closing and self.server.overdue():
                self.metrics.not_answered("aborted", self.pending)
                self._drop_pending()
                self.transport.abort()
                return
            self.message = message
            self.started = time.perf_counter()
            if workload.before_io and not workload.start(self.server.loop, self._blocked):
                return  # the blocking call is in the offload pool: _blocked goes on
            if not self._io():
                return  # io_done goes on
            self._reply(time.perf_counter())

    def _io(self) -> bool:
        """Start the request's IO: False if it takes time (io_done follows), True if it is over."""
        workload = self.workload
        io = self.io = workload.io()
        if workload.awaits is not None:
            workload.await_io(self.server.loop, io, self._called)
            return False
        if io > 0:
            self.delays.add(self, io)
            return False
        return True

    def _blocked(self) -> None:
        """The offloaded call is over: the request's IO, then the requests read behind it."""
        if self._io():
            self.io_done(time.perf_counter())

    def _called(self, ok: bool) -> None:
        """The dependency answered, or failed."""
        self.failed = not ok
        self.io_done(time.perf_counter())

    def io_done(self, now: float) -> None:
        self._reply(now)
        self._next()

    def _reply(self, now: float) -> None:
        message, self.message = self.message, None
        assert message is not None
        failed, self.failed = self.failed, False
        if not failed:
            self.workload.finish(self.io)
        self.pending -= 1
        self.server.in_flight -= 1
        transport = self.transport
        if not transport.is_closing():
            if failed:
                payload, received, non_utf8 = ERROR_DEPENDENCY, 0, 0
            else:
                payload, received, non_utf8 = self.framer.respond([message])
            transport.write(payload)
            # A write that fails at once closes the transport: the client reset the
            # connection. With oneshot, reading is paused, so the write is the first to notice.
            if not transport.is_closing():
                self.answered += 1
                if failed:
                    self.metrics.not_answered("dependency_error")
                else:
                    self.metrics.answered(1, now - self.started, received, len(payload))
                if non_utf8:
                    self.metrics.non_utf8(non_utf8)
                if not self.pending:
                    self._done()
                elif not self.reading:
                    self._resume()
                return
        # The client is gone: this request and those read behind it are not answered.
        self.metrics.not_answered("aborted", 1 + self.pending)
        self._drop_pending()

    def _drop_pending(self) -> None:
        self.server.in_flight -= self.pending
        self.pending = 0
        self.framer.clear()

    def _done(self) -> None:
        """Every request read is answered: end the connection if that is what comes next."""
        if self.framer.closes_after_reply or self.client_done or self.server.closing:
            self.framer.clear()  # a line begun is not a request, and none is taken any more
            self.transport.close()
        elif not self.reading:
            self._resume()

    def _resume(self) -> None:
        """Read again once the requests held are down to the low mark and the transport can take more."""
        if self.writing and not self.ending and self.framer.buffered <= LOW_WATER:
            self.reading = True
            self.transport.resume_reading()

    # --- the connection -----------------------------------------------------

    def eof_received(self) -> bool:
        # The client will send no more: keep the transport open to answer
        # what it already sent; _done() closes it after the last reply.
        self.client_done = True
        return bool(self.pending)

    def pause_writing(self) -> None:
        # The client is not taking its replies: stop reading its requests too.
        self.writing = False
        if self.reading:
            self.reading = False
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writing = True
        if not self.framer.closes_after_reply:
            self._resume()

    def connection_lost(self, exc: Exception | None) -> None:
        count_connection_error(self.metrics, exc)
        if not self.refused:
            self.server.release(self)

    def close_if_idle(self) -> None:
        if not self.pending:
            self.transport.close()

    def abort(self) -> None:
        self.transport.abort()

    # --- deadlines and errors -------------------------------------------------

    def check(self, now: float) -> None:
        """The sweep's visit: end the connection if what it waits for has lasted too long."""
        if self.timed_out:
            return
        if self.pending or self.ending:
            waiting = "work"  # the server's time; or an error line's linger, bounded on its own
        elif self.framer.buffered:
            waiting = "request_deadline"  # the rest of a line begun
        else:
            waiting = "idle"
        transport = self.transport
        reason = self.deadlines.overdue(
            now, self.server.settings, transport.get_write_buffer_size(), waiting, self.answered
        )
        if reason is None:
            return
        self.timed_out = True
        self.metrics.connection_timed_out(reason)
        if reason == "not_reading":
            transport.abort()  # close() would wait for ever for a client that takes nothing
        elif reason == "idle":
            transport.close()
        else:
            self._end_with(ERROR_REQUEST_TIMEOUT)

    def _fail_too_large(self) -> None:
        self.metrics.not_answered("too_large")
        self._drop_pending()  # the long request and any read behind it: never answered
        self._end_with(ERROR_TOO_LARGE)

    def _end_with(self, error: bytes) -> None:
        """Send an error line and close without a reset (see threaded.send_error)."""
        self.ending = True
        transport = self.transport
        transport.write(error)
        with contextlib.suppress(OSError):  # the client is gone already: asyncio's loop raises ENOTCONN
            if transport.can_write_eof():
                transport.write_eof()
        # Read again (oneshot and backpressure pause reading) so that the lingering
        # discards what the client still sends and sees its EOF (then the transport
        # closes at once) instead of holding the connection for the whole linger.
        transport.resume_reading()
        self.server.loop.call_later(LINGER_SECONDS, transport.close)


async def start(server: LoopServer, **listen: Any) -> asyncio.Server:
    delays = DelayQueue(server.loop)
    return await server.loop.create_server(lambda: EchoProtocol(server, delays), **listen)
