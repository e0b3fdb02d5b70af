"""Limits: deadlines, too many connections, running out of file descriptors (see also test_hostile)."""

from __future__ import annotations

import os
import resource

import pytest
from support.attack import trickling
from support.waiting import flag, poll_until, scaled
from support.wire import Connection, framed

IDLE = ("--idle-timeout", flag(2))
TWO_CONNECTIONS = ("--max-connections", "2")


def test_silent_client_is_closed_after_the_idle_timeout(variant_server, variant):
    server = variant_server(*IDLE)
    before = server.scrape()
    with server.connect() as conn:
        assert conn.outcome() == b""  # closed, without a word
    delta = server.idle_metrics() - before
    expected = {
        'echo_connections_timed_out_total{reason="idle"}': 1,
        "echo_connections_timed_out_total": 1,
        "echo_connections_opened_total": 1,
        'echo_requests_total{outcome="ok"}': 0,
    }
    assert delta.counts(expected) == expected
    # The server is fine: the next client is answered.
    assert server.exchange(b"next") == framed(b"NEXT", variant.framing)


@pytest.mark.framing("lines")
def test_a_kept_alive_connection_is_closed_after_the_idle_timeout(variant_server):
    server = variant_server(*IDLE)
    before = server.scrape()
    with server.connect() as conn:
        conn.send(b"once\n")
        assert conn.line() == b"ONCE\n"
        assert conn.outcome() == b""
    delta = server.idle_metrics() - before
    expected = {'echo_connections_timed_out_total{reason="idle"}': 1, 'echo_requests_total{outcome="ok"}': 1}
    assert delta.counts(expected) == expected


@pytest.mark.framing("lines")
def test_half_a_line_then_silence_gets_an_error_at_the_request_deadline(start_server, variant):
    """The request timeout, not the idle timeout (a minute here), ends a line that stops half-way."""
    server = start_server(variant, "--idle-timeout", "60", "--request-timeout", flag(2))
    before = server.scrape()
    with server.connect() as conn:
        conn.send(b"answered\nhalf a li")
        assert conn.line() == b"ANSWERED\n"
        assert conn.line() == b"ERROR request timeout\n"  # the half line is never answered
        assert conn.read_to_eof() == b""
    delta = server.idle_metrics() - before
    expected = {
        'echo_connections_timed_out_total{reason="request_deadline"}': 1,
        "echo_connections_timed_out_total": 1,
        'echo_requests_total{outcome="ok"}': 1,
        "echo_received_bytes_total": len(b"answered\n"),
    }
    assert delta.counts(expected) == expected


@pytest.mark.framing("lines")
def test_a_line_slower_than_the_idle_timeout_is_answered_within_the_request_timeout(start_server, variant):
    """The idle timeout is for waiting for a request; a line begun has the request timeout."""
    server = start_server(variant, *IDLE, "--request-timeout", flag(40))
    # Twice the idle timeout for the line (10 bytes); a twentieth of the request timeout.
    with trickling(server.port, b"slow line\n", every=scaled(0.4)) as trickle:
        assert Connection(trickle.sock).line() == b"SLOW LINE\n"
        assert trickle.sent == len(b"slow line\n")


def test_a_request_in_work_is_never_timed_out(start_server, variant):
    """Its work is the server's time: a delay past both timeouts is waited out and answered."""
    twice_as_long = ("--delay-ms", f"{scaled(4) * 1000:g}")
    server = start_server(variant, *twice_as_long, *IDLE, "--request-timeout", flag(2))
    before = server.scrape()
    assert server.exchange(b"slow") == framed(b"SLOW", variant.framing)
    delta = server.idle_metrics() - before
    expected = {"echo_connections_timed_out_total": 0, 'echo_requests_total{outcome="ok"}': 1}
    assert delta.counts(expected) == expected


@pytest.mark.every_loop  # refusing happens as the loop accepts
@pytest.mark.concurrent
def test_connections_over_the_limit_are_refused(variant_server, variant):
    server = variant_server(*TWO_CONNECTIONS)
    before = server.scrape()
    with server.connections(2) as held:
        server.wait_metrics(lambda m: m.value("echo_connections_active") == 2)
        with server.connect() as extra:
            assert extra.line() == b"ERROR too many connections\n"
            assert extra.read_to_eof() == b""
        # The connections already in are served as usual...
        held[0].send(framed(b"first", variant.framing))
        assert held[0].line() == framed(b"FIRST", variant.framing)
        held[0].close()
        # ...and once one leaves, a new one gets in.
        server.wait_metrics(lambda m: m.value("echo_connections_active") == 1)
        assert server.exchange(b"got in") == framed(b"GOT IN", variant.framing)
    delta = server.idle_metrics() - before
    expected = {
        'echo_connections_refused_total{reason="max_connections"}': 1,
        'echo_connections_refused_total{reason="shutdown"}': 0,
        "echo_connections_opened_total": 3,
        'echo_requests_total{outcome="ok"}': 2,
    }
    assert delta.counts(expected) == expected


@pytest.mark.every_loop
@pytest.mark.concurrent
def test_refused_clients_that_stay_connected_do_not_hold_up_accepting(variant_server, variant):
    """Refusing is one write, then a close: 20 refused clients that neither send nor leave
    (a second each on the threaded server's acceptor, once) do not delay the next client."""
    server = variant_server(*TWO_CONNECTIONS)
    before = server.scrape()
    with server.connections(2) as held:
        server.wait_metrics(lambda m: m.value("echo_connections_active") == 2)
        with server.connections(20) as refused:
            server.wait_metrics(lambda m: (m - before).value("echo_connections_refused_total") == 20)
            held[0].close()
            server.wait_metrics(lambda m: m.value("echo_connections_active") == 1)
            assert server.exchange(b"got in") == framed(b"GOT IN", variant.framing)
            assert [conn.line() for conn in refused] == [b"ERROR too many connections\n"] * 20


@pytest.mark.every_loop  # how the loop's accept takes EMFILE
@pytest.mark.concurrent
@pytest.mark.framing("lines")
def test_out_of_file_descriptors(start_server, variant):
    """Accept fails: the server says so, serves what it has, does not spin, and recovers."""
    server = start_server(variant, "--idle-timeout", "60")
    before = server.scrape()
    # Room for a few more descriptors, whatever the server has open now.
    open_fds = len(os.listdir(f"/proc/{server.pid}/fd"))
    _, hard = resource.prlimit(server.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (open_fds + 4, hard))

    held, pending = [], None
    try:
        for number in range(20):
            conn = server.connect()
            conn.send(b"hello %d\n" % number)
            conn.sock.settimeout(2.0)  # a served connection answers in 20 ms
            try:
                reply = conn.line()
            except (TimeoutError, ConnectionResetError):
                reply = b""
            if reply != b"HELLO %d\n" % number:
                pending = conn  # not accepted (waits in the backlog), or accepted and closed at once
                break
            conn.sock.settimeout(10.0)
            held.append(conn)
        assert pending is not None, "never ran out of file descriptors"
        assert held, "ran out of file descriptors before the first connection"
        server.wait_for_log("accept failed")

        # Existing connections are still served.
        for number, conn in enumerate(held):
            conn.send(b"again %d\n" % number)
            assert conn.line() == b"AGAIN %d\n" % number
    finally:
        for conn in held:
            conn.close()

    # With descriptors free again, the pending connection is served or closed, never left hanging...
    pending.sock.settimeout(10.0)
    try:
        outcome = pending.line()
    except ConnectionResetError:
        outcome = b""
    assert outcome in (b"HELLO %d\n" % len(held), b"")
    pending.close()
    # ...and once the server has closed its ends, new connections are accepted again.
    poll_until(lambda: len(os.listdir(f"/proc/{server.pid}/fd")), lambda fds: fds <= open_fds,
               what="the server closing the closed connections' descriptors")  # fmt: skip
    assert server.exchange(b"back") == b"BACK\n"

    delta = server.idle_metrics() - before
    errors = delta.value("echo_accept_errors_total")
    # A busy loop on the listening socket would count tens of thousands.
    assert 0 < errors < 200
    assert delta.value("echo_accept_errors_total", errno="EMFILE") == errors
