"""The async server as applications write it (``--api streams``): a coroutine per connection.

``asyncio.start_server`` runs :func:`handle` as a task for each connection:
it reads a request (``await reader.readuntil(b"\\n")``, one call a line),
does its work, ``await``-ing the IO exactly where a real handler awaits its
database (:meth:`.work_model.Workload.run_async`), writes the reply, drains
it and reads the next. Nothing is coalesced: a task per connection, a timer
per request for its IO, the stream's own buffering and flow control. What
that costs next to the tuned :mod:`.async_protocol` is what ``make bench``
measures.

The deadlines cost a request two attribute updates, not a timer: the sweep
(:meth:`.LoopServer.sweep`) visits every connection once a tick and sees
what it waits for, as the protocol API's does (:class:`.event_loop.Deadlines`).
An ``asyncio.timeout_at`` around each read, as applications often write
it, made a uvloop timer per request, and with a first byte read on its own
the server cost 1.6 to 1.9 times a bare streams server's CPU per request
(docs/results.md, "What each protection costs").
Past a deadline the sweep closes an idle connection, resets one whose
client takes none of its replies, and cancels the read of a line not whole
in time, which :meth:`StreamConnection.serve` answers with the error line.
A connection whose request is in work has no deadline. Memory stays
bounded by the stream's own flow control: the reader stops reading past
twice its limit (``--max-message-bytes``), and each reply is drained
before the next request is read. On shutdown, a connection waiting for its
next request is closed: what it has already sent is still answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from ..protocol import (
    ERROR_BUSY,
    ERROR_DEPENDENCY,
    ERROR_REQUEST_TIMEOUT,
    ERROR_SHUTTING_DOWN,
    ERROR_TOO_LARGE,
    NEWLINE,
    make_framer,
)
from ..runtime import LINGER_SECONDS
from .dependency import DependencyError
from .event_loop import Deadlines, LoopServer, count_connection_error

RECV_SIZE = 65536


class StreamConnection:
    """One client: its streams, its task, and what the sweep knows of its wait."""

    __slots__ = ("busy", "deadlines", "ended", "reader", "requests", "server", "task", "writer")

    def __init__(
        self, server: LoopServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.task = asyncio.current_task()
        self.busy = False  # a request in work, or an error line going out: no deadline applies
        self.requests = 0  # requests read: when it moves, a new wait began
        self.deadlines = Deadlines(server.loop.time())
        self.ended: str | None = None  # the deadline the sweep ended the connection on

    def close_if_idle(self) -> None:
        if not self.busy:
            self.writer.transport.close()  # the read sees the end; a line begun is not a request

    def abort(self) -> None:
        self.writer.transport.abort()
        if self.task is not None:
            self.task.cancel()

    def check(self, now: float) -> None:
        """The sweep's visit: end the connection if what it waits for has lasted too long."""
        transport = self.writer.transport
        if self.ended is not None or transport.is_closing():
            return
        # Whether a line has begun is whether the stream holds any of it: its buffer (a bytearray
        # in every asyncio since 3.4, unexported), read here once a tick, rather than a first byte
        # awaited on its own before every line.
        begun = bool(self.reader._buffer)  # type: ignore[attr-defined]
        waiting = "work" if self.busy else "request_deadline" if begun else "idle"
        reason = self.deadlines.overdue(
            now, self.server.settings, transport.get_write_buffer_size(), waiting, self.requests
        )
        if reason is None:
            return
        self.ended = reason
        self.server.metrics.connection_timed_out(reason)
        if reason == "request_deadline":
            if self.task is not None:
                self.task.cancel()  # the read; serve() sends the error line
        elif reason == "idle":
            transport.close()  # without a word; the read sees the end
        else:
            transport.abort()  # close() would wait for ever for a client that takes nothing

    async def read_now(self, lines: bool, first_read: int) -> bytes:
        """Shutting down: a request the client has sent already, else TimeoutError."""
        async with asyncio.timeout(0):
            await self.writer.drain()
            return await (self.reader.readuntil(NEWLINE) if lines else self.reader.read(first_read))

    async def end_with(self, error: bytes) -> None:
        """Send an error line and close without a reset (see threaded.send_error)."""
        self.busy = True
        reader, writer = self.reader, self.writer
        writer.write(error)
        with contextlib.suppress(OSError):  # the client is gone already: asyncio's loop raises ENOTCONN
            if writer.can_write_eof():
                writer.write_eof()
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(LINGER_SECONDS):
                while await reader.read(RECV_SIZE):
                    pass  # discard what the client still sends, until it closes
        writer.close()

    async def serve(self) -> None:
        server, metrics, reader, writer = self.server, self.server.metrics, self.reader, self.writer
        settings, workload, transport = server.settings, server.workload, writer.transport
        framer = make_framer(settings.framing, settings.max_message_bytes)
        lines = settings.framing == "lines"
        first_read = settings.max_message_bytes + 1  # oneshot: the first read is the message
        while True:
            try:
                if server.closing:
                    message = await self.read_now(lines, first_read)
                else:
                    await writer.drain()
                    message = await (reader.readuntil(NEWLINE) if lines else reader.read(first_read))
            except asyncio.CancelledError:
                if self.ended != "request_deadline":
                    raise  # the drain timeout, or the loop is closing
                if self.task is not None:
                    self.task.uncancel()
                await self.end_with(ERROR_REQUEST_TIMEOUT)
                return
            except (TimeoutError, asyncio.IncompleteReadError):
                break  # shutting down, or the client is done: a partial line is not a request
            except asyncio.LimitOverrunError:
                metrics.not_answered("too_large")
                await self.end_with(ERROR_TOO_LARGE)
                return
            except OSError as exc:
                if self.ended is None:  # else the sweep ended it, and counted why
                    count_connection_error(metrics, exc)
                return
            if lines:
                message = message[:-1]
            elif not message:
                break  # closed before it said anything
            elif len(message) > settings.max_message_bytes:
                metrics.not_answered("too_large")
                await self.end_with(ERROR_TOO_LARGE)
                return
            # Past the drain timeout (the loop was held up): cut, not started. `closing` first: a
            # stop signal sets it, and until then no request pays for a look at the clock.
            if server.closing and server.overdue():
                metrics.not_answered("aborted")
                writer.transport.abort()
                return
            self.busy = True
            self.requests += 1
            started = time.perf_counter()
            server.in_flight += 1
            failed = False
            try:
                await workload.run_async()
            except DependencyError:
                failed = True
            except asyncio.CancelledError:  # cut by the drain timeout
                metrics.not_answered("aborted")
                raise
            finally:
                server.in_flight -= 1
            if transport.is_closing():
                metrics.not_answered("aborted")
                count_connection_error(metrics, reader.exception())
                return
            if failed:
                writer.write(ERROR_DEPENDENCY)
                metrics.not_answered("dependency_error")
            else:
                payload, received, non_utf8 = framer.respond([message])
                writer.write(payload)
                metrics.answered(1, time.perf_counter() - started, received, len(payload))
                if non_utf8:
                    metrics.non_utf8(non_utf8)
            self.busy = False
            if not lines:
                break
        writer.close()


async def handle(server: LoopServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    conn = StreamConnection(server, reader, writer)
    try:
        reason = server.admit(conn)
        if reason is not None:
            await conn.end_with(ERROR_SHUTTING_DOWN if reason == "shutdown" else ERROR_BUSY)
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
