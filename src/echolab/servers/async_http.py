"""async-http's worker: uvicorn-worker's UvicornWorker with uvicorn's httptools protocol, hardened.

uvicorn's httptools protocol is the fast one (h11 halves a worker's
throughput: docs/server-behavior.md) but has none of the limits a server
facing strangers needs. :class:`GuardedHttpTools` adds them, as a subclass
that leaves uvicorn's request handling as it is:

* **Head limits, gunicorn's numbers.** Request target over ``request_line``:
  414. A field line over ``field_size``, more than ``fields`` fields, or a
  head still incomplete after ``head`` bytes (however it is split): 431.
  httptools accumulates a header value with ``bytes +=`` per read, so
  without the byte cap a streamed endless header costs quadratic CPU.
* **Deadlines.** A new connection must send its first byte within the idle
  timeout; a request, head and body, must arrive within the request timeout
  from its first byte (408 otherwise), however slowly it trickles; between
  requests, uvicorn's own keep-alive timeout (``timeout_keep_alive``) applies.
* **Pipelining, bounded.** uvicorn queues a pipelined request and pauses
  reading, but resumes on every ``receive()``, so a client that pipelines
  without reading its replies made the queue (and memory) grow without
  bound. Here reading resumes only once the queue is empty, and a reply the
  client does not read for the idle timeout ends the connection (``abort``).
* **A client gone mid-pipeline.** uvicorn marks only the newest request of
  the queue as disconnected, so the running one wrote to a closed transport
  and logged ``RuntimeError: unable to perform operation on <TCPTransport
  closed=True>``. Every request still owed a reply is marked here.
* **A half-close answers what was sent.** uvicorn closes on EOF, dropping
  replies still owed; here the connection stays open for them, then closes.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import httptools
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState
from uvicorn_worker import UvicornWorker

from ..runtime import LINGER_BYTES, LINGER_SECONDS, sweep_interval
from ..settings import HttpSettings
from .hooks import Called, overrides

REASONS = {408: b"Request Timeout", 414: b"URI Too Long", 431: b"Request Header Fields Too Large"}


@dataclass(frozen=True)
class Limits:
    """What one connection may cost: sizes of a request's head, and the deadlines."""

    request_line: int
    fields: int
    field_size: int  # one field line, "Name: value" and its CRLF
    head: int  # the whole head, request line and fields
    idle_timeout: float
    request_timeout: float


class Refused(Exception):
    """Raised in a parser callback: the request breaks a limit and gets ``status``."""

    def __init__(self, status: int) -> None:
        super().__init__(REASONS[status].decode())
        self.status = status


class QueueFlowControl(FlowControl):
    """uvicorn's flow control, except that reading stays paused while requests are queued."""

    def __init__(self, transport: asyncio.Transport, queue: deque[Any]) -> None:
        super().__init__(transport)
        self._queue = queue

    @overrides
    def resume_reading(self) -> None:
        if not self._queue:
            super().resume_reading()


# uvicorn's methods called here without being overridden (tests/servers/test_hooks.py checks them).
CALLED = (
    Called(HttpToolsProtocol, "_unset_keepalive_if_required", ("self",)),
    Called(HttpToolsProtocol, "_unsupported_upgrade_warning", ("self",)),
    Called(HttpToolsProtocol, "send_400_response", ("self", "msg")),
)

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]
Phase = Literal["idle", "head", "body"]  # of the request being read


class GuardedHttpTools(HttpToolsProtocol):
    limits: ClassVar[Limits]  # set by configured(): uvicorn takes a protocol class

    @classmethod
    def configured(cls, limits: Limits) -> type[GuardedHttpTools]:
        return type(cls.__name__, (cls,), {"limits": limits})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.phase: Phase = "idle"
        self.head_bytes = 0  # read while the head was incomplete (counted per read, after parsing it)
        self.fields = 0
        self.running: RequestResponseCycle | None = None  # the request the app is serving
        self.client_done = False  # the client half-closed: close once every reply owed is sent
        self.refused = False  # an error reply went out: the connection ends
        self.dropped = 0  # bytes read and dropped since
        self.due = math.inf  # loop time of the deadline in force: the first byte's, or the request's
        self.stuck: asyncio.TimerHandle | None = None  # a reply the client is not reading
        self.linger: asyncio.TimerHandle | None = None  # after an error reply

    # --- the connection -------------------------------------------------------

    @overrides
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = QueueFlowControl(transport, self.pipeline)
        self.due = self.loop.time() + self.limits.idle_timeout
        sweep_deadlines(self.loop, self.server_state, self.limits)

    @overrides
    def data_received(self, data: bytes) -> None:
        if self.refused:  # lingering after an error reply: what the client still sends is dropped
            self.dropped += len(data)
            if self.dropped > LINGER_BYTES:
                self._end_linger()
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            refused = exc.__context__
            if isinstance(refused, Refused):
                self.logger.warning("Refused a request: %d %s", refused.status, refused)
                self._refuse(refused.status)
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()  # no WebSocket here (ws="none")
            return
        if self.phase == "head":
            self.head_bytes += len(data)
            if self.head_bytes > self.limits.head:
                self.logger.warning("Refused a request: 431, head over %d bytes", self.limits.head)
                self._refuse(431)
        elif self.phase == "idle" and not self._owed() and self.timeout_keep_alive_task is None:
            self.due = self.loop.time() + self.limits.idle_timeout  # bytes, but no request (blank lines)

    @overrides
    def eof_received(self) -> bool:  # type: ignore[override]  # asyncio.Protocol returns a bool
        if self.phase != "idle" or not self._owed():
            return False  # nothing to answer, or half a request that can never be complete: close
        self.client_done = True
        return True  # keep writing: the replies owed go out, then on_response_complete closes

    @overrides
    def pause_writing(self) -> None:
        super().pause_writing()
        self._cancel("stuck")
        self.stuck = self.loop.call_later(self.limits.idle_timeout, self.transport.abort)

    @overrides
    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel("stuck")

    @overrides
    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel("stuck")
        self._cancel("linger")
        owed = [cycle for cycle, _app in self.pipeline]
        if self.running is not None:
            owed.append(self.running)
        for cycle in owed:
            if not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        super().connection_lost(exc)

    # --- parser callbacks ---------------------------------------------------

    @overrides
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.phase, self.head_bytes, self.fields = "head", 0, 0
        self.due = self.loop.time() + self.limits.request_timeout

    @overrides
    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        # The request line as gunicorn measures it: "METHOD target HTTP/1.1", without its CRLF.
        if len(self.parser.get_method()) + len(self.url) + 10 > self.limits.request_line:
            raise Refused(414)

    @overrides
    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields += 1
        if self.fields > self.limits.fields or len(name) + len(value) + 4 > self.limits.field_size:
            raise Refused(431)
        super().on_header(name, value)

    @overrides
    def on_headers_complete(self) -> None:
        self.phase = "body"
        super().on_headers_complete()
        if self.pipeline:
            # Queued behind an earlier request, with reading paused: the rest
            # of its body is read, and timed, once it runs (_start_asgi_task).
            self.due = math.inf

    @overrides
    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.phase, self.due = "idle", math.inf  # the request is in, within its deadline

    # --- requests and replies -------------------------------------------------

    @overrides
    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        self.running = cycle
        if cycle is self.cycle and self.phase == "body" and self.due == math.inf:
            self.due = self.loop.time() + self.limits.request_timeout  # was queued, see above
        super()._start_asgi_task(cycle, app)

    @overrides
    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing() or self.pipeline:
            return
        if self.client_done:
            self.transport.close()
        else:
            self.flow.resume_reading()  # the queue is empty: read the client's next requests

    def _owed(self) -> bool:
        """Whether a request read earlier still waits for its reply."""
        running = self.running
        return bool(self.pipeline) or (running is not None and not running.response_complete)

    # --- deadlines and refusals -------------------------------------------------

    def _cancel(self, name: Literal["stuck", "linger"]) -> None:
        timer = getattr(self, name)
        if timer is not None:
            timer.cancel()
            setattr(self, name, None)

    def expired(self) -> None:
        """The deadline in force has passed (the sweep calls this)."""
        self.due = math.inf
        if self.phase == "idle":
            self.transport.close()  # nothing received in time: close without a word
        else:
            self.logger.debug(
                "Request timeout: not whole %gs after its first byte", self.limits.request_timeout
            )
            self._refuse(408)

    def _refuse(self, status: int) -> None:
        """Answer ``status`` to the request being read and close; the app never sees it.

        The reply goes out only if no earlier reply is owed (it would be taken
        for that one); then, as in the TCP servers, the server stops writing
        and drops what the client still sends for a moment before closing,
        so the client reads the reply rather than a reset.
        """
        self.due = math.inf
        receiving = self.cycle if self.phase == "body" else None
        running = self.running
        answerable = not self.pipeline and (
            running is None or running.response_complete
            or (running is receiving and not running.response_started)
        )  # fmt: skip
        if receiving is not None:  # the app waits for this body: tell it the client is gone
            receiving.disconnected = True
            receiving.message_event.set()
        self.phase, self.refused = "idle", True
        if not answerable:
            self._end_linger()
            return
        reason = REASONS[status]
        transport = self.transport
        transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s\n" % (status, reason, len(reason) + 1, reason)
        )
        if transport.can_write_eof():
            transport.write_eof()
        transport.resume_reading()  # to see the client's EOF, and drop what it still sends
        self.linger = self.loop.call_later(LINGER_SECONDS, self._end_linger)

    def _end_linger(self) -> None:
        if self.transport.get_write_buffer_size():
            self.transport.abort()  # a reply the client is not reading: nothing more can go out
        else:
            self.transport.close()


def client_gone(receive: Any) -> bool:
    """Whether the client has gone: uvicorn drops the writes to it silently.

    uvicorn's ``receive`` is a bound method of its request cycle, which keeps a
    ``disconnected`` flag; reading it costs nothing, where watching for
    ``http.disconnect`` would take a task per request.
    """
    return bool(getattr(getattr(receive, "__self__", None), "disconnected", False))


def cut_quietly(app: ASGIApp) -> ASGIApp:
    """``app``, cut without a traceback when the drain times out.

    At the end of its drain uvicorn cancels the requests still running and
    logs each as an application crash, traceback and all. Being cut is the
    drain timeout working: the request ends as if its client had gone (the
    app counts it aborted) and its connection closes.
    """

    async def cut(scope: Any, receive: Any, send: Any) -> None:
        try:
            await app(scope, receive, send)
        except asyncio.CancelledError:
            cycle = getattr(receive, "__self__", None)  # uvicorn's request cycle
            if cycle is None:
                raise
            cycle.disconnected = True  # uvicorn then expects no reply
            cycle.transport.abort()

    return cut


def sweep_deadlines(loop: asyncio.AbstractEventLoop, state: ServerState, limits: Limits) -> None:
    """Check every connection's deadline once a tick, from one timer per worker (started once).

    A timer per request (armed when it begins, cancelled when it is in)
    cost 3 us of a request's 25 us in uvicorn's protocol; a float per
    request and one pass over the connections per tick cost next to
    nothing. Deadlines are met to within a tick: a quarter of the shorter
    timeout, at most a second (as the TCP servers sweep their idle ones).
    """
    if getattr(state, "echolab_sweeping", False):
        return
    state.echolab_sweeping = True  # type: ignore[attr-defined]  # uvicorn's per-server state, ours along
    tick = sweep_interval(limits.idle_timeout, limits.request_timeout)

    def sweep() -> None:
        now = loop.time()
        for protocol in list(state.connections):
            if isinstance(protocol, GuardedHttpTools) and protocol.due <= now:
                protocol.expired()
        loop.call_later(tick, sweep)

    loop.call_later(tick, sweep)


class EchoUvicornWorker(UvicornWorker):  # type: ignore[misc]  # uvicorn_worker is untyped
    """UvicornWorker on uvloop and the guarded httptools protocol, with our settings.

    uvicorn-worker passes gunicorn's keepalive, backlog and timeout on to
    uvicorn, but not worker_connections nor graceful_timeout: they go to
    uvicorn's own settings ``limit_concurrency`` (over it: 503) and
    ``timeout_graceful_shutdown``, through uvicorn-worker's CONFIG_KWARGS.
    """

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {"loop": "uvloop", "http": "httptools", "ws": "none"}

    @classmethod
    def configured(cls, settings: HttpSettings, limits: Limits, connections: int) -> type[EchoUvicornWorker]:
        """This worker class, for one server start's settings and ``connections`` at once (gunicorn takes a
        class)."""
        config = {
            **cls.CONFIG_KWARGS,
            "http": GuardedHttpTools.configured(limits),
            # uvicorn answers 503 once connections >= the limit, the new one included: +1 admits
            # exactly ``connections`` at once.
            "limit_concurrency": connections + 1,
            # The workers' own drain; the master waits a little longer (gunicorn.EXIT_MARGIN) for them.
            "timeout_graceful_shutdown": settings.drain_timeout,
        }
        return type(cls.__name__, (cls,), {"CONFIG_KWARGS": config})


def head_limit(request_line: int, fields: int, field_size: int) -> int:
    """gunicorn's cap on a request head: its request line and its header buffer (http/message.py)."""
    return request_line + 2 + fields * (field_size + 2) + 4


def limits_for(settings: HttpSettings, request_line: int, fields: int, field_size: int) -> Limits:
    return Limits(
        request_line,
        fields,
        field_size,
        head_limit(request_line, fields, field_size),
        settings.idle_timeout,
        settings.request_timeout,
    )
