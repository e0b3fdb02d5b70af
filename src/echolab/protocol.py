"""The echo protocol: framing and transform, shared by every server and client.

Two framings:

* ``oneshot`` (the article's protocol): the bytes of the connection's first
  read are the message; the reply is the transformed message, then the server
  closes. There is no delimiter, so the client knows the reply is complete
  when the connection closes.
* ``lines``: a persistent connection; every ``\\n``-terminated line is a
  request and gets one reply line, in order.

Errors are one line starting with ``ERROR `` followed by lower-case words.
A real reply can never look like that: the transform upper-cases every
ASCII letter, so a line with a lower-case ASCII letter is always an error.
"""

from __future__ import annotations

NEWLINE = b"\n"
ERROR_PREFIX = b"ERROR "
ERROR_TOO_LARGE = b"ERROR message too large\n"
ERROR_BUSY = b"ERROR too many connections\n"
ERROR_SHUTTING_DOWN = b"ERROR server shutting down\n"


class MessageTooLarge(Exception):
    """A request (or the unfinished line being buffered) exceeds the limit.

    ``complete`` holds the requests that arrived before the long one, so a
    server can still answer them, in order, before the error line.
    """

    def __init__(self, complete: list[bytes]) -> None:
        super().__init__("message too large")
        self.complete = complete


def transform(message: bytes) -> tuple[bytes, bool]:
    """Upper-case ``message``; the flag says whether it was valid UTF-8.

    Valid UTF-8 is upper-cased as text (``str.upper``: "straße" becomes
    "STRASSE"); anything else is upper-cased as bytes, ASCII letters only, so
    no input can make the transform fail.
    """
    if message.isascii():
        return message.upper(), True
    try:
        return message.decode("utf-8").upper().encode("utf-8"), True
    except UnicodeDecodeError:
        return message.upper(), False


def is_error(reply: bytes) -> bool:
    return reply.startswith(ERROR_PREFIX) and reply != reply.upper()


class _Framer:
    __slots__ = ()
    closes_after_reply: bool
    delimiter: bytes

    def respond(self, messages: list[bytes]) -> tuple[bytes, int, int]:
        """The reply to ``messages``, their size on the wire, how many were not UTF-8."""
        delimiter = self.delimiter
        if len(messages) == 1 and messages[0].isascii():  # the common case, made cheap
            message = messages[0]
            return message.upper() + delimiter, len(message) + len(delimiter), 0
        replies = []
        non_utf8 = 0
        received = 0
        for message in messages:
            reply, valid = transform(message)
            replies.append(reply)
            non_utf8 += not valid
            received += len(message)
        # No requests, no reply: not even a lone delimiter (an empty line is a request).
        payload = delimiter.join(replies) + delimiter if replies else b""
        return payload, received + len(delimiter) * len(messages), non_utf8


class LineFramer(_Framer):
    """Splits a byte stream into ``\\n``-terminated requests."""

    closes_after_reply = False
    delimiter = NEWLINE

    __slots__ = ("_partial", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._partial = b""

    @property
    def has_partial(self) -> bool:
        return bool(self._partial)

    def feed(self, data: bytes) -> list[bytes]:
        """Return the lines completed by ``data``, without their ``\\n``."""
        if self._partial:
            data = self._partial + data
        lines = data.split(NEWLINE)
        self._partial = lines.pop()
        limit = self.max_size
        if len(data) > limit:  # otherwise no line can be over it: skip the scan
            for index, line in enumerate(lines):
                if len(line) > limit:
                    raise MessageTooLarge(lines[:index])
            if len(self._partial) > limit:
                raise MessageTooLarge(lines)
        return lines


class OneshotFramer(_Framer):
    """The article's protocol: the first read is the whole message."""

    closes_after_reply = True
    delimiter = b""
    has_partial = False

    __slots__ = ("max_size",)

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size

    def feed(self, data: bytes) -> list[bytes]:
        if len(data) > self.max_size:
            raise MessageTooLarge([])
        return [data]


Framer = LineFramer | OneshotFramer


def make_framer(framing: str, max_size: int) -> Framer:
    if framing == "lines":
        return LineFramer(max_size)
    if framing == "oneshot":
        return OneshotFramer(max_size)
    raise ValueError(f"unknown framing {framing!r}")


HTTP_PATH = "/echo"


def request_bytes(message: bytes, framing: str) -> bytes:
    """What a client sends for ``message`` (``http``: a keep-alive POST to the HTTP servers)."""
    if framing == "http":
        head = (
            f"POST {HTTP_PATH} HTTP/1.1\r\nHost: echolab\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(message)}\r\n\r\n"
        )
        return head.encode("ascii") + message
    return message + NEWLINE if framing == "lines" else message


def expected_reply(message: bytes, framing: str) -> bytes:
    """What a correct server answers to ``message`` (``http``: the response body)."""
    reply, _ = transform(message)
    return reply + NEWLINE if framing == "lines" else reply
