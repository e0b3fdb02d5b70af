"""A blocking client for the echo protocol, on plain sockets.

Plain blocking sockets are what gevent patches, so the Locust users run this
same code cooperatively; the tests use it directly. (The benchmark client,
``echolab.load.bench``, is an asyncio one: it needs thousands of connections from one
thread.)
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from ..protocol import NEWLINE, expected_reply, is_error, request_bytes

RECV_SIZE = 65536
# No route to the server: a host or network that is down (or, as socket.gaierror, a name
# that resolves nowhere).
UNREACHABLE = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN})


class EchoError(Exception):
    """The server answered, but not with the right reply."""

    kind = "echo_error"


class WrongReply(EchoError):
    kind = "wrong_reply"


class ServerError(EchoError):
    """The server sent an ``ERROR ...`` line (too large, too many connections...)."""

    kind = "server_error"


class ClosedEarly(EchoError):
    """The connection closed before a whole reply arrived."""

    kind = "closed"


def failure_kind(exc: BaseException) -> str:
    """A short, bounded name for what went wrong, for metrics and reports."""
    if isinstance(exc, EchoError):
        return exc.kind
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, socket.gaierror) or (isinstance(exc, OSError) and exc.errno in UNREACHABLE):
        return "unreachable"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "reset"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout"
    return "other"


class EchoClient:
    """One client: a persistent connection for ``lines``, one per request for ``oneshot``.

    ``timeout`` bounds each blocking read or write; None leaves that to the
    caller (the Locust user arms one timer per request instead).
    """

    def __init__(
        self,
        host: str,
        port: int,
        framing: str = "lines",
        connect_timeout: float = 5.0,
        timeout: float | None = 10.0,
    ) -> None:
        self.address = (host, port)
        self.framing = framing
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""
        # (message, framing, bytes to send, expected reply) of the last request:
        # a load generator sends the same message over and over.
        self._last: tuple[bytes, str, bytes, bytes] = (b"", "", b"", b"")
        self._addresses: list[tuple[Any, ...]] | None = None

    def request(self, message: bytes) -> bytes:
        """Send ``message``, return the reply as sent (with its newline in ``lines``).

        Raises an EchoError subclass for a wrong or error reply, OSError for
        the network; after any error the connection is dropped, and the next
        request reconnects.
        """
        last = self._last
        if last[0] is not message or last[1] != self.framing:
            framing = self.framing
            last = self._last = (
                message,
                framing,
                request_bytes(message, framing),
                expected_reply(message, framing),
            )
        try:
            reply = self._exchange(last[2])
        except BaseException:
            self.close()
            raise
        if reply != last[3]:
            self.close()
            if is_error(reply):
                raise ServerError(reply.decode("utf-8", "replace").strip())
            raise WrongReply(f"sent {message[:40]!r}, got {reply[:40]!r}")
        return reply

    def _exchange(self, payload: bytes) -> bytes:
        if self.framing == "oneshot":
            with self._connect() as conn:
                send(conn, payload)
                return read_to_eof(conn)
        sock = self._sock
        if sock is None:
            sock = self._connect()
            self._sock = sock
        send(sock, payload)
        return self._read_line(sock)

    def _connect(self) -> socket.socket:
        """``socket.create_connection``, but resolving the address once per client until an error.

        Under gevent every getaddrinfo is a trip through a thread pool, about
        0.1 ms: more than a whole ``oneshot`` request on loopback. A server
        that comes back elsewhere (a container restarted with a new address)
        is found again: after a failed connect, or any error (:meth:`close`),
        the next connect resolves anew.
        """
        if self._addresses is None:
            self._addresses = socket.getaddrinfo(*self.address, type=socket.SOCK_STREAM)
        error: OSError | None = None
        for family, kind, proto, _, sockaddr in self._addresses:
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(self.connect_timeout)
                sock.connect(sockaddr)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            sock.settimeout(self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        assert error is not None  # getaddrinfo returns at least one address or raises
        self._addresses = None
        raise error

    def _read_line(self, sock: socket.socket) -> bytes:
        buffer = self._buffer
        end = buffer.find(NEWLINE) + 1
        while not end:
            chunk = sock.recv(RECV_SIZE)
            if not chunk:
                self._buffer = buffer
                raise ClosedEarly(f"connection closed after {len(buffer)} bytes of a reply")
            buffer = buffer + chunk if buffer else chunk
            end = buffer.find(NEWLINE) + 1
        if end == len(buffer):  # the usual case: one whole reply, nothing to copy
            self._buffer = b""
            return buffer
        self._buffer = buffer[end:]
        return buffer[:end]

    def close(self) -> None:
        """Drop the connection, and the address: the server may be elsewhere by the next connect.

        A container recreated (``make scenario``, ``make up`` after an edit)
        comes back at a new address, and its old one may go to another
        server: reconnecting to it would load the wrong server, unnoticed.
        """
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buffer = b""
        self._addresses = None

    def __enter__(self) -> EchoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def send(sock: socket.socket, payload: bytes) -> None:
    """``sendall``, but a short payload, nearly always sent whole by one ``send``, costs one call.

    gevent's ``sendall`` on a socket with a timeout costs a getsockopt and a
    deadline computation per call: about a third of a Locust user's request.
    """
    sent = sock.send(payload)
    if sent < len(payload):
        sock.sendall(payload[sent:])


def read_to_eof(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(RECV_SIZE):
        chunks.append(chunk)
    return b"".join(chunks)
