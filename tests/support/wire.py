"""Talking to a TCP echo server by hand: framing a message, reading lines, resetting."""

from __future__ import annotations

import socket
import struct

from echolab.protocol import request_bytes


def framed(message: bytes, framing: str) -> bytes:
    """``message`` as it travels in ``framing``: a request, or a reply (the transform aside)."""
    return request_bytes(message, framing)


def wire_bytes(messages: list[bytes], framing: str) -> int:
    return sum(len(framed(m, framing)) for m in messages)


class Connection:
    """A blocking client socket with a read buffer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        """The next line, with its newline; what is left (maybe b"") if the server closes first."""
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                rest, self.buffer = self.buffer, b""
                return rest
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"

    def read_to_eof(self) -> bytes:
        chunks = [self.buffer]
        self.buffer = b""
        while chunk := self.sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)

    def outcome(self) -> bytes | str:
        """Everything until the server closes, or the kind of error that ended it."""
        try:
            return self.read_to_eof()
        except ConnectionResetError:
            return "reset"
        except TimeoutError:
            return "timeout"

    def reset(self) -> None:
        """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
