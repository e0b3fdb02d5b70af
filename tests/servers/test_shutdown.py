"""SIGTERM: finish what is in flight, refuse what comes after, exit 0.

(Every test's teardown checks the exit code too; these check what clients see.)
"""

from __future__ import annotations

import pytest
from support.wire import framed

from echolab.runtime import IGNORED_SIGNALS

pytestmark = pytest.mark.every_loop  # the loop closes its listener and its connections

# The log line a server writes once it refuses new connections.
SHUTTING_DOWN = "shutting down"


def new_connection_outcome(server) -> bytes | str:
    """What a client that connects after shutdown began gets."""
    try:
        conn = server.connect()
    except ConnectionRefusedError:
        return "refused"
    except ConnectionResetError:  # queued when the listener closed
        return "reset"
    with conn:
        try:
            conn.send(framed(b"too late", server.framing))
        except (BrokenPipeError, ConnectionResetError):
            return "reset"
        return conn.outcome()


def test_sigterm_answers_requests_in_flight_and_refuses_new_connections(start_server, variant):
    # A delay long enough to see the requests in flight, and to signal while they are.
    server = start_server(variant, "--delay-ms", "1000")
    # The serial model takes one connection at a time: the others would wait unaccepted.
    count = 4 if variant.concurrent else 1
    with server.connections(count) as conns:
        for number, conn in enumerate(conns):
            conn.send(framed(b"in flight %d" % number, variant.framing))
        server.wait_metrics(lambda m: m.value("echo_requests_in_flight") == count)
        server.sigterm()
        server.wait_for_log(SHUTTING_DOWN)
        # Whether the listener is closed yet or not, a newcomer is not served.
        assert new_connection_outcome(server) in (
            "refused",
            "reset",
            b"",
            b"ERROR server shutting down\n",
        )
        # Every request in flight is answered, then its connection closed.
        for number, conn in enumerate(conns):
            assert conn.outcome() == framed(b"IN FLIGHT %d" % number, variant.framing)
    assert server.wait() == 0
    assert "drain timeout" not in server.log
    assert f"{count} request(s) in flight answered" in server.log


@pytest.mark.concurrent
def test_sigterm_closes_idle_connections_at_once(start_server, variant):
    server = start_server(variant, "--drain-timeout", "60")
    with server.connections(3) as idle:
        if variant.framing == "lines":
            # One that has been served already, one with half a line.
            idle[0].send(b"served\n")
            assert idle[0].line() == b"SERVED\n"
            idle[1].send(b"half a li")
        server.wait_metrics(lambda m: m.value("echo_connections_active") == 3)
        server.sigterm()
        for conn in idle:
            assert conn.outcome() == b""
    # With a 60 s drain timeout, an exit at all shows the idle connections did not hold it up.
    assert server.wait() == 0
    assert "drain timeout" not in server.log


@pytest.mark.framing("lines")
def test_drain_timeout_cuts_requests_that_take_too_long(start_server, variant):
    server = start_server(variant, "--delay-ms", "2000", "--drain-timeout", "0.2")
    with server.connect() as conn:
        conn.send(b"slow\n")
        server.wait_metrics(lambda m: m.value("echo_requests_in_flight") == 1)
        server.sigterm()
        assert server.wait() == 0
        assert "drain timeout" in server.log
        cut = "0 of 1 request(s) in flight answered; 1 connection(s) cut, 1 request(s) unanswered"
        assert cut in server.log
        assert conn.outcome() in (b"", "reset")


@pytest.mark.framing("lines")
@pytest.mark.parametrize("signum", IGNORED_SIGNALS, ids=lambda s: s.name)
def test_hup_usr1_and_usr2_are_ignored_and_lose_nothing(start_server, variant, signum):
    """Their default action would kill the server with every request in flight."""
    server = start_server(variant, "--delay-ms", "1000")
    count = 4 if variant.concurrent else 1
    with server.connections(count) as conns:
        for number, conn in enumerate(conns):
            conn.send(b"held %d\n" % number)
        server.wait_metrics(lambda m: m.value("echo_requests_in_flight") == count)
        server.send(signum)
        server.wait_for_log(f"{signum.name} ignored")
        assert [conn.line() for conn in conns] == [b"HELD %d\n" % number for number in range(count)]
    assert server.running()
    assert server.exchange(b"after") == b"AFTER\n"
