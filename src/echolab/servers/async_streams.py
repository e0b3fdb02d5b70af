"""The async server as applications write it (``--api streams``): a coroutine per connection.

``asyncio.start_server`` runs :func:`handle` as a task for each connection:
it reads a request (``await reader.readuntil(b"\\n")``), does its work,
``await``-ing the IO exactly where a real handler awaits its database
(:meth:`.work_model.Workload.run_async`), writes the reply and reads the next. Nothing
is coalesced: a task per connection, a timer per request for its IO and
one for the read's deadline (``asyncio.timeout_at``), the stream's own
buffering and flow control. What that costs next to the tuned
:mod:`.async_protocol` is what ``make bench`` measures.

The read's deadline (:meth:`StreamConnection.next_request`): the previous
reply must drain and the next request's first byte arrive within the idle
timeout; from that byte, the line must be whole within the request
timeout, however slowly it trickles. A connection whose request is in work
has no deadline. Memory stays bounded by the stream's own flow control: the
reader stops reading past twice its limit (``--max-message-bytes``), and a
reply is drained before the next request is read. On shutdown, a
connection waiting for its next request has its deadline moved to now: what
it has already sent is still answered, then it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from ..protocol import (
    ERROR_BUSY,
    ERROR_REQUEST_TIMEOUT,
    ERROR_SHUTTING_DOWN,
    ERROR_TOO_LARGE,
    NEWLINE,
    make_framer,
)
from ..runtime import LINGER_SECONDS
from .event_loop import LoopServer, count_connection_error

RECV_SIZE = 65536


class StreamConnection:
    """One client: its streams, its task, and the deadline of the wait it is in, if any."""

    __slots__ = ("deadline", "reader", "server", "since", "task", "waiting", "writer")

    def __init__(
        self, server: LoopServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.task = asyncio.current_task()
        self.deadline: asyncio.Timeout | None = None  # while waiting for the next request
        self.waiting = "idle"  # for what: a reason of echo_connections_timed_out_total
        self.since = 0.0  # loop time of the first byte of the line being read

    def close_if_idle(self) -> None:
        deadline = self.deadline
        if deadline is not None and not deadline.expired():
            deadline.reschedule(self.server.loop.time())

    def abort(self) -> None:
        self.writer.transport.abort()
        if self.task is not None:
            self.task.cancel()

    def check(self, now: float) -> None:
        """The sweep's visit: end the read of a line not whole within the request timeout."""
        deadline = self.deadline
        if (
            self.waiting == "request_deadline"
            and deadline is not None
            and not deadline.expired()
            and now - self.since > self.server.settings.request_timeout
        ):
            deadline.reschedule(now)

    async def next_request(self, lines: bool, first_read: int) -> bytes:
        """The next request, within its deadlines (TimeoutError past one; ``waiting`` says which).

        The previous reply must be taken, and the first byte of the next
        request arrive, within the idle timeout (a timer per request, as
        applications write it); a line must then be whole within the request
        timeout of that byte: the sweep sees to that (:meth:`check`), since a
        second timer would cost more than the first (rescheduling a uvloop
        timer makes a new one: +20% CPU per request at delay 0). Shutting
        down, the deadline is now: what the client has sent already is still
        answered.
        """
        server, reader, loop = self.server, self.reader, self.server.loop
        settings = server.settings
        when = loop.time() + (0.0 if server.closing else settings.idle_timeout)
        try:
            async with asyncio.timeout_at(when) as self.deadline:
                self.waiting = "not_reading"
                await self.writer.drain()
                self.waiting = "idle"
                if not lines:
                    return await reader.read(first_read)
                first = await reader.readexactly(1)
                if first == NEWLINE:
                    return b""
                self.since, self.waiting = loop.time(), "request_deadline"
                idle_due = self.deadline.when()
                if not server.closing and idle_due and idle_due < self.since + settings.request_timeout:
                    # Never cut a line before its own deadline (the idle timeout is the shorter
                    # one, or the first byte came late): leave it all to the sweep.
                    self.deadline.reschedule(None)
                line = first + await reader.readuntil(NEWLINE)
        finally:
            self.deadline = None
        # readuntil's limit applies after the first byte: the line may be one byte too long.
        if len(line) > settings.max_message_bytes + 1:
            raise asyncio.LimitOverrunError("line over the limit", 0)
        return line[:-1]

    async def serve(self) -> None:
        server, metrics, reader, writer = self.server, self.server.metrics, self.reader, self.writer
        settings = server.settings
        framer = make_framer(settings.framing, settings.max_message_bytes)
        lines = settings.framing == "lines"
        first_read = settings.max_message_bytes + 1  # oneshot: the first read is the message
        while True:
            try:
                message = await self.next_request(lines, first_read)
            except TimeoutError:
                if server.closing:
                    break
                metrics.connection_timed_out(self.waiting)
                if self.waiting == "request_deadline":
                    await end_with(reader, writer, ERROR_REQUEST_TIMEOUT)
                else:
                    writer.transport.abort()  # nothing is owed to it, or it takes nothing
                return
            except asyncio.IncompleteReadError:
                break  # the client is done; a partial line is not a request
            except asyncio.LimitOverrunError:
                metrics.not_answered("too_large")
                await end_with(reader, writer, ERROR_TOO_LARGE)
                return
            except OSError as exc:
                count_connection_error(metrics, exc)
                return
            if not lines:
                if not message:
                    break  # closed before it said anything
                if len(message) > settings.max_message_bytes:
                    metrics.not_answered("too_large")
                    await end_with(reader, writer, ERROR_TOO_LARGE)
                    return
            if server.overdue():  # the drain timeout passed while the loop was held up: cut, not started
                metrics.not_answered("aborted")
                writer.transport.abort()
                return
            started = time.perf_counter()
            server.in_flight += 1
            try:
                await server.workload.run_async()
            except asyncio.CancelledError:  # cut by the drain timeout
                metrics.not_answered("aborted")
                raise
            finally:
                server.in_flight -= 1
            if writer.transport.is_closing():
                metrics.not_answered("aborted")
                count_connection_error(metrics, reader.exception())
                return
            payload, received, non_utf8 = framer.respond([message])
            writer.write(payload)
            metrics.answered(1, time.perf_counter() - started, received, len(payload))
            if non_utf8:
                metrics.non_utf8(non_utf8)
            if not lines:
                break
        writer.close()


async def end_with(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, error: bytes) -> None:
    """Send an error line and close without a reset (see threaded.send_error)."""
    writer.write(error)
    with contextlib.suppress(OSError):  # the client is gone already: asyncio's loop raises ENOTCONN
        if writer.can_write_eof():
            writer.write_eof()
    with contextlib.suppress(TimeoutError, OSError):
        async with asyncio.timeout(LINGER_SECONDS):
            while await reader.read(RECV_SIZE):
                pass  # discard what the client still sends, until it closes
    writer.close()


async def handle(server: LoopServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    conn = StreamConnection(server, reader, writer)
    try:
        reason = server.admit(conn)
        if reason is not None:
            await end_with(reader, writer, ERROR_SHUTTING_DOWN if reason == "shutdown" else ERROR_BUSY)
            return
        try:
            await conn.serve()
        finally:
            server.release(conn)
    except asyncio.CancelledError:
        # Cut at the drain timeout, or the loop is closing: the transport is aborted or about to
        # be. End quietly: Python 3.11's start_server reports a cancelled handler as an error.
        writer.transport.abort()


async def start(server: LoopServer, **listen: Any) -> asyncio.Server:
    # The stream's limit is the longest line readuntil() accepts: --max-message-bytes.
    limit = server.settings.max_message_bytes
    return await asyncio.start_server(lambda r, w: handle(server, r, w), limit=limit, **listen)
