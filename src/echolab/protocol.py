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
ERROR_REQUEST_TIMEOUT = b"ERROR request timeout\n"
ERROR_DEPENDENCY = b"ERROR dependency\n"  # the request's database or downstream call failed (--io)


class MessageTooLarge(Exception):
    """The next request (or the unfinished line being buffered) exceeds the limit.

    Framers hand out requests one at a time, so the requests before the long
    one have been taken, and answered, by the time it is found.
    """

    def __init__(self) -> None:
        super().__init__("message too large")


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
    """Splits a byte stream into ``\\n``-terminated requests, one at a time.

    What a server has read is kept whole, and a request is cut out of it only
    when the server takes it (:meth:`next`): a read of 256 KB of two-byte
    lines costs 256 KB while it waits, not 128,000 bytes objects and the list
    holding them (some 7 MB).
    """

    closes_after_reply = False
    delimiter = NEWLINE

    __slots__ = ("_buffer", "_start", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buffer = b""
        self._start = 0  # where the requests not yet taken begin in _buffer

    def feed(self, data: bytes) -> int:
        """Keep ``data``; return how many requests it completes."""
        if self._start < len(self._buffer):
            self._buffer = self._buffer[self._start :] + data
        else:
            self._buffer = data
        self._start = 0
        return data.count(NEWLINE)

    def next(self) -> bytes | None:
        """The next request, without its ``\\n``; None until one is complete.

        MessageTooLarge if it is over the limit, or if the unfinished line already is.
        """
        buffer, start = self._buffer, self._start
        end = buffer.find(NEWLINE, start)
        if end < 0:
            if len(buffer) - start > self.max_size:
                raise MessageTooLarge
            return None
        if end - start > self.max_size:
            raise MessageTooLarge
        self._start = end + 1
        return buffer[start:end]

    @property
    def buffered(self) -> int:
        """Bytes kept and not yet taken: whole requests, then the unfinished line."""
        return len(self._buffer) - self._start

    def clear(self) -> None:
        """Drop what is kept: the connection ends without answering it."""
        self._buffer, self._start = b"", 0


class OneshotFramer(_Framer):
    """The article's protocol: the first read is the whole message."""

    closes_after_reply = True
    delimiter = b""

    __slots__ = ("_message", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._message: bytes | None = None

    def feed(self, data: bytes) -> int:
        self._message = data
        return 1

    def next(self) -> bytes | None:
        message, self._message = self._message, None
        if message is not None and len(message) > self.max_size:
            raise MessageTooLarge
        return message

    @property
    def buffered(self) -> int:
        return len(self._message) if self._message is not None else 0

    def clear(self) -> None:
        self._message = None


Framer = LineFramer | OneshotFramer


def make_framer(framing: str, max_size: int) -> Framer:
    if framing == "lines":
        return LineFramer(max_size)
    if framing == "oneshot":
        return OneshotFramer(max_size)
    raise ValueError(f"unknown framing {framing!r}")


HTTP_PATH = "/echo"
HEALTH_PATH = "/healthz"  # the HTTP servers' GET: ok once a worker serves
# The article's message: lower case, so that a server that does not transform it is caught.
SAMPLE = b"the quick brown fox jumps over the lazy dog "


def sample_message(size: int) -> bytes:
    """The request a load generator sends: ``size`` bytes of :data:`SAMPLE`, repeated."""
    return (SAMPLE * (size // len(SAMPLE) + 1))[:size]


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
