"""The behavioural suite: every test runs against every server x model x framing (see conftest).

Replies are checked against literal bytes, not against ``protocol.transform``,
so a transform bug cannot hide behind itself; /metrics is checked for exactly
the counts each test caused.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support.wire import framed, wire_bytes

ARTICLE_CLIENT = Path(__file__).parents[1] / "support" / "article_client.py"
ARTICLE_MESSAGE = "the quick brown fox jumps over the lazy dog"

CASES = [
    # (request, reply): the message without framing
    (b"hello", b"HELLO"),
    (b"the quick brown fox jumps over the lazy dog", b"THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG"),
    (b"MiXeD cAsE 123 !?#", b"MIXED CASE 123 !?#"),
    (b"ALREADY UPPER", b"ALREADY UPPER"),
    (b"tab\tand spaces  ", b"TAB\tAND SPACES  "),
    (b"x" * 5000, b"X" * 5000),
]
CASE_IDS = ["word", "sentence", "mixed-case", "upper-case", "whitespace", "5000-bytes"]
UNICODE_CASES = [
    ("straße", "STRASSE"),  # one letter becomes two: the reply is longer in characters
    ("héllo wörld", "HÉLLO WÖRLD"),
    ("σοφία", "ΣΟΦΊΑ"),
    ("ﬁne", "FINE"),  # a ligature expands
    ("emoji 🙂 stays", "EMOJI 🙂 STAYS"),
    ("日本語", "日本語"),  # no case at all
]
INVALID_UTF8_CASES = [
    (b"caf\xe9 au lait", b"CAF\xe9 AU LAIT"),  # Latin-1, not UTF-8
    (b"\xff\xfe binary", b"\xff\xfe BINARY"),
    (b"cut \xc3", b"CUT \xc3"),  # a truncated sequence
    (b"\xed\xa0\x80 surrogate", b"\xed\xa0\x80 SURROGATE"),  # UTF-8-encoded surrogates are invalid
]


@pytest.mark.parametrize(("message", "reply"), CASES, ids=CASE_IDS)
def test_answers_correctly(tcp_server, variant, message, reply):
    before = tcp_server.scrape()
    assert tcp_server.exchange(message) == framed(reply, variant.framing)
    delta = tcp_server.idle_metrics() - before
    expected = {
        'echo_requests_total{outcome="ok"}': 1,
        'echo_requests_total{outcome="too_large"}': 0,
        'echo_requests_total{outcome="aborted"}': 0,
        "echo_connections_opened_total": 1,
        "echo_received_bytes_total": wire_bytes([message], variant.framing),
        "echo_sent_bytes_total": wire_bytes([reply], variant.framing),
        "echo_request_duration_seconds_count": 1,
        "echo_non_utf8_requests_total": 0,
        "echo_connection_errors_total": 0,
    }
    assert delta.counts(expected) == expected


@pytest.mark.framing("lines")
def test_connection_is_persistent(tcp_server):
    before = tcp_server.scrape()
    with tcp_server.connect() as conn:
        for request, reply in CASES:
            conn.send(request + b"\n")
            assert conn.line() == reply + b"\n"
    delta = tcp_server.idle_metrics() - before
    expected = {'echo_requests_total{outcome="ok"}': len(CASES), "echo_connections_opened_total": 1}
    assert delta.counts(expected) == expected


def test_unicode_is_upper_cased_as_text(tcp_server, variant):
    before = tcp_server.scrape()
    for text, upper in UNICODE_CASES:
        assert tcp_server.exchange(text.encode()) == framed(upper.encode(), variant.framing)
    delta = tcp_server.idle_metrics() - before
    requests = [t.encode() for t, _ in UNICODE_CASES]
    replies = [u.encode() for _, u in UNICODE_CASES]
    expected = {
        'echo_requests_total{outcome="ok"}': len(UNICODE_CASES),
        "echo_non_utf8_requests_total": 0,
        "echo_received_bytes_total": wire_bytes(requests, variant.framing),
        "echo_sent_bytes_total": wire_bytes(replies, variant.framing),
    }
    assert delta.counts(expected) == expected


def test_invalid_utf8_is_upper_cased_as_bytes(tcp_server, variant):
    before = tcp_server.scrape()
    for request, reply in INVALID_UTF8_CASES:
        assert tcp_server.exchange(request) == framed(reply, variant.framing)
    delta = tcp_server.idle_metrics() - before
    expected = {
        'echo_requests_total{outcome="ok"}': len(INVALID_UTF8_CASES),
        "echo_non_utf8_requests_total": len(INVALID_UTF8_CASES),
        "echo_received_bytes_total": wire_bytes([r for r, _ in INVALID_UTF8_CASES], variant.framing),
    }
    assert delta.counts(expected) == expected


@pytest.mark.framing("lines")
def test_empty_lines_are_requests(tcp_server):
    before = tcp_server.scrape()
    with tcp_server.connect() as conn:
        conn.send(b"\n")
        assert conn.line() == b"\n"
        conn.send(b"a\n\n\nb\n")
        assert [conn.line() for _ in range(4)] == [b"A\n", b"\n", b"\n", b"B\n"]
    delta = tcp_server.idle_metrics() - before
    expected = {
        'echo_requests_total{outcome="ok"}': 5,
        "echo_received_bytes_total": 7,
        "echo_sent_bytes_total": 7,
    }
    assert delta.counts(expected) == expected


SMALL_LIMIT = ("--max-message-bytes", "100")


def test_message_over_the_limit_gets_an_error_and_a_close(variant_server, variant):
    server = variant_server(*SMALL_LIMIT)
    before = server.scrape()
    # At the limit is fine.
    assert server.exchange(b"y" * 100) == framed(b"Y" * 100, variant.framing)
    with server.connect() as conn:
        if variant.framing == "lines":
            # The lines before the long one are still answered, in order.
            conn.send(b"first\n" + b"z" * 101 + b"\nnever answered\n")
            assert conn.line() == b"FIRST\n"
        else:
            conn.send(b"z" * 101)
        assert conn.line() == b"ERROR message too large\n"
        assert conn.read_to_eof() == b""
    delta = server.idle_metrics() - before
    answered = 2 if variant.framing == "lines" else 1
    expected = {
        'echo_requests_total{outcome="ok"}': answered,
        'echo_requests_total{outcome="too_large"}': 1,
        "echo_connections_opened_total": 2,
    }
    assert delta.counts(expected) == expected


@pytest.mark.framing("lines")
def test_unterminated_line_over_the_limit_is_refused_without_waiting_for_its_end(variant_server):
    server = variant_server(*SMALL_LIMIT)
    before = server.scrape()
    with server.connect() as conn:
        conn.send(b"w" * 150)  # no newline, and none will come
        assert conn.line() == b"ERROR message too large\n"
        assert conn.read_to_eof() == b""
    delta = server.idle_metrics() - before
    assert delta.query('echo_requests_total{outcome="too_large"}') == 1


@pytest.mark.framing("oneshot")
def test_oneshot_message_is_the_first_read_and_nothing_after(start_server, variant):
    """The article's protocol: bytes that arrive after the first read are not part of the message."""
    server = start_server(variant, "--delay-ms", "1000")
    before = server.scrape()
    with server.connect() as conn:
        conn.send(b"first read")
        server.wait_metrics(lambda m: m.value("echo_requests_in_flight") == 1)
        conn.send(b", then more")
        reply = b""
        with contextlib.suppress(ConnectionResetError):  # closed with ", then more" unread
            while chunk := conn.sock.recv(65536):
                reply += chunk
    assert reply == b"FIRST READ"
    delta = server.idle_metrics() - before
    expected = {'echo_requests_total{outcome="ok"}': 1, "echo_received_bytes_total": len(b"first read")}
    assert delta.counts(expected) == expected


@pytest.mark.framing("lines")
def test_pipelined_lines_keep_their_order(start_server, variant):
    # Each request's IO drawn at random: a server working on a connection's requests
    # side by side would answer the short ones first.
    server = start_server(variant, "--delay-ms", "1", "--delay-distribution", "exponential")
    before = server.scrape()
    messages = [f"request {i} {'ab' * (i % 7)}".encode() for i in range(300)]
    stream = b"".join(m + b"\n" for m in messages)
    with server.connect() as conn:
        # All at once, then in chunks that split lines at awkward places.
        conn.send(stream)
        assert [conn.line() for _ in messages] == [m.upper() + b"\n" for m in messages]
        for start in range(0, len(stream), 997):
            conn.send(stream[start : start + 997])
        assert [conn.line() for _ in messages] == [m.upper() + b"\n" for m in messages]
    delta = server.idle_metrics() - before
    expected = {
        'echo_requests_total{outcome="ok"}': 2 * len(messages),
        "echo_received_bytes_total": 2 * len(stream),
        "echo_sent_bytes_total": 2 * len(stream),
        "echo_request_duration_seconds_count": 2 * len(messages),
    }
    assert delta.counts(expected) == expected


@pytest.mark.framing("lines")
def test_pipelined_lines_each_get_their_own_work(tcp_server):
    """Lines sent in one write are worked on one after another, each with its own IO wait."""
    delay, count = 0.02, 5  # the tcp_server's --delay-ms
    before = tcp_server.scrape()
    with tcp_server.connect() as conn:
        sent = time.perf_counter()
        conn.send(b"".join(b"line %d\n" % i for i in range(count)))
        assert [conn.line() for _ in range(count)] == [b"LINE %d\n" % i for i in range(count)]
        elapsed = time.perf_counter() - sent
    delta = tcp_server.idle_metrics() - before
    expected = {'echo_requests_total{outcome="ok"}': count, "echo_request_duration_seconds_count": count}
    assert delta.counts(expected) == expected
    assert delta.query('echo_work_seconds_total{kind="io"}') == pytest.approx(count * delay)
    # One after another: the last reply waited for every IO before it. (Answered together,
    # after one delay, the batch would take one delay; a whole one is left as slack.)
    assert elapsed > (count - 1) * delay


def test_requests_sent_before_a_half_close_are_answered(tcp_server, variant):
    # `printf 'a\nb\n' | nc -N host port`: send everything, then shut down the sending side.
    messages = [b"first", b"second"] if variant.framing == "lines" else [b"only one"]
    with tcp_server.connect() as conn:
        conn.send(b"".join(framed(m, variant.framing) for m in messages))
        conn.sock.shutdown(socket.SHUT_WR)
        assert conn.read_to_eof() == b"".join(framed(m.upper(), variant.framing) for m in messages)


@pytest.mark.concurrent
def test_concurrent_clients(tcp_server, variant):
    before = tcp_server.scrape()
    clients, requests = 20, 5

    def client(number: int) -> list[bytes]:
        messages = [f"client {number} request {i}".encode() for i in range(requests)]
        if variant.framing == "oneshot":
            return [tcp_server.exchange(m) for m in messages]
        with tcp_server.connect() as conn:
            replies = []
            for message in messages:
                conn.send(message + b"\n")
                replies.append(conn.line())
            return replies

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(client, range(clients)))
    for number, replies in enumerate(results):
        expected = [framed(f"CLIENT {number} REQUEST {i}".encode(), variant.framing) for i in range(requests)]
        assert replies == expected
    delta = tcp_server.idle_metrics() - before
    assert delta.query('echo_requests_total{outcome="ok"}') == clients * requests


@pytest.mark.framing("oneshot")
def test_article_client_works_unchanged(tcp_server):
    connections = 50
    before = tcp_server.scrape()
    result = subprocess.run(
        [sys.executable, str(ARTICLE_CLIENT), tcp_server.address[0], str(tcp_server.port), str(connections)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    received = [line for line in result.stdout.splitlines() if line.startswith("Data received:")]
    assert received == [f"Data received: {ARTICLE_MESSAGE.upper()!r}"] * connections
    delta = tcp_server.idle_metrics() - before
    size = len(ARTICLE_MESSAGE)
    expected = {
        'echo_requests_total{outcome="ok"}': connections,
        "echo_connections_opened_total": connections,
        "echo_received_bytes_total": connections * size,
        "echo_sent_bytes_total": connections * size,
    }
    assert delta.counts(expected) == expected


@pytest.mark.every_loop  # the loop's transport sees the reset
def test_reset_mid_request_is_counted_and_harms_no_one(start_server, variant):
    # Long enough a delay to reset the connection while its request is in flight, on a machine
    # busy enough to take 300 ms between seeing the request in flight and the reset.
    server = start_server(variant, "--delay-ms", "1000")
    before = server.scrape()
    victim = server.connect()
    victim.send(framed(b"about to vanish", variant.framing))
    server.wait_metrics(lambda m: m.value("echo_requests_in_flight") == 1)
    victim.reset()
    assert server.exchange(b"still there?") == framed(b"STILL THERE?", variant.framing)
    delta = server.idle_metrics() - before
    expected = {
        'echo_requests_total{outcome="ok"}': 1,
        'echo_requests_total{outcome="aborted"}': 1,
        "echo_connections_opened_total": 2,
        "echo_connection_errors_total": 1,  # reset or broken pipe: who notices first varies
    }
    assert delta.counts(expected) == expected
