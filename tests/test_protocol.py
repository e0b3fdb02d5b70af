"""protocol.py: framing and transform, by example and by property (hypothesis)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from echolab.protocol import (
    ERROR_BUSY,
    ERROR_REQUEST_TIMEOUT,
    ERROR_SHUTTING_DOWN,
    ERROR_TOO_LARGE,
    LineFramer,
    MessageTooLarge,
    OneshotFramer,
    is_error,
    make_framer,
    transform,
)

# Bytes rich in newlines and in the bytes UTF-8 cares about.
STREAM_BYTES = st.binary(max_size=300) | st.lists(
    st.sampled_from([b"\n", b"a", b"Z", b"\xc3\x9f", b"\xff", b"\xe2\x82", b" ", b"\n\n"]), max_size=80
).map(b"".join)
MAX_SIZES = st.integers(min_value=0, max_value=40)
# One test's worth of hypothesis, without a per-example deadline (CI machines are slow).
PROPERTY = settings(deadline=None)


def take_all(framer: LineFramer | OneshotFramer) -> list[bytes]:
    """The requests the framer has whole, taken as a server takes them."""
    taken = []
    while (message := framer.next()) is not None:
        taken.append(message)
    return taken


def feed_all(framer: LineFramer, chunks: list[bytes]) -> tuple[list[bytes], bool]:
    """The lines ``chunks`` yield, and whether the framer gave up on one too long."""
    lines: list[bytes] = []
    for chunk in chunks:
        completed = framer.feed(chunk)
        try:
            while (line := framer.next()) is not None:
                lines.append(line)
                completed -= 1
        except MessageTooLarge:
            return lines, True
        assert completed == 0  # the count fed says how many lines were taken
    return lines, False


@pytest.mark.parametrize(
    ("message", "reply", "valid"),
    [
        (b"", b"", True),
        (b"hello", b"HELLO", True),
        ("straße".encode(), b"STRASSE", True),
        ("ﬁ".encode(), b"FI", True),
        ("ǆ".encode(), "Ǆ".encode(), True),
        (b"caf\xe9", b"CAF\xe9", False),
        (b"\xff\xfeabc", b"\xff\xfeABC", False),
    ],
)
def test_transform_examples(message, reply, valid):
    assert transform(message) == (reply, valid)


@pytest.mark.parametrize("error", [ERROR_TOO_LARGE, ERROR_BUSY, ERROR_SHUTTING_DOWN, ERROR_REQUEST_TIMEOUT])
def test_error_lines_are_errors(error):
    assert is_error(error)
    assert error.endswith(b"\n")


@pytest.mark.parametrize(
    ("stream", "lines", "partial"),
    [
        (b"", [], 0),
        (b"\n", [b""], 0),
        (b"a\nb\n", [b"a", b"b"], 0),
        (b"a\nbc", [b"a"], 2),
        (b"\r\n", [b"\r"], 0),  # only \n ends a line
    ],
)
def test_line_framer_examples(stream, lines, partial):
    framer = LineFramer(100)
    assert framer.feed(stream) == len(lines)
    assert framer.buffered == len(stream)  # nothing is cut out until it is taken
    assert take_all(framer) == lines
    assert framer.buffered == partial


def test_line_framer_keeps_what_is_not_taken_across_reads():
    framer = LineFramer(100)
    assert framer.feed(b"one\ntw") == 1
    assert framer.feed(b"o\nthr") == 1
    assert take_all(framer) == [b"one", b"two"]
    assert framer.feed(b"ee\n") == 1
    assert take_all(framer) == [b"three"]
    assert framer.buffered == 0


def test_line_framer_limit_is_inclusive():
    framer = LineFramer(3)
    framer.feed(b"abc\nok\nabcd\nlater\n")
    assert framer.next() == b"abc"
    assert framer.next() == b"ok"  # the lines before the long one are taken first
    with pytest.raises(MessageTooLarge):
        framer.next()
    unfinished = LineFramer(3)
    unfinished.feed(b"abcd")
    with pytest.raises(MessageTooLarge):
        unfinished.next()  # no newline needed to know


def test_oneshot_framer():
    framer = OneshotFramer(3)
    assert framer.feed(b"abc") == 1
    assert framer.buffered == 3
    assert take_all(framer) == [b"abc"]
    framer.feed(b"abcd")
    with pytest.raises(MessageTooLarge):
        framer.next()
    assert OneshotFramer(3).respond([b"abc"]) == (b"ABC", 3, 0)


def test_make_framer():
    assert isinstance(make_framer("lines", 1), LineFramer)
    assert isinstance(make_framer("oneshot", 1), OneshotFramer)
    with pytest.raises(ValueError):
        make_framer("http/9", 1)


@PROPERTY
@given(STREAM_BYTES, MAX_SIZES, st.data())
def test_byte_by_byte_equals_all_at_once(stream, max_size, data):
    at_once = feed_all(LineFramer(max_size), [stream])
    byte_by_byte = feed_all(LineFramer(max_size), [stream[i : i + 1] for i in range(len(stream))])
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    bounds = [0, *cuts, len(stream)]
    any_chunks = feed_all(LineFramer(max_size), [stream[a:b] for a, b in itertools.pairwise(bounds)])
    assert at_once == byte_by_byte == any_chunks


@PROPERTY
@given(STREAM_BYTES, MAX_SIZES)
def test_lines_never_exceed_the_limit(stream, max_size):
    lines, too_large = feed_all(LineFramer(max_size), [stream])
    assert all(len(line) <= max_size for line in lines)
    assert all(b"\n" not in line for line in lines)
    # Too large exactly when some line, or the unfinished rest, is over the limit.
    assert too_large == any(len(part) > max_size for part in stream.split(b"\n"))
    if not too_large:
        assert lines == stream.split(b"\n")[:-1]


@PROPERTY
@given(st.binary() | st.text().map(str.encode))
def test_transform_never_raises_and_is_idempotent(message):
    reply, valid = transform(message)
    assert valid == _is_utf8(message)
    assert reply.upper() == reply  # no lower-case ASCII letter left
    assert transform(reply)[0] == reply
    assert not is_error(reply)
    assert not is_error(reply + b"\n")


@PROPERTY
@given(st.lists(st.binary(max_size=50).map(lambda b: b.replace(b"\n", b"")), max_size=10))
def test_respond_counts_bytes_and_non_utf8(messages):
    framer = LineFramer(1000)
    payload, received, non_utf8 = framer.respond(messages)
    assert received == sum(len(m) + 1 for m in messages)
    assert payload == b"".join(transform(m)[0] + b"\n" for m in messages)
    assert payload.count(b"\n") == len(messages)
    assert non_utf8 == sum(not _is_utf8(m) for m in messages)
    for line in payload.split(b"\n")[:-1]:
        assert not is_error(line + b"\n")


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
