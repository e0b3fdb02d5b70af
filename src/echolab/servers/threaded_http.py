"""threaded-http's worker: gunicorn's gthread ThreadWorker with deadlines and a close that never blocks.

gunicorn's parser already enforces the head limits (414, 431) and its
``keepalive`` times the wait between requests. What gthread lacks, this
subclass adds:

* **First byte within the idle timeout, on no thread.** gthread hands a new
  connection to a pool thread, which waits up to 5 s (a constant) for its
  first byte before parking it in the poller for ``keepalive`` more: a burst
  of silent connections took every thread, and one was closed after 5 s +
  the idle timeout. Here a new connection waits in the poller, timed by the
  idle timeout, and gets a thread once it has sent something.
* **A request deadline.** Once a thread reads a request, gthread blocks in
  ``recv`` without a timeout: a stalled head or body held the thread for
  ever. Here every read of the request gets the time left until the request
  deadline (from its first byte); past it the client gets 408.
* **A reply the client does not read** holds its thread for at most the idle
  timeout (the socket's timeout while writing), then the connection closes.
* **A graceful close that never blocks the worker.** gthread lingers on a
  closing connection (to drop what the client still sends, so that its last
  reply is not lost to a reset) for up to 2 s *on the worker's main thread*,
  which accepts and dispatches for every thread: each client that asked for
  ``Connection: close`` and then kept its socket open stopped the worker for
  2 s. Here the lingering sockets wait in the poller.
* **A drain that ends.** At the end of its drain the worker cuts the
  requests still on a thread (their sockets are shut down), so the threads
  end and the process exits before the master's SIGKILL, which gunicorn
  logged as "Worker was sent SIGKILL! Perhaps out of memory?".
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import math
import os
import selectors
import socket
import time
from collections import deque
from functools import partial
from typing import Any, ClassVar

from gunicorn import util
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers.gthread import TConn, ThreadWorker

from ..runtime import StopWatch
from ..settings import HttpSettings
from .hooks import Called, overrides

# gunicorn's functions and methods called here without being overridden (tests/servers/test_hooks.py).
CALLED = (
    Called(ThreadWorker, "on_pending_socket_readable", ("self", "conn", "client")),
    Called(util, "write_error", ("sock", "status_int", "reason", "mesg")),
    Called(util, "close", ("sock",)),
    Called(util, "close_graceful", ("sock", "timeout", "max_drain")),
)
# gunicorn's close_graceful, which linger() does in the poller: how long, and how much, a closing
# socket is drained.
_GRACEFUL = inspect.signature(util.close_graceful).parameters
LINGER_SECONDS: float = _GRACEFUL["timeout"].default
LINGER_BYTES: int = _GRACEFUL["max_drain"].default


class RequestTimedOut(Exception):
    """The request was not in whole by its deadline: the client gets 408."""


class DeadlineUnreader(SocketUnreader):  # type: ignore[misc]  # gunicorn is untyped
    """Reads of a request get the time left until its deadline; other reads keep their own timeout.

    Between reads the socket's timeout is the idle timeout, which bounds the
    writes of a reply the client does not read.
    """

    def __init__(self, conn: EchoConn) -> None:
        super().__init__(conn.sock)
        self.conn = conn

    @overrides
    def chunk(self, size_hint: int | None = None) -> bytes:
        conn = self.conn
        left = conn.deadline - time.monotonic()
        if left <= 0:
            raise RequestTimedOut()
        own = self.sock.gettimeout()  # gunicorn's body drain sets one of its own
        if own == conn.write_timeout:
            own = None  # ours, left by the previous read
        self.sock.settimeout(left if own is None else min(own, left))
        try:
            return bytes(super().chunk(size_hint))
        except TimeoutError:
            if conn.deadline == math.inf:
                raise  # not reading a request (the drain after a reply): gunicorn handles it
            raise RequestTimedOut() from None
        finally:
            self.sock.settimeout(conn.write_timeout if own is None else own)


class EchoConn(TConn):  # type: ignore[misc]
    def __init__(self, worker: EchoThreadWorker, *args: Any) -> None:
        super().__init__(*args)
        self.worker = worker
        self.deadline = math.inf  # of the request being read
        self.write_timeout = worker.settings.idle_timeout
        self.drained = 0  # bytes dropped while lingering

    @overrides
    def init(self) -> None:
        fresh = self.parser is None
        super().init()
        if fresh:
            self.parser.unreader = DeadlineUnreader(self)

    @overrides
    def close(self, graceful: bool = False) -> None:
        if graceful:
            self.worker.linger(self)
        else:
            super().close()


class EchoThreadWorker(ThreadWorker):  # type: ignore[misc]
    settings: ClassVar[HttpSettings]

    @classmethod
    def configured(cls, settings: HttpSettings) -> type[EchoThreadWorker]:
        """This worker class, bound to one server start's settings (gunicorn takes a class)."""
        return type(cls.__name__, (cls,), {"settings": settings})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.busy: set[EchoConn] = set()  # on a thread now
        self.lingering: deque[EchoConn] = deque()  # closing, in deadline order

    @overrides
    def init_process(self) -> None:
        # The worker's own drain, to the fraction of a second (gunicorn's setting holds whole
        # seconds, and the master's copy is longer: gunicorn.EXIT_MARGIN). This is the
        # worker's copy of the configuration, after the fork.
        self.cfg.settings["graceful_timeout"].value = self.settings.drain_timeout
        self.watch = StopWatch(self.still_busy)
        super().init_process()

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)  # gunicorn's: the loop ends, the drain begins
        self.watch.arm(self.settings.drain_timeout)

    def still_busy(self) -> str:
        return (
            f"{len(self.busy)} request(s) on this worker's threads, in a request's work or writing "
            "to a socket shut down (a thread cannot be interrupted)"
        )

    # --- connections ---------------------------------------------------------

    @overrides
    def accept(self, listener: socket.socket) -> None:
        """A new connection waits for its first byte in the poller, not on a thread."""
        try:
            sock, address = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                return
            raise
        self.nr_conns += 1
        conn = EchoConn(self, self.cfg, sock, address, listener.getsockname())
        conn.timeout = time.monotonic() + self.settings.idle_timeout
        self.pending_conns.append(conn)
        self.poller.register(sock, selectors.EVENT_READ, partial(self.on_pending_socket_readable, conn))

    @overrides
    def handle(self, conn: EchoConn) -> Any:
        # The poller saw the request's first byte: its deadline starts now.
        conn.deadline = time.monotonic() + self.settings.request_timeout
        self.busy.add(conn)
        try:
            return super().handle(conn)
        finally:
            self.busy.discard(conn)
            conn.deadline = math.inf

    @overrides
    def _keepalive_after(self, conn: EchoConn, keepalive: bool) -> bool:
        conn.deadline = math.inf  # replied: what is left of the body is gunicorn's drain, with its own limit
        return bool(super()._keepalive_after(conn, keepalive))

    @overrides
    def handle_request(self, req: Any, conn: EchoConn) -> bool:
        try:
            return bool(super().handle_request(req, conn))
        except TimeoutError:
            self.log.debug("Client not reading its reply for %gs: closing", conn.write_timeout)
            return False

    @overrides
    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: BaseException) -> None:
        if not isinstance(exc, RequestTimedOut):
            super().handle_error(req, client, addr, exc)
            return
        self.log.debug("Request timeout: not whole %gs after its first byte", self.settings.request_timeout)
        try:
            util.write_error(client, 408, "Request Timeout", "")
        except OSError:
            self.log.debug("Failed to send error message.")

    @staticmethod
    def _woken(pipe: int) -> None:
        """A signal came: drop its wakeup bytes; the poll returning is all it was for."""
        with contextlib.suppress(BlockingIOError):
            os.read(pipe, 4096)

    # --- closing ---------------------------------------------------------------

    def linger(self, conn: EchoConn) -> None:
        """gunicorn's graceful close, in the poller: stop writing, drop what comes, close at EOF or later."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            util.close(conn.sock)
            return
        conn.sock.setblocking(False)
        conn.timeout = time.monotonic() + LINGER_SECONDS
        self.lingering.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._drop_input, conn))

    def _drop_input(self, conn: EchoConn, sock: socket.socket) -> None:
        try:
            data = sock.recv(LINGER_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        conn.drained += len(data)
        if not data or conn.drained >= LINGER_BYTES:
            self._end_linger(conn)

    def _end_linger(self, conn: EchoConn) -> None:
        try:
            self.lingering.remove(conn)
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        util.close(conn.sock)

    @overrides
    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        while self.lingering and self.lingering[0].timeout <= now:
            self._end_linger(self.lingering[0])

    @overrides
    def _cap_keepalive(self, deadline: float) -> None:
        # Stopping: connections still waiting for their first byte get the kept-alive ones' grace.
        super()._cap_keepalive(deadline)
        for conn in self.pending_conns:
            conn.timeout = min(conn.timeout, deadline)

    @overrides
    def run(self) -> None:
        # gunicorn points the signals' wakeup fd at PIPE[1], but gthread does not poll PIPE[0]: a
        # SIGTERM was seen at the poll's next timeout, up to a second later (Python retries an
        # interrupted poll), and never sooner if one of the pool's threads took it.
        self.poller.register(self.PIPE[0], selectors.EVENT_READ, self._woken)
        # gunicorn logs "Booting worker" before the worker takes signals; from here a SIGTERM drains it
        # (uvicorn's worker says so with "Application startup complete.").
        self.log.info("Worker ready (pid: %s)", self.pid)
        super().run()
        # The drain is over: drop the requests still queued for a thread (gunicorn's shutdown leaves
        # them to run as the process exits), and cut those on a thread (a client stalled mid-request,
        # or not reading its reply), so that every thread ends and the process exits now.
        self.tpool.shutdown(wait=False, cancel_futures=True)
        for conn in list(self.busy):
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
