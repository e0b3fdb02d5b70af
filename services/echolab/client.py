"""A blocking client for the echo protocol, on plain sockets.

Plain blocking sockets are what gevent patches, so the Locust users run this
same code cooperatively; the tests use it directly. (The benchmark client,
``bench.py``, is an asyncio one: it needs thousands of connections from one
thread.)
"""

from __future__ import annotations

import socket

from .protocol import NEWLINE, expected_reply, is_error, request_bytes

RECV_SIZE = 65536


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
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "reset"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout"
    return "other"


class EchoClient:
    """One client: a persistent connection for ``lines``, one per request for ``oneshot``."""

    def __init__(self, host: str, port: int, framing: str = "lines",
                 connect_timeout: float = 5.0, timeout: float = 10.0) -> None:
        self.address = (host, port)
        self.framing = framing
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""

    def request(self, message: bytes) -> bytes:
        """Send ``message``, return the reply as sent (with its newline in ``lines``).

        Raises an EchoError subclass for a wrong or error reply, OSError for
        the network; after any error the connection is dropped, and the next
        request reconnects.
        """
        try:
            reply = self._exchange(request_bytes(message, self.framing))
        except BaseException:
            self.close()
            raise
        if reply != expected_reply(message, self.framing):
            self.close()
            if is_error(reply):
                raise ServerError(reply.decode("utf-8", "replace").strip())
            raise WrongReply(f"sent {message[:40]!r}, got {reply[:40]!r}")
        return reply

    def _exchange(self, payload: bytes) -> bytes:
        if self.framing == "oneshot":
            with self._connect() as sock:
                sock.sendall(payload)
                return read_to_eof(sock)
        if self._sock is None:
            self._sock = self._connect()
        self._sock.sendall(payload)
        return self._read_line(self._sock)

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=self.connect_timeout)
        sock.settimeout(self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _read_line(self, sock: socket.socket) -> bytes:
        while NEWLINE not in self._buffer:
            chunk = sock.recv(RECV_SIZE)
            if not chunk:
                raise ClosedEarly(f"connection closed after {len(self._buffer)} bytes of a reply")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(NEWLINE)
        return line + NEWLINE

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buffer = b""

    def __enter__(self) -> EchoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_to_eof(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(RECV_SIZE):
        chunks.append(chunk)
    return b"".join(chunks)
