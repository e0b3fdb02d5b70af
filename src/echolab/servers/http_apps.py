"""The HTTP echo: one request-handling core, wrapped as a WSGI app and as an ASGI app.

``POST /echo`` answers 200 with the body transformed by ``protocol.transform``
after the request's simulated work (:mod:`.work_model`: CPU, a blocking call, IO),
or 503 and the protocol's error line if its dependency failed (``--io``);
``GET /healthz`` answers ``ok``; other paths get 404, other methods 405. A
body over the size limit gets 413 and the protocol's own error line, without
being read: the declared Content-Length is checked first, and a chunked body
is read only up to one byte past the limit.

The apps run in gunicorn's worker processes, so their instruments are
prometheus_client metrics in multiprocess mode (see ``http_server``): every
worker writes its own files, the master sums them when Prometheus scrapes.
Names, help texts, labels and buckets come from ``echolab.metrics``, the same
as the TCP servers'.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any
from wsgiref.types import StartResponse, WSGIEnvironment

from ..catalogue import Server
from ..metrics import DEPENDENCY_ERRORS, OUTCOMES, WORK_KINDS, Recorder, offload_servers, spec
from ..protocol import ERROR_DEPENDENCY, ERROR_TOO_LARGE, HEALTH_PATH, HTTP_PATH, transform
from .dependency import DependencyError
from .work_model import Workload

ROUTES = {HTTP_PATH: "POST", HEALTH_PATH: "GET"}  # path -> the one method it takes
# The echo reply is the request's bytes, upper-cased: UTF-8 only if the request was.
ECHO_TYPE = "application/octet-stream"
TEXT_TYPE = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = TEXT_TYPE
    allow: str = ""  # the Allow header of a 405

    def headers(self) -> list[tuple[str, str]]:
        headers = [("Content-Type", self.content_type), ("Content-Length", str(len(self.body)))]
        if self.allow:
            headers.append(("Allow", self.allow))
        return headers


HEALTHY = Reply(200, b"ok\n")
NOT_FOUND = Reply(404, b"not found\n")
TOO_LARGE = Reply(413, ERROR_TOO_LARGE)
DEPENDENCY_FAILED = Reply(503, ERROR_DEPENDENCY)
REASONS = {
    200: "OK", 404: "Not Found", 405: "Method Not Allowed", 413: "Content Too Large",
    503: "Service Unavailable",
}  # fmt: skip


def route(method: str, path: str) -> Reply | None:
    """The fixed reply for anything but a well-formed echo request; None for an echo request."""
    allowed = ROUTES.get(path)
    if allowed is None:
        return NOT_FOUND
    if method != allowed:
        return Reply(405, b"method not allowed\n", allow=allowed)
    return HEALTHY if path == HEALTH_PATH else None


class Instruments(Recorder):
    """One worker's metrics, label children bound once: ``.labels()`` per request would cost a µs.

    Created in the worker process, after PROMETHEUS_MULTIPROC_DIR is set, and
    registered nowhere: the master's MultiProcessCollector reads the files.
    """

    UPDATES = (
        "began", "ended", "answered", "not_answered", "non_utf8", "worked", "pool_changed",
        "dependency_pool", "dependency_acquired", "dependency_released", "dependency_failed",
    )  # fmt: skip

    def __init__(self, server: Server, enabled: bool = True, dependency: bool = False) -> None:
        """``dependency``: the request's IO is a real one (--io), whose metrics this worker exports."""
        if enabled:
            name = server.name
            requests = spec("echo_requests").instrument()
            self.outcomes = {outcome: requests.labels(name, outcome) for outcome in OUTCOMES}
            self.ok = self.outcomes["ok"]
            self.duration = spec("echo_request_duration_seconds").instrument().labels(name)
            self.in_flight = spec("echo_requests_in_flight").instrument().labels(name)
            self.received = spec("echo_received_bytes").instrument().labels(name)
            self.sent = spec("echo_sent_bytes").instrument().labels(name)
            self.non_utf8_requests = spec("echo_non_utf8_requests").instrument().labels(name)
            work_seconds = spec("echo_work_seconds").instrument()
            self.work_seconds = tuple(work_seconds.labels(name, kind) for kind in WORK_KINDS)
            if offload_servers(server):  # the others have no pool to report on
                self.offload_busy = spec("echo_offload_threads_busy").instrument().labels(name)
                self.offload_queued = spec("echo_offload_tasks_queued").instrument().labels(name)
            if dependency:
                self.pool_wait = spec("echo_dependency_pool_wait_seconds").instrument().labels(name)
                self.in_use = spec("echo_dependency_connections_in_use").instrument().labels(name)
                self.pool_size = spec("echo_dependency_pool_size").instrument().labels(name)
                errors = spec("echo_dependency_errors").instrument()
                self.dependency_errors = {kind: errors.labels(name, kind) for kind in DEPENDENCY_ERRORS}
        super().__init__(enabled)

    def began(self) -> None:
        self.in_flight.inc()

    def ended(self) -> None:
        self.in_flight.dec()

    def answered(self, duration: float, received: int, sent: int) -> None:
        self.ok.inc()
        self.duration.observe(duration)
        self.received.inc(received)
        self.sent.inc(sent)

    def not_answered(self, outcome: str) -> None:
        self.outcomes[outcome].inc()

    def non_utf8(self) -> None:
        self.non_utf8_requests.inc()

    def worked(self, cpu: float, blocking: float, io: float) -> None:
        for counter, seconds in zip(self.work_seconds, (cpu, blocking, io), strict=True):
            if seconds:
                counter.inc(seconds)

    def pool_changed(self, busy: int, queued: int) -> None:
        self.offload_busy.set(busy)
        self.offload_queued.set(queued)

    # The dependency client's (servers/dependency.Events): this worker's, which the master sums.

    def dependency_pool(self, size: int) -> None:
        self.pool_size.set(size)

    def dependency_acquired(self, waited: float) -> None:
        self.in_use.inc()
        self.pool_wait.observe(waited)

    def dependency_released(self) -> None:
        self.in_use.dec()

    def dependency_failed(self, kind: str) -> None:
        self.dependency_errors[kind].inc()


class EchoCore:
    """What both apps do with a request, minus how they read it, wait and write."""

    def __init__(self, instruments: Instruments, workload: Workload, max_message_bytes: int) -> None:
        self.instruments = instruments
        self.workload = workload
        self.max_bytes = max_message_bytes

    def too_large(self) -> Reply:
        self.instruments.not_answered("too_large")
        return TOO_LARGE

    def declared_too_large(self, content_length: str | bytes | None) -> bool:
        """Whether the Content-Length alone rules the body out (a bad one is left to the body read)."""
        try:
            return content_length is not None and int(content_length) > self.max_bytes
        except ValueError:
            return False

    def started(self) -> float:
        self.instruments.began()
        return time.perf_counter()

    def reply(self, body: bytes) -> Reply:
        payload, valid = transform(body)
        if not valid:
            self.instruments.non_utf8()
        return Reply(200, payload, ECHO_TYPE)

    def finished(self, started: float, received: int, sent: int, written: bool) -> None:
        """Count a request once its reply is written, or could not be (client gone, worker stopped)."""
        instruments = self.instruments
        instruments.ended()
        if written:
            instruments.answered(time.perf_counter() - started, received, sent)
        else:
            instruments.not_answered("aborted")

    def failed(self) -> Reply:
        """Count a request whose dependency failed: its reply, a 503."""
        self.instruments.ended()
        self.instruments.not_answered("dependency_error")
        return DEPENDENCY_FAILED


# --- WSGI (gunicorn gthread: one worker thread per request) -------------------


class _CountedBody:
    """A WSGI body that counts its request after gunicorn has written it.

    gunicorn asks for the next item only after ``write`` of this one returned,
    and calls ``close`` in every case, also when the write raised (client gone).
    """

    def __init__(self, core: EchoCore, started: float, received: int, reply: Reply) -> None:
        self._core, self._started, self._received, self._reply = core, started, received, reply
        self._written = False

    def __iter__(self) -> Iterator[bytes]:
        yield self._reply.body
        self._written = True

    def close(self) -> None:
        self._core.finished(self._started, self._received, len(self._reply.body), self._written)


def make_wsgi_app(core: EchoCore) -> Callable[[WSGIEnvironment, StartResponse], Any]:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        reply = route(environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""))
        if reply is None:
            if core.declared_too_large(environ.get("CONTENT_LENGTH") or None):
                reply = core.too_large()
            else:
                # Chunked bodies have no length: read one byte past the limit at most.
                body: bytes = environ["wsgi.input"].read(core.max_bytes + 1)
                if len(body) > core.max_bytes:
                    reply = core.too_large()
                else:
                    started = core.started()
                    try:
                        core.workload.run()
                        reply = core.reply(body)
                    except DependencyError:
                        reply = core.failed()
                    except BaseException:  # gunicorn's timeout abort is a SystemExit
                        core.finished(started, len(body), 0, written=False)
                        raise
                    else:
                        start_response(f"200 {REASONS[200]}", reply.headers())
                        return _CountedBody(core, started, len(body), reply)
        start_response(f"{reply.status} {REASONS[reply.status]}", reply.headers())
        return [reply.body]

    return app


# --- ASGI (uvicorn on uvloop: one task per request) ---------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


async def _send(send: Send, reply: Reply, close: bool = False) -> None:
    headers = [(name.lower().encode(), value.encode()) for name, value in reply.headers()]
    if close:
        # The body is left unread: uvicorn would otherwise read and discard all of it.
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


async def _lifespan(workload: Workload, receive: Receive, send: Send) -> None:
    """The worker's start and end: the dependency's pool opens on the worker's loop, and closes."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await workload.open()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await workload.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return


def make_asgi_app(
    core: EchoCore, client_gone: Callable[[Receive], bool]
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The ASGI app; ``client_gone(receive)`` tells it, after its reply, whether the client had gone
    (the server's word for it: async_http.client_gone for uvicorn)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await _lifespan(core.workload, receive, send)
        if scope["type"] != "http":
            return None
        reply = route(scope["method"], scope["path"])
        if reply is not None:
            return await _send(send, reply)
        length = next((value for name, value in scope["headers"] if name == b"content-length"), None)
        if core.declared_too_large(length):
            return await _send(send, core.too_large(), close=True)
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None  # gone before its request was complete: not a request
            body += message.get("body", b"")
            if len(body) > core.max_bytes:
                return await _send(send, core.too_large(), close=True)
            more = message.get("more_body", False)
        started = core.started()
        sent, written = 0, False
        try:  # cancelled when the graceful timeout runs out: counted as aborted
            await core.workload.run_async()
        except DependencyError:
            return await _send(send, core.failed())
        except BaseException:
            core.finished(started, len(body), 0, False)
            raise
        try:
            reply = core.reply(bytes(body))
            await _send(send, reply)
            sent, written = len(reply.body), not client_gone(receive)
        finally:
            core.finished(started, len(body), sent, written)
        return None

    return app
