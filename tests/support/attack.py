"""Hostile clients for the tests: raw HTTP, floods nobody reads, trickles; the server's memory."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Iterator

import psutil

from .servers import HOST
from .waiting import TIMEOUT

MiB = 1 << 20


def tree_rss(pid: int) -> int:
    """Resident memory of a server's processes (a gunicorn master and its workers), summed."""
    total = 0
    process = psutil.Process(pid)
    for member in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += member.memory_info().rss
    return total


def workers(pid: int) -> set[int]:
    return {child.pid for child in psutil.Process(pid).children()}


def connect(port: int, timeout: float = TIMEOUT) -> socket.socket:
    return socket.create_connection((HOST, port), timeout=timeout)


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes; a reset after the data ends it too."""
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status(sock: socket.socket) -> int:
    """The status of the one response the server sends before it closes (0: none)."""
    head = read_all(sock)
    return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0


def request_status(port: int, data: bytes) -> int:
    """Send ``data`` on a new connection; the status of the response."""
    with connect(port) as sock:
        with contextlib.suppress(OSError):  # the server may stop reading and close first
            sock.sendall(data)
        return status(sock)


def post(body: bytes, close: bool = False) -> bytes:
    connection = b"Connection: close\r\n" if close else b""
    return b"POST /echo HTTP/1.1\r\nHost: echolab\r\n%sContent-Length: %d\r\n\r\n%s" % (
        connection,
        len(body),
        body,
    )


def flood(socks: list[socket.socket], data: bytes, budget: int, stall: float = 1.0) -> int:
    """Write ``data`` again and again to every socket, never reading, until each has taken
    ``budget`` bytes or has taken nothing for ``stall`` seconds; return the bytes they took."""
    sent = dict.fromkeys(socks, 0)
    progress = dict.fromkeys(socks, time.monotonic())
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_WRITE)

        def done(sock: socket.socket) -> None:
            selector.unregister(sock)
            del progress[sock]

        while progress:
            # Until a socket can take more, or the first stall is due: no spinning on full buffers.
            wait = min(progress.values()) + stall - time.monotonic()
            for key, _ in selector.select(max(0.0, wait)):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    sent[sock] += sock.send(data)
                    progress[sock] = time.monotonic()
                except BlockingIOError:
                    pass
                except OSError:  # the server ended it
                    done(sock)
                    continue
                if sent[sock] >= budget:
                    done(sock)
            now = time.monotonic()
            for sock in [s for s, last in progress.items() if now - last > stall]:
                done(sock)
    return sum(sent.values())


class Trickle(threading.Thread):
    """Sends ``data`` a byte every ``every`` seconds, until the server stops it (or ``data`` ends)."""

    def __init__(self, sock: socket.socket, data: bytes, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.sock, self.data, self.every = sock, data, every
        self.sent = 0
        self.halt = threading.Event()

    def run(self) -> None:
        with contextlib.suppress(OSError):
            while self.sent < len(self.data) and not self.halt.wait(self.every):
                self.sock.sendall(self.data[self.sent : self.sent + 1])
                self.sent += 1


@contextlib.contextmanager
def trickling(port: int, data: bytes, every: float = 0.1) -> Iterator[Trickle]:
    trickle = Trickle(connect(port), data, every)
    trickle.start()
    try:
        yield trickle
    finally:
        trickle.halt.set()
        trickle.join()
        trickle.sock.close()


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a Content-Length: its status and body. It reads nothing past
    them, so a pipelined response that came in the same packet is left for the next call."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)  # a head is a few hundred bytes: one at a time is cheap enough here
        if not byte:
            raise ConnectionError(f"closed after {head!r}")
        head += byte
    fields = dict(line.lower().split(b":", 1) for line in head[:-4].split(b"\r\n")[1:])
    length = int(fields[b"content-length"])
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            raise ConnectionError("closed mid-body")
        body += chunk
    return int(head.split(b" ", 2)[1]), body


def is_open(sock: socket.socket) -> bool:
    """Whether the server has not closed ``sock`` (unread data aside), without waiting."""
    timeout = sock.gettimeout()
    sock.setblocking(False)  # with a timeout, even a MSG_DONTWAIT recv polls for it first
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.settimeout(timeout)


def established(pid: int, port: int) -> int:
    """Connections the server's processes hold on ``port``."""
    count = 0
    process = psutil.Process(pid)
    for member in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            count += sum(
                1
                for c in member.net_connections(kind="tcp")
                if c.laddr and c.laddr.port == port and c.raddr and c.status == psutil.CONN_ESTABLISHED
            )
    return count
