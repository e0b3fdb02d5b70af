"""The threaded echo server, on ``socketserver``, in three models.

* ``serial``: one connection at a time, the article's server (its baseline).
* ``thread-per-connection``: ``ThreadingMixIn``, a thread per connection.
* ``pool``: ``--threads`` workers; the acceptor takes a connection only when
  a worker is free, so the rest wait in the kernel's accept queue.

Each connection's thread blocks in ``recv``, then does each request's work
(:mod:`.work_model`: CPU, a blocking call, IO slept through), then blocks in
``sendall``: exactly the code a threaded service has. Pipelined requests
are served one after another, as a thread serves them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import queue
import socket
import socketserver
import struct
import threading
import time
from typing import Any

from .. import metrics as metrics_module
from ..catalogue import Server
from ..metrics import ServerMetrics
from ..protocol import (
    ERROR_BUSY,
    ERROR_DEPENDENCY,
    ERROR_REQUEST_TIMEOUT,
    ERROR_SHUTTING_DOWN,
    ERROR_TOO_LARGE,
    Framer,
    MessageTooLarge,
    make_framer,
)
from ..runtime import (
    LINGER_SECONDS,
    RESOURCE_ERRNOS,
    AcceptErrorLog,
    StopWatch,
    binding,
    hold_signals,
    listening,
    log,
    log_drain,
    sweep_interval,
    wait_for_stop,
)
from ..settings import ThreadedSettings
from . import protections, work_model
from .dependency import DependencyError
from .work_model import IoOnly, Workload

RECV_SIZE = 65536
ACCEPT_BACKOFF = 0.1  # seconds between accept() retries while out of descriptors: trio's choice
RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST and drops what is unsent


# No deadline runs: a request is in work, or the connection is ending on its own terms.
NO_DEADLINE = (math.inf, "idle")


class Connection:
    """What the server knows of one client, for metrics, deadlines and shutdown.

    ``deadline`` is (when, why): written by the connection's thread as it
    goes from waiting to working to writing, read by the sweeper, which ends
    the connection once ``when`` has passed, for ``why`` (a reason of
    ``echo_connections_timed_out_total``). A tuple, so the sweeper never
    sees one moment's time with another's reason.
    """

    __slots__ = ("deadline", "pending", "sock", "timed_out", "working")

    def __init__(self, sock: socket.socket, idle_timeout: float) -> None:
        self.sock = sock
        self.pending = 0  # requests read, not yet answered
        self.working = False  # doing a request's work: no deadline runs (the work is the server's time)
        self.deadline = (time.monotonic() + idle_timeout, "idle")  # its first byte
        self.timed_out = ""  # why the sweeper ended it


class EchoHandler(socketserver.BaseRequestHandler):
    server: EchoServer

    def handle(self) -> None:
        self.server.serve_connection(self.request)


class EchoServer(socketserver.TCPServer):
    allow_reuse_address = True

    def __init__(
        self, settings: ThreadedSettings, metrics: ServerMetrics, off: frozenset[str] = frozenset()
    ) -> None:
        self.request_queue_size = settings.backlog
        self.settings = settings
        self.metrics = metrics
        self.workload = (
            IoOnly(settings) if "work" in off else Workload(settings, metrics.worked, events=metrics)
        )
        self.stopping = False
        self._connections: dict[socket.socket, Connection] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._accept_errors = AcceptErrorLog(retry=f"retrying every {ACCEPT_BACKOFF:g}s")
        # Before the bind: a failed bind calls server_close(), which sets it.
        self._closed = threading.Event()
        super().__init__((settings.host, settings.port), EchoHandler)
        if "deadlines" not in off:  # bench only (.protections)
            threading.Thread(target=self._sweep, name="deadline-sweeper", daemon=True).start()
        metrics.track(
            active=lambda: len(self._connections),
            in_flight=lambda: sum(c.pending for c in list(self._connections.values())),
        )

    # --- accepting ---------------------------------------------------------

    def get_request(self) -> tuple[Any, Any]:
        try:
            return super().get_request()
        except OSError as exc:
            if exc.errno in RESOURCE_ERRNOS:
                # Without a pause, serve_forever's select() reports the
                # listener readable again at once: a silent busy loop.
                self.metrics.accept_error(errno.errorcode[exc.errno])
                self._accept_errors.failed(exc)
                with self._changed:
                    self._changed.wait(ACCEPT_BACKOFF)
            raise

    def verify_request(self, request: Any, client_address: Any) -> bool:
        sock: socket.socket = request
        with self._lock:
            reason = (
                "shutdown"
                if self.stopping
                else "max_connections"
                if len(self._connections) >= self.settings.max_connections
                else None
            )
            if reason is None:
                self._connections[sock] = Connection(sock, self.settings.idle_timeout)
                self.metrics.connection_opened()
                return True
        self.metrics.connection_refused(reason)
        error = ERROR_SHUTTING_DOWN if reason == "shutdown" else ERROR_BUSY
        send_error(sock, error, linger=False)
        return False

    def close_request(self, request: Any) -> None:
        super().close_request(request)
        with self._changed:
            if self._connections.pop(request, None) is not None:
                self._changed.notify_all()

    # --- serving -----------------------------------------------------------

    def serve_connection(self, sock: socket.socket) -> None:
        conn = self._connections[sock]
        settings, metrics = self.settings, self.metrics
        framer = make_framer(settings.framing, settings.max_message_bytes)
        recv_size = settings.max_message_bytes + 1 if framer.closes_after_reply else RECV_SIZE
        # Blocking, without a socket timeout: with one, CPython polls before
        # every recv and send, doubling the system calls and GIL hand-offs of
        # each request. The sweeper enforces the deadlines instead.
        try:
            while True:
                data = sock.recv(recv_size)
                if conn.timed_out:
                    self._end_timed_out(conn)
                    return
                if not data:
                    return
                underway = framer.buffered  # a line begun in an earlier read
                completed = conn.pending = framer.feed(data)
                try:
                    while (message := framer.next()) is not None:
                        self.answer(conn, framer, message)
                except MessageTooLarge:
                    conn.deadline = NO_DEADLINE  # send_error's linger has its own bound
                    metrics.not_answered("too_large")
                    send_error(sock, ERROR_TOO_LARGE, linger=True)
                    return
                if framer.closes_after_reply or self.stopping:
                    return
                # The next wait: a line begun must be whole within the request timeout of its
                # first byte, or of the end of the work before it; nothing begun, the idle timeout.
                if not framer.buffered:
                    conn.deadline = (time.monotonic() + settings.idle_timeout, "idle")
                elif completed or not underway:
                    conn.deadline = (time.monotonic() + settings.request_timeout, "request_deadline")
        except OSError as exc:
            if conn.timed_out:  # the sweeper cut it, e.g. mid-write to a client not reading
                self._end_timed_out(conn)
            elif isinstance(exc, ConnectionResetError):
                metrics.connection_error("reset")
            elif isinstance(exc, BrokenPipeError):
                metrics.connection_error("broken_pipe")
            else:
                metrics.connection_error("other")
                log.debug("connection error: %s", exc)

    def answer(self, conn: Connection, framer: Framer, message: bytes) -> None:
        """Do one request's work and send its reply; OSError if the client is gone."""
        started = time.perf_counter()
        conn.working = True
        failed = False
        try:
            self.workload.run()
        except DependencyError:
            failed = True
        finally:
            # From here the reply is due: the client has the idle timeout to take it. Set before
            # the work ends, so the sweeper never sees the deadline of the wait before it.
            conn.deadline = (time.monotonic() + self.settings.idle_timeout, "not_reading")
            conn.working = False
        if failed:
            payload, received, non_utf8 = ERROR_DEPENDENCY, 0, 0
        else:
            payload, received, non_utf8 = framer.respond([message])
        try:
            conn.sock.sendall(payload)
        except OSError:
            self.metrics.not_answered("aborted", conn.pending)
            conn.pending = 0
            raise
        conn.pending -= 1
        if failed:
            self.metrics.not_answered("dependency_error")
            return
        self.metrics.answered(1, time.perf_counter() - started, received, len(payload))
        if non_utf8:
            self.metrics.non_utf8(non_utf8)
        log.debug("answered a request")

    def _sweep(self) -> None:
        """End the connections past their deadline, once per tick for all of them.

        Shutting a socket down wakes its thread, blocked in recv or sendall,
        which ends it (:meth:`_end_timed_out`). A line not whole in time gets
        an error line first, written without waiting; the thread then drops
        what the client still sends until it closes, for at most
        LINGER_SECONDS, after which the next sweep shuts the socket down.
        """
        settings = self.settings
        tick = sweep_interval(settings.idle_timeout, settings.request_timeout)
        while not self._closed.wait(tick):
            now = time.monotonic()
            with self._lock:
                connections = list(self._connections.values())
            for conn in connections:
                when, reason = conn.deadline
                if conn.working or now <= when:
                    continue
                if conn.timed_out:  # ended already: its error line's linger is over
                    shut(conn.sock, socket.SHUT_RDWR)
                    continue
                conn.timed_out = reason
                self.metrics.connection_timed_out(reason)
                if reason == "request_deadline":
                    conn.deadline = (now + LINGER_SECONDS, reason)
                    with contextlib.suppress(OSError):  # the thread is in recv: never block it
                        conn.sock.send(ERROR_REQUEST_TIMEOUT, socket.MSG_DONTWAIT)
                    shut(conn.sock, socket.SHUT_WR)
                else:
                    shut(conn.sock, socket.SHUT_RDWR)

    @staticmethod
    def _end_timed_out(conn: Connection) -> None:
        """In the connection's thread, once the sweeper has ended it (and counted it)."""
        if conn.timed_out == "request_deadline":
            # Drop what the client still sends, so that the close does not reset the
            # connection under the error line; until it closes, or the sweeper ends the linger.
            with contextlib.suppress(OSError):
                while conn.sock.recv(RECV_SIZE):
                    pass
        elif conn.timed_out == "not_reading":
            # Its replies will never be taken: reset, rather than leave the kernel retrying them.
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)

    def server_close(self) -> None:
        super().server_close()
        self._closed.set()

    # --- shutting down -----------------------------------------------------

    def begin_shutdown(self) -> None:
        """Refuse new connections; wake idle ones so their threads can end."""
        with self._lock:
            self.stopping = True
            idle = [c.sock for c in self._connections.values() if c.pending == 0]
        for sock in idle:
            # Makes a blocked recv() return b"" after any request already
            # buffered, which is still answered; a busy connection sees
            # `stopping` after its reply.
            shut(sock, socket.SHUT_RD)

    def drain(self, timeout: float) -> int:
        """Wait for connections to finish; return how many did not in time."""
        with self._changed:
            self._changed.wait_for(lambda: not self._connections, timeout)
            return len(self._connections)

    def still_open(self) -> str:
        """What the threads of the connections still open are doing (for the StopWatch)."""
        with self._lock:
            conns = list(self._connections.values())
        if not conns:
            return "no connection: the process's exit itself"
        working = sum(1 for c in conns if c.working)
        return (
            f"{len(conns)} connection thread(s) to end, {working} of them in a request's work "
            "(a thread cannot be interrupted there), the others in recv or sendall on a socket shut down"
        )

    def cut(self) -> None:
        """End the connections still open after the drain timeout.

        A thread blocked in recv() or sendall() (a client not reading its
        replies) returns once its socket is shut down. One in a request's
        work cannot be interrupted; every connection's thread is a daemon, so
        it does not hold up the exit either.
        """
        with self._lock:
            socks = list(self._connections)
        for sock in socks:
            shut(sock, socket.SHUT_RDWR)


class ThreadPerConnectionServer(socketserver.ThreadingMixIn, EchoServer):
    # Don't keep a list of threads to join; drain() waits for the connections
    # themselves, bounded by the drain timeout. Set here, not on EchoServer:
    # ThreadingMixIn comes first in the MRO, so its own defaults (False,
    # True) shadowed EchoServer's, and server_close() joined every
    # connection's thread, however long past the drain timeout.
    daemon_threads = True
    block_on_close = False


class PoolServer(EchoServer):
    """A bounded pool: accept only when a worker is free.

    The workers are daemon threads, started as connections come, up to
    ``--threads``: a ThreadPoolExecutor's are joined at exit, so one still
    in a request's work after the drain timeout held up the exit until that
    work was over, however long.
    """

    def __init__(
        self, settings: ThreadedSettings, metrics: ServerMetrics, off: frozenset[str] = frozenset()
    ) -> None:
        self._free = threading.BoundedSemaphore(settings.threads)
        self._requests: queue.SimpleQueue[tuple[Any, Any]] = queue.SimpleQueue()
        self._workers = 0
        super().__init__(settings, metrics, off)

    def get_request(self) -> tuple[Any, Any]:
        self._free.acquire()
        try:
            return super().get_request()
        except BaseException:
            self._free.release()
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        # Only the acceptor runs this: the count needs no lock.
        if self._workers < self.settings.threads:
            self._workers += 1
            name = f"echo-worker-{self._workers}"
            threading.Thread(target=self._work, name=name, daemon=True).start()
        self._requests.put((request, client_address))

    def _work(self) -> None:
        while True:
            request, client_address = self._requests.get()
            try:
                self.finish_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)

    def close_request(self, request: Any) -> None:
        super().close_request(request)
        self._free.release()


def shut(sock: socket.socket, how: int) -> None:
    """``sock.shutdown(how)``, if it is still connected."""
    with contextlib.suppress(OSError):
        sock.shutdown(how)


def send_error(sock: socket.socket, error: bytes, linger: bool) -> None:
    """Send an error line and end the connection without a reset.

    Closing a socket with unread input makes the kernel send RST, which can
    destroy the error line before the client reads it; so stop writing, and
    discard what the client still sends (for a bounded time) before closing.
    """
    try:
        if linger:
            sock.settimeout(LINGER_SECONDS)
            sock.sendall(error)
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_SECONDS
            while time.monotonic() < deadline and sock.recv(RECV_SIZE):
                pass
        else:
            # A refusal, on the acceptor thread: never wait (a timeout would make even a
            # MSG_DONTWAIT recv poll for it, a second per silent client). A fresh socket's
            # buffer takes the line whole; then drop what has arrived, and close.
            sock.setblocking(False)
            sock.send(error)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(RECV_SIZE):
                pass
    except OSError:  # BlockingIOError: nothing more to drop
        pass


MODELS = {
    "serial": EchoServer,
    "thread-per-connection": ThreadPerConnectionServer,
    "pool": PoolServer,
}


def run(server_kind: Server, settings: ThreadedSettings) -> int:
    hold_signals()  # before any thread starts: every thread inherits it, and the main one takes them
    off = protections.turned_off()
    info = {
        "model": settings.model,
        "framing": settings.framing,
        # --threads sizes the pool; a thread per connection, or none, has no such setting.
        **({"threads": str(settings.threads)} if settings.model == "pool" else {}),
        **work_model.info(settings),
    }
    metrics, metrics_port = metrics_module.start(
        server_kind,
        info,
        settings.metrics,
        settings.host,
        settings.metrics_port,
        thread_safe=True,
        cgroup_root=settings.cgroup_root,
    )
    with binding("echo", settings.host, settings.port):
        server = MODELS[settings.model](settings, metrics, off)
    watch = StopWatch(server.still_open)
    acceptor = threading.Thread(target=server.serve_forever, name="acceptor", daemon=True)
    acceptor.start()
    listening(
        "%s:%d model=%s framing=%s %s metrics=%s",
        settings.host,
        server.server_address[1],
        settings.model,
        settings.framing,
        work_model.describe(settings),
        metrics_port or "off",
    )
    signame = wait_for_stop()
    started = time.monotonic()
    watch.arm(settings.drain_timeout)
    # Refuse first, then say so: a client that sees the log line is refused.
    server.begin_shutdown()
    in_flight = metrics.requests_in_flight
    log.info(
        "shutting down on %s: no new connections, draining for up to %gs", signame, settings.drain_timeout
    )
    if settings.model != "serial":
        server.shutdown()  # the listener closes first: the kernel refuses newcomers
        server.server_close()
    # Not so for serial: its one connection runs inside serve_forever(), and
    # stopping that would wait for the connection, whatever the drain timeout.
    # Its listener closes after the drain (newcomers meanwhile get an error
    # line, or a reset from the backlog); both calls are idempotent.
    left = server.drain(max(0.0, settings.drain_timeout - (time.monotonic() - started)))
    unanswered = metrics.requests_in_flight if left else 0
    if left:
        server.cut()
    log_drain(in_flight, unanswered, left, time.monotonic() - started)
    if not left:
        server.shutdown()
        server.server_close()
    server.workload.shutdown()
    # Else the serial model's one connection may still be in its work, inside serve_forever():
    # stopping that would wait for the work. Its thread is a daemon, and the exit closes the listener.
    logging.shutdown()
    return 0
