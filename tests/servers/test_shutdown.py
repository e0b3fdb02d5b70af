"""SIGTERM: finish what is in flight, refuse what comes after, exit 0.

(Every test's teardown checks the exit code too; these check what clients see.)
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Iterator

import pytest
from support.attack import MiB, flood
from support.servers import TIMEOUT
from support.wire import framed

from echolab.runtime import IGNORED_SIGNALS, STOP_SIGNALS, raise_fd_limit
from echolab.settings import THREADED_MODELS

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


# --- a stop signal, whatever the threads of a threaded server are doing ------------------------------

THOUSAND = 1000
DRAIN = 1.0
# The exit's bound past the drain timeout: cutting a thousand connections and ending their threads on a
# loaded machine. A server that never hears the signal, or waits for a request's work, never meets it.
MARGIN = 10.0
HOLDS = {"thread-per-connection": (), "pool": ("--threads", str(THOUSAND + 100)), "serial": ()}
WRITERS = 20
UNREAD = (b"u" * 60_000 + b"\n") * 4  # lines, and so replies, of the largest size


@pytest.fixture(scope="module", autouse=True)
def descriptors() -> None:
    raise_fd_limit()  # a thousand connections and more


def threaded(start_server, model: str, *flags: str):
    return start_server(
        "threaded", "--model", model, *HOLDS[model], "--delay-ms", "0", "--drain-timeout", str(DRAIN), *flags
    )


def small_window(address: tuple[str, int]) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect(): the window it offers
    sock.settimeout(TIMEOUT)
    sock.connect(address)
    return sock


def stopped_in_time(server, signum: signal.Signals = signal.SIGTERM) -> None:
    server.send(signum)
    assert server.wait(DRAIN + MARGIN) == 0
    assert f"shutting down on {signum.name}" in server.log


@pytest.mark.parametrize("model", THREADED_MODELS)
def test_sigterm_stops_a_thousand_connections_blocked_in_recv(start_server, model):
    server = threaded(start_server, model)
    held = 1 if model == "serial" else THOUSAND  # the serial model holds one; the rest wait in the backlog
    with server.connections(THOUSAND) as conns:
        for conn in conns[:held]:
            conn.send(b"served\n")
        assert {conn.line() for conn in conns[:held]} == {b"SERVED\n"}
        server.wait_metrics(lambda m: m.value("echo_connections_active") == held)
        stopped_in_time(server)
        assert {conn.outcome() for conn in conns[:held]} == {b""}
    assert "drain timeout" not in server.log


@pytest.mark.parametrize("model", THREADED_MODELS)
def test_sigterm_stops_a_thousand_requests_in_a_blocking_call(start_server, model):
    """A minute's blocking call: no thread can be interrupted in it, and none holds up the exit."""
    server = threaded(start_server, model, "--blocking-ms", "60000")
    held = 1 if model == "serial" else THOUSAND
    with server.connections(THOUSAND) as conns:
        for conn in conns:
            conn.send(b"blocked\n")
        server.wait_metrics(lambda m: m.value("echo_requests_in_flight") == held)
        stopped_in_time(server)
    assert f"0 of {held} request(s) in flight answered; {held} connection(s) cut" in server.log


@pytest.mark.parametrize("model", THREADED_MODELS)
def test_sigterm_stops_threads_writing_to_clients_that_do_not_read(start_server, model):
    """Among a thousand connections, some whose clients take none of their replies, so that their
    threads stay in sendall(): 20, since a connection's kernel buffers take some 7 MB of replies
    first (the serial model's one connection; the rest of the thousand wait in recv, or the backlog)."""
    server = threaded(start_server, model)
    writers = [small_window(server.address) for _ in range(1 if model == "serial" else WRITERS)]
    try:
        with server.connections(THOUSAND - len(writers)):
            flood(writers, UNREAD, budget=64 * MiB, stall=0.5)
            server.wait_metrics(lambda m: m.value("echo_requests_in_flight") >= len(writers))
            stopped_in_time(server)
    finally:
        for sock in writers:
            sock.close()
    assert f"{len(writers)} connection(s) cut" in server.log


@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda s: s.name)
def test_a_stop_signal_that_comes_while_connections_arrive_is_heard(start_server, signum):
    """Linux hands a signal to any thread that does not block it, and Python runs its handler in the
    main thread only: a SIGTERM that came while the acceptor started the thread of a new connection
    was taken by the acceptor, and the main thread, asleep until a handler woke it, slept on while
    the server served (9 tries of 20 hung, before). Ten tries per signal."""
    for _ in range(10):
        server = threaded(start_server, "thread-per-connection")
        with arriving(server.address):
            server.wait_metrics(lambda m: m.value("echo_connections_opened_total") >= 100)
            stopped_in_time(server, signum)


@contextlib.contextmanager
def arriving(address: tuple[str, int], clients: int = 4) -> Iterator[None]:
    """New connections, one after another from each of ``clients`` threads, each closed at once."""
    done = threading.Event()

    def connect_and_close() -> None:
        while not done.is_set():
            with contextlib.suppress(OSError):
                socket.create_connection(address, timeout=TIMEOUT).close()

    threads = [threading.Thread(target=connect_and_close) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        done.set()
        for thread in threads:
            thread.join()


# --- an event loop held up by its work, and a stop past the drain timeout ----------------------------


@pytest.mark.parametrize("api", ["streams", "protocol"])
def test_sigterm_stops_an_event_loop_held_up_by_a_thousand_connections_blocking_calls(start_server, api):
    """A thousand connections pipeline 20 ms blocking calls, which the loop runs one after another:
    the loop read its signal pipe only between passes over every connection's work (10 s and more
    at a thousand; 20 minutes of work is queued here). The signal handler now runs between two
    requests, and no request starts its work past the drain timeout."""
    server = start_server(
        "async", "--api", api, "--delay-ms", "0", "--blocking-ms", "20", "--drain-timeout", str(DRAIN)
    )
    with server.connections(THOUSAND) as conns:
        for conn in conns:
            conn.send(b"blocked\n" * 60)
        server.wait_metrics(lambda m: m.query('echo_requests_total{outcome="ok"}') >= 10)
        stopped_in_time(server)
    assert "drain timeout" in server.log


@pytest.mark.parametrize("name", ["async", "threaded-http"])
def test_a_stop_past_the_drain_timeout_says_what_it_waits_for_and_where_every_thread_is(start_server, name):
    """A request whose blocking call outlasts the drain timeout: on the event loop, which nothing can
    interrupt; on a gthread worker's thread, which nothing can either."""
    server = start_server(name, "--delay-ms", "0", "--blocking-ms", "4000", "--drain-timeout", "0.2")
    with server.connections(1) as (conn,):
        conn.send(
            b"POST /echo HTTP/1.1\r\nHost: e\r\nContent-Length: 1\r\n\r\nx"
            if name.endswith("http")
            else b"x\n"
        )
        server.wait_metrics(lambda m: m.value("echo_requests_in_flight") == 1)
        server.sigterm()
        server.wait_for_log("still stopping")
    said = [line for line in server.log.splitlines() if "still stopping" in line]
    assert "past the drain timeout: waiting for" in said[0]
    assert ("event loop" if name == "async" else "request(s) on this worker's threads") in said[0]
    assert "in _block_here" in server.log  # the stacks: the blocking call of servers/work.py
    assert server.wait(TIMEOUT) == 0
